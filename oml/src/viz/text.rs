//! Drawing short captions onto RGB images with the embedded DejaVu Sans (no system fonts).

use std::sync::OnceLock;

use ab_glyph::{Font, FontArc, PxScale, ScaleFont, point};
use image::RgbImage;

fn font() -> Option<&'static FontArc> {
    static FONT: OnceLock<Option<FontArc>> = OnceLock::new();
    FONT.get_or_init(|| FontArc::try_from_slice(dejavu::sans::regular()).ok())
        .as_ref()
}

/// Width in pixels of `text` at `px` pixels high.
pub fn text_width(text: &str, px: f32) -> f32 {
    let Some(font) = font() else { return 0.0 };
    let scaled = font.as_scaled(PxScale::from(px));
    text.chars()
        .map(|c| scaled.h_advance(font.glyph_id(c)))
        .sum()
}

/// Draws `text` with its top-left corner at `(x, y)`, `px` pixels high, in `color`; clipped to the
/// image.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, px: f32, color: [u8; 3]) {
    let Some(font) = font() else { return };
    let scaled = font.as_scaled(PxScale::from(px));
    let mut caret = x as f32;
    let baseline = y as f32 + scaled.ascent();
    let (w, h) = (img.width() as i64, img.height() as i64);
    for c in text.chars() {
        let id = font.glyph_id(c);
        let glyph = id.with_scale_and_position(PxScale::from(px), point(caret, baseline));
        caret += scaled.h_advance(id);
        let Some(outlined) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = outlined.px_bounds();
        outlined.draw(|gx, gy, cov| {
            let (px_x, px_y) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if (0..w).contains(&px_x) && (0..h).contains(&px_y) {
                let p = img.get_pixel_mut(px_x as u32, px_y as u32);
                for (v, c) in p.0.iter_mut().zip(color) {
                    *v = (*v as f32 * (1.0 - cov) + c as f32 * cov)
                        .round()
                        .clamp(0.0, 255.0) as u8;
                }
            }
        });
    }
}
