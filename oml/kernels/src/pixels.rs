//! Per-pixel loops of the image transforms, on interleaved RGB bytes. Here rather than in `oml`
//! so that they run optimised in every profile: the loader runs them for every training image.

/// Interleaved RGB bytes to channel-major floats, `(x / 255 - mean) / std` per channel.
pub fn normalise_chw(rgb: &[u8], mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = rgb.len() / 3;
    let mut out = vec![0f32; 3 * plane];
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = px[c] as f32 * scale[c] - shift[c];
        }
    }
    out
}

/// An affine resampling about the centre: every output pixel `(x, y)` takes the bilinear sample of
/// `src` at `inv * (x - cx - tx, y - cy - ty) + (cx, cy)`; outside `src`: `fill`.
pub fn affine_rgb(
    src: &[u8],
    (w, h): (u32, u32),
    inv: [[f32; 2]; 2],
    (tx, ty): (f32, f32),
    fill: [u8; 3],
) -> Vec<u8> {
    let (w, h) = (w as usize, h as usize);
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let mut out = vec![0u8; w * h * 3];
    let at = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            fill.map(f32::from)
        } else {
            let i = (y as usize * w + x as usize) * 3;
            [src[i] as f32, src[i + 1] as f32, src[i + 2] as f32]
        }
    };
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f32 - cx - tx, y as f32 - cy - ty);
            let sx = inv[0][0] * dx + inv[0][1] * dy + cx;
            let sy = inv[1][0] * dx + inv[1][1] * dy + cy;
            let o = (y * w + x) * 3;
            if sx < -1.0 || sy < -1.0 || sx > w as f32 || sy > h as f32 {
                out[o..o + 3].copy_from_slice(&fill);
                continue;
            }
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (a, b, c, d) = (
                at(x0, y0),
                at(x0 + 1, y0),
                at(x0, y0 + 1),
                at(x0 + 1, y0 + 1),
            );
            for k in 0..3 {
                let top = a[k] * (1.0 - fx) + b[k] * fx;
                let bottom = c[k] * (1.0 - fx) + d[k] * fx;
                out[o + k] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// A square minimum (`thicken`: dark strokes grow) or maximum filter of radius `r`, per channel,
/// as two separable passes; the border takes the window's part inside the image.
pub fn morph_rgb(src: &[u8], (w, h): (u32, u32), r: u32, thicken: bool) -> Vec<u8> {
    let (w, h, r) = (w as usize, h as usize, r as usize);
    let pick = |a: u8, b: u8| if thicken { a.min(b) } else { a.max(b) };
    let pass = |from: &[u8], horizontal: bool| -> Vec<u8> {
        let mut out = from.to_vec();
        for y in 0..h {
            for x in 0..w {
                let o = (y * w + x) * 3;
                let (lo, hi) = if horizontal {
                    (x.saturating_sub(r), (x + r).min(w - 1))
                } else {
                    (y.saturating_sub(r), (y + r).min(h - 1))
                };
                for k in lo..=hi {
                    let i = if horizontal {
                        (y * w + k) * 3
                    } else {
                        (k * w + x) * 3
                    };
                    for c in 0..3 {
                        out[o + c] = pick(out[o + c], from[i + c]);
                    }
                }
            }
        }
        out
    };
    pass(&pass(src, true), false)
}

/// Adds Gaussian noise of standard deviation `std` to every pixel (the same on its three
/// channels), drawn from a generator seeded with `seed` (SplitMix64, Box-Muller).
pub fn gauss_noise_rgb(pixels: &mut [u8], std: f32, seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 24 random bits as a float in (0, 1].
        ((z >> 40) as f32 + 1.0) / (1u32 << 24) as f32
    };
    for px in pixels.chunks_exact_mut(3) {
        let (u1, u2) = (next(), next());
        let n = std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
        for c in px {
            *c = (*c as f32 + n).round().clamp(0.0, 255.0) as u8;
        }
    }
}
