//! Losses and miners with OML 4.0's semantics (`tests/golden/loss_semantics.md` lists every
//! formula and edge case; `tests/golden/losses_oml.json` holds Python OML's values and gradients).
//!
//! - [`TripletLoss`], [`TripletLossPlain`], [`TripletLossWithMiner`] (non-squared L2 distances,
//!   a margin or the soft `log1p(exp(d_ap - d_an))`);
//! - miners ([`miners`]): all, hard, n-hard, hard-cluster, with a memory bank;
//! - [`ArcFaceLoss`] (margin, scale, label smoothing, category-aware smoothing),
//!   [`ArcFaceLossWithMLP`];
//! - [`SurrogatePrecision`];
//! - pytorch-metric-learning's most used losses and miners, with PML 2.9's semantics ([`pml`],
//!   [`pml_miners`]): contrastive, multi-similarity, SupCon, NT-Xent, Proxy-Anchor, CosFace,
//!   sub-center ArcFace; batch-hard, batch-easy-hard, triplet-margin, multi-similarity miners.
//!
//! Every loss returns a [`LossOutput`]: the scalar to minimise and OML's logs.

pub mod arcface;
pub mod config;
pub mod miners;
pub mod pml;
pub mod pml_miners;
pub mod surrogate;
pub mod triplet;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub use arcface::{ArcFaceLoss, ArcFaceLossWithMLP, label_smoothing};
pub use config::{CriterionConfig, CriterionContext, MinerConfig};
pub use miners::{
    AllTripletsMiner, HardClusterMiner, HardTripletsMiner, MinerWithBank, NHardTripletsMiner,
    NRange, TripletMiner, TripletMinerWithMemory, Triplets,
};
pub use pml::{
    ContrastiveLoss, CosFaceLoss, MultiSimilarityLoss, NTXentLoss, ProxyAnchorLoss,
    SubCenterArcFaceLoss, SupConLoss, TakesMiner,
};
pub use pml_miners::{
    BatchEasyHardMiner, BatchHardMiner, Indices, MultiSimilarityMiner, Pairs, PmlMiner, Strategy,
    TripletMarginMiner, TripletType,
};
pub use surrogate::SurrogatePrecision;
pub use triplet::{TripletLoss, TripletLossPlain, TripletLossWithMiner};

use crate::{Error, Result};

/// How per-item losses become the loss (OML's `reduction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// The mean (NaN for no items, as torch).
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// The per-item vector.
    None,
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            other => Err(Error::UnknownName {
                kind: "reduction",
                name: other.to_owned(),
                known: vec!["mean".into(), "sum".into(), "none".into()],
            }),
        }
    }
}

pub(crate) fn reduce(t: &Tensor, reduction: Reduction) -> Result<Tensor> {
    Ok(match reduction {
        Reduction::Mean => {
            let n = t.elem_count();
            if n == 0 {
                Tensor::new(f32::NAN, t.device())?
            } else {
                t.sum_all()?.affine(1.0 / n as f64, 0.0)?
            }
        }
        Reduction::Sum => t.sum_all()?,
        Reduction::None => t.clone(),
    })
}

/// A loss value and what OML logs with it.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The value to minimise (a scalar unless the reduction is `None`).
    pub loss: Tensor,
    /// OML's logs known on the host (counts of mined triplets and pairs, ...).
    pub logs: BTreeMap<String, f64>,
    /// OML's logs computed from tensors (`active_tri`, `pos_dist`, `neg_dist`, `accuracy`, ...),
    /// still scalars on the loss's device: the trainer reads them with the loss, in one copy per
    /// step; [`LossOutput::read_logs`] reads them at once.
    pub device_logs: BTreeMap<String, Tensor>,
}

impl LossOutput {
    /// A loss with host logs only.
    pub fn new(loss: Tensor, logs: BTreeMap<String, f64>) -> Self {
        LossOutput {
            loss,
            logs,
            device_logs: BTreeMap::new(),
        }
    }

    /// Every log as a number (the device's in one copy).
    pub fn read_logs(&self) -> Result<BTreeMap<String, f64>> {
        merged_logs(&self.logs, &self.device_logs, "loss: logs")
    }
}

/// Host logs with device logs read in (one copy, named `site`).
pub(crate) fn merged_logs(
    host: &BTreeMap<String, f64>,
    device: &BTreeMap<String, Tensor>,
    site: &'static str,
) -> Result<BTreeMap<String, f64>> {
    let values: Vec<Tensor> = device.values().cloned().collect();
    let read = crate::host::scalars(&values, site)?;
    let mut out = host.clone();
    out.extend(device.keys().cloned().zip(read));
    Ok(out)
}

/// What a loss or a miner keeps between batches (memory banks, counters, generator positions,
/// accumulated logs), saved with a trainer's state so that a resumed run goes on exactly as an
/// uninterrupted one.
#[derive(Debug, Clone, Default)]
pub struct LossState {
    /// Tensors by name (bank features).
    pub tensors: std::collections::HashMap<String, Tensor>,
    /// Everything else, as JSON (`null` when there is nothing).
    pub values: serde_json::Value,
}

