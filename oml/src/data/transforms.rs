//! Image transforms: from a decoded RGB image to a normalised `f32` CHW array, with OML's presets.
//!
//! Geometry runs on 8-bit images with Pillow's resampling (separable convolution, bicubic =
//! Catmull-Rom with a = -0.5, the filter support widened when downscaling), through the SIMD
//! `fast_image_resize` crate; colour jitter follows torchvision's definitions; the last step scales
//! to `[0, 1]` and normalises by a mean and standard deviation per channel.
//!
//! Presets (names as Python OML's registry): `norm_resize_torch`, `norm_resize_hypvit`,
//! `norm_resize_albu`, `norm_resize_albu_clip`, `augs_torch`, `augs_hypvit_torch`.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// ImageNet mean (RGB, in `[0, 1]`), as torchvision and OML.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CLIP mean (RGB), as OpenAI's CLIP and OML's `norm_resize_albu_clip`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Padding colour of `norm_resize_albu` (white, as OML's `PAD_COLOR`).
pub const PAD_COLOR: [u8; 3] = [255, 255, 255];

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (triangle filter, antialiased when downscaling).
    Bilinear,
    /// Bicubic (Catmull-Rom, a = -0.5, antialiased when downscaling), as Pillow's `BICUBIC`.
    Bicubic,
}

impl Interpolation {
    fn filter(self) -> FilterType {
        match self {
            Interpolation::Nearest => FilterType::Nearest,
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Bicubic => FilterType::CatmullRom,
        }
    }
}

/// One step of a [`Transform`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Resize to exactly `height x width`.
    Resize {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
        /// Filter.
        interpolation: Interpolation,
    },
    /// Resize so that the shorter side is `size`, keeping the aspect ratio (torchvision
    /// `Resize(int)`: the longer side is `int(size * long / short)`).
    ResizeShorter {
        /// Length of the shorter side.
        size: u32,
        /// Filter.
        interpolation: Interpolation,
    },
    /// Resize so that the longer side is `size`, then pad to `size x size` with `fill`, centred
    /// (albumentations `LongestMaxSize` + `PadIfNeeded`, as OML's `norm_resize_albu`).
    LongestSidePad {
        /// Output side.
        size: u32,
        /// Padding colour.
        fill: [u8; 3],
        /// Filter.
        interpolation: Interpolation,
    },
    /// Crop the centre `height x width` (torchvision `CenterCrop`; pads with black when smaller).
    CenterCrop {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
    /// torchvision `RandomResizedCrop`: a random area fraction in `scale` and aspect ratio in
    /// `ratio` (log-uniform), resized to `height x width`.
    RandomResizedCrop {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
        /// Range of the crop's area as a fraction of the image.
        scale: (f32, f32),
        /// Range of the crop's aspect ratio (width / height).
        ratio: (f32, f32),
        /// Filter.
        interpolation: Interpolation,
    },
    /// Mirror left-right with probability `p`.
    HorizontalFlip {
        /// Probability.
        p: f32,
    },
    /// torchvision `ColorJitter`: brightness, contrast and saturation factors drawn from
    /// `[max(0, 1 - x), 1 + x]`, a hue shift from `[-hue, hue]`, applied in a random order; the
    /// whole step runs with probability `p` (torchvision's `RandomApply`).
    ColorJitter {
        /// Brightness strength.
        brightness: f32,
        /// Contrast strength.
        contrast: f32,
        /// Saturation strength.
        saturation: f32,
        /// Hue strength, at most 0.5.
        hue: f32,
        /// Probability of applying the step.
        p: f32,
    },
    /// torchvision `RandomAffine` about the centre: a rotation in `[-degrees, degrees]`, a shift of
    /// up to `translate` of the side each way, a scale in `scale`, a shear in `[-shear, shear]`
    /// degrees along x; bilinear, the uncovered area filled with `fill`.
    RandomAffine {
        /// Largest rotation in degrees.
        degrees: f32,
        /// Largest shift as a fraction of the side.
        translate: f32,
        /// Range of the scale.
        scale: (f32, f32),
        /// Largest shear in degrees.
        shear: f32,
        /// Fill colour.
        fill: [u8; 3],
    },
    /// Stroke weight: with probability `p`, dark strokes thickened or thinned (each half of the
    /// time) by a minimum or maximum filter of radius 1 to `max_radius`.
    RandomStroke {
        /// Largest filter radius in pixels.
        max_radius: u32,
        /// Probability of applying the step.
        p: f32,
    },
    /// With probability `p`, a Gaussian blur with sigma drawn from `sigma` (pixels).
    GaussianBlur {
        /// Range of sigma.
        sigma: (f32, f32),
        /// Probability of applying the step.
        p: f32,
    },
    /// With probability `p`, Gaussian noise of standard deviation `std` (in 0-255 units) added to
    /// every pixel (the same on the three channels).
    GaussNoise {
        /// Standard deviation.
        std: f32,
        /// Probability of applying the step.
        p: f32,
    },
}

