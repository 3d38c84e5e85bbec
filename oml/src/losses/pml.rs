//! pytorch-metric-learning's (PML 2.9) most used losses, with PML's semantics and names:
//! [`ContrastiveLoss`], [`MultiSimilarityLoss`], [`SupConLoss`], [`NTXentLoss`] (pair losses,
//! which take a miner's [`Indices`] or every pair of the batch), and [`ProxyAnchorLoss`],
//! [`CosFaceLoss`], [`SubCenterArcFaceLoss`] (losses with trainable class parameters, which a
//! miner weights per sample as PML's `convert_to_weights` does).
//!
//! Each formula, reducer and edge case is written up in `tests/golden/pml_semantics.md`;
//! `tests/golden/losses_pml.json` holds PML's values and gradients (made by
//! `tests/golden/make_pml_fixtures.py`). Deliberate differences:
//! - `SubCenterArcFaceLoss` computes `cos(theta + m)` as `cos m cos theta - sin m sin theta` with
//!   `sin theta = sqrt(max(1 - cos^2, 1e-12))` (candle has no `acos`); the value is the same, and
//!   an embedding parallel to a centre gets a finite gradient where PML's is infinite.
//! - A zero embedding gets a zero gradient through the normalisation (torch's is NaN-free too).

use std::collections::BTreeMap;

use candle_core::{D, DType, Tensor};
use candle_nn::{Init, VarBuilder};

use super::pml_miners::{
    Indices, Pairs, PmlMiner, check_batch, cosine_similarity, l2_normalise, lp_distance,
};
use super::{Criterion, LossOutput, accuracy};
use crate::{Error, Result};

/// PML's `small_val` (the smallest normal f32).
const TINY: f32 = f32::MIN_POSITIVE;

/// PML's zero loss: `sum(embeddings * 0)` (a zero that keeps the graph).
fn zero_loss(features: &Tensor) -> Result<Tensor> {
    Ok((features.to_dtype(DType::F32)? * 0.0)?.sum_all()?)
}

/// The entries `(rows[i], cols[i])` of the `[B, C]` matrix `mat`.
fn gather(mat: &Tensor, rows: &[usize], cols: &[usize]) -> Result<Tensor> {
    let (_, c) = mat.dims2()?;
    let ids: Vec<u32> = rows
        .iter()
        .zip(cols)
        .map(|(&r, &k)| (r * c + k) as u32)
        .collect();
    let ids = Tensor::new(ids.as_slice(), mat.device())?;
    Ok(mat.flatten_all()?.index_select(&ids, 0)?)
}

/// A 0/1 `u8` mask tensor `[r, c]` from row-major booleans.
fn mask_tensor(mask: &[bool], r: usize, c: usize, like: &Tensor) -> Result<Tensor> {
    let data: Vec<u8> = mask.iter().map(|&m| u8::from(m)).collect();
    Ok(Tensor::from_vec(data, (r, c), like.device())?)
}

/// `log(sum_j exp(x_ij))` over the masked entries of each row of `x` `[r, c]` (and a zero entry
/// with `add_one`); 0 for a row with no masked entry (PML's `lmu.logsumexp` along dim 1).
fn masked_logsumexp(x: &Tensor, mask: &[bool], add_one: bool) -> Result<Tensor> {
    let (r, c) = x.dims2()?;
    let m = mask_tensor(mask, r, c, x)?;
    let low = Tensor::full(-1e30f32, (r, c), x.device())?;
    let filled = m.where_cond(x, &low)?;
    let mut top = filled.max_keepdim(1)?.detach();
    if add_one {
        top = top.maximum(0f32)?;
    }
    let mut sum = filled.broadcast_sub(&top)?.exp()?.sum_keepdim(1)?;
    if add_one {
        sum = (sum + top.neg()?.exp()?)?;
    }
    let out = (sum.log()? + &top)?.squeeze(1)?;
    let any: Vec<u8> = mask
        .chunks(c.max(1))
        .map(|row| u8::from(row.iter().any(|&v| v)))
        .collect();
    let any = Tensor::from_vec(any, r, x.device())?;
    Ok(any.where_cond(&out, &out.zeros_like()?)?)
}

