//! Exact nearest-neighbour search in blocks: queries in blocks, the gallery streamed in blocks,
//! distances by matrix products (candle), a running top-n per query. Memory is
//! `O(query_block x gallery_block + queries x top_n)`, never `O(queries x gallery)`.

use std::collections::BinaryHeap;

use candle_core::{DType, Tensor};
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
        let block: Vec<f32> =
            crate::host::read(&e.narrow(0, r0, rows)?, "retrieval: finite check")?;
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

/// One block of distances: query rows `q0..q0 + qn` against gallery rows `g0..g0 + gn`.
struct Block<'a> {
    q0: usize,
    g0: usize,
    gn: usize,
    distance: Distance,
    /// `q . g`, row-major `[qn, gn]`.
    dots: &'a [f32],
    q_norms: &'a [f32],
    g_norms: &'a [f32],
}

impl Block<'_> {
    /// The dot products of block row `r`.
    fn row(&self, r: usize) -> &[f32] {
        &self.dots[r * self.gn..(r + 1) * self.gn]
    }

    /// `(a, s, f)` with `key = a + s * |g|^2 - f * q.g` for block row `r`: the squared Euclidean
    /// distance, or `1 - cos` for normalised rows; ordered like the distance.
    fn key_params(&self, r: usize) -> (f32, f32, f32) {
        match self.distance {
            Distance::Euclidean => (self.q_norms[r], 1.0, 2.0),
            Distance::Cosine => (1.0, 0.0, 1.0),
        }
    }

    /// Squared norms of the gallery rows of the block.
    fn norms(&self) -> &[f32] {
        &self.g_norms[self.g0..self.g0 + self.gn]
    }
}

impl Distance {
    /// The distance of a key made by [`Block::key_params`].
    fn key_to_distance(self, key: f32) -> f32 {
        match self {
            Distance::Euclidean => key.max(0.0).sqrt(),
            Distance::Cosine => key.max(0.0),
        }
    }
}

/// Runs `visit` on every block of queries against every block of the gallery (queries in the
/// outer loop), distances by matrix products; cosine rows are normalised per block.
fn for_each_block(
    queries: &Tensor,
    gallery: &Tensor,
    config: &SearchConfig,
    visit: &mut dyn FnMut(&Block<'_>),
) -> Result<()> {
    let (nq, d) = queries.dims2()?;
    let (ng, d2) = gallery.dims2()?;
    if d != d2 {
        return Err(Error::Msg(format!(
            "queries have dimension {d} but the gallery has {d2}"
        )));
    }
    // Norms only matter for the Euclidean distance (cosine blocks are normalised).
    let g_norms: Vec<f32> = match config.distance {
        Distance::Euclidean => squared_norms(gallery)?,
        Distance::Cosine => vec![0.0; ng],
    };
    let qb = config.query_block.max(1);
    let gb = config.gallery_block.max(1);
    for q0 in (0..nq).step_by(qb) {
        let qn = qb.min(nq - q0);
        let q = prepare_block(queries, q0, qn, config.distance)?;
        let q_norms = squared_norms(&q)?;
        for g0 in (0..ng).step_by(gb) {
            let gn = gb.min(ng - g0);
            let g = prepare_block(gallery, g0, gn, config.distance)?;
            let dots = q.matmul(&g.t()?)?;
            with_values(&dots, |dots| {
                visit(&Block {
                    q0,
                    g0,
                    gn,
                    distance: config.distance,
                    dots,
                    q_norms: &q_norms,
                    g_norms: &g_norms,
                })
            })?;
        }
    }
    Ok(())
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
    let (nq, _) = queries.dims2()?;
    let (ng, _) = gallery.dims2()?;
    let top_n = config.top_n.min(ng);
    let mut heaps: Vec<BinaryHeap<Candidate>> = (0..nq)
        .map(|_| BinaryHeap::with_capacity(top_n + 1))
        .collect();
    if top_n > 0 {
        let worst = |heap: &BinaryHeap<Candidate>| {
            if heap.len() == top_n {
                heap.peek().map_or(f32::INFINITY, |w| w.0)
            } else {
                f32::INFINITY
            }
        };
        for_each_block(queries, gallery, config, &mut |block| {
            let rows = block.dots.len() / block.gn;
            heaps[block.q0..block.q0 + rows]
                .par_iter_mut()
                .enumerate()
                .for_each_init(Vec::new, |found, (r, heap)| {
                    // The optimised scan keeps what beats the row's current worst; the heap then
                    // tightens the bound as it goes.
                    found.clear();
                    let mut threshold = worst(heap);
                    oml_kernels::keys_below(
                        block.row(r),
                        block.norms(),
                        block.key_params(r),
                        threshold,
                        found,
                    );
                    for &(key, c) in found.iter() {
                        let c = c as usize;
                        // Later gallery items lose ties: strictly better only.
                        if key >= threshold || exclusion.excluded(block.q0 + r, block.g0 + c) {
                            continue;
                        }
                        heap.push(Candidate(key, block.g0 + c));
                        if heap.len() > top_n {
                            heap.pop();
                        }
                        threshold = worst(heap);
                    }
                })
        })?;
    }
    Ok(heaps
        .into_iter()
        .map(|heap| {
            let sorted = heap.into_sorted_vec();
            let dist = sorted
                .iter()
                .map(|c| config.distance.key_to_distance(c.0))
                .collect();
            (dist, sorted.iter().map(|c| c.1).collect())
        })
        .collect())
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
    let host: Vec<f32> = crate::host::read(&t, "retrieval: distances")?;
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
        out.extend(crate::host::read::<f32>(
            &block.sqr()?.sum(1)?,
            "retrieval: norms",
        )?);
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
    let mut total: Option<A> = None;
    for_each_block(queries, gallery, config, &mut |block| {
        let rows = block.dots.len() / block.gn;
        let folded = (0..rows)
            .into_par_iter()
            .fold(init, |mut acc, r| {
                let (a, s, f) = block.key_params(r);
                for (c, (&dot, &norm)) in block.row(r).iter().zip(block.norms()).enumerate() {
                    let (qi, gi) = (block.q0 + r, block.g0 + c);
                    if !exclusion.excluded(qi, gi) {
                        visit(
                            &mut acc,
                            qi,
                            gi,
                            block.distance.key_to_distance(a + s * norm - f * dot),
                        );
                    }
                }
                acc
            })
            .reduce_with(merge);
        if let Some(b) = folded {
            total = Some(match total.take() {
                Some(t) => merge(t, b),
                None => b,
            });
        }
    })?;
    Ok(total.unwrap_or_else(init))
}