/// The handwriting-like variation of [`Op::RandomAffine`], [`Op::RandomStroke`],
/// [`Op::GaussianBlur`] and [`Op::GaussNoise`] that the `augs_glyphs` preset and the glyph
/// dataset's distorted queries use (on white images with dark ink).
pub fn glyph_variation() -> Vec<Op> {
    vec![
        Op::RandomAffine {
            degrees: 12.0,
            translate: 0.08,
            scale: (0.8, 1.1),
            shear: 15.0,
            fill: [255, 255, 255],
        },
        Op::RandomStroke {
            max_radius: 1,
            p: 0.7,
        },
        Op::GaussianBlur {
            sigma: (0.3, 1.2),
            p: 0.6,
        },
        Op::GaussNoise { std: 20.0, p: 0.6 },
    ]
}

/// A pipeline from an RGB image to a normalised `f32` CHW array: geometric and colour steps, then
/// `(x / 255 - mean) / std` per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Name (the preset's, or `custom`).
    pub name: String,
    /// Steps, in order.
    pub ops: Vec<Op>,
    /// Mean per channel (RGB, in `[0, 1]`).
    pub mean: [f32; 3],
    /// Standard deviation per channel.
    pub std: [f32; 3],
}

/// The names accepted by [`Transform::preset`].
pub const PRESETS: [&str; 7] = [
    "norm_resize_torch",
    "norm_resize_hypvit",
    "norm_resize_albu",
    "norm_resize_albu_clip",
    "augs_torch",
    "augs_hypvit_torch",
    "augs_glyphs",
];