/// PML's `AvgNonZeroReducer`: the mean of the strictly positive entries of `losses` `[N]`, or
/// the zero loss when there are none.
/// Computed on the device: the other entries (NaN too, as PML's `losses[losses > 0]`) are
/// selected away, so with no positive entry the sum is 0 over a count of 1, a zero with a zero
/// gradient.
fn avg_non_zero(losses: &Tensor) -> Result<Tensor> {
    let keep = losses.detach().gt(0.0)?;
    let count = keep.to_dtype(losses.dtype())?.sum_all()?.maximum(1.0)?;
    let kept = keep.where_cond(losses, &losses.zeros_like()?)?;
    Ok(kept.sum_all()?.div(&count)?)
}

fn mean(losses: &Tensor) -> Result<Tensor> {
    let n = losses.elem_count();
    Ok((losses.sum_all()? / n.max(1) as f64)?)
}

/// The pairs of `indices`, or every pair of the batch (PML's `convert_to_pairs`).
fn pairs_of(indices: Option<&Indices>, labels: &[i64]) -> Pairs {
    indices.map_or_else(|| Pairs::all(labels), Indices::to_pairs)
}

/// A pair loss's batch size, pairs (of `indices`, or every pair) and logs, checked.
fn batch_pairs(
    features: &Tensor,
    labels: &[i64],
    indices: Option<&Indices>,
) -> Result<(usize, Pairs, BTreeMap<String, f64>)> {
    let b = check_batch(features, labels)?;
    check_indices(indices, b)?;
    let pairs = pairs_of(indices, labels);
    let logs = pair_logs(&pairs);
    Ok((b, pairs, logs))
}

/// PML's zero loss with `logs`.
fn zero_output(features: &Tensor, logs: BTreeMap<String, f64>) -> Result<LossOutput> {
    Ok(LossOutput::new(zero_loss(features)?, logs))
}

/// PML's early exit in `GenericPairLoss`: at most one positive and one negative pair.
fn too_few(p: &Pairs) -> bool {
    p.a1.len() <= 1 && p.a2.len() <= 1
}

fn pair_logs(p: &Pairs) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("pos_pairs".to_owned(), p.a1.len() as f64),
        ("neg_pairs".to_owned(), p.a2.len() as f64),
    ])
}

/// Positive and negative masks `[B, B]` (row-major) of `pairs`, refused where they overlap.
fn pair_masks(p: &Pairs, b: usize) -> Result<(Vec<bool>, Vec<bool>)> {
    let mut pos = vec![false; b * b];
    let mut neg = vec![false; b * b];
    for (&a, &j) in p.a1.iter().zip(&p.p) {
        pos[a * b + j] = true;
    }
    for (&a, &j) in p.a2.iter().zip(&p.n) {
        neg[a * b + j] = true;
    }
    if pos.iter().zip(&neg).any(|(x, y)| *x && *y) {
        return Err(Error::Msg(
            "each pair should be either positive or negative, not both".into(),
        ));
    }
    Ok((pos, neg))
}

fn check_indices(indices: Option<&Indices>, b: usize) -> Result<()> {
    if let Some(ix) = indices
        && let Some(&r) = ix.all_rows().iter().find(|&&r| r >= b)
    {
        return Err(Error::Msg(format!(
            "the miner named row {r}, beyond the batch of {b}"
        )));
    }
    Ok(())
}

/// A PML loss that takes a miner: its pairs, or weights for its samples (PML's `indices_tuple`).
pub trait TakesMiner: Criterion + Sized + 'static {
    /// The loss with `miner`.
    fn with_miner(self, miner: Box<dyn PmlMiner>) -> Self;

    /// The loss as a criterion, with `miner` when given.
    fn boxed_with(self, miner: Option<Box<dyn PmlMiner>>) -> Box<dyn Criterion> {
        match miner {
            Some(m) => Box::new(self.with_miner(m)),
            None => Box::new(self),
        }
    }
}

