//! OML's pairwise re-ranker, end to end: [`ConcatSiamese`] (two images stacked along their
//! height, one backbone, an MLP head giving one logit: "how different"), [`PairsMiner`] (hard
//! pairs from a first-stage model's embeddings), its training ([`fit_siamese`], OML's
//! `train_postprocessor` pipeline: binary cross-entropy on the mined pairs), and
//! [`SiameseScorer`], which [`super::PairwiseReranker`] uses to re-order the top-n of a first
//! retrieval.
//!
//! As everywhere in oml, the model keeps its weights as data; every fit or scoring builds the
//! network in the calling code (see [`crate::Model`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::postprocess::{PairwiseReranker, PairwiseScorer, RetrievalPostprocessor};
use super::{QueryGalleryInfo, RetrievalResults, SearchConfig};
use crate::data::{
    ImageLabeledDataset, ImageLoader, ImageQueryGalleryLabeledDataset, LoaderConfig, Transform,
};
use crate::losses::miners::{AllTripletsMiner, HardTripletsMiner, IndexMiner, distance_matrix};
use crate::metrics::Metrics;
use crate::models::Extractor;
use crate::samplers::SamplerConfig;
use crate::train::{OptimizerKind, ParamGroup, Schedule};
use crate::{Error, Model, Result};

/// OML's `ConcatSiamese(extractor, mlp_hidden_dims, use_tta)`: `x = cat([x1, x2], height)`,
/// `logit = head(backbone(x))`, where the head is torchvision's `MLP(feat_dim, [*hidden, 1])`
/// with sigmoid activations and dropout 0.5 between layers, the last layer without a bias.
/// [`ConcatSiamese::predict`] gives `sigmoid(logit)` (a distance-like score in (0, 1)), averaged
/// over both orders with `use_tta`.
///
/// Weights: the backbone's under `extractor.`, the head's as OML names them (`head.0.weight`,
/// `head.0.bias`, `head.3.weight`, ...: linear layer `i` is module `3 i`). The siamese keeps its own
/// copy of the backbone's weights: training it leaves the model it was made from as it was.
pub struct ConcatSiamese {
    backbone: Model,
    head: HashMap<String, Tensor>,
    hidden: Vec<usize>,
    /// Average the scores of both orders (`(x1, x2)` and `(x2, x1)`) when predicting.
    pub use_tta: bool,
}

impl Clone for ConcatSiamese {
    /// An independent copy (its own backbone weights).
    fn clone(&self) -> Self {
        ConcatSiamese {
            backbone: self.backbone.snapshot(),
            head: self.head.clone(),
            hidden: self.hidden.clone(),
            use_tta: self.use_tta,
        }
    }
}

/// The head's layer sizes `(in, out)` and whether each has a bias.
fn head_layers(feat_dim: usize, hidden: &[usize]) -> Vec<(usize, usize, bool)> {
    let mut dims = vec![feat_dim];
    dims.extend_from_slice(hidden);
    dims.push(1);
    (0..dims.len() - 1)
        .map(|i| (dims[i], dims[i + 1], i + 2 < dims.len()))
        .collect()
}

