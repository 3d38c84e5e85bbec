//! OML's retrieval picture: one row per query, the query framed blue, its top-n results framed
//! green (relevant) or red (not) with the distance under each, then up to m ground truths framed
//! grey. Bounding boxes are drawn on the original images.

use image::{Rgb, RgbImage};

use super::grid::{ImageGrid, Tile};
use crate::data::ImageSource;
use crate::data::images::load_rgb;
use crate::retrieval::RetrievalResults;
use crate::{Error, Result};

/// Query frame (OML's blue).
pub const GRID_BLUE: [u8; 3] = [0, 0, 255];
/// Relevant result (green).
pub const GRID_GREEN: [u8; 3] = [0, 200, 0];
/// Irrelevant result (red).
pub const GRID_RED: [u8; 3] = [255, 0, 0];
/// Ground truth (grey).
pub const GRID_GRAY: [u8; 3] = [120, 120, 120];

/// The original image of item `i` with its box (if any) outlined in `color`.
fn image_with_box(source: &dyn ImageSource, i: usize, color: [u8; 3]) -> Result<RgbImage> {
    let path = source.image_path(i);
    let mut img = load_rgb(&path)?;
    if let Some(b) = source.bbox(i) {
        let (w, h) = img.dimensions();
        let (x1, x2, y1, y2) = (
            b.x1.min(w - 1),
            b.x2.min(w).max(1) - 1,
            b.y1.min(h - 1),
            b.y2.min(h).max(1) - 1,
        );
        let thick = (w.max(h) / 100).max(1);
        for t in 0..thick {
            for x in x1..=x2 {
                for y in [y1.saturating_add(t).min(h - 1), y2.saturating_sub(t)] {
                    img.put_pixel(x, y, Rgb(color));
                }
            }
            for y in y1..=y2 {
                for x in [x1.saturating_add(t).min(w - 1), x2.saturating_sub(t)] {
                    img.put_pixel(x, y, Rgb(color));
                }
            }
        }
    }
    Ok(img)
}

/// The retrieval grid of the queries `queries` (query indices of `rr`): `n_results` results and up
/// to `n_gt` ground truths per row, thumbnails of `thumb` pixels. `source` gives the images by item
/// id (the dataset the embeddings were computed on; `rr` must come from
/// [`RetrievalResults::from_embeddings`]).
pub fn retrieval_grid(
    rr: &RetrievalResults,
    source: &dyn ImageSource,
    queries: &[usize],
    n_results: usize,
    n_gt: usize,
    thumb: u32,
) -> Result<ImageGrid> {
    let (Some(query_items), Some(gallery_items)) = (rr.query_item_ids(), rr.gallery_item_ids())
    else {
        return Err(Error::Msg(
            "a retrieval grid needs results built from one set of items (RetrievalResults::from_embeddings)".to_owned(),
        ));
    };
    let largest = query_items
        .iter()
        .chain(gallery_items)
        .copied()
        .max()
        .unwrap_or(0);
    if largest >= source.len() {
        return Err(Error::Msg(format!(
            "the results refer to item {largest} but the dataset has {} items; give the dataset the embeddings were computed on",
            source.len()
        )));
    }
    let mut rows = Vec::with_capacity(queries.len());
    for &q in queries {
        if q >= rr.n_queries() {
            return Err(Error::param(
                "queries",
                q,
                format!("query indices below {}", rr.n_queries()),
            ));
        }
        let qi = query_items[q];
        let mut tiles = vec![Tile {
            image: image_with_box(source, qi, GRID_BLUE)?,
            caption: "query".to_owned(),
            frame: Some(GRID_BLUE),
        }];
        for (&g, &d) in rr
            .retrieved_ids(q)
            .iter()
            .zip(rr.distances(q))
            .take(n_results)
        {
            let color = if rr.is_gt(q, g) { GRID_GREEN } else { GRID_RED };
            tiles.push(Tile {
                image: image_with_box(source, gallery_items[g], color)?,
                caption: format!("{d:.3}"),
                frame: Some(color),
            });
        }
        for g in rr.gt_ids(q).into_iter().take(n_gt) {
            tiles.push(Tile {
                image: image_with_box(source, gallery_items[g], GRID_GRAY)?,
                caption: "gt".to_owned(),
                frame: Some(GRID_GRAY),
            });
        }
        let name = source
            .image_path(qi)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push((format!("q{q} {name}"), tiles));
    }
    Ok(ImageGrid {
        title: format!(
            "retrieval: {} queries, top {n_results}, up to {n_gt} ground truths",
            queries.len()
        ),
        rows,
        thumb,
    })
}