macro_rules! miner_criterion {
    ($t:ty) => {
        impl TakesMiner for $t {
            fn with_miner(mut self, miner: Box<dyn PmlMiner>) -> Self {
                self.miner = Some(miner);
                self
            }
        }

        impl Criterion for $t {
            fn forward(&self, features: &Tensor, labels: &[i64]) -> Result<LossOutput> {
                let indices = match &self.miner {
                    Some(m) => Some(m.mine(features, labels)?),
                    None => None,
                };
                self.forward_indices(features, labels, indices.as_ref())
            }
        }
    };
}

/// PML's `ContrastiveLoss(pos_margin, neg_margin)` on `LpDistance`: `relu(d - pos_margin)` over
/// positive pairs and `relu(neg_margin - d)` over negative pairs, each averaged over its
/// non-zero terms, then added.
pub struct ContrastiveLoss {
    /// Positive pairs closer than this cost nothing (PML's default 0).
    pub pos_margin: f64,
    /// Negative pairs farther than this cost nothing (PML's default 1).
    pub neg_margin: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl ContrastiveLoss {
    /// The loss over every pair of a batch; the margins must be finite.
    pub fn new(pos_margin: f64, neg_margin: f64) -> Result<Self> {
        check_finite("pos_margin", pos_margin)?;
        check_finite("neg_margin", neg_margin)?;
        Ok(ContrastiveLoss {
            pos_margin,
            neg_margin,
            miner: None,
        })
    }

    /// The loss over the pairs of `indices` (every pair when `None`).
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let (_, pairs, logs) = batch_pairs(features, labels, indices)?;
        if too_few(&pairs) {
            return zero_output(features, logs);
        }
        let dist = lp_distance(features)?;
        let mut total = zero_loss(features)?;
        if !pairs.a1.is_empty() {
            let d = gather(&dist, &pairs.a1, &pairs.p)?;
            total = (total + avg_non_zero(&(d - self.pos_margin)?.relu()?)?)?;
        }
        if !pairs.a2.is_empty() {
            let d = gather(&dist, &pairs.a2, &pairs.n)?;
            total = (total + avg_non_zero(&(d.neg()? + self.neg_margin)?.relu()?)?)?;
        }
        Ok(LossOutput::new(total, logs))
    }
}
miner_criterion!(ContrastiveLoss);

/// PML's `MultiSimilarityLoss(alpha, beta, base)` on cosine similarity: per anchor,
/// `log(1 + sum_pos exp(-alpha (s - base))) / alpha + log(1 + sum_neg exp(beta (s - base))) /
/// beta`, averaged over the batch.
pub struct MultiSimilarityLoss {
    /// Weight of positive pairs (PML's default 2).
    pub alpha: f64,
    /// Weight of negative pairs (50).
    pub beta: f64,
    /// Similarity offset (0.5).
    pub base: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl MultiSimilarityLoss {
    /// The loss over every pair of a batch; `alpha`, `beta` > 0.
    pub fn new(alpha: f64, beta: f64, base: f64) -> Result<Self> {
        check_positive("alpha", alpha)?;
        check_positive("beta", beta)?;
        check_finite("base", base)?;
        Ok(MultiSimilarityLoss {
            alpha,
            beta,
            base,
            miner: None,
        })
    }

    /// The loss over the pairs of `indices` (every pair when `None`).
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let (b, pairs, logs) = batch_pairs(features, labels, indices)?;
        if too_few(&pairs) {
            return zero_output(features, logs);
        }
        let (pos, neg) = pair_masks(&pairs, b)?;
        let sim = cosine_similarity(features)?;
        let pos_exp = ((sim.neg()? + self.base)? * self.alpha)?;
        let neg_exp = ((&sim - self.base)? * self.beta)?;
        let pos_loss = (masked_logsumexp(&pos_exp, &pos, true)? * (1.0 / self.alpha))?;
        let neg_loss = (masked_logsumexp(&neg_exp, &neg, true)? * (1.0 / self.beta))?;
        Ok(LossOutput::new(mean(&(pos_loss + neg_loss)?)?, logs))
    }
}
miner_criterion!(MultiSimilarityLoss);