impl ConcatSiamese {
    /// A siamese on `backbone` with a new head (torch's default initialisation of `Linear`,
    /// seeded).
    pub fn new(backbone: Model, mlp_hidden_dims: &[usize], seed: u64) -> Result<Self> {
        if mlp_hidden_dims.contains(&0) {
            return Err(Error::config("mlp_hidden_dims", "every layer size > 0"));
        }
        let feat_dim = backbone.feat_dim()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x51a3_e5e0);
        let mut head = HashMap::new();
        for (i, (cin, cout, bias)) in head_layers(feat_dim, mlp_hidden_dims)
            .into_iter()
            .enumerate()
        {
            let bound = 1.0 / (cin as f32).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let w = Tensor::from_vec(draw(cout * cin), (cout, cin), &Device::Cpu)?;
            head.insert(format!("head.{}.weight", 3 * i), w);
            if bias {
                let b = Tensor::from_vec(draw(cout), cout, &Device::Cpu)?;
                head.insert(format!("head.{}.bias", 3 * i), b);
            }
        }
        Ok(ConcatSiamese {
            backbone: backbone.snapshot(),
            head,
            hidden: mlp_hidden_dims.to_vec(),
            use_tta: false,
        })
    }

    /// The siamese with the weights of `path` (a safetensors file as [`ConcatSiamese::save`]
    /// writes: `extractor.*` and `head.*`); `backbone` gives the architecture and the transform.
    pub fn load(backbone: Model, mlp_hidden_dims: &[usize], path: &Path) -> Result<Self> {
        let mut s = Self::new(backbone, mlp_hidden_dims, 0)?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            Error::Msg(format!(
                "{}: not a re-ranker's weights file ({e}); write one with `oml \
                 train-postprocessor`",
                path.display()
            ))
        })?;
        s.set_state_dict(&tensors).map_err(|e| match e {
            Error::Msg(m) => Error::Msg(format!("{}: {m}", path.display())),
            other => other,
        })?;
        Ok(s)
    }

    /// The backbone.
    pub fn backbone(&self) -> &Model {
        &self.backbone
    }

    /// The head's hidden sizes.
    pub fn mlp_hidden_dims(&self) -> &[usize] {
        &self.hidden
    }

    /// Every weight: `extractor.<backbone key>` and `head.*`.
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        let mut out: HashMap<String, Tensor> = self
            .backbone
            .state_dict()
            .into_iter()
            .map(|(k, v)| (format!("extractor.{k}"), v))
            .collect();
        out.extend(self.head.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Replaces the weights (every key of [`ConcatSiamese::state_dict`], same shapes).
    pub fn set_state_dict(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let mut backbone = HashMap::new();
        let mut head = HashMap::new();
        for (k, v) in tensors {
            if let Some(rest) = k.strip_prefix("extractor.") {
                backbone.insert(rest.to_owned(), v.clone());
            } else if k.starts_with("head.") {
                head.insert(k.clone(), v.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
            } else {
                return Err(Error::Msg(format!(
                    "unexpected key `{k}` (a re-ranker has `extractor.*` and `head.*`)"
                )));
            }
        }
        let mut expected: Vec<(&String, &Tensor)> = self.head.iter().collect();
        expected.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in expected {
            let Some(new) = head.get(k) else {
                return Err(Error::Msg(format!("the head's `{k}` is missing")));
            };
            if new.dims() != v.dims() {
                return Err(Error::Msg(format!(
                    "`{k}` is {:?}; this head (hidden {:?}) needs {:?}",
                    new.dims(),
                    self.hidden,
                    v.dims()
                )));
            }
        }
        if let Some(k) = head.keys().find(|k| !self.head.contains_key(*k)) {
            return Err(Error::Msg(format!(
                "`{k}` is not a weight of this head (hidden {:?})",
                self.hidden
            )));
        }
        self.backbone.set_state_dict(&backbone)?;
        self.head = head;
        Ok(())
    }

    /// Writes every weight to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.state_dict();
        crate::fsio::write_atomic(path, |tmp| {
            candle_core::safetensors::save(&tensors, tmp)?;
            Ok(())
        })
    }

    /// The network on `device`: the backbone's and the head's weights as fresh variables.
    fn build(&self, device: &Device) -> Result<SiameseNet> {
        let (net, backbone_vars) = self.backbone.trainable(device)?;
        let head_vars = VarMap::new();
        let mut layers = Vec::new();
        {
            let mut data = head_vars.data().lock().unwrap_or_else(|p| p.into_inner());
            let feat_dim = net.feat_dim();
            for (i, (_, _, bias)) in head_layers(feat_dim, &self.hidden).into_iter().enumerate() {
                let mut var = |k: String| -> Result<Var> {
                    let t = self
                        .head
                        .get(&k)
                        .ok_or_else(|| Error::Msg(format!("the head's `{k}` is missing")))?;
                    let v = Var::from_tensor(&t.to_device(device)?.copy()?.detach())?;
                    data.insert(k, v.clone());
                    Ok(v)
                };
                let w = var(format!("head.{}.weight", 3 * i))?;
                let b = if bias {
                    Some(var(format!("head.{}.bias", 3 * i))?)
                } else {
                    None
                };
                layers.push((w, b));
            }
        }
        Ok(SiameseNet {
            net,
            backbone_vars,
            head_vars,
            layers,
        })
    }

    /// The logits `[B]` of image pairs `x1`, `x2` (`[B, 3, H, W]` each, transformed), in
    /// inference mode.
    pub fn logits(&self, x1: &Tensor, x2: &Tensor) -> Result<Tensor> {
        let device = self.backbone.device()?;
        let net = self.build(&device)?;
        net.logits(&x1.to_device(&device)?, &x2.to_device(&device)?, None)?
            .to_device(&Device::Cpu)
            .map_err(Into::into)
    }

    /// OML's `predict`: `sigmoid(logit)`, averaged over both orders with `use_tta`.
    pub fn predict(&self, x1: &Tensor, x2: &Tensor) -> Result<Tensor> {
        let device = self.backbone.device()?;
        let net = self.build(&device)?;
        net.predict(
            &x1.to_device(&device)?,
            &x2.to_device(&device)?,
            self.use_tta,
        )?
        .to_device(&Device::Cpu)
        .map_err(Into::into)
    }

    /// A scorer of `(query item, gallery item)` pairs of `dataset` for
    /// [`PairwiseReranker`], images prepared by the backbone's transform.
    pub fn scorer(&self, dataset: &ImageQueryGalleryLabeledDataset) -> Result<SiameseScorer> {
        let device = self.backbone.device()?;
        // Each query meets top-n gallery items: decoded images are kept for the scorer's life.
        let loader = ImageLoader::from_dataset(
            dataset,
            self.backbone.transform().clone(),
            LoaderConfig {
                cache: true,
                ..LoaderConfig::default()
            },
        )?;
        Ok(SiameseScorer {
            net: self.build(&device)?,
            loader,
            batch_size: self.backbone.batch_size().max(1),
            device,
            use_tta: self.use_tta,
        })
    }

    /// Re-ranks the first `top_n` results of `rr` (over `dataset`'s validation items) with
    /// this model: OML's `PairwiseReranker`.
    pub fn rerank(
        &self,
        rr: &RetrievalResults,
        dataset: &ImageQueryGalleryLabeledDataset,
        top_n: usize,
    ) -> Result<RetrievalResults> {
        PairwiseReranker {
            top_n,
            scorer: self.scorer(dataset)?,
        }
        .process(rr)
    }
}