impl Transform {
    /// One of OML's presets (see [`PRESETS`]) with OML's `im_size = image_size`:
    /// - `norm_resize_torch`: square bilinear resize (aspect ratio not kept);
    /// - `norm_resize_hypvit` (also `norm_resize_hypvit_torch`): shorter side to `image_size`
    ///   (bicubic), centre crop `image_size` (OML's defaults; [`Transform::hypvit`] for 256 / 224);
    /// - `norm_resize_albu`, `norm_resize_albu_clip`: longest side to `image_size`, padded white to a
    ///   square (ImageNet or CLIP mean/std);
    /// - `augs_torch`: square resize and a random horizontal flip (OML's colour jitter is a no-op);
    /// - `augs_hypvit_torch`: random resized crop (scale 0.2-1, bicubic) and a horizontal flip;
    /// - `augs_glyphs` (ours, for drawings of letters): [`glyph_variation`] (affine jitter, stroke
    ///   weight, blur, noise), then a square resize; no flip (a mirrored letter is another letter).
    pub fn preset(name: &str, image_size: u32) -> Result<Transform> {
        if image_size == 0 {
            return Err(Error::param(
                "image_size",
                image_size,
                "a size in pixels > 0",
            ));
        }
        let s = image_size;
        let (ops, mean, std) = match name {
            "norm_resize_torch" => (
                vec![Op::Resize {
                    height: s,
                    width: s,
                    interpolation: Interpolation::Bilinear,
                }],
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            "norm_resize_hypvit" | "norm_resize_hypvit_torch" => {
                return Ok(Transform::hypvit(s, s));
            }
            "norm_resize_albu" | "norm_resize_albu_clip" => (
                vec![Op::LongestSidePad {
                    size: s,
                    fill: PAD_COLOR,
                    interpolation: Interpolation::Bilinear,
                }],
                if name.ends_with("clip") {
                    CLIP_MEAN
                } else {
                    IMAGENET_MEAN
                },
                if name.ends_with("clip") {
                    CLIP_STD
                } else {
                    IMAGENET_STD
                },
            ),
            "augs_torch" => (
                vec![
                    Op::Resize {
                        height: s,
                        width: s,
                        interpolation: Interpolation::Bilinear,
                    },
                    Op::HorizontalFlip { p: 0.5 },
                ],
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            "augs_hypvit_torch" => (
                vec![
                    Op::RandomResizedCrop {
                        height: s,
                        width: s,
                        scale: (0.2, 1.0),
                        ratio: (3.0 / 4.0, 4.0 / 3.0),
                        interpolation: Interpolation::Bicubic,
                    },
                    Op::HorizontalFlip { p: 0.5 },
                ],
                IMAGENET_MEAN,
                IMAGENET_STD,
            ),
            "augs_glyphs" => {
                let mut ops = glyph_variation();
                ops.push(Op::Resize {
                    height: s,
                    width: s,
                    interpolation: Interpolation::Bilinear,
                });
                (ops, IMAGENET_MEAN, IMAGENET_STD)
            }
            other => {
                return Err(Error::UnknownName {
                    kind: "transform preset",
                    name: other.to_owned(),
                    known: PRESETS.iter().map(|s| s.to_string()).collect(),
                });
            }
        };
        Ok(Transform {
            name: name.to_owned(),
            ops,
            mean,
            std,
        })
    }

    /// OML's `get_normalisation_resize_hypvit(im_size, crop_size)`: the shorter side resized to
    /// `im_size` (bicubic), then a centre crop of `crop_size` (ResNets in OML's zoo use 256, 224).
    pub fn hypvit(im_size: u32, crop_size: u32) -> Transform {
        Transform {
            name: "norm_resize_hypvit".to_owned(),
            ops: vec![
                Op::ResizeShorter {
                    size: im_size.max(1),
                    interpolation: Interpolation::Bicubic,
                },
                Op::CenterCrop {
                    height: crop_size.max(1),
                    width: crop_size.max(1),
                },
            ],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Checks every parameter: sizes > 0, `0 < scale.0 <= scale.1 <= 1`, `0 < ratio.0 <= ratio.1`,
    /// probabilities in `[0, 1]`, jitter strengths >= 0 (hue <= 0.5), finite mean and std > 0.
    pub fn validate(&self) -> Result<()> {
        let size = |name: &'static str, v: u32| {
            if v == 0 {
                Err(Error::param(name, v, "a size in pixels > 0"))
            } else {
                Ok(())
            }
        };
        let prob = |v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::param("p", v, "a probability in [0, 1]"))
            }
        };
        for op in &self.ops {
            match *op {
                Op::Resize { height, width, .. } | Op::CenterCrop { height, width } => {
                    size("height", height)?;
                    size("width", width)?;
                }
                Op::ResizeShorter { size: s, .. } | Op::LongestSidePad { size: s, .. } => {
                    size("size", s)?
                }
                Op::RandomResizedCrop {
                    height,
                    width,
                    scale,
                    ratio,
                    ..
                } => {
                    size("height", height)?;
                    size("width", width)?;
                    if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                        return Err(Error::param(
                            "scale",
                            format!("{scale:?}"),
                            "0 < min <= max <= 1",
                        ));
                    }
                    if !(ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                        return Err(Error::param(
                            "ratio",
                            format!("{ratio:?}"),
                            "0 < min <= max",
                        ));
                    }
                }
                Op::HorizontalFlip { p } => prob(p)?,
                Op::RandomAffine {
                    degrees,
                    translate,
                    scale,
                    shear,
                    ..
                } => {
                    let ok = degrees >= 0.0
                        && (0.0..80.0).contains(&shear)
                        && (0.0..1.0).contains(&translate)
                        && scale.0 > 0.0
                        && scale.0 <= scale.1
                        && scale.1.is_finite();
                    if !ok {
                        return Err(Error::param(
                            "random_affine",
                            format!("{degrees}/{translate}/{scale:?}/{shear}"),
                            "degrees >= 0, 0 <= translate < 1, 0 < scale min <= max, 0 <= shear < 80",
                        ));
                    }
                }
                Op::RandomStroke { max_radius, p } => {
                    prob(p)?;
                    if max_radius == 0 || max_radius > 8 {
                        return Err(Error::param("max_radius", max_radius, "1 to 8 pixels"));
                    }
                }
                Op::GaussianBlur { sigma, p } => {
                    prob(p)?;
                    if !(sigma.0 > 0.0 && sigma.0 <= sigma.1 && sigma.1 <= 20.0) {
                        return Err(Error::param(
                            "sigma",
                            format!("{sigma:?}"),
                            "0 < min <= max <= 20",
                        ));
                    }
                }
                Op::GaussNoise { std, p } => {
                    prob(p)?;
                    if !(std >= 0.0 && std.is_finite()) {
                        return Err(Error::param("std", std, "a standard deviation >= 0"));
                    }
                }
                Op::ColorJitter {
                    brightness,
                    contrast,
                    saturation,
                    hue,
                    p,
                } => {
                    prob(p)?;
                    for (name, v) in [
                        ("brightness", brightness),
                        ("contrast", contrast),
                        ("saturation", saturation),
                    ] {
                        if !(v >= 0.0 && v.is_finite()) {
                            return Err(Error::param(name, v, "a strength >= 0"));
                        }
                    }
                    if !(0.0..=0.5).contains(&hue) {
                        return Err(Error::param("hue", hue, "a strength in [0, 0.5]"));
                    }
                }
            }
        }
        if self.mean.iter().any(|m| !m.is_finite())
            || self.std.iter().any(|s| !(*s > 0.0 && s.is_finite()))
        {
            return Err(Error::param(
                "mean/std",
                format!("{:?}/{:?}", self.mean, self.std),
                "finite means and std > 0",
            ));
        }
        Ok(())
    }

    /// Whether the transform draws random numbers (augmentations).
    pub fn is_random(&self) -> bool {
        self.ops.iter().any(|op| {
            matches!(
                op,
                Op::RandomResizedCrop { .. }
                    | Op::HorizontalFlip { .. }
                    | Op::ColorJitter { .. }
                    | Op::RandomAffine { .. }
                    | Op::RandomStroke { .. }
                    | Op::GaussianBlur { .. }
                    | Op::GaussNoise { .. }
            )
        })
    }

    /// The `(height, width)` of every output, when it does not depend on the input size.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        let mut size = None;
        for op in &self.ops {
            size = match op {
                Op::Resize { height, width, .. }
                | Op::CenterCrop { height, width }
                | Op::RandomResizedCrop { height, width, .. } => Some((*height, *width)),
                Op::LongestSidePad { size, .. } => Some((*size, *size)),
                Op::ResizeShorter { .. } => None,
                Op::HorizontalFlip { .. }
                | Op::ColorJitter { .. }
                | Op::RandomAffine { .. }
                | Op::RandomStroke { .. }
                | Op::GaussianBlur { .. }
                | Op::GaussNoise { .. } => size,
            };
        }
        size
    }

    /// The same transform giving `size`-pixel outputs: every resize and crop scaled by
    /// `size / output side` (OML's 256 -> 224 becomes 64 -> 56 for `size` 56). Fails for a
    /// transform whose output size depends on the input.
    pub fn resized(&self, size: u32) -> Result<Transform> {
        if size == 0 {
            return Err(Error::param("image_size", 0, "a size in pixels > 0"));
        }
        let Some((h, w)) = self.output_size() else {
            return Err(Error::Msg(format!(
                "transform {}: its output size depends on the input; give a transform instead \
                 (Transform::preset(name, {size}))",
                self.name
            )));
        };
        let k = size as f64 / h.max(w) as f64;
        let scale = |v: u32| ((v as f64 * k).round() as u32).max(1);
        let ops = self
            .ops
            .iter()
            .map(|op| match op.clone() {
                Op::Resize {
                    height,
                    width,
                    interpolation,
                } => Op::Resize {
                    height: scale(height),
                    width: scale(width),
                    interpolation,
                },
                Op::ResizeShorter {
                    size,
                    interpolation,
                } => Op::ResizeShorter {
                    size: scale(size),
                    interpolation,
                },
                Op::LongestSidePad {
                    size,
                    fill,
                    interpolation,
                } => Op::LongestSidePad {
                    size: scale(size),
                    fill,
                    interpolation,
                },
                Op::CenterCrop { height, width } => Op::CenterCrop {
                    height: scale(height),
                    width: scale(width),
                },
                Op::RandomResizedCrop {
                    height,
                    width,
                    scale: s,
                    ratio,
                    interpolation,
                } => Op::RandomResizedCrop {
                    height: scale(height),
                    width: scale(width),
                    scale: s,
                    ratio,
                    interpolation,
                },
                other => other,
            })
            .collect();
        Ok(Transform {
            ops,
            ..self.clone()
        })
    }

    /// Runs the geometric and colour steps on an 8-bit image.
    pub fn apply_image<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R) -> RgbImage {
        let mut img = image.clone();
        for op in &self.ops {
            img = apply_op(op, img, rng);
        }
        img
    }

    /// Runs the whole transform: returns `(chw, height, width)` with `chw` of length
    /// `3 * height * width`, channel-major, normalised.
    pub fn apply<R: Rng + ?Sized>(&self, image: &RgbImage, rng: &mut R) -> (Vec<f32>, u32, u32) {
        let img = self.apply_image(image, rng);
        let (w, h) = img.dimensions();
        (normalise_chw(&img, self.mean, self.std), h, w)
    }
}