/// PML's `SupConLoss(temperature)` on cosine similarity: per anchor, minus the mean over its
/// positives of `log softmax(s / t)` taken over its positive and negative pairs; averaged over
/// the anchors with a non-zero loss.
pub struct SupConLoss {
    /// Temperature (PML's default 0.1).
    pub temperature: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl SupConLoss {
    /// The loss over every pair of a batch; `temperature` > 0.
    pub fn new(temperature: f64) -> Result<Self> {
        check_positive("temperature", temperature)?;
        Ok(SupConLoss {
            temperature,
            miner: None,
        })
    }

    /// The loss over the pairs of `indices` (every pair when `None`).
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let (b, pairs, logs) = batch_pairs(features, labels, indices)?;
        let (pos, neg) = pair_masks(&pairs, b)?;
        if too_few(&pairs) || !pos.iter().any(|&v| v) || !neg.iter().any(|&v| v) {
            return zero_output(features, logs);
        }
        let sim = (cosine_similarity(features)? / self.temperature)?;
        let sim = sim.broadcast_sub(&sim.max_keepdim(1)?.detach())?;
        let either: Vec<bool> = pos.iter().zip(&neg).map(|(p, n)| *p || *n).collect();
        let denominator = masked_logsumexp(&sim, &either, false)?;
        let log_prob = sim.broadcast_sub(&denominator.unsqueeze(1)?)?;
        let pos_t = mask_tensor(&pos, b, b, &sim)?.to_dtype(DType::F32)?;
        let inv: Vec<f32> = pos
            .chunks(b)
            .map(|row| 1.0 / (row.iter().filter(|&&v| v).count() as f32 + TINY))
            .collect();
        let inv = Tensor::from_vec(inv, b, sim.device())?;
        let mean_log_prob_pos = ((pos_t * log_prob)?.sum(1)? * inv)?;
        Ok(LossOutput::new(
            avg_non_zero(&mean_log_prob_pos.neg()?)?,
            logs,
        ))
    }
}
miner_criterion!(SupConLoss);

/// PML's `NTXentLoss(temperature)` on cosine similarity: for each positive pair `(a, p)`,
/// `-log(exp(s_ap / t) / (exp(s_ap / t) + sum_n exp(s_an / t)))` over the negative pairs of the
/// same anchor; averaged over the positive pairs.
pub struct NTXentLoss {
    /// Temperature (PML's default 0.07).
    pub temperature: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl NTXentLoss {
    /// The loss over every pair of a batch; `temperature` > 0.
    pub fn new(temperature: f64) -> Result<Self> {
        check_positive("temperature", temperature)?;
        Ok(NTXentLoss {
            temperature,
            miner: None,
        })
    }

    /// The loss over the pairs of `indices` (every pair when `None`).
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let (_, pairs, logs) = batch_pairs(features, labels, indices)?;
        if too_few(&pairs) || pairs.a1.is_empty() || pairs.a2.is_empty() {
            return zero_output(features, logs);
        }
        let sim = cosine_similarity(features)?;
        let pos = (gather(&sim, &pairs.a1, &pairs.p)? / self.temperature)?.unsqueeze(1)?;
        let neg = (gather(&sim, &pairs.a2, &pairs.n)? / self.temperature)?.unsqueeze(0)?;
        let (np, nn) = (pairs.a1.len(), pairs.a2.len());
        let same: Vec<bool> = pairs
            .a1
            .iter()
            .flat_map(|&a| pairs.a2.iter().map(move |&a2| a2 == a))
            .collect();
        let same = mask_tensor(&same, np, nn, &sim)?;
        let low = Tensor::full(f32::MIN, (np, nn), sim.device())?;
        let neg = same.where_cond(&neg.broadcast_as((np, nn))?, &low)?;
        let top = pos.maximum(&neg.max_keepdim(1)?)?.detach();
        let numerator = pos.broadcast_sub(&top)?.exp()?.squeeze(1)?;
        let denominator = (neg.broadcast_sub(&top)?.exp()?.sum(1)? + &numerator)?;
        let per = ((numerator / denominator)? + TINY as f64)?.log()?.neg()?;
        Ok(LossOutput::new(mean(&per)?, logs))
    }
}
miner_criterion!(NTXentLoss);