/// A built siamese network.
struct SiameseNet {
    net: Box<dyn Extractor>,
    backbone_vars: VarMap,
    head_vars: VarMap,
    layers: Vec<(Var, Option<Var>)>,
}

impl SiameseNet {
    /// Logits `[B]`; with `train` (a generator for the dropout masks) in training mode.
    fn logits(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        train: Option<(&mut ChaCha8Rng, bool)>,
    ) -> Result<Tensor> {
        if x1.dims() != x2.dims() {
            return Err(Error::Msg(format!(
                "the two images of a pair differ in shape: {:?} and {:?}",
                x1.dims(),
                x2.dims()
            )));
        }
        let x = Tensor::cat(&[x1, x2], 2)?;
        let (mut rng, backbone_grad) = match train {
            Some((rng, grad)) => (Some(rng), grad),
            None => (None, false),
        };
        let mut h = self
            .net
            .forward_t(&x, rng.is_some())?
            .to_dtype(DType::F32)?;
        if !backbone_grad {
            h = h.detach();
        }
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = h.matmul(&w.as_tensor().t()?)?;
            if let Some(b) = b {
                h = h.broadcast_add(b.as_tensor())?;
            }
            if i < last {
                h = candle_nn::ops::sigmoid(&h)?;
                if let Some(rng) = rng.as_deref_mut() {
                    // torch's Dropout(0.5): zero half, scale the rest by 2.
                    let keep: Vec<f32> = (0..h.elem_count())
                        .map(|_| if rng.random_bool(0.5) { 2.0 } else { 0.0 })
                        .collect();
                    let keep = Tensor::from_vec(keep, h.dims(), h.device())?;
                    h = (h * keep)?;
                }
            }
        }
        Ok(h.squeeze(D::Minus1)?)
    }

    fn predict(&self, x1: &Tensor, x2: &Tensor, tta: bool) -> Result<Tensor> {
        let p = candle_nn::ops::sigmoid(&self.logits(x1, x2, None)?)?;
        if !tta {
            return Ok(p);
        }
        let q = candle_nn::ops::sigmoid(&self.logits(x2, x1, None)?)?;
        Ok(((p + q)? / 2.0)?)
    }

    /// The current weights as CPU copies, backbone and head.
    fn weights(&self) -> Result<(HashMap<String, Tensor>, HashMap<String, Tensor>)> {
        let copy = |vm: &VarMap| -> Result<HashMap<String, Tensor>> {
            let data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
            data.iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        v.as_tensor().to_device(&Device::Cpu)?.copy()?.detach(),
                    ))
                })
                .collect()
        };
        Ok((copy(&self.backbone_vars)?, copy(&self.head_vars)?))
    }
}

