//! Exact nearest-neighbour search in blocks: queries in blocks, the gallery streamed in blocks,
//! distances by matrix products (candle), a running top-n per query. Memory is
//! `O(query_block x gallery_block + queries x top_n)`, never `O(queries x gallery)`.

use std::collections::BinaryHeap;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Distance between embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Euclidean `||q - g||` (not squared), as OML's `torch.cdist`.
    #[default]
    Euclidean,
    /// Cosine distance `1 - cos(q, g)`.
    Cosine,
}

impl std::str::FromStr for Distance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "euclidean" | "l2" => Ok(Distance::Euclidean),
            "cosine" => Ok(Distance::Cosine),
            other => Err(Error::UnknownName {
                kind: "distance",
                name: other.to_owned(),
                known: vec!["euclidean".into(), "cosine".into()],
            }),
        }
    }
}

/// How to search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchConfig {
    /// Results kept per query (clipped to the gallery size).
    pub top_n: usize,
    /// Distance.
    pub distance: Distance,
    /// Queries per block.
    pub query_block: usize,
    /// Gallery items per block.
    pub gallery_block: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            top_n: 100,
            distance: Distance::Euclidean,
            query_block: 1024,
            gallery_block: 4096,
        }
    }
}

/// Per query: the gallery items it must not retrieve, as a test on the gallery index.
pub(crate) trait Exclusion: Sync {
    fn excluded(&self, query: usize, gallery: usize) -> bool;
}

/// `(distance, gallery index)` ordered by distance, then index: the heap's top is the worst kept.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate(f32, usize);

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Checks a `[N, D]` `f32`-convertible tensor for shape and finiteness (block by block, so memory
/// stays bounded); returns it as a contiguous `f32` tensor on its device.
pub(crate) fn check_embeddings(name: &str, e: &Tensor) -> Result<Tensor> {
    let dims = e.dims();
    if dims.len() != 2 || dims[1] == 0 {
        return Err(Error::Msg(format!(
            "{name}: expected a [N, D] matrix of embeddings, got shape {dims:?}"
        )));
    }
    let (n, d) = (dims[0], dims[1]);
    // No copy when the tensor is already contiguous f32 (a 1M x 384 gallery is 1.5 GB).
    let e = if e.dtype() == DType::F32 {
        e.clone()
    } else {
        e.to_dtype(DType::F32)?
    };
    let e = e.contiguous()?;
    const ROWS: usize = 4096;
    for r0 in (0..n).step_by(ROWS) {
        let rows = ROWS.min(n - r0);
        let block: Vec<f32> = e
            .narrow(0, r0, rows)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        if let Some(pos) = block.iter().position(|v| !v.is_finite()) {
            return Err(Error::Msg(format!(
                "{name}: embedding {} has a NaN or infinite value (at dimension {}); check the model's output",
                r0 + pos / d,
                pos % d
            )));
        }
    }
    Ok(e)
}

/// The `top_n` nearest gallery rows of every query row, ascending by distance, then by gallery
/// index, skipping excluded pairs. `queries: [Q, D]`, `gallery: [G, D]`, both `f32` on one device.
/// Returns per query `(distances, gallery indices)`.
pub(crate) fn knn(
    queries: &Tensor,
    gallery: &Tensor,
    config: &SearchConfig,
    exclusion: &dyn Exclusion,
) -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
    let (nq, d) = queries.dims2()?;
    let (ng, d2) = gallery.dims2()?;
    if d != d2 {
        return Err(Error::Msg(format!(
            "queries have dimension {d} but the gallery has {d2}"
        )));
    }
    let top_n = config.top_n.min(ng);
    let qb = config.query_block.max(1);
    let gb = config.gallery_block.max(1);
    // Norms only matter for the Euclidean distance (cosine blocks are normalised).
    let g_norms: Vec<f32> = match config.distance {
        Distance::Euclidean => squared_norms(gallery)?,
        Distance::Cosine => vec![0.0; ng],
    };
    let mut out = Vec::with_capacity(nq);
    for q0 in (0..nq).step_by(qb) {
        let qn = qb.min(nq - q0);
        let q = prepare_block(queries, q0, qn, config.distance)?;
        let q_norms = squared_norms(&q)?;
        let mut heaps: Vec<BinaryHeap<Candidate>> = (0..qn)
            .map(|_| BinaryHeap::with_capacity(top_n + 1))
            .collect();
        if top_n > 0 {
            for g0 in (0..ng).step_by(gb) {
                let gn = gb.min(ng - g0);
                let g = prepare_block(gallery, g0, gn, config.distance)?;
                let dots = q.matmul(&g.t()?)?;
                with_values(&dots, |dots| {
                    heaps.par_iter_mut().enumerate().for_each(|(r, heap)| {
                        let row = &dots[r * gn..(r + 1) * gn];
                        let qi = q0 + r;
                        // key = a + s * |g|^2 - f * q.g: squared Euclidean, or 1 - cos for
                        // normalised rows; ordered like the distance.
                        let (a, s, f) = match config.distance {
                            Distance::Euclidean => (q_norms[r], 1.0, 2.0),
                            Distance::Cosine => (1.0, 0.0, 1.0),
                        };
                        let norms = &g_norms[g0..g0 + gn];
                        let worst = |heap: &BinaryHeap<Candidate>| {
                            if heap.len() == top_n {
                                heap.peek().map_or(f32::INFINITY, |w| w.0)
                            } else {
                                f32::INFINITY
                            }
                        };
                        let mut threshold = worst(heap);
                        for (c, (&dot, &norm)) in row.iter().zip(norms).enumerate() {
                            let key = a + s * norm - f * dot;
                            // Later gallery items lose ties: strictly better only.
                            if key >= threshold || exclusion.excluded(qi, g0 + c) {
                                continue;
                            }
                            heap.push(Candidate(key, g0 + c));
                            if heap.len() > top_n {
                                heap.pop();
                            }
                            threshold = worst(heap);
                        }
                    })
                })?;
            }
        }
        for heap in heaps {
            let sorted = heap.into_sorted_vec();
            let dist = sorted
                .iter()
                .map(|c| match config.distance {
                    Distance::Euclidean => c.0.max(0.0).sqrt(),
                    Distance::Cosine => c.0.max(0.0),
                })
                .collect();
            out.push((dist, sorted.iter().map(|c| c.1).collect()));
        }
    }
    Ok(out)
}