/// PML's `convert_to_weights`: per row, how often `indices` names it over the largest count
/// (all ones without indices).
fn miner_weights(indices: Option<&Indices>, b: usize) -> Vec<f32> {
    let rows = indices.map(Indices::all_rows).unwrap_or_default();
    if rows.is_empty() {
        return vec![1.0; b];
    }
    let mut counts = vec![0usize; b];
    for r in rows {
        counts[r] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f32;
    counts.iter().map(|&c| c as f32 / top).collect()
}

fn class_ids(labels: &[i64], num_classes: usize, what: &str) -> Result<Vec<usize>> {
    labels
        .iter()
        .map(|&l| match usize::try_from(l) {
            Ok(c) if c < num_classes => Ok(c),
            _ => Err(Error::Msg(format!(
                "{what} needs class ids 0..{num_classes}; got label {l}"
            ))),
        })
        .collect()
}

fn one_hot(classes: &[usize], num_classes: usize) -> Vec<bool> {
    classes
        .iter()
        .flat_map(|&y| (0..num_classes).map(move |c| c == y))
        .collect()
}

/// The share of rows whose most similar class is their own.
fn check_positive(key: &'static str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::param(key, v, "a positive number"));
    }
    Ok(())
}

fn check_finite(key: &'static str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::param(key, v, "a finite number"));
    }
    Ok(())
}

/// PML's `ProxyAnchorLoss(num_classes, embedding_size, margin, alpha)`: trainable proxies
/// `[num_classes, embedding_size]` (`proxies`, Kaiming-normal with fan-out when new); with
/// cosines `s` of embeddings to proxies, `sum_c log(1 + sum_{i of c} exp(-alpha (s_ic - margin)))`
/// over the classes present, divided by their number, plus `sum_c log(1 + sum_{i not c}
/// exp(alpha (s_ic + margin)))` over all classes, divided by their number.
pub struct ProxyAnchorLoss {
    proxies: Tensor,
    num_classes: usize,
    /// Margin (PML's default 0.1).
    pub margin: f64,
    /// Scale (32).
    pub alpha: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl ProxyAnchorLoss {
    /// The loss with proxies from `vb`.
    pub fn new(
        num_classes: usize,
        embedding_size: usize,
        margin: f64,
        alpha: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_classes == 0 || embedding_size == 0 {
            return Err(Error::param("num_classes/embedding_size", 0, "both > 0"));
        }
        check_positive("alpha", alpha)?;
        let proxies = vb.get_with_hints(
            (num_classes, embedding_size),
            "proxies",
            Init::Randn {
                mean: 0.0,
                stdev: (2.0 / num_classes as f64).sqrt(),
            },
        )?;
        Ok(ProxyAnchorLoss {
            proxies,
            num_classes,
            margin,
            alpha,
            miner: None,
        })
    }

    /// The proxies `[num_classes, embedding_size]`.
    pub fn proxies(&self) -> &Tensor {
        &self.proxies
    }

    /// The loss, samples weighted by `indices` as PML does.
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let b = check_batch(features, labels)?;
        check_indices(indices, b)?;
        let classes = class_ids(labels, self.num_classes, "ProxyAnchorLoss")?;
        let c = self.num_classes;
        let dev = features.device();
        let x = l2_normalise(&features.to_dtype(DType::F32)?)?;
        let cos = x.matmul(&l2_normalise(&self.proxies)?.t()?)?;
        let w: Vec<f32> = miner_weights(indices, b).iter().map(|w| w - 1.0).collect();
        let w = Tensor::from_vec(w, (b, 1), dev)?;
        let pos_mask = one_hot(&classes, c);
        let neg_mask: Vec<bool> = pos_mask.iter().map(|v| !v).collect();
        let transpose = |m: &[bool]| -> Vec<bool> {
            (0..c)
                .flat_map(|k| (0..b).map(move |i| m[i * c + k]))
                .collect()
        };
        let pos_exp = (((cos.neg()? + self.margin)? * self.alpha)?.broadcast_add(&w))?;
        let neg_exp = (((&cos + self.margin)? * self.alpha)?.broadcast_add(&w))?;
        let pos_term = masked_logsumexp(&pos_exp.t()?.contiguous()?, &transpose(&pos_mask), true)?;
        let neg_term = masked_logsumexp(&neg_exp.t()?.contiguous()?, &transpose(&neg_mask), true)?;
        let present = {
            let mut seen = vec![false; c];
            for &y in &classes {
                seen[y] = true;
            }
            seen.iter().filter(|&&s| s).count()
        };
        let pos_loss = if present > 0 {
            (pos_term.sum_all()? / present as f64)?
        } else {
            zero_loss(features)?
        };
        let neg_loss = (neg_term.sum_all()? / c as f64)?;
        Ok(LossOutput {
            loss: (pos_loss + neg_loss)?,
            logs: BTreeMap::new(),
            device_logs: BTreeMap::from([("accuracy".to_owned(), accuracy(&cos, &classes)?)]),
        })
    }
}