/// Scales an 8-bit RGB image to `[0, 1]` and normalises it, channel-major (CHW).
pub fn normalise_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    oml_kernels::pixels::normalise_chw(img.as_raw(), mean, std)
}

fn resize(img: &RgbImage, width: u32, height: u32, interpolation: Interpolation) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (width, height) {
        return img.clone();
    }
    resize_region(img, (0, 0, w, h), width, height, interpolation)
}

/// Resizes the region `(x, y, width, height)` of `img` to `out_w x out_h` with SIMD convolution
/// (`fast_image_resize`, a port of Pillow's resampling: the filter support grows with the
/// downscaling factor); the `image` crate's resize is the fallback should it refuse the input.
fn resize_region(
    img: &RgbImage,
    region: (u32, u32, u32, u32),
    out_w: u32,
    out_h: u32,
    interpolation: Interpolation,
) -> RgbImage {
    use fast_image_resize as fir;
    let (out_w, out_h) = (out_w.max(1), out_h.max(1));
    let (x, y, rw, rh) = region;
    let algorithm = match interpolation {
        Interpolation::Nearest => fir::ResizeAlg::Nearest,
        Interpolation::Bilinear => fir::ResizeAlg::Convolution(fir::FilterType::Bilinear),
        Interpolation::Bicubic => fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom),
    };
    let fast = || -> Option<RgbImage> {
        let src = fir::images::ImageRef::new(
            img.width(),
            img.height(),
            img.as_raw(),
            fir::PixelType::U8x3,
        )
        .ok()?;
        let mut dst = fir::images::Image::new(out_w, out_h, fir::PixelType::U8x3);
        let options = fir::ResizeOptions::new()
            .resize_alg(algorithm)
            .crop(x as f64, y as f64, rw as f64, rh as f64);
        fir::Resizer::new().resize(&src, &mut dst, &options).ok()?;
        RgbImage::from_raw(out_w, out_h, dst.into_vec())
    };
    fast().unwrap_or_else(|| {
        let crop = imageops::crop_imm(img, x, y, rw.max(1), rh.max(1)).to_image();
        imageops::resize(&crop, out_w, out_h, interpolation.filter())
    })
}