impl LossState {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.values.is_null()
    }

    /// The value `key` of [`LossState::values`] as `T`, or an error naming it.
    pub(crate) fn value<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        let v = self
            .values
            .get(key)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v)
            .map_err(|e| Error::Msg(format!("loss state: `{key}` is missing or malformed: {e}")))
    }
}

/// A loss on a batch of embeddings and their labels (what the trainer calls).
pub trait Criterion: Send + Sync {
    /// The loss of `features` `[B, D]` with `labels` (one per row).
    fn forward(&self, features: &Tensor, labels: &[i64]) -> Result<LossOutput>;

    /// What the loss keeps between batches besides its parameters (none by default).
    fn state(&self) -> Result<LossState> {
        Ok(LossState::default())
    }

    /// Restores what [`Criterion::state`] returned.
    fn load_state(&self, _state: &LossState) -> Result<()> {
        Ok(())
    }
}

/// Euclidean distances `[N]` between rows of `a` and `b` (`[N, D]`), with a zero gradient where a
/// distance is exactly 0 (as torch's `cdist`, instead of sqrt's infinite slope).
pub fn elementwise_dist(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let sq = (a - b)?.sqr()?.sum(candle_core::D::Minus1)?;
    safe_sqrt(&sq)
}

/// Euclidean distance matrix `[N, M]` between the rows of `a` `[N, D]` and `b` `[M, D]`, as torch's
/// `cdist`: the direct form `sqrt(sum((a - b)^2))` when both sides have at most 25 rows, the
/// matrix-product form `sqrt(max(|a|^2 + |b|^2 - 2ab, 0))` above (torch's switch, which makes the
/// diagonal slightly non-zero).
pub fn pairwise_dist(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, _) = a.dims2()?;
    let (m, _) = b.dims2()?;
    let sq = if n <= 25 && m <= 25 {
        a.unsqueeze(1)?
            .broadcast_sub(&b.unsqueeze(0)?)?
            .sqr()?
            .sum(candle_core::D::Minus1)?
    } else {
        let a2 = a.sqr()?.sum_keepdim(1)?;
        let b2 = b.sqr()?.sum_keepdim(1)?.t()?;
        let ab = a.matmul(&b.t()?)?;
        a2.broadcast_add(&b2)?.sub(&(ab * 2.0)?)?.relu()?
    };
    safe_sqrt(&sq)
}

/// `sqrt` with a zero gradient at 0.
pub(crate) fn safe_sqrt(sq: &Tensor) -> Result<Tensor> {
    let positive = sq.gt(0.0)?;
    let safe = positive.where_cond(sq, &sq.ones_like()?)?;
    Ok(positive.where_cond(&safe.sqrt()?, &sq.zeros_like()?)?)
}

/// The share of rows of `scores` `[B, C]` whose largest entry is their class (the logs'
/// `accuracy` of the classification losses), as an `f64` scalar on the scores' device.
pub(crate) fn accuracy(scores: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let dev = scores.device();
    if classes.is_empty() {
        return Ok(Tensor::new(0f64, dev)?);
    }
    let pred = scores.detach().argmax(1)?;
    let classes: Vec<u32> = classes.iter().map(|&c| c as u32).collect();
    let classes = Tensor::new(classes.as_slice(), dev)?;
    Ok(pred.eq(&classes)?.to_dtype(DType::F64)?.mean_all()?)
}

/// The index of the largest entry along the last dimension of `x` (kept as a dimension of 1,
/// `u32`), the first one on ties, computed on `x`'s device.
pub(crate) fn first_argmax_keepdim(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    let top = x.max_keepdim(candle_core::D::Minus1)?;
    let is_top = x.broadcast_eq(&top)?;
    let idx = Tensor::arange(0u32, n as u32, x.device())?.broadcast_as(x.shape())?;
    // A row with no maximum (NaN) gets the last index, so that gathers stay in range.
    let none = Tensor::full(n.saturating_sub(1) as u32, x.shape(), x.device())?;
    Ok(is_top
        .where_cond(&idx, &none)?
        .min_keepdim(candle_core::D::Minus1)?)
}

/// The mean of a tensor as an `f64` scalar on its device (NaN when empty), for logs; detached,
/// so that a kept log does not keep the step's graph.
pub(crate) fn mean_f64(t: &Tensor) -> Result<Tensor> {
    if t.elem_count() == 0 {
        return Ok(Tensor::new(f64::NAN, t.device())?);
    }
    Ok(t.detach().to_dtype(DType::F64)?.mean_all()?)
}

/// Checks that a batch can give triplets: at least two labels, each with at least two
/// instances (OML's `_check_input_labels`).
pub(crate) fn check_triplet_labels(labels: &[i64]) -> Result<()> {
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for &l in labels {
        *counts.entry(l).or_default() += 1;
    }
    if counts.len() < 2 {
        return Err(Error::Msg(format!(
            "a triplet batch needs at least 2 labels; got {} (use a BalanceSampler with n_labels >= 2)",
            counts.len()
        )));
    }
    if let Some((l, _)) = counts.iter().find(|(_, c)| **c < 2) {
        return Err(Error::Msg(format!(
            "label {l} has one instance in the batch; triplets need at least 2 per label \
             (a BalanceSampler with n_instances >= 2 gives that)"
        )));
    }
    Ok(())
}