/// The cross-entropy `[B]` of `logits` `[B, C]` against `classes`.
fn cross_entropy(logits: &Tensor, classes: &[usize]) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    let target = mask_tensor(&one_hot(classes, c), b, c, logits)?.to_dtype(DType::F32)?;
    Ok((candle_nn::ops::log_softmax(logits, D::Minus1)? * target)?
        .sum(1)?
        .neg()?)
}

/// Cosines `[B, N]` of the embeddings to the columns of `w` `[D, N]`.
fn column_cosines(features: &Tensor, w: &Tensor) -> Result<Tensor> {
    let x = l2_normalise(&features.to_dtype(DType::F32)?)?;
    Ok(x.matmul(&l2_normalise(&w.t()?)?.t()?)?)
}

/// PML's `CosFaceLoss(num_classes, embedding_size, margin, scale)`: class centres `W`
/// `[embedding_size, num_classes]` (standard normal when new), logits `scale * (cos - margin at
/// the target)`, cross-entropy (weighted per sample by a miner), averaged.
pub struct CosFaceLoss {
    w: Tensor,
    num_classes: usize,
    /// Margin (PML's default 0.35).
    pub margin: f64,
    /// Scale (64).
    pub scale: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl CosFaceLoss {
    /// The loss with centres `W` from `vb`.
    pub fn new(
        num_classes: usize,
        embedding_size: usize,
        margin: f64,
        scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_classes == 0 || embedding_size == 0 {
            return Err(Error::param("num_classes/embedding_size", 0, "both > 0"));
        }
        check_positive("scale", scale)?;
        let w = vb.get_with_hints(
            (embedding_size, num_classes),
            "W",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(CosFaceLoss {
            w,
            num_classes,
            margin,
            scale,
            miner: None,
        })
    }

    /// The centres `[embedding_size, num_classes]`.
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// The loss, samples weighted by `indices` as PML does.
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let b = check_batch(features, labels)?;
        check_indices(indices, b)?;
        let classes = class_ids(labels, self.num_classes, "CosFaceLoss")?;
        let cos = column_cosines(features, &self.w)?;
        let target = mask_tensor(
            &one_hot(&classes, self.num_classes),
            b,
            self.num_classes,
            &cos,
        )?
        .to_dtype(DType::F32)?;
        let logits = ((&cos - (target * self.margin)?)? * self.scale)?;
        weighted_mean(
            &cross_entropy(&logits, &classes)?,
            indices,
            b,
            &cos,
            &classes,
        )
    }
}

fn weighted_mean(
    per: &Tensor,
    indices: Option<&Indices>,
    b: usize,
    cos: &Tensor,
    classes: &[usize],
) -> Result<LossOutput> {
    let w = Tensor::from_vec(miner_weights(indices, b), b, per.device())?;
    Ok(LossOutput {
        loss: mean(&(per * w)?)?,
        logs: BTreeMap::new(),
        device_logs: BTreeMap::from([("accuracy".to_owned(), accuracy(cos, classes)?)]),
    })
}

/// PML's `SubCenterArcFaceLoss(num_classes, embedding_size, margin, scale, sub_centers)`:
/// `sub_centers` centres per class (`W` `[embedding_size, num_classes * sub_centers]`, class
/// `c`'s centres in columns `c * K .. (c + 1) * K`, standard normal when new); a class's cosine is
/// its best centre's; then ArcFace with an angular margin in degrees.
pub struct SubCenterArcFaceLoss {
    w: Tensor,
    num_classes: usize,
    sub_centers: usize,
    /// Angular margin in degrees (PML's default 28.6).
    pub margin: f64,
    /// Scale (64).
    pub scale: f64,
    miner: Option<Box<dyn PmlMiner>>,
}

impl SubCenterArcFaceLoss {
    /// The loss with centres `W` from `vb`.
    pub fn new(
        num_classes: usize,
        embedding_size: usize,
        margin: f64,
        scale: f64,
        sub_centers: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_classes == 0 || embedding_size == 0 || sub_centers == 0 {
            return Err(Error::param(
                "num_classes/embedding_size/sub_centers",
                0,
                "all > 0",
            ));
        }
        check_positive("scale", scale)?;
        if !(0.0..180.0).contains(&margin) {
            return Err(Error::param("margin", margin, "degrees in [0, 180)"));
        }
        let w = vb.get_with_hints(
            (embedding_size, num_classes * sub_centers),
            "W",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(SubCenterArcFaceLoss {
            w,
            num_classes,
            sub_centers,
            margin,
            scale,
            miner: None,
        })
    }

    /// The centres `[embedding_size, num_classes * sub_centers]`.
    pub fn weight(&self) -> &Tensor {
        &self.w
    }

    /// The loss, samples weighted by `indices` as PML does.
    pub fn forward_indices(
        &self,
        features: &Tensor,
        labels: &[i64],
        indices: Option<&Indices>,
    ) -> Result<LossOutput> {
        let b = check_batch(features, labels)?;
        check_indices(indices, b)?;
        let c = self.num_classes;
        let classes = class_ids(labels, c, "SubCenterArcFaceLoss")?;
        // Each class's best centre; on a tie the first, which alone gets the gradient (as
        // torch's `max`).
        let k = self.sub_centers;
        let all = column_cosines(features, &self.w)?.reshape((b, c, k))?;
        let best = super::first_argmax_keepdim(&all.detach())?;
        let cos = all.contiguous()?.gather(&best, 2)?.squeeze(2)?;
        let m = self.margin.to_radians();
        let ids: Vec<u32> = classes.iter().map(|&y| y as u32).collect();
        let ids = Tensor::from_vec(ids, (b, 1), cos.device())?;
        let cos_t = cos.gather(&ids, 1)?.clamp(-1f32, 1f32)?;
        let sin_t = (1.0 - cos_t.sqr()?)?.clamp(1e-12f32, 1f32)?.sqrt()?;
        let plus_margin = ((&cos_t * m.cos())? - (sin_t * m.sin())?)?;
        let past = (&cos_t - m * m.sin())?;
        let within = cos_t.ge((std::f64::consts::PI - m).cos())?;
        let modified = within.where_cond(&plus_margin, &past)?;
        let target = mask_tensor(&one_hot(&classes, c), b, c, &cos)?;
        let logits = (target.where_cond(&modified.broadcast_as((b, c))?, &cos)? * self.scale)?;
        weighted_mean(
            &cross_entropy(&logits, &classes)?,
            indices,
            b,
            &cos,
            &classes,
        )
    }
}

miner_criterion!(ProxyAnchorLoss);
miner_criterion!(CosFaceLoss);
miner_criterion!(SubCenterArcFaceLoss);