fn apply_op<R: Rng + ?Sized>(op: &Op, img: RgbImage, rng: &mut R) -> RgbImage {
    let (w, h) = img.dimensions();
    match *op {
        Op::Resize {
            height,
            width,
            interpolation,
        } => resize(&img, width, height, interpolation),
        Op::ResizeShorter {
            size,
            interpolation,
        } => {
            let (nw, nh) = if w <= h {
                (size, (size as u64 * h as u64 / w.max(1) as u64) as u32)
            } else {
                ((size as u64 * w as u64 / h.max(1) as u64) as u32, size)
            };
            resize(&img, nw, nh, interpolation)
        }
        Op::LongestSidePad {
            size,
            fill,
            interpolation,
        } => {
            let longest = w.max(h).max(1) as f64;
            let scale = size as f64 / longest;
            let size = size.max(1);
            let nw = ((w as f64 * scale).round_ties_even() as u32).clamp(1, size);
            let nh = ((h as f64 * scale).round_ties_even() as u32).clamp(1, size);
            let resized = resize(&img, nw, nh, interpolation);
            let mut canvas = RgbImage::from_pixel(size, size, Rgb(fill));
            let left = (size - nw) / 2;
            let top = (size - nh) / 2;
            imageops::replace(&mut canvas, &resized, left as i64, top as i64);
            canvas
        }
        Op::CenterCrop { height, width } => center_crop(&img, width, height),
        Op::RandomResizedCrop {
            height,
            width,
            scale,
            ratio,
            interpolation,
        } => {
            let region = random_resized_crop_box(w, h, scale, ratio, rng);
            resize_region(&img, region, width, height, interpolation)
        }
        Op::HorizontalFlip { p } => {
            if rng.random::<f32>() < p {
                imageops::flip_horizontal(&img)
            } else {
                img
            }
        }
        Op::ColorJitter {
            brightness,
            contrast,
            saturation,
            hue,
            p,
        } => {
            if rng.random::<f32>() < p {
                color_jitter(img, [brightness, contrast, saturation, hue], rng)
            } else {
                img
            }
        }
        Op::RandomAffine {
            degrees,
            translate,
            scale,
            shear,
            fill,
        } => {
            let mut draw = |lo: f32, hi: f32| {
                if hi > lo {
                    rng.random_range(lo..hi)
                } else {
                    lo
                }
            };
            let angle = draw(-degrees, degrees).to_radians();
            let (tx, ty) = (
                draw(-translate, translate) * w as f32,
                draw(-translate, translate) * h as f32,
            );
            let s = draw(scale.0, scale.1);
            let sh = draw(-shear, shear).to_radians();
            affine(&img, angle, (tx, ty), s, sh, fill)
        }
        Op::RandomStroke { max_radius, p } => {
            if rng.random::<f32>() >= p {
                return img;
            }
            let r = rng.random_range(1..=max_radius);
            let thicken = rng.random::<bool>();
            morph(&img, r, thicken)
        }
        Op::GaussianBlur { sigma, p } => {
            if rng.random::<f32>() >= p {
                return img;
            }
            let s = if sigma.1 > sigma.0 {
                rng.random_range(sigma.0..sigma.1)
            } else {
                sigma.0
            };
            imageops::blur(&img, s)
        }
        Op::GaussNoise { std, p } => {
            if rng.random::<f32>() >= p || std == 0.0 {
                return img;
            }
            let mut out = img;
            oml_kernels::pixels::gauss_noise_rgb(&mut out, std, rng.random());
            out
        }
    }
}

