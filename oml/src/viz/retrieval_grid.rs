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
        for (&g, &d) in rr.ids(q).iter().zip(rr.dists(q)).take(n_results) {
            let color = if rr.is_gt(q, g) { GRID_GREEN } else { GRID_RED };
            tiles.push(Tile {
                image: image_with_box(source, gallery_items[g], color)?,
                caption: format!("{d:.3}"),
                frame: Some(color),
            });
        }
        for g in rr.gt_of(q).into_iter().take(n_gt) {
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

/// Which queries a [`RetrievalGrid`] shows.
#[derive(Debug, Clone)]
enum Pick {
    /// These query indices.
    Given(Vec<usize>),
    /// The `n` worst by cmc@1, then by map@k over the shown results.
    Worst(usize),
    /// `n` queries of distinct labels, spread over the query list.
    Varied(usize),
}

/// OML's `RetrievalResults.visualize`: a retrieval grid with named settings, rendered when shown
/// (see [`RetrievalResults::visualize`]).
///
/// ```no_run
/// # fn f(rr: &oml::retrieval::RetrievalResults, val: &oml::data::ImageQueryGalleryLabeledDataset) -> oml::Result<()> {
/// rr.visualize(val).worst(6).results(5).size(64).save_png("worst.png".as_ref())?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RetrievalGrid {
    rr: RetrievalResults,
    source: std::sync::Arc<dyn ImageSource>,
    pick: Pick,
    n_results: usize,
    n_gt: usize,
    size: u32,
}

impl RetrievalGrid {
    /// Six varied queries, five results, two ground truths, 96-pixel thumbnails.
    pub fn new(rr: RetrievalResults, source: std::sync::Arc<dyn ImageSource>) -> Self {
        RetrievalGrid {
            rr,
            source,
            pick: Pick::Varied(6),
            n_results: 5,
            n_gt: 2,
            size: 96,
        }
    }

    /// Shows these queries (indices among the queries, as OML's `query_ids`).
    pub fn queries(mut self, ids: &[usize]) -> Self {
        self.pick = Pick::Given(ids.to_vec());
        self
    }

    /// Shows the `n` worst queries (first result wrong first, then the fewest hits).
    pub fn worst(mut self, n: usize) -> Self {
        self.pick = Pick::Worst(n);
        self
    }

    /// Shows `n` queries of distinct labels spread over the query list (the default, with 6).
    pub fn varied(mut self, n: usize) -> Self {
        self.pick = Pick::Varied(n);
        self
    }

    /// Results shown per query.
    pub fn results(mut self, n: usize) -> Self {
        self.n_results = n;
        self
    }

    /// Ground truths shown per query after the results.
    pub fn gt(mut self, n: usize) -> Self {
        self.n_gt = n;
        self
    }

    /// Side of a thumbnail in pixels.
    pub fn size(mut self, px: u32) -> Self {
        self.size = px;
        self
    }

    /// The query indices that will be shown.
    pub fn query_ids(&self) -> Vec<usize> {
        let nq = self.rr.n_queries();
        match &self.pick {
            Pick::Given(ids) => ids.clone(),
            Pick::Worst(n) => {
                let map = crate::metrics::QueryMetric::Map(self.n_results.max(1));
                let cmc = crate::metrics::per_query(&self.rr, crate::metrics::QueryMetric::Cmc(1));
                let ap = crate::metrics::per_query(&self.rr, map);
                let mut order: Vec<usize> = (0..nq).collect();
                order.sort_by(|&a, &b| {
                    cmc[a]
                        .total_cmp(&cmc[b])
                        .then(ap[a].total_cmp(&ap[b]))
                        .then(a.cmp(&b))
                });
                order.truncate(*n);
                order
            }
            Pick::Varied(n) => {
                if nq == 0 || *n == 0 {
                    return Vec::new();
                }
                // Walk the queries with a stride that spreads them over the list, keeping one per
                // label (labels unknown: every query is its own).
                let labels = self.rr.query_labels();
                let stride = (nq / n).max(1);
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                for offset in 0..stride {
                    for q in (offset..nq).step_by(stride) {
                        let label = labels.map_or(q as i64, |l| l[q]);
                        if out.len() < *n && seen.insert(label) {
                            out.push(q);
                        }
                    }
                }
                out.sort_unstable();
                out
            }
        }
    }

    /// Draws the grid.
    pub fn render(&self) -> Result<ImageGrid> {
        let mut grid = retrieval_grid(
            &self.rr,
            self.source.as_ref(),
            &self.query_ids(),
            self.n_results,
            self.n_gt,
            self.size,
        )?;
        if let Pick::Worst(_) = self.pick {
            grid.title = format!("worst queries: {}", grid.title);
        }
        Ok(grid)
    }

    /// The grid as PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        self.render()?.to_png()
    }

    /// Writes the grid as a PNG.
    pub fn save_png(&self, path: &std::path::Path) -> Result<()> {
        self.render()?.save_png(path)
    }

    /// Shows the grid inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl crate::notebook::Show for RetrievalGrid {
    fn html(&self) -> Result<String> {
        self.render()?.to_html()
    }
    fn plain(&self) -> String {
        format!(
            "[retrieval grid: queries {:?}, top {}]",
            self.query_ids(),
            self.n_results
        )
    }
}

impl std::fmt::Debug for RetrievalGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::notebook::Show::plain(self))
    }
}