/// Scores pairs of items of a dataset with a built [`ConcatSiamese`] (see
/// [`ConcatSiamese::scorer`]).
pub struct SiameseScorer {
    net: SiameseNet,
    loader: ImageLoader,
    batch_size: usize,
    device: Device,
    use_tta: bool,
}

impl PairwiseScorer for SiameseScorer {
    fn score(&self, pairs: &[(usize, usize)]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(self.batch_size) {
            let a: Vec<usize> = chunk.iter().map(|p| p.0).collect();
            let b: Vec<usize> = chunk.iter().map(|p| p.1).collect();
            let x1 = self
                .loader
                .load_batch(&a, 0, 0)?
                .images
                .to_device(&self.device)?;
            let x2 = self
                .loader
                .load_batch(&b, 0, 0)?
                .images
                .to_device(&self.device)?;
            let s = self.net.predict(&x1, &x2, self.use_tta)?;
            out.extend(crate::host::read::<f32>(&s, "re-ranker: scores")?);
        }
        Ok(out)
    }
}

/// Pairs of batch rows for training a pairwise model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinedPairs {
    /// First rows.
    pub first: Vec<usize>,
    /// Second rows.
    pub second: Vec<usize>,
    /// Whether each pair is of two labels (the training target: 1 for different).
    pub is_negative: Vec<bool>,
}

/// OML's `PairsMiner(hard_mining)`: the triplets of `HardTripletsMiner` (or every triplet)
/// broken into their anchor-positive and anchor-negative pairs, each pair once (as `(min, max)`),
/// positives first. OML orders pairs by a Python set's iteration; here each group is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairsMiner {
    /// The hardest positive and negative per anchor; every triplet otherwise.
    pub hard_mining: bool,
}

impl PairsMiner {
    /// The pairs of `features` `[B, D]` with `labels` (OML's Euclidean distances).
    pub fn sample(&self, features: &Tensor, labels: &[i64]) -> Result<MinedPairs> {
        crate::losses::miners::check_labels(labels)?;
        let dist = distance_matrix(features, "re-ranker: pairs miner")?;
        let t = if self.hard_mining {
            HardTripletsMiner.mine(&dist, labels, None)?
        } else {
            AllTripletsMiner::default().mine(&dist, labels, None)?
        };
        let sorted = |a: usize, b: usize| (a.min(b), a.max(b));
        let pos: BTreeSet<(usize, usize)> = t
            .anchors
            .iter()
            .zip(&t.positives)
            .map(|(&a, &p)| sorted(a, p))
            .collect();
        let neg: BTreeSet<(usize, usize)> = t
            .anchors
            .iter()
            .zip(&t.negatives)
            .map(|(&a, &n)| sorted(a, n))
            .collect();
        let mut out = MinedPairs::default();
        for (set, negative) in [(pos, false), (neg, true)] {
            for (a, b) in set {
                out.first.push(a);
                out.second.push(b);
                out.is_negative.push(negative);
            }
        }
        Ok(out)
    }
}

/// How a re-ranker trains (OML's `train_postprocessor` keys). Every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairwiseFitConfig {
    /// Seed of the sampler, the augmentations and the dropout.
    pub seed: u64,
    /// Epochs.
    pub max_epochs: usize,
    /// Stop after this many steps (none: every epoch).
    pub max_steps: Option<usize>,
    /// Which batches (pairs are mined inside each).
    pub sampler: SamplerConfig,
    /// The optimiser (default AdamW 1e-4).
    pub optimizer: OptimizerKind,
    /// The learning rate over the run's steps (default constant).
    pub scheduler: Schedule,
    /// Epochs with the backbone frozen (only the head trains), as OML's `freeze_n_epochs`.
    pub freeze_n_epochs: usize,
    /// Hardest pairs (OML's default) or every pair of each batch.
    pub hard_pairs_mining: bool,
    /// Results per query that the validation re-ranks.
    pub top_n: usize,
    /// Validate every this many epochs (0: only after the last).
    pub valid_every_epochs: usize,
    /// A progress line every this many steps.
    pub log_every_steps: usize,
}

impl Default for PairwiseFitConfig {
    fn default() -> Self {
        PairwiseFitConfig {
            seed: 0,
            max_epochs: 10,
            max_steps: None,
            sampler: SamplerConfig::balance(8, 4),
            optimizer: OptimizerKind::adamw(1e-4),
            scheduler: Schedule::default(),
            freeze_n_epochs: 0,
            hard_pairs_mining: true,
            top_n: 5,
            valid_every_epochs: 1,
            log_every_steps: 20,
        }
    }
}