/// The affine map about the centre (rotation `angle`, x-shear `shear`, both in radians, scale
/// `s`, then a shift), sampled bilinearly at every output pixel from its inverse; outside the
/// source: `fill`.
fn affine(
    img: &RgbImage,
    angle: f32,
    shift: (f32, f32),
    s: f32,
    shear: f32,
    fill: [u8; 3],
) -> RgbImage {
    let (w, h) = img.dimensions();
    // Forward: M = s * R(angle) * Shear(shear); the inverse maps an output pixel to its source.
    let (ca, sa) = (angle.cos(), angle.sin());
    let k = shear.tan();
    // R * S with S = [[1, k], [0, 1]].
    let m = [[ca * s, (ca * k - sa) * s], [sa * s, (sa * k + ca) * s]];
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if det.abs() < 1e-6 {
        return img.clone();
    }
    let inv = [
        [m[1][1] / det, -m[0][1] / det],
        [-m[1][0] / det, m[0][0] / det],
    ];
    let out = oml_kernels::pixels::affine_rgb(img.as_raw(), (w, h), inv, shift, fill);
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| img.clone())
}

/// A square minimum (`thicken`: dark strokes grow) or maximum filter of radius `r`, separable.
fn morph(img: &RgbImage, r: u32, thicken: bool) -> RgbImage {
    let (w, h) = img.dimensions();
    let out = oml_kernels::pixels::morph_rgb(img.as_raw(), (w, h), r, thicken);
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| img.clone())
}

