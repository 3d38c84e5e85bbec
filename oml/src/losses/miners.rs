//! Triplet miners with OML's semantics. Distances are computed on the features' device (one
//! `[B, B]` matrix, detached) and the chosen rows are gathered there, so gradients reach every
//! selected row. Where the selection runs:
//! - `HardTripletsMiner` (the demo's and OML's usual miner) as a [`TripletMiner`]: on the device,
//!   nothing read back (as an [`IndexMiner`], inside `MinerWithBank`, PML's losses or the
//!   re-ranker's pairs miner, it chooses on the host over the matrix read back);
//! - `AllTripletsMiner`, `TripletMinerWithMemory`: from the labels alone, nothing read back;
//! - `NHardTripletsMiner`, `MinerWithBank`, `HardClusterMiner`: on the host, over the matrix read
//!   back once per batch (named in a [`crate::host::Profile`]).
//!
//! Deliberate differences from OML (documented in the README):
//! - `AllTripletsMiner` keeps the canonical `(a, p, n)` order (OML shuffles with numpy's global
//!   RNG); with a cap it takes a seeded random subset, in canonical order.
//! - `NHardTripletsMiner` sorts stably: ties go to the lower index among positives and the higher
//!   among negatives, which is what torch does for rows of up to 16 entries.
//! - `TripletMinerWithMemory` draws from its own seeded generator (OML mixes Python's and torch's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{LossState, check_triplet_labels, pairwise_dist};
use crate::{Error, Result};

/// Triplets as batch indices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triplets {
    /// Anchor rows.
    pub anchors: Vec<usize>,
    /// Positive rows.
    pub positives: Vec<usize>,
    /// Negative rows.
    pub negatives: Vec<usize>,
}

impl Triplets {
    /// Number of triplets.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    fn push(&mut self, a: usize, p: usize, n: usize) {
        self.anchors.push(a);
        self.positives.push(p);
        self.negatives.push(n);
    }

    /// What a miner hands the loss: these triplets' rows of `features`, no logs.
    pub fn sampled(self, features: &Tensor) -> Result<Sampled> {
        let (anchors, positives, negatives) = self.gather(features)?;
        Ok(Sampled {
            anchors,
            positives,
            negatives,
            triplets: Some(self),
            device_triplets: None,
            logs: BTreeMap::new(),
        })
    }

    /// The rows of `features` for anchors, positives and negatives.
    pub fn gather(&self, features: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let features = &features.contiguous()?;
        let pick = |ids: &[usize]| -> Result<Tensor> {
            let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            let ids = Tensor::new(ids.as_slice(), features.device())?;
            Ok(features.index_select(&ids, 0)?)
        };
        Ok((
            pick(&self.anchors)?,
            pick(&self.positives)?,
            pick(&self.negatives)?,
        ))
    }
}

/// What a miner hands the loss: the triplets' vectors (and their indices when they are rows).
#[derive(Debug, Clone)]
pub struct Sampled {
    /// Anchor vectors `[T, D]`.
    pub anchors: Tensor,
    /// Positive vectors `[T, D]`.
    pub positives: Tensor,
    /// Negative vectors `[T, D]`.
    pub negatives: Tensor,
    /// Indices into the batch (and the bank beyond it), where the vectors are rows and the miner
    /// chose them on the host.
    pub triplets: Option<Triplets>,
    /// The same as `u32` tensors (anchors, positives, negatives) on the features' device, where
    /// the miner chose them there ([`HardTripletsMiner`]); [`Sampled::indices`] reads either.
    pub device_triplets: Option<[Tensor; 3]>,
    /// Miner logs (OML's `MinerWithBank` counts).
    pub logs: BTreeMap<String, f64>,
}

impl Sampled {
    /// The triplets as batch indices (read from the device where the miner chose them there), or
    /// `None` for a miner that gives vectors ([`HardClusterMiner`]).
    pub fn indices(&self) -> Result<Option<Triplets>> {
        if let Some(t) = &self.triplets {
            return Ok(Some(t.clone()));
        }
        let Some([a, p, n]) = &self.device_triplets else {
            return Ok(None);
        };
        let read = |t: &Tensor| -> Result<Vec<usize>> {
            Ok(crate::host::read::<u32>(t, "miner: indices")?
                .into_iter()
                .map(|i| i as usize)
                .collect())
        };
        Ok(Some(Triplets {
            anchors: read(a)?,
            positives: read(p)?,
            negatives: read(n)?,
        }))
    }
}

