//! OML's triplet losses.

use std::collections::BTreeMap;
use std::sync::Mutex;

use candle_core::Tensor;

use super::LossState;
use super::miners::{AllTripletsMiner, TripletMiner};
use super::{Criterion, LossOutput, Reduction, elementwise_dist, mean_f64, reduce};
use crate::{Error, Result};

/// `relu(margin + d(a, p) - d(a, n))`, or without a margin the soft `log1p(exp(d(a, p) - d(a, n)))`
/// (computed literally, as OML: a gap above ~88 overflows to infinity). Distances are non-squared
/// Euclidean.
#[derive(Debug, Clone, PartialEq)]
pub struct TripletLoss {
    /// The margin; `None` for the soft version.
    pub margin: Option<f64>,
    /// How per-triplet losses are reduced.
    pub reduction: Reduction,
}

impl TripletLoss {
    /// A triplet loss; `margin` must be positive when given (OML asserts it).
    pub fn new(margin: Option<f64>, reduction: Reduction) -> Result<Self> {
        if let Some(m) = margin
            && !(m > 0.0 && m.is_finite())
        {
            return Err(Error::param(
                "margin",
                m,
                "a positive number, or none for the soft loss",
            ));
        }
        Ok(TripletLoss { margin, reduction })
    }

    /// The loss of anchors, positives and negatives (`[T, D]` each) and OML's logs
    /// (`active_tri`, `pos_dist`, `neg_dist`, over the per-triplet values).
    pub fn forward_triplets(&self, a: &Tensor, p: &Tensor, n: &Tensor) -> Result<LossOutput> {
        let dp = elementwise_dist(a, p)?;
        let dn = elementwise_dist(a, n)?;
        let gap = (&dp - &dn)?;
        let per = match self.margin {
            Some(m) => (gap + m)?.relu()?,
            None => (gap.exp()? + 1.0)?.log()?,
        };
        let device_logs = BTreeMap::from([
            ("active_tri".to_owned(), mean_f64(&per.gt(0.0)?)?),
            ("pos_dist".to_owned(), mean_f64(&dp)?),
            ("neg_dist".to_owned(), mean_f64(&dn)?),
        ]);
        Ok(LossOutput {
            loss: reduce(&per, self.reduction)?,
            logs: BTreeMap::new(),
            device_logs,
        })
    }
}

/// OML's `TripletLossPlain`: the rows of `features` are `a, p, n, a, p, n, ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct TripletLossPlain(pub TripletLoss);

impl TripletLossPlain {
    /// The loss of `features` `[3T, D]` laid out as anchor, positive, negative triplets.
    pub fn forward(&self, features: &Tensor) -> Result<LossOutput> {
        let (n, _) = features.dims2()?;
        if n % 3 != 0 {
            return Err(Error::Msg(format!(
                "TripletLossPlain needs rows in a, p, n order: {n} rows is not a multiple of 3"
            )));
        }
        let features = &features.contiguous()?;
        let pick = |offset: u32| -> Result<Tensor> {
            let ids: Vec<u32> = (0..n as u32 / 3).map(|i| 3 * i + offset).collect();
            let ids = Tensor::new(ids.as_slice(), features.device())?;
            Ok(features.index_select(&ids, 0)?)
        };
        self.0.forward_triplets(&pick(0)?, &pick(1)?, &pick(2)?)
    }
}

/// A triplet loss on the triplets a miner picks from the batch (OML's `TripletLossWithMiner`).
/// Logs accumulate across calls as OML's do (a key once logged stays until overwritten).
pub struct TripletLossWithMiner {
    /// The loss on the mined triplets.
    pub loss: TripletLoss,
    /// Which triplets.
    pub miner: Box<dyn TripletMiner>,
    last_logs: Mutex<KeptLogs>,
}

/// The logs kept across calls: those known on the host, and those still on the device (a key is
/// in one of the two).
#[derive(Default)]
struct KeptLogs {
    host: BTreeMap<String, f64>,
    device: BTreeMap<String, Tensor>,
}

impl KeptLogs {
    fn update(&mut self, host: BTreeMap<String, f64>, device: BTreeMap<String, Tensor>) {
        for (k, v) in host {
            self.device.remove(&k);
            self.host.insert(k, v);
        }
        for (k, v) in device {
            self.host.remove(&k);
            self.device.insert(k, v);
        }
    }
}

impl TripletLossWithMiner {
    /// A triplet loss with `miner` (OML's default: all triplets).
    pub fn new(
        margin: Option<f64>,
        miner: Option<Box<dyn TripletMiner>>,
        reduction: Reduction,
    ) -> Result<Self> {
        Ok(TripletLossWithMiner {
            loss: TripletLoss::new(margin, reduction)?,
            miner: miner.unwrap_or_else(|| Box::new(AllTripletsMiner::default())),
            last_logs: Mutex::new(KeptLogs::default()),
        })
    }
}

impl Criterion for TripletLossWithMiner {
    fn forward(&self, features: &Tensor, labels: &[i64]) -> Result<LossOutput> {
        let (b, _) = features.dims2()?;
        if b != labels.len() {
            return Err(Error::Msg(format!(
                "{b} embeddings but {} labels",
                labels.len()
            )));
        }
        let sampled = self.miner.sample(features, labels)?;
        let mut out = if sampled.anchors.dim(0)? == 0 {
            // PML's miners may pick nothing (OML's never do); PML's losses then give a zero
            // that keeps the graph, where a mean would give NaN.
            LossOutput::new(
                (features * 0.0)?.sum_all()?,
                BTreeMap::from([("active_tri".to_owned(), 0.0)]),
            )
        } else {
            self.loss
                .forward_triplets(&sampled.anchors, &sampled.positives, &sampled.negatives)?
        };
        let mut kept = self.last_logs.lock().unwrap_or_else(|p| p.into_inner());
        let mut host = std::mem::take(&mut out.logs);
        host.extend(sampled.logs);
        kept.update(host, std::mem::take(&mut out.device_logs));
        out.logs = kept.host.clone();
        out.device_logs = kept.device.clone();
        Ok(out)
    }

    /// The miner's state and the accumulated logs.
    fn state(&self) -> Result<LossState> {
        let mut state = self.miner.state()?;
        let kept = self.last_logs.lock().unwrap_or_else(|p| p.into_inner());
        let logs = super::merged_logs(&kept.host, &kept.device, "loss: saved logs")?;
        state.values = serde_json::json!({ "miner": state.values, "logs": logs });
        Ok(state)
    }

    fn load_state(&self, state: &LossState) -> Result<()> {
        let miner = LossState {
            tensors: state.tensors.clone(),
            values: state.values.get("miner").cloned().unwrap_or_default(),
        };
        self.miner.load_state(&miner)?;
        *self.last_logs.lock().unwrap_or_else(|p| p.into_inner()) = KeptLogs {
            host: state.value("logs")?,
            device: BTreeMap::new(),
        };
        Ok(())
    }
}