impl PairwiseFitConfig {
    /// Checks the values, naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.max_epochs == 0 {
            return Err(Error::config("max_epochs", "at least 1"));
        }
        if self.top_n < 2 {
            return Err(Error::config(
                "top_n",
                "at least 2 results to re-rank per query",
            ));
        }
        self.optimizer.validate()?;
        self.scheduler.validate()?;
        if matches!(self.scheduler, Schedule::Plateau { .. }) {
            return Err(Error::config(
                "scheduler",
                "plateau is not supported for the re-ranker (a schedule over steps is)",
            ));
        }
        Ok(())
    }
}

/// Metrics of one validation: the first stage's and after re-ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankValidation {
    /// Epochs done.
    pub epoch: usize,
    /// Steps done.
    pub step: usize,
    /// The first stage's metrics (flat: `OVERALL/cmc/1`).
    pub before: BTreeMap<String, f64>,
    /// After re-ranking the top-n.
    pub after: BTreeMap<String, f64>,
}

/// What [`fit_siamese`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairwiseFitReport {
    /// Steps run.
    pub steps: usize,
    /// Epochs completed.
    pub epochs: usize,
    /// The loss of every step.
    pub losses: Vec<f64>,
    /// Every validation.
    pub validations: Vec<RerankValidation>,
    /// Seconds of training and validation.
    pub seconds: f64,
}

/// The metrics of the first stage (`emb`, the first model's embeddings of `val`) and after
/// `siamese` re-ranks each query's `top_n`.
pub fn rerank_metrics(
    siamese: &ConcatSiamese,
    val: &ImageQueryGalleryLabeledDataset,
    emb: &Tensor,
    top_n: usize,
) -> Result<(Metrics, Metrics)> {
    let config = crate::metrics::MetricsConfig::common();
    let search = SearchConfig {
        top_n: config.max_k().max(top_n),
        ..SearchConfig::default()
    };
    let rr =
        RetrievalResults::from_embeddings_with(emb, &QueryGalleryInfo::from_dataset(val), &search)?;
    let before = rr.metrics_with(&config)?;
    let after = siamese.rerank(&rr, val, top_n)?.metrics_with(&config)?;
    Ok((before, after))
}