/// Picks triplets from a batch.
pub trait TripletMiner: Send + Sync {
    /// Triplets of `features` `[B, D]` with `labels`.
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled>;

    /// What the miner keeps between batches (none for the stateless miners).
    fn state(&self) -> Result<LossState> {
        Ok(LossState::default())
    }

    /// Restores what [`TripletMiner::state`] returned.
    fn load_state(&self, _state: &LossState) -> Result<()> {
        Ok(())
    }
}

/// A miner that only needs the distance matrix.
pub trait IndexMiner: Send + Sync {
    /// Triplets from the row-major `[B, B]` distances, labels and anchors to skip.
    fn mine(
        &self,
        dist: &[f32],
        labels: &[i64],
        ignore_anchor: Option<&[bool]>,
    ) -> Result<Triplets>;
}

/// OML's label check before mining (`sample`): at least two labels, two instances each.
pub fn check_labels(labels: &[i64]) -> Result<()> {
    check_triplet_labels(labels)
}

/// The detached distance matrix of `features`, read to the host (`site` names the miner).
pub fn distance_matrix(features: &Tensor, site: &'static str) -> Result<Vec<f32>> {
    let f = features.detach();
    crate::host::read(&pairwise_dist(&f, &f)?, site)
}

fn sample_with(
    miner: &dyn IndexMiner,
    features: &Tensor,
    labels: &[i64],
    site: &'static str,
) -> Result<Sampled> {
    check_triplet_labels(labels)?;
    let dist = distance_matrix(features, site)?;
    miner.mine(&dist, labels, None)?.sampled(features)
}

/// `labels` as dense `u32` ids on `device` (equal labels, equal ids).
fn label_ids(labels: &[i64], device: &Device) -> Result<Tensor> {
    let known: BTreeSet<i64> = labels.iter().copied().collect();
    let rank: BTreeMap<i64, u32> = known.into_iter().zip(0u32..).collect();
    let ids: Vec<u32> = labels.iter().map(|l| rank[l]).collect();
    Ok(Tensor::new(ids.as_slice(), device)?)
}

/// Every `(a, p, n)`: `label[a] == label[p]`, `a != p`, `label[n] != label[a]`, in lexicographic
/// order; at most `max_output_triplets` of them (a seeded random subset, new each call).
#[derive(Debug, Default)]
pub struct AllTripletsMiner {
    /// Cap on the number of triplets.
    pub max_output_triplets: Option<usize>,
    /// Seed of the subset.
    pub seed: u64,
    calls: AtomicU64,
}

impl AllTripletsMiner {
    /// A miner with an optional cap.
    pub fn new(max_output_triplets: Option<usize>, seed: u64) -> Self {
        AllTripletsMiner {
            max_output_triplets,
            seed,
            calls: AtomicU64::new(0),
        }
    }
}

impl IndexMiner for AllTripletsMiner {
    fn mine(&self, _dist: &[f32], labels: &[i64], ignore: Option<&[bool]>) -> Result<Triplets> {
        let b = labels.len();
        let mut t = Triplets::default();
        for a in 0..b {
            if ignore.is_some_and(|m| m[a]) {
                continue;
            }
            for p in 0..b {
                if p == a || labels[p] != labels[a] {
                    continue;
                }
                for n in 0..b {
                    if labels[n] != labels[a] {
                        t.push(a, p, n);
                    }
                }
            }
        }
        if let Some(cap) = self.max_output_triplets
            && cap < t.len()
        {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ call.wrapping_mul(0x9E37_79B9));
            let mut keep: Vec<usize> = (0..t.len()).collect();
            keep.shuffle(&mut rng);
            keep.truncate(cap);
            keep.sort_unstable();
            let mut capped = Triplets::default();
            for i in keep {
                capped.push(t.anchors[i], t.positives[i], t.negatives[i]);
            }
            return Ok(capped);
        }
        Ok(t)
    }
}

