//! OML's `SurrogatePrecision`: a smooth precision@k over the batch.

use std::collections::BTreeMap;

use candle_core::Tensor;

use super::{Criterion, LossOutput, Reduction, pairwise_dist};
use crate::{Error, Result};

/// `1 - precision@k` made differentiable: ranks are sums of sigmoids of distance differences
/// (temperature `temperature2`), "within the top k" a sigmoid of `k + 1 - rank` (temperature
/// `temperature1`; `k + 1` because every item retrieves itself). Reductions as OML: `sum` gives
/// `1 - sum(precision)`, which can be negative.
#[derive(Debug, Clone, PartialEq)]
pub struct SurrogatePrecision {
    /// k of precision@k (> 0).
    pub k: usize,
    /// Temperature of the top-k sigmoid.
    pub temperature1: f64,
    /// Temperature of the rank sigmoids.
    pub temperature2: f64,
    /// Reduction.
    pub reduction: Reduction,
}

impl SurrogatePrecision {
    /// OML's defaults: temperatures 1.0 and 0.01, mean.
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(Error::param("k", 0, "k > 0"));
        }
        Ok(SurrogatePrecision {
            k,
            temperature1: 1.0,
            temperature2: 0.01,
            reduction: Reduction::Mean,
        })
    }
}

impl Criterion for SurrogatePrecision {
    fn forward(&self, features: &Tensor, labels: &[i64]) -> Result<LossOutput> {
        let (n, _) = features.dims2()?;
        if labels.len() != n {
            return Err(Error::Msg(format!(
                "{n} embeddings but {} labels",
                labels.len()
            )));
        }
        let k = (self.k + 1) as f64;
        let dev = features.device();
        let d = pairwise_dist(features, features)?;
        let same: Vec<f32> = labels
            .iter()
            .flat_map(|a| labels.iter().map(move |b| f32::from(u8::from(a == b))))
            .collect();
        let same = Tensor::from_vec(same, (n, n), dev)?.to_dtype(d.dtype())?;
        // rank[i, l] = sum_j sigmoid((D[i, l] - D[i, j]) / t2)
        let diff = d.unsqueeze(2)?.broadcast_sub(&d.unsqueeze(1)?)?;
        let rank = candle_nn::ops::sigmoid(&(diff / self.temperature2)?)?.sum(2)?;
        let top = candle_nn::ops::sigmoid(&((rank.neg()? + k)? / self.temperature1)?)?;
        let hits = (top * &same)?.sum(1)?;
        let denom = same.sum(1)?.clamp(0f32, k as f32)?;
        let prec = (hits / denom)?;
        let loss = match self.reduction {
            Reduction::Mean => (prec.mean_all()?.neg()? + 1.0)?,
            Reduction::Sum => (prec.sum_all()?.neg()? + 1.0)?,
            Reduction::None => (prec.neg()? + 1.0)?,
        };
        Ok(LossOutput::new(loss, BTreeMap::new()))
    }
}