/// torchvision's `CenterCrop`: the top-left corner at `round((H - h) / 2)` (half to even, as
/// Python's `round`), padding with black when the image is smaller than the crop.
fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(width, height);
    let left = (w as i64 - width as i64) as f64 / 2.0;
    let top = (h as i64 - height as i64) as f64 / 2.0;
    let (left, top) = (left.round_ties_even() as i64, top.round_ties_even() as i64);
    imageops::replace(&mut out, img, -left, -top);
    out
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and aspect ratio, then
/// a centre crop at the closest allowed ratio. Returns `(x, y, width, height)`.
fn random_resized_crop_box<R: Rng + ?Sized>(
    w: u32,
    h: u32,
    scale: (f32, f32),
    ratio: (f32, f32),
    rng: &mut R,
) -> (u32, u32, u32, u32) {
    let area = (w as f64) * (h as f64);
    let (lr0, lr1) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
    let valid =
        scale.0 > 0.0 && scale.0 <= scale.1 && lr0.is_finite() && lr1.is_finite() && lr0 <= lr1;
    for _ in 0..if valid { 10 } else { 0 } {
        let target = area * rng.random_range(scale.0 as f64..=scale.1 as f64);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            return (x, y, cw, ch);
        }
    }
    let in_ratio = w as f64 / h.max(1) as f64;
    let (cw, ch) = if in_ratio < ratio.0 as f64 {
        (w, ((w as f64) / ratio.0 as f64).round() as u32)
    } else if in_ratio > ratio.1 as f64 {
        (((h as f64) * ratio.1 as f64).round() as u32, h)
    } else {
        (w, h)
    };
    let (cw, ch) = (cw.clamp(1, w.max(1)), ch.clamp(1, h.max(1)));
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// torchvision's `ColorJitter` on a PIL image: factors drawn per call, steps in a random order.
fn color_jitter<R: Rng + ?Sized>(mut img: RgbImage, strength: [f32; 4], rng: &mut R) -> RgbImage {
    let mut order = [0usize, 1, 2, 3];
    for i in (1..4).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    for step in order {
        let s = strength[step];
        if s.is_nan() || s <= 0.0 {
            continue;
        }
        if step == 3 {
            let shift = rng.random_range(-s.min(0.5)..=s.min(0.5));
            shift_hue(&mut img, shift);
            continue;
        }
        if !s.is_finite() {
            continue;
        }
        let factor = rng.random_range((1.0 - s).max(0.0)..=1.0 + s);
        match step {
            0 => blend_with(&mut img, |_| [0.0; 3], factor),
            1 => {
                // PIL's contrast blends with the mean of the grey image, rounded.
                let n = (img.width() * img.height()).max(1) as f64;
                let mean = img.pixels().map(|p| grey(p.0) as f64).sum::<f64>() / n;
                let mean = (mean + 0.5).floor() as f32;
                blend_with(&mut img, |_| [mean; 3], factor)
            }
            _ => blend_with(
                &mut img,
                |p| {
                    let g = grey(p) as f32;
                    [g; 3]
                },
                factor,
            ),
        }
    }
    img
}