impl TripletMiner for AllTripletsMiner {
    /// From the labels alone: nothing is read from the device.
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        check_triplet_labels(labels)?;
        self.mine(&[], labels, None)?.sampled(features)
    }

    /// The number of capped batches so far (each draws its subset from the seed and that count).
    fn state(&self) -> Result<LossState> {
        Ok(LossState {
            values: serde_json::json!({ "calls": self.calls.load(Ordering::Relaxed) }),
            ..LossState::default()
        })
    }

    fn load_state(&self, state: &LossState) -> Result<()> {
        self.calls.store(state.value("calls")?, Ordering::Relaxed);
        Ok(())
    }
}

/// For every row: the farthest row of its label (itself included, as OML) and the closest row of
/// another label; the first index on ties.
#[derive(Debug, Default, Clone)]
pub struct HardTripletsMiner;

impl IndexMiner for HardTripletsMiner {
    fn mine(&self, dist: &[f32], labels: &[i64], ignore: Option<&[bool]>) -> Result<Triplets> {
        let b = labels.len();
        let mut t = Triplets::default();
        for a in 0..b {
            if ignore.is_some_and(|m| m[a]) {
                continue;
            }
            let row = &dist[a * b..(a + 1) * b];
            let mut pos = (f32::NEG_INFINITY, 0);
            let mut neg = (f32::INFINITY, 0);
            for j in 0..b {
                if labels[j] == labels[a] {
                    if row[j] > pos.0 {
                        pos = (row[j], j);
                    }
                } else if row[j] < neg.0 {
                    neg = (row[j], j);
                }
            }
            t.push(a, pos.1, neg.1);
        }
        Ok(t)
    }
}

impl HardTripletsMiner {
    /// [`IndexMiner::mine`] on the device (same choices, ties included): the positive and the
    /// negative of every row of the `[B, B]` distances `dist`, as `u32` tensors `[B]`.
    pub fn mine_on_device(&self, dist: &Tensor, labels: &[i64]) -> Result<(Tensor, Tensor)> {
        let (b, b2) = dist.dims2()?;
        if b != labels.len() || b2 != b {
            return Err(Error::Msg(format!(
                "HardTripletsMiner: distances of shape [{b}, {b2}] for {} labels",
                labels.len()
            )));
        }
        let dev = dist.device();
        let dist = dist.to_dtype(candle_core::DType::F32)?;
        let ids = label_ids(labels, dev)?;
        let same = ids.unsqueeze(1)?.broadcast_eq(&ids.unsqueeze(0)?)?;
        let never = Tensor::full(f32::NEG_INFINITY, (b, b), dev)?;
        // The farthest of the same label; the closest of another (the largest negated distance).
        let pos = super::first_argmax_keepdim(&same.where_cond(&dist, &never)?)?;
        let neg = super::first_argmax_keepdim(&same.where_cond(&never, &dist.neg()?)?)?;
        Ok((pos.squeeze(1)?, neg.squeeze(1)?))
    }
}

impl TripletMiner for HardTripletsMiner {
    /// Chosen on the device: nothing is read back (the indices stay there, see
    /// [`Sampled::indices`]).
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        check_triplet_labels(labels)?;
        let features = features.contiguous()?;
        let f = features.detach();
        let (pos, neg) = self.mine_on_device(&pairwise_dist(&f, &f)?, labels)?;
        let anchors = Tensor::arange(0u32, labels.len() as u32, features.device())?;
        Ok(Sampled {
            positives: features.index_select(&pos, 0)?,
            negatives: features.index_select(&neg, 0)?,
            anchors: features,
            triplets: None,
            device_triplets: Some([anchors, pos, neg]),
            logs: BTreeMap::new(),
        })
    }
}

/// Which of the sorted candidates to take: the first `n`, or OML's 1-based inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum NRange {
    /// The `n` hardest.
    First(usize),
    /// From the `lo`-th to the `hi`-th hardest (1-based, inclusive).
    Range(usize, usize),
}

