//! pytorch-metric-learning's (PML 2.9) most used miners: [`BatchHardMiner`],
//! [`BatchEasyHardMiner`], [`TripletMarginMiner`] and [`MultiSimilarityMiner`], with PML's
//! semantics (`tests/golden/pml_semantics.md`; golden values in `tests/golden/losses_pml.json`).
//!
//! A miner returns [`Indices`]: triplets `(a, p, n)` or pairs `(a1, p, a2, n)`, rows of the batch.
//! The pair losses of [`super::pml`] take either (triplets become pairs as in PML), and the three
//! triplet miners also plug into OML's [`super::TripletLossWithMiner`] (pairs become triplets as
//! in PML's `convert_to_triplets`).
//!
//! Distances: the triplet miners use PML's default `LpDistance` (Euclidean between L2-normalised
//! embeddings), `MultiSimilarityMiner` the cosine similarity. Ties go to the first index, as
//! torch's `min`/`max` along a row on the CPU.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::miners::{Sampled, TripletMiner, Triplets};
use super::pairwise_dist;
use crate::{Error, Result};

/// Positive pairs `(a1[i], p[i])` and negative pairs `(a2[j], n[j])`, rows of the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pairs {
    /// Anchors of the positive pairs.
    pub a1: Vec<usize>,
    /// Positives.
    pub p: Vec<usize>,
    /// Anchors of the negative pairs.
    pub a2: Vec<usize>,
    /// Negatives.
    pub n: Vec<usize>,
}

impl Pairs {
    /// Every positive pair (same label, not the row itself) and every negative pair, in
    /// row-major order (PML's `get_all_pairs_indices`).
    pub fn all(labels: &[i64]) -> Self {
        let mut out = Pairs::default();
        for (i, li) in labels.iter().enumerate() {
            for (j, lj) in labels.iter().enumerate() {
                if li == lj {
                    if i != j {
                        out.a1.push(i);
                        out.p.push(j);
                    }
                } else {
                    out.a2.push(i);
                    out.n.push(j);
                }
            }
        }
        out
    }

    /// Triplets from pairs sharing an anchor: for each positive pair, each negative pair with
    /// the same anchor (PML's `convert_to_triplets`).
    pub fn to_triplets(&self) -> Triplets {
        let mut t = Triplets::default();
        for (&a, &p) in self.a1.iter().zip(&self.p) {
            for (&a2, &n) in self.a2.iter().zip(&self.n) {
                if a2 == a {
                    t.anchors.push(a);
                    t.positives.push(p);
                    t.negatives.push(n);
                }
            }
        }
        t
    }
}

/// What a miner picks: triplets or pairs (PML's 3- and 4-tuples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indices {
    /// `(a, p, n)`.
    Triplets(Triplets),
    /// `(a1, p, a2, n)`.
    Pairs(Pairs),
}

impl Indices {
    /// As pairs: a triplet `(a, p, n)` gives the pairs `(a, p)` and `(a, n)` (PML's
    /// `convert_to_pairs`, duplicates kept).
    pub fn to_pairs(&self) -> Pairs {
        match self {
            Indices::Pairs(p) => p.clone(),
            Indices::Triplets(t) => Pairs {
                a1: t.anchors.clone(),
                p: t.positives.clone(),
                a2: t.anchors.clone(),
                n: t.negatives.clone(),
            },
        }
    }

    /// As triplets (PML's `convert_to_triplets`).
    pub fn to_triplets(&self) -> Triplets {
        match self {
            Indices::Triplets(t) => t.clone(),
            Indices::Pairs(p) => p.to_triplets(),
        }
    }

    /// Every row the indices name, with repeats (PML's `torch.cat(indices_tuple)`).
    pub(crate) fn all_rows(&self) -> Vec<usize> {
        match self {
            Indices::Triplets(t) => [&t.anchors[..], &t.positives, &t.negatives].concat(),
            Indices::Pairs(p) => [&p.a1[..], &p.p, &p.a2, &p.n].concat(),
        }
    }

    /// Whether nothing was picked.
    pub fn is_empty(&self) -> bool {
        self.all_rows().is_empty()
    }
}

