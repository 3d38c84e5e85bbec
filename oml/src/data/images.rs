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

/// Raw-pixel embeddings, the simplest baseline: every image of `source` as a grey `size x size`
/// thumbnail, flattened and L2-normalised: `[N, size * size]`, `f32`, on the CPU. Decoded in
/// parallel.
pub fn pixel_embeddings(source: &dyn super::ImageSource, size: u32) -> Result<candle_core::Tensor> {
    use rayon::prelude::*;
    if size == 0 {
        return Err(Error::param("size", 0, "a thumbnail side > 0"));
    }
    let rows: Vec<Vec<f32>> = (0..source.len())
        .into_par_iter()
        .map(|i| {
            let img = source.load_image(i)?;
            let grey = image::imageops::grayscale(&img);
            let small =
                image::imageops::resize(&grey, size, size, image::imageops::FilterType::Triangle);
            let mut v: Vec<f32> = small
                .as_raw()
                .iter()
                .map(|&p| 1.0 - p as f32 / 255.0)
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            Ok(v)
        })
        .collect::<Result<_>>()?;
    let n = rows.len();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Ok(candle_core::Tensor::from_vec(
        flat,
        (n, size as usize * size as usize),
        &candle_core::Device::Cpu,
    )?)
}