impl NRange {
    fn bounds(self) -> Result<(usize, usize)> {
        match self {
            NRange::First(n) if n > 0 => Ok((0, n)),
            NRange::Range(lo, hi) if lo >= 1 && hi >= lo => Ok((lo - 1, hi)),
            other => Err(Error::param(
                "n_positive/n_negative",
                format!("{other:?}"),
                "n >= 1, or a 1-based range (lo, hi) with 1 <= lo <= hi",
            )),
        }
    }
}

/// Per anchor, the `n_positive` farthest positives and the `n_negative` closest negatives, every
/// positive with every negative (positive-major), anchors in order.
#[derive(Debug, Clone)]
pub struct NHardTripletsMiner {
    /// Which positives.
    pub n_positive: NRange,
    /// Which negatives.
    pub n_negative: NRange,
}

impl Default for NHardTripletsMiner {
    fn default() -> Self {
        NHardTripletsMiner {
            n_positive: NRange::First(1),
            n_negative: NRange::First(1),
        }
    }
}

impl IndexMiner for NHardTripletsMiner {
    fn mine(&self, dist: &[f32], labels: &[i64], ignore: Option<&[bool]>) -> Result<Triplets> {
        let (plo, phi) = self.n_positive.bounds()?;
        let (nlo, nhi) = self.n_negative.bounds()?;
        let b = labels.len();
        let mut t = Triplets::default();
        for a in 0..b {
            if ignore.is_some_and(|m| m[a]) {
                continue;
            }
            let row = &dist[a * b..(a + 1) * b];
            // Descending distance, stable (lower index first among ties).
            let mut order: Vec<usize> = (0..b).collect();
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
            let pos: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&j| j != a && labels[j] == labels[a])
                .collect();
            let neg: Vec<usize> = order
                .iter()
                .rev()
                .copied()
                .filter(|&j| labels[j] != labels[a])
                .collect();
            let pos = &pos[plo.min(pos.len())..phi.min(pos.len())];
            let neg = &neg[nlo.min(neg.len())..nhi.min(neg.len())];
            if pos.is_empty() || neg.is_empty() {
                return Err(Error::Msg(format!(
                    "anchor {a} (label {}) has no {} in the requested range: the batch needs more \
                     instances per label or labels per batch",
                    labels[a],
                    if pos.is_empty() {
                        "positive"
                    } else {
                        "negative"
                    }
                )));
            }
            for &p in pos {
                for &n in neg {
                    t.push(a, p, n);
                }
            }
        }
        Ok(t)
    }
}

impl TripletMiner for NHardTripletsMiner {
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        sample_with(self, features, labels, "miner: distances (n-hard)")
    }
}

/// OML's `HardClusterMiner`: per label (sorted), the label's mean as anchor, its member farthest
/// from the mean (squared distance) as positive, the closest other label's mean as negative.
/// Batches must be balanced.
#[derive(Debug, Default, Clone)]
pub struct HardClusterMiner;

impl TripletMiner for HardClusterMiner {
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, &l) in labels.iter().enumerate() {
            groups.entry(l).or_default().push(i);
        }
        let sizes: BTreeSet<usize> = groups.values().map(Vec::len).collect();
        if groups.len() < 2 || sizes.len() != 1 || sizes.iter().any(|&s| s < 2) {
            return Err(Error::Msg(format!(
                "HardClusterMiner needs a balanced batch: at least 2 labels with the same number \
                 (>= 2) of instances each; got {} labels with sizes {sizes:?}",
                groups.len()
            )));
        }
        let features = &features.contiguous()?;
        let dev = features.device();
        let mut means = Vec::with_capacity(groups.len());
        let mut positives = Vec::with_capacity(groups.len());
        for ids in groups.values() {
            let idx: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
            let members = features.index_select(&Tensor::new(idx.as_slice(), dev)?, 0)?;
            let mean = members.mean_keepdim(0)?;
            let sq: Vec<f32> = crate::host::read(
                &members
                    .detach()
                    .broadcast_sub(&mean.detach())?
                    .sqr()?
                    .sum(1)?,
                "miner: distances (hard cluster)",
            )?;
            let mut best = (f32::NEG_INFINITY, 0);
            for (j, &d) in sq.iter().enumerate() {
                if d > best.0 {
                    best = (d, j);
                }
            }
            positives.push(ids[best.1] as u32);
            means.push(mean);
        }
        let means = Tensor::cat(&means, 0)?;
        let k = groups.len();
        let md: Vec<f32> = crate::host::read(
            &pairwise_dist(&means.detach(), &means.detach())?,
            "miner: distances (hard cluster)",
        )?;
        let neg: Vec<u32> = (0..k)
            .map(|i| {
                let mut best = (f32::INFINITY, 0);
                for j in 0..k {
                    if j != i && md[i * k + j] < best.0 {
                        best = (md[i * k + j], j);
                    }
                }
                best.1 as u32
            })
            .collect();
        Ok(Sampled {
            positives: features.index_select(&Tensor::new(positives.as_slice(), dev)?, 0)?,
            negatives: means.index_select(&Tensor::new(neg.as_slice(), dev)?, 0)?,
            anchors: means,
            triplets: None,
            device_triplets: None,
            logs: BTreeMap::new(),
        })
    }
}