/// A miner over a batch (PML's `BaseMiner`): indices of `features` `[B, D]` with `labels`.
pub trait PmlMiner: Send + Sync {
    /// The picked pairs or triplets.
    fn mine(&self, features: &Tensor, labels: &[i64]) -> Result<Indices>;
}

/// The batch size of `features` `[B, D]`, checked against the labels; an empty batch is refused.
pub(crate) fn check_batch(features: &Tensor, labels: &[i64]) -> Result<usize> {
    let (b, _) = features.dims2()?;
    if b != labels.len() {
        return Err(Error::Msg(format!(
            "{b} embeddings but {} labels",
            labels.len()
        )));
    }
    if b == 0 {
        return Err(Error::Msg("an empty batch: a loss needs embeddings".into()));
    }
    Ok(b)
}

/// Checks that a distance matrix is `[B, B]` for `B` labels.
fn check_square(mat: &[f32], labels: &[i64]) -> Result<usize> {
    let b = labels.len();
    if mat.len() != b * b {
        return Err(Error::Msg(format!(
            "a distance matrix of {} values for {b} labels (needs {})",
            mat.len(),
            b * b
        )));
    }
    Ok(b)
}

/// Rows divided by their L2 norm (at least 1e-12), as torch's `F.normalize`.
pub(crate) fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = super::safe_sqrt(&x.sqr()?.sum_keepdim(1)?)?.clamp(1e-12f32, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// PML's `LpDistance()`: Euclidean distances `[B, B]` between the normalised rows (torch's
/// `cdist`, see [`pairwise_dist`]).
pub fn lp_distance(features: &Tensor) -> Result<Tensor> {
    let x = l2_normalise(&features.to_dtype(candle_core::DType::F32)?)?;
    pairwise_dist(&x, &x)
}

/// PML's `CosineSimilarity()`: `[B, B]` dot products of the normalised rows.
pub fn cosine_similarity(features: &Tensor) -> Result<Tensor> {
    let x = l2_normalise(&features.to_dtype(candle_core::DType::F32)?)?;
    Ok(x.matmul(&x.t()?)?)
}

/// PML's miners select on the host: the `[B, B]` matrix is read there (`site` names the miner).
fn to_host(mat: &Tensor, site: &'static str) -> Result<Vec<f32>> {
    crate::host::read(&mat.detach(), site)
}

/// How [`BatchEasyHardMiner`] picks the positive or the negative of each anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The farthest positive, the closest negative.
    Hard,
    /// The farthest positive closer than the chosen negative, or the closest negative farther
    /// than the chosen positive.
    Semihard,
    /// The closest positive, the farthest negative.
    Easy,
    /// Every pair.
    All,
}

/// PML's `BatchEasyHardMiner(pos_strategy, neg_strategy, allowed_pos_range, allowed_neg_range)`
/// (defaults: easy positives, semi-hard negatives) on `LpDistance`. Returns pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchEasyHardMiner {
    pos_strategy: Strategy,
    neg_strategy: Strategy,
    allowed_pos_range: Option<(f64, f64)>,
    allowed_neg_range: Option<(f64, f64)>,
}

impl Default for BatchEasyHardMiner {
    fn default() -> Self {
        BatchEasyHardMiner {
            pos_strategy: Strategy::Easy,
            neg_strategy: Strategy::Semihard,
            allowed_pos_range: None,
            allowed_neg_range: None,
        }
    }
}

/// One row's pick: the value, its column, and whether any column was allowed.
#[derive(Clone, Copy)]
struct Pick {
    value: f32,
    col: usize,
    keep: bool,
}

