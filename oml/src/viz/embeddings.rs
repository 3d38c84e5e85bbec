//! Pictures of embeddings for teaching: a 2-D projection coloured by label, the distances of
//! positive and negative pairs, and the triplets a miner picks from a batch.

use candle_core::{DType, Tensor};
use plotters::prelude::*;

use super::grid::{ImageGrid, Tile};
use crate::data::{ImageLabeledDataset, ImageSource};
use crate::losses::MinerConfig;
use crate::notebook::Figure;
use crate::train::plots::{draw_err, fonts, histogram_png};
use crate::{Error, Result};

/// Rows of `embeddings` `[N, D]` as `f32` vectors on the host.
fn rows(embeddings: &Tensor) -> Result<(usize, usize, Vec<f32>)> {
    let (n, d) = embeddings.dims2()?;
    let flat = crate::host::read::<f32>(&embeddings.to_dtype(DType::F32)?, "viz: embeddings")?;
    Ok((n, d, flat))
}

/// The first two principal components of `embeddings` `[N, D]`: one `(x, y)` per row (PCA on the
/// centred rows; the signs of the axes are fixed so the largest coordinate is positive).
pub fn pca_2d(embeddings: &Tensor) -> Result<Vec<(f32, f32)>> {
    let (n, d, flat) = rows(embeddings)?;
    if n < 2 || d < 2 {
        return Err(Error::Msg(format!(
            "a 2-D projection needs at least 2 rows of 2 dimensions; got {n} x {d}"
        )));
    }
    let scatter = crate::metrics::pcf::scatter(&flat, d)?;
    let (values, vectors) = oml_kernels::linalg::symmetric_eigen(&scatter, d);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    // Column k of the column-major eigenvector matrix, its largest coordinate made positive.
    let axes: Vec<Vec<f64>> = order[..2]
        .iter()
        .map(|&k| {
            let v = &vectors[k * d..(k + 1) * d];
            let big = v
                .iter()
                .copied()
                .fold(0.0, |a: f64, b| if b.abs() > a.abs() { b } else { a });
            v.iter().map(|&c| if big < 0.0 { -c } else { c }).collect()
        })
        .collect();
    let mut mean = vec![0f64; d];
    for row in flat.chunks_exact(d) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64 / n as f64;
        }
    }
    Ok(flat
        .chunks_exact(d)
        .map(|row| {
            let p = |axis: &[f64]| {
                row.iter()
                    .zip(&mean)
                    .zip(axis)
                    .map(|((&x, m), a)| (x as f64 - m) * a)
                    .sum::<f64>() as f32
            };
            (p(&axes[0]), p(&axes[1]))
        })
        .collect())
}

const PALETTE: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(255, 215, 0),
];

/// A scatter of the PCA projection of the rows of `embeddings` `[N, D]` whose label is among the
/// first `max_labels` labels (in order of appearance), one colour per label, as a figure.
pub fn embedding_scatter(
    embeddings: &Tensor,
    labels: &[i64],
    max_labels: usize,
    title: &str,
) -> Result<Figure> {
    let (n, _) = embeddings.dims2()?;
    if labels.len() != n {
        return Err(Error::Msg(format!(
            "{} labels for {n} embeddings",
            labels.len()
        )));
    }
    let mut distinct: Vec<i64> = Vec::new();
    for l in labels {
        if !distinct.contains(l) && distinct.len() < max_labels.clamp(1, PALETTE.len()) {
            distinct.push(*l);
        }
    }
    let keep: Vec<u32> = (0..n as u32)
        .filter(|&i| distinct.contains(&labels[i as usize]))
        .collect();
    let kept = embeddings.index_select(&Tensor::new(keep.as_slice(), embeddings.device())?, 0)?;
    let labels: Vec<i64> = keep.iter().map(|&i| labels[i as usize]).collect();
    let points = pca_2d(&kept)?;
    let (w, h) = (420u32, 380u32);
    fonts();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let span = |f: fn(&(f32, f32)) -> f32| {
            let lo = points.iter().map(f).fold(f32::MAX, f32::min);
            let hi = points.iter().map(f).fold(f32::MIN, f32::max);
            let pad = ((hi - lo) * 0.05).max(1e-6);
            (lo - pad)..(hi + pad)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(40)
            .build_cartesian_2d(span(|p| p.0), span(|p| p.1))
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(points.iter().zip(&labels).map(|(&p, l)| {
                let k = distinct.iter().position(|d| d == l).unwrap_or(0);
                Circle::new(p, 4, PALETTE[k % PALETTE.len()].filled())
            }))
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| Error::Msg("plot buffer of the wrong size".into()))?;
    Ok(Figure::new(title, super::grid::encode_png(&img)?))
}