struct Bank {
    features: Option<Tensor>,
    labels: Vec<i64>,
    ptr: usize,
    accumulated: bool,
    batch_size: usize,
}

/// OML's `MinerWithBank` (cross-batch memory): the n-hard miner over the batch and a bank of the
/// last `bank_size_in_batches` batches (detached); bank rows are never anchors. The bank is used
/// once full and updated after mining.
pub struct MinerWithBank {
    /// Batches kept.
    pub bank_size_in_batches: usize,
    /// The miner over batch + bank.
    pub miner: NHardTripletsMiner,
    bank: Mutex<Bank>,
}

impl MinerWithBank {
    /// A bank of `bank_size_in_batches` batches (>= 1).
    pub fn new(bank_size_in_batches: usize, miner: NHardTripletsMiner) -> Result<Self> {
        if bank_size_in_batches == 0 {
            return Err(Error::param("bank_size_in_batches", 0, "at least 1"));
        }
        Ok(MinerWithBank {
            bank_size_in_batches,
            miner,
            bank: Mutex::new(Bank {
                features: None,
                labels: Vec::new(),
                ptr: 0,
                accumulated: false,
                batch_size: 0,
            }),
        })
    }

    /// Whether the bank is full (and used).
    pub fn is_accumulated(&self) -> bool {
        self.bank.lock().map(|b| b.accumulated).unwrap_or(false)
    }
}

impl TripletMiner for MinerWithBank {
    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        let mut bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
        let (bs, d) = features.dims2()?;
        if bank.batch_size == 0 {
            bank.batch_size = bs;
            bank.labels = vec![0; bs * self.bank_size_in_batches];
        } else if bank.batch_size != bs {
            return Err(Error::Msg(format!(
                "MinerWithBank needs batches of the same size: {} then {bs}",
                bank.batch_size
            )));
        }
        let size = bs * self.bank_size_in_batches;
        let (all, all_labels, ignore) = match (&bank.features, bank.accumulated) {
            (Some(bf), true) => {
                let all = Tensor::cat(&[features, bf], 0)?;
                let mut l = labels.to_vec();
                l.extend_from_slice(&bank.labels);
                let mut ig = vec![false; bs];
                ig.extend(std::iter::repeat_n(true, size));
                (all, l, Some(ig))
            }
            _ => {
                check_triplet_labels(labels)?;
                (features.clone(), labels.to_vec(), None)
            }
        };
        let dist = distance_matrix(&all, "miner: distances (bank)")?;
        let triplets = self.miner.mine(&dist, &all_labels, ignore.as_deref())?;
        let (anchors, positives, negatives) = triplets.gather(&all)?;
        let logs = bank_logs(&triplets, bs);
        // Update after mining: the bank never holds the current batch.
        let detached = features.detach();
        let ptr = bank.ptr;
        let updated = match &bank.features {
            None => {
                let zeros = Tensor::zeros((size, d), features.dtype(), features.device())?;
                zeros.slice_assign(&[ptr..ptr + bs, 0..d], &detached)?
            }
            Some(bf) => bf.slice_assign(&[ptr..ptr + bs, 0..d], &detached)?,
        };
        bank.accumulated |= ptr + bs >= size;
        bank.features = Some(updated);
        bank.labels[ptr..ptr + bs].copy_from_slice(labels);
        bank.ptr = (ptr + bs) % size;
        Ok(Sampled {
            anchors,
            positives,
            negatives,
            triplets: Some(triplets),
            device_triplets: None,
            logs,
        })
    }

    /// The bank: its features, labels, write position and whether it is full.
    fn state(&self) -> Result<LossState> {
        let bank = self.bank.lock().unwrap_or_else(|p| p.into_inner());
        SavedBank {
            labels: bank.labels.clone(),
            ptr: bank.ptr,
            batch_size: bank.batch_size,
            accumulated: bank.accumulated,
            rng: None,
        }
        .into_state(bank.features.as_ref())
    }

    fn load_state(&self, state: &LossState) -> Result<()> {
        let (saved, features) =
            SavedBank::from_state(state, "MinerWithBank", self.bank_size_in_batches)?;
        *self.bank.lock().unwrap_or_else(|p| p.into_inner()) = Bank {
            features,
            labels: saved.labels,
            ptr: saved.ptr,
            accumulated: saved.accumulated,
            batch_size: saved.batch_size,
        };
        Ok(())
    }
}