impl BatchEasyHardMiner {
    /// A miner; refuses PML's refused combinations (both semi-hard; semi-hard with all).
    pub fn new(
        pos_strategy: Strategy,
        neg_strategy: Strategy,
        allowed_pos_range: Option<(f64, f64)>,
        allowed_neg_range: Option<(f64, f64)>,
    ) -> Result<Self> {
        use Strategy::*;
        if pos_strategy == Semihard && neg_strategy == Semihard {
            return Err(Error::Msg(
                "pos_strategy and neg_strategy cannot both be `semihard`".into(),
            ));
        }
        if (pos_strategy == All && neg_strategy == Semihard)
            || (neg_strategy == All && pos_strategy == Semihard)
        {
            return Err(Error::Msg(
                "`semihard` cannot be used in combination with `all`".into(),
            ));
        }
        for (key, range) in [
            ("allowed_pos_range", allowed_pos_range),
            ("allowed_neg_range", allowed_neg_range),
        ] {
            if let Some((lo, hi)) = range
                && (lo > hi || lo.is_nan() || hi.is_nan())
            {
                return Err(Error::param(key, format!("[{lo}, {hi}]"), "lo <= hi"));
            }
        }
        Ok(BatchEasyHardMiner {
            pos_strategy,
            neg_strategy,
            allowed_pos_range,
            allowed_neg_range,
        })
    }

    /// The smallest (`min`) or largest value of each row among the allowed columns: the pair
    /// mask, the value range, and the semi-hard thresholds (PML's `get_x_per_row`). A row with
    /// none keeps the sentinel `f32::MAX` / `f32::MIN` and column 0, and `keep` false.
    fn per_row(
        min: bool,
        mat: &[f32],
        b: usize,
        pair: &dyn Fn(usize, usize) -> bool,
        range: Option<(f64, f64)>,
        thresholds: Option<&[Pick]>,
    ) -> Vec<Pick> {
        let sentinel = if min { f32::MAX } else { f32::MIN };
        (0..b)
            .map(|i| {
                let mut best = Pick {
                    value: sentinel,
                    col: 0,
                    keep: false,
                };
                for j in 0..b {
                    let v = mat[i * b + j];
                    if !pair(i, j) {
                        continue;
                    }
                    if let Some(t) = thresholds {
                        let t = t[i].value;
                        if (min && v <= t) || (!min && v >= t) {
                            continue;
                        }
                    }
                    if let Some((lo, hi)) = range
                        && (v > hi as f32 || v < lo as f32)
                    {
                        continue;
                    }
                    let better = if min { v < best.value } else { v > best.value };
                    if !best.keep || better {
                        best = Pick {
                            value: v,
                            col: j,
                            keep: true,
                        };
                    }
                }
                best
            })
            .collect()
    }

    /// The pairs from a row-major `[B, B]` distance matrix.
    pub fn mine_matrix(&self, mat: &[f32], labels: &[i64]) -> Result<Pairs> {
        use Strategy::*;
        let b = check_square(mat, labels)?;
        let is_pos = |i: usize, j: usize| i != j && labels[i] == labels[j];
        let is_neg = |i: usize, j: usize| labels[i] != labels[j];
        // Positives: hard/semihard = farthest, easy = closest. Negatives: hard/semihard =
        // closest, easy = farthest.
        let pos_min = self.pos_strategy == Easy;
        let neg_min = self.neg_strategy != Easy;
        let positives = |th: Option<&[Pick]>| {
            Self::per_row(pos_min, mat, b, &is_pos, self.allowed_pos_range, th)
        };
        let negatives = |th: Option<&[Pick]>| {
            Self::per_row(neg_min, mat, b, &is_neg, self.allowed_neg_range, th)
        };
        let (pos, neg) = if self.pos_strategy == Semihard && self.neg_strategy != All {
            let neg = negatives(None);
            (Some(positives(Some(&neg))), Some(neg))
        } else if self.neg_strategy == Semihard && self.pos_strategy != All {
            let pos = positives(None);
            let neg = negatives(Some(&pos));
            (Some(pos), Some(neg))
        } else {
            (
                (self.pos_strategy != All).then(|| positives(None)),
                (self.neg_strategy != All).then(|| negatives(None)),
            )
        };
        let all = Pairs::all(labels);
        let mut out = Pairs::default();
        match (pos, neg) {
            (Some(pos), Some(neg)) => {
                for a in 0..b {
                    if pos[a].keep && neg[a].keep {
                        out.a1.push(a);
                        out.p.push(pos[a].col);
                        out.a2.push(a);
                        out.n.push(neg[a].col);
                    }
                }
            }
            (None, Some(neg)) => {
                out.a1 = all.a1;
                out.p = all.p;
                for (a, pick) in neg.iter().enumerate().filter(|(_, p)| p.keep) {
                    out.a2.push(a);
                    out.n.push(pick.col);
                }
            }
            (Some(pos), None) => {
                for (a, pick) in pos.iter().enumerate().filter(|(_, p)| p.keep) {
                    out.a1.push(a);
                    out.p.push(pick.col);
                }
                out.a2 = all.a2;
                out.n = all.n;
            }
            (None, None) => out = all,
        }
        Ok(out)
    }
}

