//! Decoding images (PNG, JPEG) into RGB, and cropping to a bounding box.

use std::path::Path;

use image::{ImageReader, RgbImage};

use super::check::BBox;
use crate::{Error, Result};

/// Decodes an image file (PNG or JPEG; the format is detected from the bytes) as 8-bit RGB.
/// Grey and palette images become RGB; an alpha channel is dropped.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| image_error(path, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| image_error(path, format!("cannot read: {e}")))?;
    let decoded = reader.decode().map_err(|e| {
        image_error(
            path,
            format!("cannot decode ({e}); PNG and JPEG files are supported"),
        )
    })?;
    Ok(decoded.to_rgb8())
}

/// Crops `image` to `bbox` (`x_1..x_2` columns, `y_1..y_2` rows, right and bottom exclusive, as
/// OML's `image[y_1:y_2, x_1:x_2]`). Like that slicing, a box reaching past the image is clipped to
/// it; a box entirely outside the image is an error naming the path.
pub fn crop_to_bbox(image: &RgbImage, bbox: &BBox, path: &Path) -> Result<RgbImage> {
    let (w, h) = image.dimensions();
    let x2 = bbox.x2.min(w);
    let y2 = bbox.y2.min(h);
    if bbox.x1 >= x2 || bbox.y1 >= y2 {
        return Err(image_error(
            path,
            format!(
                "the box x_1={}, x_2={}, y_1={}, y_2={} lies outside the {w}x{h} image",
                bbox.x1, bbox.x2, bbox.y1, bbox.y2
            ),
        ));
    }
    Ok(image::imageops::crop_imm(image, bbox.x1, bbox.y1, x2 - bbox.x1, y2 - bbox.y1).to_image())
}

/// Decodes an image and crops it to its box when it has one.
pub fn load_rgb_cropped(path: &Path, bbox: Option<&BBox>) -> Result<RgbImage> {
    let image = load_rgb(path)?;
    match bbox {
        Some(b) => crop_to_bbox(&image, b, path),
        None => Ok(image),
    }
}

fn image_error(path: &Path, message: String) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        message,
    }
}