/// Trains `siamese` as OML's `train_postprocessor` does: batches of `train` from the sampler;
/// in each, pairs mined from `train_emb` (the first-stage model's embeddings of `train`, one row
/// per item) with [`PairsMiner`]; binary cross-entropy of the siamese's logits against "the two
/// labels differ"; the backbone frozen for `freeze_n_epochs`. With `val` (its first-stage
/// embeddings beside), each validation re-ranks the top-n and reports metrics before and after.
pub fn fit_siamese(
    siamese: &mut ConcatSiamese,
    train: &ImageLabeledDataset,
    train_emb: &Tensor,
    val: Option<(&ImageQueryGalleryLabeledDataset, &Tensor)>,
    train_transform: Transform,
    cfg: &PairwiseFitConfig,
) -> Result<PairwiseFitReport> {
    cfg.validate()?;
    let (n, _) = train_emb.dims2()?;
    if n != train.len() {
        return Err(Error::Msg(format!(
            "{n} first-stage embeddings for {} training images: embed the training rows with \
             the first-stage model",
            train.len()
        )));
    }
    let start = Instant::now();
    let device = siamese.backbone.device()?;
    let net = siamese.build(&device)?;
    let groups = vec![
        ParamGroup {
            name: "backbone".into(),
            params: ParamGroup::vars_of(&net.backbone_vars),
            lr_scale: 1.0,
            frozen: cfg.freeze_n_epochs > 0,
        },
        ParamGroup {
            name: "head".into(),
            params: ParamGroup::vars_of(&net.head_vars),
            lr_scale: 1.0,
            frozen: false,
        },
    ];
    let mut optimizer = crate::train::Optimizer::new(cfg.optimizer, groups)?;
    let sampler = cfg.sampler.build(train, cfg.seed)?;
    let loader = ImageLoader::new(
        Arc::new(train.clone()),
        train_transform,
        LoaderConfig {
            prefetch: 2,
            cache: false,
            seed: cfg.seed,
        },
    )?;
    let train_emb = train_emb.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let miner = PairsMiner {
        hard_mining: cfg.hard_pairs_mining,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xd80_9047);
    let total = sampler.len() * cfg.max_epochs;
    let mut report = PairwiseFitReport {
        steps: 0,
        epochs: 0,
        losses: Vec::new(),
        validations: Vec::new(),
        seconds: 0.0,
    };
    let validate = |siamese: &mut ConcatSiamese,
                    net: &SiameseNet,
                    report: &mut PairwiseFitReport|
     -> Result<()> {
        let Some((val, val_emb)) = val else {
            return Ok(());
        };
        let (backbone, head) = net.weights()?;
        siamese.backbone.set_state_dict(&backbone)?;
        siamese.head = head;
        let (before, after) = rerank_metrics(siamese, val, val_emb, cfg.top_n)?;
        let (before, after) = (before.flat(), after.flat());
        println!(
            "re-ranker validation after epoch {} (step {}): cmc@1 {:.4} -> {:.4}",
            report.epochs.saturating_sub(1),
            report.steps,
            before.get("OVERALL/cmc/1").copied().unwrap_or(f64::NAN),
            after.get("OVERALL/cmc/1").copied().unwrap_or(f64::NAN)
        );
        report.validations.push(RerankValidation {
            epoch: report.epochs,
            step: report.steps,
            before,
            after,
        });
        Ok(())
    };
    'run: for epoch in 0..cfg.max_epochs {
        let frozen = epoch < cfg.freeze_n_epochs;
        optimizer.groups[0].frozen = frozen;
        let batches = sampler.batches(epoch as u64);
        for b in loader.iter(batches, epoch as u64) {
            if cfg.max_steps.is_some_and(|m| report.steps >= m) {
                break 'run;
            }
            let b = b?;
            let labels: Vec<i64> = b
                .indices
                .iter()
                .map(|&j| train.labels()[j] as i64)
                .collect();
            let ids: Vec<u32> = b.indices.iter().map(|&j| j as u32).collect();
            let feats = train_emb.index_select(&Tensor::new(ids.as_slice(), &Device::Cpu)?, 0)?;
            let pairs = miner.sample(&feats, &labels)?;
            let images = b.images.to_device(&device)?;
            let pick = |rows: &[usize]| -> Result<Tensor> {
                let r: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
                Ok(images.index_select(&Tensor::new(r.as_slice(), &device)?, 0)?)
            };
            let x1 = pick(&pairs.first)?;
            let x2 = pick(&pairs.second)?;
            let logits = net.logits(&x1, &x2, Some((&mut rng, !frozen)))?;
            let target: Vec<f32> = pairs
                .is_negative
                .iter()
                .map(|&t| f32::from(u8::from(t)))
                .collect();
            let target = Tensor::from_vec(target, pairs.is_negative.len(), &device)?;
            let loss = bce_with_logits(&logits, &target)?;
            let value = crate::host::scalar::<f32>(&loss, "re-ranker: loss")? as f64;
            if !value.is_finite() {
                return Err(Error::Msg(format!(
                    "the re-ranker's loss is {value} at step {}: lower the learning rate",
                    report.steps + 1
                )));
            }
            let grads = loss.backward()?;
            let lr = cfg.optimizer.lr() * cfg.scheduler.factor(report.steps, total);
            optimizer.set_momentum(cfg.scheduler.momentum(report.steps, total));
            optimizer.step(&grads, lr, 1.0)?;
            report.steps += 1;
            report.losses.push(value);
            if report.steps.is_multiple_of(cfg.log_every_steps.max(1)) {
                println!(
                    "re-ranker epoch {epoch} step {}: loss {value:.4} ({} pairs)",
                    report.steps,
                    pairs.first.len()
                );
            }
        }
        report.epochs = epoch + 1;
        let every = cfg.valid_every_epochs;
        if every > 0 && (epoch + 1).is_multiple_of(every) && epoch + 1 < cfg.max_epochs {
            validate(siamese, &net, &mut report)?;
        }
    }
    // The weights a run ends with are always validated (after the last epoch or a step budget).
    if report
        .validations
        .last()
        .is_none_or(|v| v.step != report.steps)
    {
        validate(siamese, &net, &mut report)?;
    }
    let (backbone, head) = net.weights()?;
    siamese.backbone.set_state_dict(&backbone)?;
    siamese.head = head;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// torch's `BCEWithLogitsLoss()` (mean): `max(x, 0) - x t + log(1 + exp(-|x|))`.
fn bce_with_logits(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let per =
        ((logits.relu()? - (logits * target)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(per.mean_all()?)
}