impl PmlMiner for BatchEasyHardMiner {
    fn mine(&self, features: &Tensor, labels: &[i64]) -> Result<Indices> {
        check_batch(features, labels)?;
        let mat = to_host(
            &lp_distance(&features.detach())?,
            "miner: distances (PML batch-easy-hard)",
        )?;
        Ok(Indices::Pairs(self.mine_matrix(&mat, labels)?))
    }
}

/// PML's `BatchHardMiner()`: for every anchor with a positive and a negative, the farthest
/// positive and the closest negative (`LpDistance`). Returns triplets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchHardMiner;

impl BatchHardMiner {
    /// The triplets from a row-major `[B, B]` distance matrix.
    pub fn mine_matrix(&self, mat: &[f32], labels: &[i64]) -> Result<Triplets> {
        let inner = BatchEasyHardMiner {
            pos_strategy: Strategy::Hard,
            neg_strategy: Strategy::Hard,
            allowed_pos_range: None,
            allowed_neg_range: None,
        };
        let pairs = inner.mine_matrix(mat, labels)?;
        Ok(Triplets {
            anchors: pairs.a1,
            positives: pairs.p,
            negatives: pairs.n,
        })
    }
}

impl PmlMiner for BatchHardMiner {
    fn mine(&self, features: &Tensor, labels: &[i64]) -> Result<Indices> {
        check_batch(features, labels)?;
        let mat = to_host(
            &lp_distance(&features.detach())?,
            "miner: distances (PML batch-hard)",
        )?;
        Ok(Indices::Triplets(self.mine_matrix(&mat, labels)?))
    }
}

/// Which triplets [`TripletMarginMiner`] keeps, by `m = d(a, n) - d(a, p)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripletType {
    /// `m <= margin`.
    #[default]
    All,
    /// `m <= margin` and `m <= 0` (a tie counts as hard).
    Hard,
    /// `0 < m <= margin`.
    Semihard,
    /// `m > margin`.
    Easy,
}

/// PML's `TripletMarginMiner(margin, type_of_triplets)` on `LpDistance`: the triplets, of all
/// `(a, p, n)` in lexicographic order, whose margin `d(a, n) - d(a, p)` passes the type's test.
#[derive(Debug, Clone, PartialEq)]
pub struct TripletMarginMiner {
    /// The margin (PML's default 0.2).
    pub margin: f64,
    /// Which triplets.
    pub type_of_triplets: TripletType,
}

impl Default for TripletMarginMiner {
    fn default() -> Self {
        TripletMarginMiner {
            margin: 0.2,
            type_of_triplets: TripletType::All,
        }
    }
}

impl TripletMarginMiner {
    /// The triplets from a row-major `[B, B]` distance matrix.
    pub fn mine_matrix(&self, mat: &[f32], labels: &[i64]) -> Result<Triplets> {
        let b = check_square(mat, labels)?;
        let margin = self.margin as f32;
        let mut t = Triplets::default();
        for a in 0..b {
            for p in 0..b {
                if p == a || labels[p] != labels[a] {
                    continue;
                }
                for n in 0..b {
                    if labels[n] == labels[a] {
                        continue;
                    }
                    let m = mat[a * b + n] - mat[a * b + p];
                    let keep = match self.type_of_triplets {
                        TripletType::Easy => m > margin,
                        TripletType::All => m <= margin,
                        TripletType::Hard => m <= margin && m <= 0.0,
                        TripletType::Semihard => m <= margin && m > 0.0,
                    };
                    if keep {
                        t.anchors.push(a);
                        t.positives.push(p);
                        t.negatives.push(n);
                    }
                }
            }
        }
        Ok(t)
    }
}