/// Runs `f` on a tensor's values as one row-major slice: borrowed without a copy on the CPU,
/// copied to the host from other devices.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            return Ok(f(&all[start..start + t.elem_count()]));
        }
    }
    let host: Vec<f32> = t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
    Ok(f(&host))
}

fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}

/// Squared L2 norm of every row, computed in blocks of rows so that no full-size temporary is made.
fn squared_norms(x: &Tensor) -> Result<Vec<f32>> {
    const ROWS: usize = 16_384;
    let n = x.dims()[0];
    let mut out = Vec::with_capacity(n);
    for r0 in (0..n).step_by(ROWS) {
        let block = x.narrow(0, r0, ROWS.min(n - r0))?;
        out.extend(
            block
                .sqr()?
                .sum(1)?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?,
        );
    }
    Ok(out)
}

/// A block of rows, L2-normalised for the cosine distance.
fn prepare_block(x: &Tensor, start: usize, len: usize, distance: Distance) -> Result<Tensor> {
    let block = x.narrow(0, start, len)?;
    match distance {
        Distance::Euclidean => Ok(block),
        Distance::Cosine => l2_normalise(&block),
    }
}

/// Folds over every non-excluded query-gallery pair `(query, gallery, distance)`, block by block,
/// queries in parallel within a block: `init` makes an accumulator, `visit` adds a pair, `merge`
/// joins two. Used for statistics over all pairs (fnmr@fmr) without materialising them.
pub(crate) fn fold_pairs<A: Send>(
    queries: &Tensor,
    gallery: &Tensor,
    config: &SearchConfig,
    exclusion: &dyn Exclusion,
    init: &(dyn Fn() -> A + Sync),
    visit: &(dyn Fn(&mut A, usize, usize, f32) + Sync),
    merge: &(dyn Fn(A, A) -> A + Sync),
) -> Result<A> {
    let (nq, _) = queries.dims2()?;
    let (ng, _) = gallery.dims2()?;
    let g_norms: Vec<f32> = match config.distance {
        Distance::Euclidean => squared_norms(gallery)?,
        Distance::Cosine => vec![0.0; ng],
    };
    let qb = config.query_block.max(1);
    let gb = config.gallery_block.max(1);
    let mut total = init();
    for q0 in (0..nq).step_by(qb) {
        let qn = qb.min(nq - q0);
        let q = prepare_block(queries, q0, qn, config.distance)?;
        let q_norms = squared_norms(&q)?;
        for g0 in (0..ng).step_by(gb) {
            let gn = gb.min(ng - g0);
            let g = prepare_block(gallery, g0, gn, config.distance)?;
            let dots = q.matmul(&g.t()?)?;
            let block = with_values(&dots, |dots| {
                (0..qn)
                    .into_par_iter()
                    .fold(init, |mut acc, r| {
                        let qi = q0 + r;
                        for (c, &dot) in dots[r * gn..(r + 1) * gn].iter().enumerate() {
                            let gi = g0 + c;
                            if exclusion.excluded(qi, gi) {
                                continue;
                            }
                            let dist = match config.distance {
                                Distance::Euclidean => {
                                    (q_norms[r] + g_norms[gi] - 2.0 * dot).max(0.0).sqrt()
                                }
                                Distance::Cosine => (1.0 - dot).max(0.0),
                            };
                            visit(&mut acc, qi, gi, dist);
                        }
                        acc
                    })
                    .reduce_with(merge)
            })?;
            if let Some(block) = block {
                total = merge(total, block);
            }
        }
    }
    Ok(total)
}
