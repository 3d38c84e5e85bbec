//! A grid of image tiles, each with a caption and an optional coloured frame, rendered as a PNG
//! (tiles only) or as HTML (thumbnails as base64 PNGs, captions as escaped text).

use std::io::Cursor;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageFormat, Rgb, RgbImage};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

use crate::data::{ImageLabeledDataset, ImageSource};
use crate::notebook::{escape_html, png_data_url};
use crate::{Error, Result};

/// One image in a grid.
#[derive(Debug, Clone)]
pub struct Tile {
    /// The image (resized to the grid's thumbnail size when drawn).
    pub image: RgbImage,
    /// Text under the image (HTML output only).
    pub caption: String,
    /// Frame colour, if any.
    pub frame: Option<[u8; 3]>,
}

/// Rows of tiles, each row with a label.
#[derive(Debug, Clone)]
pub struct ImageGrid {
    /// Title shown above the grid (HTML).
    pub title: String,
    /// `(row label, tiles)`.
    pub rows: Vec<(String, Vec<Tile>)>,
    /// Side of a thumbnail in pixels.
    pub thumb: u32,
}

const FRAME: u32 = 3;
const GAP: u32 = 4;
const CAPTION: u32 = 14;
const CAPTION_PX: f32 = 11.0;

impl ImageGrid {
    fn thumbnail(&self, tile: &Tile) -> RgbImage {
        let t = self.thumb.max(8);
        let (w, h) = tile.image.dimensions();
        let scale = t as f32 / w.max(h).max(1) as f32;
        let (nw, nh) = (
            ((w as f32 * scale).round() as u32).clamp(1, t),
            ((h as f32 * scale).round() as u32).clamp(1, t),
        );
        let small = imageops::resize(&tile.image, nw, nh, FilterType::Triangle);
        let side = t + 2 * FRAME;
        let mut out = RgbImage::from_pixel(side, side, Rgb(tile.frame.unwrap_or([255, 255, 255])));
        let mut inner = RgbImage::from_pixel(t, t, Rgb([255, 255, 255]));
        imageops::replace(
            &mut inner,
            &small,
            ((t - nw) / 2) as i64,
            ((t - nh) / 2) as i64,
        );
        imageops::replace(&mut out, &inner, FRAME as i64, FRAME as i64);
        out
    }

    /// Pixel position `(x, y)` of the top-left corner of tile `col` of row `row` in
    /// [`Self::to_image`] (its frame starts there).
    pub fn tile_origin(&self, row: usize, col: usize) -> (u32, u32) {
        let side = self.thumb.max(8) + 2 * FRAME;
        let left = self.label_width();
        (
            left + col as u32 * (side + GAP),
            row as u32 * (side + CAPTION + GAP),
        )
    }

    fn label_width(&self) -> u32 {
        let widest = self
            .rows
            .iter()
            .map(|(label, _)| super::text::text_width(label, CAPTION_PX))
            .fold(0.0f32, f32::max);
        if widest > 0.0 {
            widest.ceil() as u32 + 2 * GAP
        } else {
            0
        }
    }

    /// The grid drawn as one image: a row label on the left, tiles with their frames and captions
    /// under them, white background.
    pub fn to_image(&self) -> RgbImage {
        let side = self.thumb.max(8) + 2 * FRAME;
        let cols = self.rows.iter().map(|r| r.1.len()).max().unwrap_or(0) as u32;
        let width = (self.label_width() + cols * (side + GAP)).max(1);
        let height = (self.rows.len() as u32 * (side + CAPTION + GAP)).max(1);
        let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
        for (r, (label, tiles)) in self.rows.iter().enumerate() {
            let (_, y) = self.tile_origin(r, 0);
            super::text::draw_text(
                &mut canvas,
                GAP as i64,
                (y + side / 2) as i64 - 6,
                label,
                CAPTION_PX,
                [0, 0, 0],
            );
            for (c, tile) in tiles.iter().enumerate() {
                let thumb = self.thumbnail(tile);
                let (x, y) = self.tile_origin(r, c);
                imageops::replace(&mut canvas, &thumb, x as i64, y as i64);
                let tw = super::text::text_width(&tile.caption, CAPTION_PX).ceil() as i64;
                super::text::draw_text(
                    &mut canvas,
                    x as i64 + (side as i64 - tw).max(0) / 2,
                    (y + side + 1) as i64,
                    &tile.caption,
                    CAPTION_PX,
                    [0, 0, 0],
                );
            }
        }
        canvas
    }