impl PmlMiner for TripletMarginMiner {
    fn mine(&self, features: &Tensor, labels: &[i64]) -> Result<Indices> {
        check_batch(features, labels)?;
        let mat = to_host(
            &lp_distance(&features.detach())?,
            "miner: distances (PML triplet-margin)",
        )?;
        Ok(Indices::Triplets(self.mine_matrix(&mat, labels)?))
    }
}

/// PML's `MultiSimilarityMiner(epsilon)` on cosine similarity: positives less similar than the
/// anchor's most similar negative plus `epsilon`, and negatives more similar than its least
/// similar positive minus `epsilon`; each anchor's picks in increasing similarity. Returns pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiSimilarityMiner {
    /// The slack (PML's default 0.1).
    pub epsilon: f64,
}

impl Default for MultiSimilarityMiner {
    fn default() -> Self {
        MultiSimilarityMiner { epsilon: 0.1 }
    }
}

impl MultiSimilarityMiner {
    /// The pairs from a row-major `[B, B]` similarity matrix.
    pub fn mine_matrix(&self, sim: &[f32], labels: &[i64]) -> Result<Pairs> {
        let b = check_square(sim, labels)?;
        let all = Pairs::all(labels);
        let mut out = Pairs::default();
        if all.a1.is_empty() || all.a2.is_empty() {
            return Ok(out);
        }
        let eps = self.epsilon as f32;
        for a in 0..b {
            let row = &sim[a * b..(a + 1) * b];
            let mut pos: Vec<usize> = (0..b)
                .filter(|&j| j != a && labels[j] == labels[a])
                .collect();
            let mut neg: Vec<usize> = (0..b).filter(|&j| labels[j] != labels[a]).collect();
            pos.sort_by(|&x, &y| row[x].total_cmp(&row[y]));
            neg.sort_by(|&x, &y| row[x].total_cmp(&row[y]));
            let max_neg = neg.last().map_or(f32::MIN, |&j| row[j]);
            let min_pos = pos.first().map_or(f32::MAX, |&j| row[j]);
            for &j in &pos {
                if row[j] - eps < max_neg {
                    out.a1.push(a);
                    out.p.push(j);
                }
            }
            for &j in &neg {
                if row[j] + eps > min_pos {
                    out.a2.push(a);
                    out.n.push(j);
                }
            }
        }
        Ok(out)
    }
}

impl PmlMiner for MultiSimilarityMiner {
    fn mine(&self, features: &Tensor, labels: &[i64]) -> Result<Indices> {
        check_batch(features, labels)?;
        let sim = to_host(
            &cosine_similarity(&features.detach())?,
            "miner: similarities (PML multi-similarity)",
        )?;
        Ok(Indices::Pairs(self.mine_matrix(&sim, labels)?))
    }
}

/// A PML miner as a triplet miner for OML's triplet loss: its indices as triplets (PML's
/// `convert_to_triplets`), the rows gathered from the batch. An empty pick gives no triplets
/// (the loss is then 0, as PML's).
pub struct PmlAsTripletMiner(pub Box<dyn PmlMiner>);

impl TripletMiner for PmlAsTripletMiner {
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        self.0
            .mine(features, labels)?
            .to_triplets()
            .sampled(features)
    }
}

/// OML's index miners (all, hard, n-hard triplets) for PML's losses: OML's label check and
/// distances, then its triplets.
pub struct OmlIndexMiner(pub Box<dyn super::miners::IndexMiner>);

impl PmlMiner for OmlIndexMiner {
    fn mine(&self, features: &Tensor, labels: &[i64]) -> Result<Indices> {
        check_batch(features, labels)?;
        super::check_triplet_labels(labels)?;
        let dist = super::miners::distance_matrix(features, "miner: distances (OML index miner)")?;
        Ok(Indices::Triplets(self.0.mine(&dist, labels, None)?))
    }
}