/// Distances of every pair of rows of `embeddings` with the same label (positives) and with
/// different labels (negatives).
pub fn pair_distances(embeddings: &Tensor, labels: &[i64]) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, d, flat) = rows(embeddings)?;
    if labels.len() != n {
        return Err(Error::Msg(format!(
            "{} labels for {n} embeddings",
            labels.len()
        )));
    }
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&flat[i * d..(i + 1) * d], &flat[j * d..(j + 1) * d]);
            let dist = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt();
            if labels[i] == labels[j] {
                pos.push(dist);
            } else {
                neg.push(dist);
            }
        }
    }
    Ok((pos, neg))
}

/// Histograms of the distances of positive and negative pairs (see [`pair_distances`]): the
/// better the embedding, the less they overlap.
pub fn distance_histograms(embeddings: &Tensor, labels: &[i64], title: &str) -> Result<Figure> {
    let (pos, neg) = pair_distances(embeddings, labels)?;
    Ok(Figure::new(
        title,
        histogram_png(title, ("same label", &pos), ("other labels", &neg))?,
    ))
}

/// Some items of a dataset, as a dataset.
#[derive(Clone)]
struct Items {
    train: ImageLabeledDataset,
    items: Vec<usize>,
}

impl ImageSource for Items {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn image_path(&self, i: usize) -> std::path::PathBuf {
        self.train.image_path(self.items[i])
    }
    fn bbox(&self, i: usize) -> Option<crate::data::BBox> {
        self.train.bbox(self.items[i])
    }
}

/// The triplets `miner` picks from one batch of `train` (`batch`: indices into it), on the
/// embeddings `model` gives them: one row per triplet, anchor (blue), positive (green) and
/// negative (red) with their distances to the anchor; at most `max_rows` rows.
pub fn triplets_grid(
    model: &crate::Model,
    train: &ImageLabeledDataset,
    batch: &[usize],
    miner: &MinerConfig,
    max_rows: usize,
    thumb: u32,
) -> Result<ImageGrid> {
    let labels: Vec<i64> =
        batch
            .iter()
            .map(|&i| {
                train.labels().get(i).map(|&l| l as i64).ok_or_else(|| {
                    Error::param("batch", i, format!("indices below {}", train.len()))
                })
            })
            .collect::<Result<_>>()?;
    let embeddings = &model.embed(&Items {
        train: train.clone(),
        items: batch.to_vec(),
    })?;
    let sampled = miner.build(0)?.sample(embeddings, &labels)?;
    let Some(t) = sampled.indices()? else {
        return Err(Error::Msg(
            "this miner gives vectors, not batch indices (HardClusterMiner): nothing to draw"
                .into(),
        ));
    };
    let (_, d, flat) = rows(embeddings)?;
    let dist = |a: usize, b: usize| {
        flat[a * d..(a + 1) * d]
            .iter()
            .zip(&flat[b * d..(b + 1) * d])
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    };
    let mut out = Vec::new();
    for k in 0..t.len().min(max_rows) {
        let (a, p, n) = (t.anchors[k], t.positives[k], t.negatives[k]);
        if a >= batch.len() || p >= batch.len() || n >= batch.len() {
            continue; // a triplet reaching into a memory bank
        }
        let tile = |i: usize, caption: String, frame: [u8; 3]| -> Result<Tile> {
            Ok(Tile {
                image: train.load_image(batch[i])?,
                caption,
                frame: Some(frame),
            })
        };
        out.push((
            format!("triplet {k}"),
            vec![
                tile(a, "anchor".into(), super::GRID_BLUE)?,
                tile(p, format!("d+ {:.2}", dist(a, p)), super::GRID_GREEN)?,
                tile(n, format!("d- {:.2}", dist(a, n)), super::GRID_RED)?,
            ],
        ));
    }
    Ok(ImageGrid {
        title: format!(
            "{} of the {} triplets the miner picked from a batch of {}",
            out.len(),
            t.len(),
            batch.len()
        ),
        rows: out,
        thumb,
    })
}