/// What a memory bank keeps besides its features (saved with a trainer's state).
#[derive(Serialize, Deserialize)]
struct SavedBank {
    labels: Vec<i64>,
    ptr: usize,
    batch_size: usize,
    #[serde(default)]
    accumulated: bool,
    #[serde(default)]
    rng: Option<SavedRng>,
}

/// A ChaCha generator's position.
#[derive(Serialize, Deserialize)]
struct SavedRng {
    seed: [u8; 32],
    stream: u64,
    /// A u128, as a string (JSON numbers cannot hold it exactly).
    word_pos: String,
}

impl SavedBank {
    fn into_state(self, features: Option<&Tensor>) -> Result<LossState> {
        let mut state = LossState {
            values: serde_json::to_value(self).map_err(|e| Error::Msg(e.to_string()))?,
            ..LossState::default()
        };
        if let Some(f) = features {
            state.tensors.insert("bank".into(), f.clone());
        }
        Ok(state)
    }

    /// The saved bank of `miner`, checked against its size: a state saved with another bank or
    /// batch size is refused (instead of an out-of-range write at the next batch).
    fn from_state(
        state: &LossState,
        miner: &str,
        batches: usize,
    ) -> Result<(SavedBank, Option<Tensor>)> {
        let saved: SavedBank = serde_json::from_value(state.values.clone())
            .map_err(|e| Error::Msg(format!("{miner}: not a saved bank: {e}")))?;
        let features = state.tensors.get("bank").cloned();
        if saved.batch_size == 0 && features.is_none() {
            return Ok((saved, features)); // saved before the first batch
        }
        let size = saved.batch_size * batches;
        let rows = match &features {
            Some(f) => f.dims2()?.0,
            None => 0,
        };
        let aligned = saved.batch_size > 0 && saved.ptr.is_multiple_of(saved.batch_size);
        if saved.labels.len() != size || saved.ptr >= size || !aligned || rows != size {
            return Err(Error::Msg(format!(
                "{miner}: the saved bank ({} labels, {rows} rows, position {}) does not fit \
                 {batches} batches of {}; resume with the loss and batch settings of the \
                 original run",
                saved.labels.len(),
                saved.ptr,
                saved.batch_size
            )));
        }
        Ok((saved, features))
    }
}