    /// The grid as PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        encode_png(&self.to_image())
    }

    /// Writes the grid as a PNG file.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let png = self.to_png()?;
        std::fs::write(path, png).map_err(|e| Error::io("cannot write", path, e))
    }

    /// The grid as an HTML fragment: a table with a row label and one thumbnail plus caption per
    /// tile. Every text is escaped.
    pub fn to_html(&self) -> Result<String> {
        let mut html = String::new();
        html.push_str("<div class=\"oml-grid\">");
        if !self.title.is_empty() {
            html.push_str(&format!("<h4>{}</h4>", escape_html(&self.title)));
        }
        html.push_str("<table style=\"border-collapse:collapse\">");
        for (label, tiles) in &self.rows {
            html.push_str(&format!(
                "<tr><td style=\"padding:4px;font-family:monospace;vertical-align:middle\">{}</td>",
                escape_html(label)
            ));
            for tile in tiles {
                let png = encode_png(&self.thumbnail(tile))?;
                html.push_str(&format!(
                    "<td style=\"padding:2px;text-align:center;font-family:monospace;font-size:11px\"><img src=\"{}\"/><br/>{}</td>",
                    png_data_url(&png),
                    escape_html(&tile.caption)
                ));
            }
            html.push_str("</tr>");
        }
        html.push_str("</table></div>");
        Ok(html)
    }

    /// Shows the grid inline in an evcxr notebook (HTML).
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl crate::notebook::Show for ImageGrid {
    fn html(&self) -> Result<String> {
        self.to_html()
    }
    fn plain(&self) -> String {
        let tiles: usize = self.rows.iter().map(|(_, t)| t.len()).sum();
        format!(
            "[{}: {} rows, {tiles} images]",
            if self.title.is_empty() {
                "image grid"
            } else {
                &self.title
            },
            self.rows.len()
        )
    }
}

/// Encodes an RGB image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .map_err(|e| Error::Msg(format!("cannot encode PNG: {e}")))?;
    Ok(buf.into_inner())
}

/// A grid of `per_label` random images for each of `n_labels` random labels of a dataset (one row
/// per label), seeded.
pub fn sample_grid(
    dataset: &ImageLabeledDataset,
    n_labels: usize,
    per_label: usize,
    thumb: u32,
    seed: u64,
) -> Result<ImageGrid> {
    if n_labels == 0 || per_label == 0 {
        return Err(Error::param("n_labels/per_label", 0, "at least 1"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_label: Vec<Vec<usize>> = vec![Vec::new(); dataset.n_labels()];
    for (i, &l) in dataset.labels().iter().enumerate() {
        by_label[l].push(i);
    }
    let mut labels: Vec<usize> = (0..dataset.n_labels()).collect();
    labels.shuffle(&mut rng);
    labels.truncate(n_labels);
    labels.sort_unstable();
    let categories = dataset.categories();
    let mut rows = Vec::new();
    for l in labels {
        let chosen: Vec<usize> = by_label[l]
            .choose_multiple(&mut rng, per_label)
            .copied()
            .collect();
        let mut tiles = Vec::new();
        for i in chosen {
            let image = dataset.load_image(i)?;
            let caption = dataset
                .image_path(i)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            tiles.push(Tile {
                image,
                caption,
                frame: None,
            });
        }
        let original = dataset.original_label(l).unwrap_or_default();
        let label = match &categories {
            Some(c) => format!("label {original} ({})", c[by_label[l][0]]),
            None => format!("label {original}"),
        };
        rows.push((label, tiles));
    }
    Ok(ImageGrid {
        title: format!("{} labels x {} samples", rows.len(), per_label),
        rows,
        thumb,
    })
}

/// One sampler batch as a grid: one row per label, in batch order.
pub fn batch_grid(dataset: &ImageLabeledDataset, batch: &[usize], thumb: u32) -> Result<ImageGrid> {
    let mut rows: Vec<(usize, Vec<Tile>)> = Vec::new();
    for &i in batch {
        if i >= dataset.len() {
            return Err(Error::param(
                "batch",
                i,
                format!("indices below {}", dataset.len()),
            ));
        }
        let label = dataset.labels()[i];
        let tile = Tile {
            image: dataset.load_image(i)?,
            caption: format!("#{i}"),
            frame: None,
        };
        match rows.iter_mut().find(|(l, _)| *l == label) {
            Some((_, tiles)) => tiles.push(tile),
            None => rows.push((label, vec![tile])),
        }
    }
    Ok(ImageGrid {
        title: format!("a batch of {} images, {} labels", batch.len(), rows.len()),
        rows: rows
            .into_iter()
            .map(|(l, tiles)| {
                let original = dataset.original_label(l).unwrap_or_default();
                (format!("label {original}"), tiles)
            })
            .collect(),
        thumb,
    })
}

/// Each of `items` (indices into `source`) followed by `copies` draws of `transform` (the
/// geometric and colour steps, before normalisation): what an augmentation does.
pub fn augmentation_grid(
    source: &dyn ImageSource,
    transform: &crate::data::Transform,
    items: &[usize],
    copies: usize,
    thumb: u32,
) -> Result<ImageGrid> {
    transform.validate()?;
    let mut rows = Vec::with_capacity(items.len());
    for &i in items {
        if i >= source.len() {
            return Err(Error::param(
                "items",
                i,
                format!("indices below {}", source.len()),
            ));
        }
        let original = source.load_image(i)?;
        let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
        let mut tiles = vec![Tile {
            image: original.clone(),
            caption: "original".into(),
            frame: Some(super::GRID_BLUE),
        }];
        for k in 0..copies {
            tiles.push(Tile {
                image: transform.apply_image(&original, &mut rng),
                caption: format!("draw {}", k + 1),
                frame: None,
            });
        }
        rows.push((format!("#{i}"), tiles));
    }
    Ok(ImageGrid {
        title: format!("{}: {copies} draws per image", transform.name),
        rows,
        thumb,
    })
}