/// ITU-R 601-2 luma as PIL's `convert("L")` (integer, rounded).
fn grey(p: [u8; 3]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// PIL's `Image.blend(degenerate, img, factor)`: `degenerate + factor * (img - degenerate)`.
fn blend_with(img: &mut RgbImage, degenerate: impl Fn([u8; 3]) -> [f32; 3], factor: f32) {
    for p in img.pixels_mut() {
        let d = degenerate(p.0);
        for (v, d) in p.0.iter_mut().zip(d) {
            *v = (d + factor * (*v as f32 - d)).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Shifts the hue by `shift` turns (in `[-0.5, 0.5]`), as torchvision's `adjust_hue` (HSV, hue
/// stored in 8 bits).
fn shift_hue(img: &mut RgbImage, shift: f32) {
    let delta = (shift * 255.0).round() as i32;
    for p in img.pixels_mut() {
        let [r, g, b] = p.0.map(|v| v as f32 / 255.0);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let v = max;
        let c = max - min;
        let s = if max > 0.0 { c / max } else { 0.0 };
        let mut hh = if c == 0.0 {
            0.0
        } else if max == r {
            ((g - b) / c).rem_euclid(6.0)
        } else if max == g {
            (b - r) / c + 2.0
        } else {
            (r - g) / c + 4.0
        } / 6.0;
        let h8 = ((hh * 255.0).round() as i32 + delta).rem_euclid(255);
        hh = h8 as f32 / 255.0 * 6.0;
        let i = hh.floor();
        let f = hh - i;
        let (pp, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
        let (r, g, b) = match i as i32 % 6 {
            0 => (v, t, pp),
            1 => (q, v, pp),
            2 => (pp, v, t),
            3 => (pp, q, v),
            4 => (t, pp, v),
            _ => (v, pp, q),
        };
        p.0 = [r, g, b].map(|x| (x * 255.0).round().clamp(0.0, 255.0) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, 128])
        })
    }

    #[test]
    fn every_preset_gives_its_fixed_size() {
        let img = gradient(97, 61);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for name in PRESETS {
            let t = Transform::preset(name, 48).expect("preset");
            let (chw, h, w) = t.apply(&img, &mut rng);
            assert_eq!((h, w), (48, 48), "{name}");
            assert_eq!(t.output_size(), Some((48, 48)), "{name}");
            assert_eq!(chw.len(), 3 * 48 * 48, "{name}");
        }
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let err = Transform::preset("norm_resize_magic", 32)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("norm_resize_magic") && err.contains("augs_hypvit_torch"),
            "{err}"
        );
    }

    #[test]
    fn longest_side_pads_white_and_centres() {
        let img = RgbImage::from_pixel(40, 20, Rgb([0, 0, 0]));
        let t = Transform {
            name: "t".into(),
            ops: vec![Op::LongestSidePad {
                size: 20,
                fill: PAD_COLOR,
                interpolation: Interpolation::Bilinear,
            }],
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let out = t.apply_image(&img, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(out.dimensions(), (20, 20));
        // 40x20 -> 20x10, padded by 5 rows above and below.
        assert_eq!(out.get_pixel(10, 0).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(10, 4).0, [255, 255, 255]);
        assert_eq!(out.get_pixel(10, 5).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(10, 14).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(10, 15).0, [255, 255, 255]);
    }

    #[test]
    fn normalisation_matches_the_formula() {
        let img = RgbImage::from_pixel(2, 1, Rgb([255, 0, 51]));
        let chw = normalise_chw(&img, IMAGENET_MEAN, IMAGENET_STD);
        let expect = [
            (1.0 - 0.485) / 0.229,
            (0.0 - 0.456) / 0.224,
            (0.2 - 0.406) / 0.225,
        ];
        for c in 0..3 {
            for i in 0..2 {
                assert!((chw[c * 2 + i] - expect[c]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn random_crop_boxes_stay_inside_and_respect_the_area() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let (x, y, w, h) =
                random_resized_crop_box(120, 80, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(x + w <= 120 && y + h <= 80 && w > 0 && h > 0);
            let frac = (w * h) as f64 / (120.0 * 80.0);
            assert!(frac > 0.15, "{frac}");
        }
    }

    #[test]
    fn same_seed_same_augmentation() {
        let img = gradient(64, 64);
        let t = Transform::preset("augs_hypvit_torch", 32).expect("preset");
        let a = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(9)).0;
        let b = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(9)).0;
        let c = t.apply(&img, &mut ChaCha8Rng::seed_from_u64(10)).0;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn grey_image_keeps_grey_under_hue_and_saturation() {
        let mut img = RgbImage::from_pixel(3, 3, Rgb([90, 90, 90]));
        shift_hue(&mut img, 0.3);
        assert_eq!(img.get_pixel(1, 1).0, [90, 90, 90]);
    }
}