/// Per anchor, distinct positives and negatives from the bank (index >= bs) or the batch,
/// averaged over anchors.
fn bank_logs(t: &Triplets, bs: usize) -> BTreeMap<String, f64> {
    let mut per: BTreeMap<usize, [BTreeSet<usize>; 2]> = BTreeMap::new();
    let unique: BTreeSet<(usize, usize, usize)> = (0..t.len())
        .map(|i| (t.anchors[i], t.positives[i], t.negatives[i]))
        .collect();
    for (a, p, n) in unique {
        let e = per.entry(a).or_default();
        e[0].insert(p);
        e[1].insert(n);
    }
    let k = per.len().max(1) as f64;
    let count = |which: usize, bank: bool| -> f64 {
        per.values()
            .map(|s| s[which].iter().filter(|&&i| (i >= bs) == bank).count() as f64)
            .sum::<f64>()
            / k
    };
    BTreeMap::from([
        ("positives_from_bank".to_owned(), count(0, true)),
        ("positives_from_batch".to_owned(), count(0, false)),
        ("negatives_from_bank".to_owned(), count(1, true)),
        ("negatives_from_batch".to_owned(), count(1, false)),
    ])
}

struct Memory {
    features: Option<Tensor>,
    labels: Vec<i64>,
    ptr: usize,
    batch_size: usize,
    rng: ChaCha8Rng,
}

/// OML's `TripletMinerWithMemory`: all batch triplets plus `(tri_expand_k - 1) / 2` times as many
/// with anchor and positive from a memory bank (negative from the batch) and as many with anchor
/// and positive from the batch (negative from the bank). The bank starts with placeholder
/// one-hot vectors of negative labels, as OML's.
pub struct TripletMinerWithMemory {
    /// Batches kept.
    pub bank_size_in_batches: usize,
    /// Expansion factor of the triplets (1: the batch's only).
    pub tri_expand_k: usize,
    memory: Mutex<Memory>,
}

impl TripletMinerWithMemory {
    /// A miner with a bank of `bank_size_in_batches` batches; `tri_expand_k >= 1`. OML loops
    /// forever with a one-batch bank and `tri_expand_k > 1`; that combination is refused here.
    pub fn new(bank_size_in_batches: usize, tri_expand_k: usize, seed: u64) -> Result<Self> {
        if bank_size_in_batches == 0 || tri_expand_k == 0 {
            return Err(Error::param(
                "bank_size_in_batches/tri_expand_k",
                format!("{bank_size_in_batches}/{tri_expand_k}"),
                "both at least 1",
            ));
        }
        if bank_size_in_batches == 1 && tri_expand_k > 1 {
            return Err(Error::param(
                "bank_size_in_batches",
                1,
                "at least 2 when tri_expand_k > 1 (with one batch of placeholders no bank label \
                 has a pair; OML loops forever there)",
            ));
        }
        Ok(TripletMinerWithMemory {
            bank_size_in_batches,
            tri_expand_k,
            memory: Mutex::new(Memory {
                features: None,
                labels: Vec::new(),
                ptr: 0,
                batch_size: 0,
                rng: ChaCha8Rng::seed_from_u64(seed),
            }),
        })
    }

    /// The bank's labels (for tests and inspection).
    pub fn bank_labels(&self) -> Vec<i64> {
        self.memory
            .lock()
            .map(|m| m.labels.clone())
            .unwrap_or_default()
    }
}

impl TripletMiner for TripletMinerWithMemory {
    /// The bank (features, labels, write position) and the generator's seed, stream and position.
    fn state(&self) -> Result<LossState> {
        let mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        SavedBank {
            labels: mem.labels.clone(),
            ptr: mem.ptr,
            batch_size: mem.batch_size,
            accumulated: false,
            rng: Some(SavedRng {
                seed: mem.rng.get_seed(),
                stream: mem.rng.get_stream(),
                word_pos: mem.rng.get_word_pos().to_string(),
            }),
        }
        .into_state(mem.features.as_ref())
    }

    fn load_state(&self, state: &LossState) -> Result<()> {
        let (saved, features) =
            SavedBank::from_state(state, "TripletMinerWithMemory", self.bank_size_in_batches)?;
        let r = saved.rng.ok_or_else(|| {
            Error::Msg("TripletMinerWithMemory: the saved state has no generator".into())
        })?;
        let pos: u128 = r.word_pos.parse().map_err(|e| {
            Error::Msg(format!(
                "TripletMinerWithMemory: generator position {:?}: {e}",
                r.word_pos
            ))
        })?;
        let mut rng = ChaCha8Rng::from_seed(r.seed);
        rng.set_stream(r.stream);
        rng.set_word_pos(pos);
        *self.memory.lock().unwrap_or_else(|p| p.into_inner()) = Memory {
            features,
            labels: saved.labels,
            ptr: saved.ptr,
            batch_size: saved.batch_size,
            rng,
        };
        Ok(())
    }

    fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<Sampled> {
        let mut mem = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let (bs, d) = features.dims2()?;
        let size = bs * self.bank_size_in_batches;
        if mem.batch_size == 0 {
            mem.batch_size = bs;
            mem.labels = (0..self.bank_size_in_batches)
                .flat_map(|_| (1..=bs as i64).map(|l| -l))
                .collect();
            let mut init = vec![0f32; size * d];
            for (i, &l) in mem.labels.iter().enumerate() {
                init[i * d + ((-l) as usize).min(d - 1)] = 1.0;
            }
            mem.features = Some(
                Tensor::from_vec(init, (size, d), features.device())?.to_dtype(features.dtype())?,
            );
        } else if mem.batch_size != bs {
            return Err(Error::Msg(format!(
                "TripletMinerWithMemory needs batches of the same size: {} then {bs}",
                mem.batch_size
            )));
        }
        // Part 1: every batch triplet.
        let batch = AllTripletsMiner::default().mine(&[], labels, None)?;
        if batch.is_empty() {
            return Err(Error::Msg(
                "TripletMinerWithMemory: the batch has no positive pair with a negative".into(),
            ));
        }
        let n1 = batch.len();
        let n2 = n1 * (self.tri_expand_k - 1) / 2;
        let bank_f = mem
            .features
            .clone()
            .ok_or_else(|| Error::Msg("no bank".into()))?;
        let all = Tensor::cat(&[features, &bank_f], 0)?;
        let mut t = Triplets::default();
        if n2 > 0 {
            let batch_pairs: Vec<(usize, usize)> = (0..n1)
                .map(|i| (batch.anchors[i], batch.positives[i]))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
            for (i, &l) in mem.labels.iter().enumerate() {
                groups.entry(l).or_default().push(i);
            }
            let bank_pairs: Vec<(usize, usize)> = groups
                .values()
                .flat_map(|g| {
                    g.iter().flat_map(move |&a| {
                        g.iter().filter(move |&&p| p != a).map(move |&p| (a, p))
                    })
                })
                .collect();
            let mem = &mut *mem;
            let bank_labels = &mem.labels;
            let rng = &mut mem.rng;
            // Part 3: batch anchor and positive, bank negative.
            for _ in 0..n2 {
                let (a, p) = batch_pairs[rng.random_range(0..batch_pairs.len())];
                let n = rng.random_range(0..size);
                if bank_labels[n] != labels[a] {
                    t.push(a, p, bs + n);
                }
            }
            // Part 2: bank anchor and positive, batch negative.
            if !bank_pairs.is_empty() {
                for _ in 0..n2 {
                    let (a, p) = bank_pairs[rng.random_range(0..bank_pairs.len())];
                    let n = rng.random_range(0..bs);
                    if labels[n] != bank_labels[a] {
                        t.push(bs + a, bs + p, n);
                    }
                }
            }
        }
        let n_bank = t.len();
        for i in 0..n1 {
            t.push(batch.anchors[i], batch.positives[i], batch.negatives[i]);
        }
        let (anchors, positives, negatives) = t.gather(&all)?;
        // Update the bank after mining.
        let ptr = mem.ptr;
        let updated = bank_f.slice_assign(&[ptr..ptr + bs, 0..d], &features.detach())?;
        mem.features = Some(updated);
        mem.labels[ptr..ptr + bs].copy_from_slice(labels);
        mem.ptr = (ptr + bs) % size;
        let mut logs = BTreeMap::new();
        logs.insert("bank_triplets".to_owned(), n_bank as f64);
        logs.insert("batch_triplets".to_owned(), n1 as f64);
        Ok(Sampled {
            anchors,
            positives,
            negatives,
            triplets: Some(t),
            device_triplets: None,
            logs,
        })
    }
}
