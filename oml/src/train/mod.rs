//! Fine-tuning: a trainer that runs the same from a notebook cell, a background thread and the
//! command line.
//!
//! Epochs of [`BalanceSampler`] batches through the [`ImageLoader`], a [`Criterion`] on the
//! embeddings, an [`Optimizer`] with parameter groups (backbone vs loss head), a learning-rate
//! [`Schedule`], gradient clipping, a frozen backbone for the first epochs, validation with the
//! retrieval metrics every N epochs, the best and last checkpoints, and a history of every step.
//! Budgets (steps, seconds) and a stop handle end a run cleanly; a NaN or infinite loss stops it
//! with the step named. State files make a resumed run end exactly where an uninterrupted one does.

pub mod optim;
pub mod plots;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

pub use optim::{GradScaler, Optimizer, OptimizerKind, ParamGroup, Schedule};

use crate::data::{
    ImageLabeledDataset, ImageLoader, ImageQueryGalleryLabeledDataset, LoaderConfig, Transform,
};
use crate::device::Precision;
use crate::losses::Criterion;
use crate::metrics::{Metrics, MetricsConfig};
use crate::models::{Autocast, Extractor};
use crate::retrieval::{QueryGalleryInfo, SearchConfig};
use crate::samplers::{BalanceSampler, BatchSampler};
use crate::{Error, Result};

/// Settings of a run (everything but the model, the loss and the data).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitConfig {
    /// Seed of the sampler and the augmentations.
    pub seed: u64,
    /// Epochs to run.
    pub max_epochs: usize,
    /// Labels per batch.
    pub n_labels: usize,
    /// Images per label in a batch.
    pub n_instances: usize,
    /// Update rule and base learning rate.
    pub optimizer: OptimizerKind,
    /// Learning rate over the run.
    #[serde(default)]
    pub scheduler: Schedule,
    /// Learning rate of the backbone over the base (the loss's parameters get the base).
    #[serde(default = "one")]
    pub backbone_lr_scale: f64,
    /// Epochs with the backbone frozen (OML's `freeze_n_epochs`).
    #[serde(default)]
    pub freeze_backbone_epochs: usize,
    /// Clip gradients to this global L2 norm.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Validate every this many epochs (0: never; the last epoch always validates).
    #[serde(default = "one_usize")]
    pub valid_every_epochs: usize,
    /// Stop after this many optimiser steps.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Stop after this many seconds of training.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// A progress line every this many steps (in addition to `log_every_seconds`).
    #[serde(default = "ten")]
    pub log_every_steps: usize,
    /// A progress line at least this often, in seconds.
    #[serde(default = "thirty")]
    pub log_every_seconds: f64,
    /// The metric that picks the best checkpoint (`OVERALL/cmc/1`).
    #[serde(default = "cmc1")]
    pub checkpoint_metric: String,
    /// Retrieval metrics at validation (default: cmc@1,5, precision@5, map@5).
    #[serde(default = "default_metrics")]
    pub metrics: MetricsConfig,
    /// Images per validation batch.
    #[serde(default = "b32")]
    pub val_batch_size: usize,
    /// Where checkpoints, history and plots go (none: memory only).
    #[serde(default)]
    pub logs_dir: Option<PathBuf>,
    /// Keep decoded training images in memory after the first epoch (fast for small datasets;
    /// memory grows with the dataset).
    #[serde(default)]
    pub cache_images: bool,
    /// `f32`, or mixed precision `bf16` / `f16` (see [`Precision`]); validation runs in it too.
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> f64 {
    1.0
}
fn one_usize() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn thirty() -> f64 {
    30.0
}
fn cmc1() -> String {
    "OVERALL/cmc/1".to_owned()
}
fn b32() -> usize {
    32
}

/// The metrics a run validates with unless told otherwise: cmc@1 and @5, precision@5, map@5.
pub fn default_metrics() -> MetricsConfig {
    MetricsConfig {
        cmc_top_k: vec![1, 5],
        precision_top_k: vec![5],
        map_top_k: vec![5],
        pcf_variance: vec![],
        ..MetricsConfig::default()
    }
}

/// Checks that `path` (`OVERALL/cmc/1`) names a metric `config` computes.
pub fn check_metric_path(path: &str, config: &MetricsConfig) -> Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    let listed = |ks: &[usize], k: &str| ks.iter().any(|x| x.to_string() == k);
    let ok = match parts.as_slice() {
        [_, "cmc", k] => listed(&config.cmc_top_k, k),
        [_, "precision", k] => listed(&config.precision_top_k, k),
        [_, "map", k] => listed(&config.map_top_k, k),
        [_, _, _] => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::param(
            "checkpoint_metric",
            path,
            "GROUP/metric/k (e.g. OVERALL/cmc/1) with k among the metrics' top_k lists",
        ))
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            seed: 0,
            max_epochs: 10,
            n_labels: 8,
            n_instances: 4,
            optimizer: OptimizerKind::Adamw {
                lr: 1e-4,
                weight_decay: 0.01,
                betas: (0.9, 0.999),
                eps: 1e-8,
            },
            scheduler: Schedule::default(),
            backbone_lr_scale: 1.0,
            freeze_backbone_epochs: 0,
            clip_grad_norm: None,
            valid_every_epochs: 1,
            max_steps: None,
            max_seconds: None,
            log_every_steps: 10,
            log_every_seconds: 30.0,
            checkpoint_metric: cmc1(),
            metrics: default_metrics(),
            val_batch_size: 32,
            logs_dir: None,
            cache_images: false,
            precision: Precision::F32,
        }
    }
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// An optimiser step.
    Step {
        /// Epoch (0-based).
        epoch: usize,
        /// Global step (1-based after the update).
        step: usize,
        /// Loss value (NaN for an f16 step whose forward pass overflowed; `null` in JSON).
        #[serde(deserialize_with = "nan_if_null")]
        loss: f64,
        /// Learning rate (base, after the schedule).
        lr: f64,
        /// The loss's logs (`active_tri`, ...).
        logs: BTreeMap<String, f64>,
        /// Seconds since the run (or resume) started.
        seconds: f64,
    },
    /// A validation.
    Validation {
        /// Epoch (0-based) after which it ran.
        epoch: usize,
        /// Global step.
        step: usize,
        /// Flat metrics (`OVERALL/cmc/1` -> value).
        metrics: BTreeMap<String, f64>,
        /// Distances query -> nearest positive (first gallery hit), for histograms.
        pos_dist: Vec<f32>,
        /// Distances query -> nearest negative.
        neg_dist: Vec<f32>,
    },
}

/// A float that JSON wrote as `null` (serde_json's spelling of NaN and infinities) read as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// All epochs ran.
    Completed,
    /// `max_steps` reached.
    StepBudget,
    /// `max_seconds` reached.
    TimeBudget,
    /// The stop handle was set.
    Stopped,
}

/// The outcome of [`Trainer::fit`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitReport {
    /// Why it ended.
    pub ending: Ending,
    /// Steps run in total.
    pub steps: usize,
    /// Epochs completed.
    pub epochs: usize,
    /// The best value of the checkpoint metric and the epoch it was reached.
    pub best: Option<(f64, usize)>,
    /// The last validation's metrics.
    pub last_metrics: Option<BTreeMap<String, f64>>,
    /// Training seconds in this call.
    pub seconds: f64,
}

/// The live history of a run: shared with the caller (a notebook cell can read it while the run
/// goes on in a thread).
pub type History = Arc<Mutex<Vec<Record>>>;

/// A fine-tuning run.
pub struct Trainer {
    model: Box<dyn Extractor>,
    backbone: VarMap,
    criterion: Box<dyn Criterion>,
    criterion_vars: VarMap,
    train: ImageLabeledDataset,
    train_transform: Transform,
    val: Option<(ImageQueryGalleryLabeledDataset, Transform)>,
    device: Device,
    cfg: FitConfig,
    optimizer: Optimizer,
    history: History,
    stop: Arc<AtomicBool>,
    epoch: usize,
    batch_in_epoch: usize,
    step: usize,
    best: Option<(f64, usize)>,
    /// Loss scaling under f16 mixed precision.
    scaler: Option<GradScaler>,
}

impl Trainer {
    /// A run: `model` with its variables in `backbone`, `criterion` with its own (ArcFace's
    /// centres; empty for triplet losses) in `criterion_vars`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Box<dyn Extractor>,
        backbone: VarMap,
        criterion: Box<dyn Criterion>,
        criterion_vars: VarMap,
        train: ImageLabeledDataset,
        train_transform: Transform,
        val: Option<(ImageQueryGalleryLabeledDataset, Transform)>,
        device: Device,
        cfg: FitConfig,
    ) -> Result<Self> {
        if cfg.max_epochs == 0 {
            return Err(Error::param("max_epochs", 0, "at least 1"));
        }
        // The sampler checks n_labels / n_instances against the data.
        BalanceSampler::new(train.labels(), cfg.n_labels, cfg.n_instances)?;
        cfg.metrics.validate()?;
        cfg.scheduler.validate()?;
        check_metric_path(&cfg.checkpoint_metric, &cfg.metrics)?;
        if cfg.val_batch_size == 0 {
            return Err(Error::param("val_batch_size", 0, "at least 1"));
        }
        if let Some(s) = cfg.max_seconds
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::param(
                "max_seconds",
                s,
                "a finite number of seconds > 0",
            ));
        }
        if let Some((v, _)) = &val
            && (v.query_ids().is_empty() || v.gallery_ids().is_empty())
        {
            return Err(Error::Msg(
                "the validation rows need at least one query and one gallery item".into(),
            ));
        }
        if let Some(c) = cfg.clip_grad_norm
            && c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(Error::param("clip_grad_norm", c, "a positive norm"));
        }
        // An MLP head (`projection.*`) is not part of the backbone: it trains while the backbone
        // is frozen, as in OML.
        let (head, body): (Vec<_>, Vec<_>) = ParamGroup::vars_of(&backbone)
            .into_iter()
            .partition(|(k, _)| k.starts_with("projection."));
        if cfg.freeze_backbone_epochs > 0
            && head.is_empty()
            && ParamGroup::vars_of(&criterion_vars).is_empty()
        {
            return Err(Error::param(
                "freeze_backbone_epochs",
                cfg.freeze_backbone_epochs,
                "0 for a model without a head and a loss without parameters: nothing would train",
            ));
        }
        let groups = vec![
            ParamGroup {
                name: "backbone".into(),
                params: body,
                lr_scale: cfg.backbone_lr_scale,
                frozen: cfg.freeze_backbone_epochs > 0,
            },
            ParamGroup {
                name: "head".into(),
                params: head,
                lr_scale: 1.0,
                frozen: false,
            },
            ParamGroup {
                name: "criterion".into(),
                params: ParamGroup::vars_of(&criterion_vars),
                lr_scale: 1.0,
                frozen: false,
            },
        ];
        if groups.iter().all(|g| g.params.is_empty()) {
            return Err(Error::Msg(
                "nothing to train: the model's weights are constants (build it with a VarMap)"
                    .into(),
            ));
        }
        let optimizer = Optimizer::new(cfg.optimizer, groups)?;
        let scaler = (cfg.precision == Precision::F16).then(GradScaler::default);
        Ok(Trainer {
            model,
            backbone,
            criterion,
            criterion_vars,
            train,
            train_transform,
            val,
            device,
            cfg,
            optimizer,
            history: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            best: None,
            scaler,
        })
    }

    /// The history, shared (read it from another thread while `fit` runs).
    pub fn history(&self) -> History {
        self.history.clone()
    }

    /// Set it to stop the run after the current step (a notebook cannot interrupt a cell). The
    /// run that stops clears it, so calling [`Trainer::fit`] again continues.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The model.
    pub fn model(&self) -> &dyn Extractor {
        self.model.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &FitConfig {
        &self.cfg
    }

    /// Changes the budgets (for a resumed or continued run).
    pub fn set_budget(&mut self, max_steps: Option<usize>, max_seconds: Option<f64>) {
        self.cfg.max_steps = max_steps;
        self.cfg.max_seconds = max_seconds;
    }

    /// Steps run so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    fn steps_per_epoch(&self) -> Result<usize> {
        Ok(self.sampler()?.batches(0).len())
    }

    fn sampler(&self) -> Result<BalanceSampler> {
        Ok(
            BalanceSampler::new(self.train.labels(), self.cfg.n_labels, self.cfg.n_instances)?
                .with_seed(self.cfg.seed),
        )
    }

    fn record(&self, r: Record) -> Result<()> {
        if let Some(dir) = &self.cfg.logs_dir {
            let path = dir.join("metrics.jsonl");
            let line = serde_json::to_string(&r).map_err(|e| Error::Msg(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io("cannot write", &path, e))?;
            writeln!(f, "{line}").map_err(|e| Error::io("cannot write", &path, e))?;
        }
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
        Ok(())
    }

    /// Embeddings of the validation set and its metrics.
    pub fn validate(&self) -> Result<Option<(Metrics, Record)>> {
        let Some((val, transform)) = &self.val else {
            return Ok(None);
        };
        let source: Arc<dyn crate::data::ImageSource> = Arc::new(val.clone());
        let emb = crate::embed::embed(
            &Autocast::new(self.model.as_ref(), self.cfg.precision.dtype()),
            source,
            transform.clone(),
            self.cfg.val_batch_size,
            &self.device,
        )?;
        let info = QueryGalleryInfo::from_dataset(val);
        let search = SearchConfig {
            top_n: self.cfg.metrics.max_k().max(1),
            ..SearchConfig::default()
        };
        let (rr, metrics) = crate::metrics::evaluate(&emb, &info, &self.cfg.metrics, &search)?;
        let mut flat = BTreeMap::new();
        for (group, g) in &metrics.groups {
            for (metric, values) in g {
                for (k, v) in values {
                    flat.insert(format!("{group}/{metric}/{k}"), *v);
                }
            }
        }
        let (pos, neg) = first_hits(&rr);
        let rec = Record::Validation {
            epoch: self.epoch.saturating_sub(1),
            step: self.step,
            metrics: flat,
            pos_dist: pos,
            neg_dist: neg,
        };
        Ok(Some((metrics, rec)))
    }

    /// Runs until the epochs are done, a budget is spent or the stop handle is set. Callable
    /// again after a budget stop (or after [`Trainer::resume`]): it continues where it ended.
    pub fn fit(&mut self) -> Result<FitReport> {
        let start = Instant::now();
        if let Some(dir) = &self.cfg.logs_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
            if self.step == 0 && self.epoch == 0 && self.batch_in_epoch == 0 {
                // A fresh run does not append to an old run's history.
                let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
            }
            let cfg = serde_norway::to_string(&self.cfg).map_err(|e| Error::Msg(e.to_string()))?;
            std::fs::write(dir.join("fit_config.yaml"), cfg)
                .map_err(|e| Error::io("cannot write", dir, e))?;
        }
        let loader = ImageLoader::new(
            Arc::new(self.train.clone()),
            self.train_transform.clone(),
            LoaderConfig {
                prefetch: 2,
                cache: self.cfg.cache_images,
                seed: self.cfg.seed,
            },
        )?;
        let per_epoch = self.steps_per_epoch()?;
        let total = per_epoch * self.cfg.max_epochs;
        let batch = self.cfg.n_labels * self.cfg.n_instances;
        let mut last_line = Instant::now();
        let mut images_since = 0usize;
        let mut since = Instant::now();
        let mut last_metrics = None;
        let ending = 'run: loop {
            if self.epoch >= self.cfg.max_epochs {
                break 'run Ending::Completed;
            }
            let frozen = self.epoch < self.cfg.freeze_backbone_epochs;
            self.optimizer.groups[0].frozen = frozen;
            let batches: Vec<Vec<usize>> = self
                .sampler()?
                .batches(self.epoch as u64)
                .into_iter()
                .skip(self.batch_in_epoch)
                .collect();
            for b in loader.iter_from(batches, self.epoch as u64, self.batch_in_epoch) {
                if self.stop.load(Ordering::Relaxed) {
                    break 'run Ending::Stopped;
                }
                if self.cfg.max_steps.is_some_and(|m| self.step >= m) {
                    break 'run Ending::StepBudget;
                }
                if self
                    .cfg
                    .max_seconds
                    .is_some_and(|s| start.elapsed().as_secs_f64() >= s)
                {
                    break 'run Ending::TimeBudget;
                }
                let b = b?;
                let labels: Vec<i64> = b
                    .indices
                    .iter()
                    .map(|&j| self.train.labels()[j] as i64)
                    .collect();
                let x = b.images.to_device(&self.device)?;
                let net = Autocast::new(self.model.as_ref(), self.cfg.precision.dtype());
                let emb = net.forward_t(&x, !frozen)?;
                let out = self.criterion.forward(&emb, &labels)?;
                let loss = out
                    .loss
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()? as f64;
                // A relu can turn NaN embeddings into a finite loss: check both.
                let emb_sum = emb
                    .detach()
                    .sum_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?;
                let finite = loss.is_finite() && emb_sum.is_finite();
                // Under f16 a non-finite forward pass is an overflow, handled below as PyTorch's
                // GradScaler handles it: the step skipped, the loss scale halved.
                if !finite && self.scaler.is_none() {
                    let kept = self.cfg.logs_dir.as_ref().map(|d| {
                        format!(
                            "; the last good checkpoint is {}",
                            d.join("last.safetensors").display()
                        )
                    });
                    return Err(Error::Msg(format!(
                        "the loss is {loss} (embeddings finite: {}) at step {} (epoch {}): lower the \
                         learning rate or clip gradients (clip_grad_norm){}",
                        emb_sum.is_finite(),
                        self.step + 1,
                        self.epoch,
                        kept.unwrap_or_default()
                    )));
                }
                let (grads, unscale) = match (&self.scaler, finite) {
                    (Some(sc), true) => (Some((&out.loss * sc.scale)?.backward()?), 1.0 / sc.scale),
                    (Some(sc), false) => (None, 1.0 / sc.scale),
                    (None, _) => (Some(out.loss.backward()?), 1.0),
                };
                let norm = match (&grads, self.cfg.clip_grad_norm, &self.scaler) {
                    (Some(g), Some(_), _) | (Some(g), _, Some(_)) => {
                        Some(self.optimizer.grad_norm(g)? * unscale)
                    }
                    _ => None,
                };
                let mut logs = out.logs.clone();
                let apply = match self.scaler.as_mut() {
                    Some(sc) => {
                        logs.insert("loss_scale".into(), sc.scale);
                        let ok = sc.update(norm.is_some_and(f64::is_finite));
                        if !ok && sc.scale < 1.0 / GradScaler::INIT {
                            return Err(Error::Msg(format!(
                                "the forward pass or the gradients overflow f16 at every loss \
                                 scale down to {:e} (step {}, epoch {}): train with precision bf16 \
                                 or f32, or lower the learning rate",
                                sc.scale,
                                self.step + 1,
                                self.epoch
                            )));
                        }
                        ok
                    }
                    None => true,
                };
                let scale = match (self.cfg.clip_grad_norm, norm) {
                    (Some(c), Some(n)) if apply => {
                        if !n.is_finite() {
                            return Err(Error::Msg(format!(
                                "the gradient norm is {n} at step {} (epoch {}): lower the learning rate",
                                self.step + 1,
                                self.epoch
                            )));
                        }
                        unscale * if n > c { c / n } else { 1.0 }
                    }
                    _ => unscale,
                };
                let lr = self.cfg.optimizer.lr() * self.cfg.scheduler.factor(self.step, total);
                if let (true, Some(grads)) = (apply, &grads) {
                    let momentum = self.cfg.scheduler.momentum(self.step, total);
                    self.optimizer.set_momentum(momentum);
                    self.optimizer.step(grads, lr, scale)?;
                } else {
                    // An overflowed f16 step: no update, the scale halved (PyTorch's GradScaler).
                    logs.insert("skipped".into(), 1.0);
                }
                self.step += 1;
                self.batch_in_epoch += 1;
                images_since += batch;
                self.record(Record::Step {
                    epoch: self.epoch,
                    step: self.step,
                    loss,
                    lr,
                    logs: logs.clone(),
                    seconds: start.elapsed().as_secs_f64(),
                })?;
                let due = self.step.is_multiple_of(self.cfg.log_every_steps.max(1))
                    || last_line.elapsed().as_secs_f64() >= self.cfg.log_every_seconds;
                if due {
                    let rate = images_since as f64 / since.elapsed().as_secs_f64().max(1e-9);
                    let left = match self.cfg.max_steps {
                        Some(m) => m.min(total),
                        None => total,
                    }
                    .saturating_sub(self.step);
                    let mut eta = left as f64 * batch as f64 / rate.max(1e-9);
                    if let Some(budget) = self.cfg.max_seconds {
                        eta = eta.min((budget - start.elapsed().as_secs_f64()).max(0.0));
                    }
                    let logs: Vec<String> =
                        logs.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
                    println!(
                        "epoch {} step {}/{total}: loss {loss:.4}, lr {lr:.2e}, {}, {rate:.1} img/s, eta {eta:.0} s",
                        self.epoch,
                        self.step,
                        logs.join(", ")
                    );
                    last_line = Instant::now();
                    images_since = 0;
                    since = Instant::now();
                }
            }
            // Epoch done.
            self.epoch += 1;
            self.batch_in_epoch = 0;
            let last_epoch = self.epoch == self.cfg.max_epochs;
            let every = self.cfg.valid_every_epochs;
            if ((every > 0 && self.epoch.is_multiple_of(every)) || last_epoch)
                && let Some((metrics, rec)) = self.validate()?
            {
                {
                    let value = metrics
                        .get_path(&self.cfg.checkpoint_metric)
                        .ok_or_else(|| {
                            Error::Msg(format!(
                                "checkpoint_metric {} is not among the metrics computed",
                                self.cfg.checkpoint_metric
                            ))
                        })?;
                    println!(
                        "validation after epoch {}: {} = {value:.4}",
                        self.epoch - 1,
                        self.cfg.checkpoint_metric
                    );
                    if let Record::Validation { metrics, .. } = &rec {
                        last_metrics = Some(metrics.clone());
                    }
                    self.record(rec)?;
                    if self.best.is_none_or(|(b, _)| b.is_nan() || value > b) {
                        self.best = Some((value, self.epoch - 1));
                        if let Some(dir) = self.cfg.logs_dir.clone() {
                            self.save_weights(&dir.join("best.safetensors"))?;
                        }
                    }
                }
            }
            if let Some(dir) = self.cfg.logs_dir.clone() {
                self.save_state(&dir)?;
            }
        };
        if ending == Ending::Stopped {
            // The request is consumed by the run it stopped: a later `fit` continues.
            self.stop.store(false, Ordering::Relaxed);
        }
        if ending != Ending::Completed
            && let Some(dir) = self.cfg.logs_dir.clone()
        {
            self.save_state(&dir)?;
        }
        if let Some(dir) = &self.cfg.logs_dir {
            let history = self
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            plots::save_history_plots(&history, dir)?;
        }
        Ok(FitReport {
            ending,
            steps: self.step,
            epochs: self.epoch,
            best: self.best,
            last_metrics,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Writes the model's weights (original names) as safetensors.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        self.backbone
            .save(path)
            .map_err(|e| Error::Msg(format!("cannot write {}: {e}", path.display())))
    }

    /// Writes `last.safetensors` (model), `criterion.safetensors`, `optimizer.safetensors`,
    /// `criterion_state.safetensors` (a miner's memory bank, when it has one) and `state.json`
    /// (position, best, step counts, the loss's state, the config) into `dir`.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        self.save_weights(&dir.join("last.safetensors"))?;
        self.criterion_vars
            .save(dir.join("criterion.safetensors"))
            .map_err(|e| Error::Msg(format!("cannot write the criterion: {e}")))?;
        let (moments, steps) = self.optimizer.state();
        candle_core::safetensors::save(&moments, dir.join("optimizer.safetensors"))?;
        // What the loss keeps between batches (a miner's memory bank), for an exact resume.
        let loss_state = self.criterion.state()?;
        let bank_path = dir.join("criterion_state.safetensors");
        if loss_state.tensors.is_empty() {
            let _ = std::fs::remove_file(&bank_path);
        } else {
            candle_core::safetensors::save(&loss_state.tensors, &bank_path)?;
        }
        let state = State {
            epoch: self.epoch,
            batch_in_epoch: self.batch_in_epoch,
            step: self.step,
            best: self.best,
            param_steps: steps,
            grad_scaler: self.scaler,
            criterion_state: loss_state.values,
            config: self.cfg.clone(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|e| Error::Msg(e.to_string()))?;
        std::fs::write(dir.join("state.json"), text)
            .map_err(|e| Error::io("cannot write", dir.join("state.json"), e))
    }

    /// Restores everything [`Trainer::save_state`] wrote: weights, the loss's parameters, the
    /// optimiser's moments and the position in the run, and the history up to that position from
    /// `metrics.jsonl` (records of steps after it, which the resumed run repeats, are dropped from
    /// the file). The data, model and loss must be built as for the original run.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path)
            .map_err(|e| Error::io("cannot read", &state_path, e))?;
        let state: State = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: state_path.clone(),
            message: format!("not a trainer state: {e}"),
        })?;
        // Everything is read and checked first; the trainer changes only when all of it fits.
        let pairs = |vm: &VarMap, file: &str| -> Result<Vec<(candle_core::Var, Tensor)>> {
            let path = dir.join(file);
            let tensors = candle_core::safetensors::load(&path, &self.device)?;
            let data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
            data.iter()
                .map(|(k, var)| {
                    let t = tensors.get(k).ok_or_else(|| Error::Format {
                        path: path.clone(),
                        message: format!("no tensor {k}"),
                    })?;
                    if t.shape() != var.shape() {
                        return Err(Error::Format {
                            path: path.clone(),
                            message: format!(
                                "{k} is {:?}, the model's {:?}",
                                t.shape(),
                                var.shape()
                            ),
                        });
                    }
                    Ok((var.clone(), t.clone()))
                })
                .collect()
        };
        let mut weights = pairs(&self.backbone, "last.safetensors")?;
        weights.extend(pairs(&self.criterion_vars, "criterion.safetensors")?);
        let moments: HashMap<String, Tensor> =
            candle_core::safetensors::load(dir.join("optimizer.safetensors"), &self.device)?;
        let history = read_history(&dir.join("metrics.jsonl"), state.step)?;
        let bank_path = dir.join("criterion_state.safetensors");
        let loss_state = crate::losses::LossState {
            tensors: if bank_path.is_file() {
                candle_core::safetensors::load(&bank_path, &self.device)?
            } else {
                HashMap::new()
            },
            values: state.criterion_state,
        };
        // Absent in state files written before losses had a state: nothing to restore. The loss
        // checks the state before taking it.
        if !loss_state.is_empty() {
            self.criterion
                .load_state(&loss_state)
                .map_err(|e| Error::Format {
                    path: state_path.clone(),
                    message: e.to_string(),
                })?;
        }
        self.optimizer.load_state(moments, state.param_steps)?;
        for (var, t) in weights {
            var.set(&t)?;
        }
        self.epoch = state.epoch;
        self.batch_in_epoch = state.batch_in_epoch;
        self.step = state.step;
        self.best = state.best;
        if self.scaler.is_some() {
            self.scaler = Some(state.grad_scaler.unwrap_or_default());
        }
        // The run's history file (in this run's logs_dir) holds exactly the kept records.
        if let Some(logs) = &self.cfg.logs_dir {
            std::fs::create_dir_all(logs).map_err(|e| Error::io("cannot create", logs, e))?;
            let path = logs.join("metrics.jsonl");
            let mut out = String::new();
            for r in &history {
                out += &serde_json::to_string(r).map_err(|e| Error::Msg(e.to_string()))?;
                out.push('\n');
            }
            std::fs::write(&path, out).map_err(|e| Error::io("cannot write", &path, e))?;
        }
        *self.history.lock().unwrap_or_else(|p| p.into_inner()) = history;
        Ok(())
    }
}

/// The records of a history file (`metrics.jsonl`) up to `step`: those of later steps, which a
/// resumed run repeats, are left out; so is an unreadable last line (a run killed while writing
/// it). No file: no records.
fn read_history(path: &Path, step: usize) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut kept = Vec::new();
    for (n, &(i, line)) in lines.iter().enumerate() {
        let r: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(_) if n + 1 == lines.len() => break,
            Err(e) => {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    message: format!("line {}: not a history record: {e}", i + 1),
                });
            }
        };
        let at = match &r {
            Record::Step { step, .. } | Record::Validation { step, .. } => *step,
        };
        if at <= step {
            kept.push(r);
        }
    }
    Ok(kept)
}

#[derive(Serialize, Deserialize)]
struct State {
    epoch: usize,
    batch_in_epoch: usize,
    step: usize,
    best: Option<(f64, usize)>,
    param_steps: HashMap<String, u64>,
    /// The f16 loss scale (absent in f32 / bf16 runs and in older state files).
    #[serde(default)]
    grad_scaler: Option<GradScaler>,
    /// The loss's state besides tensors (a miner's bank labels and position, counters, logs);
    /// its tensors are in `criterion_state.safetensors`.
    #[serde(default)]
    criterion_state: serde_json::Value,
    config: FitConfig,
}

/// Per query, the distance to its nearest positive and nearest negative among the retrieved.
fn first_hits(rr: &crate::retrieval::RetrievalResults) -> (Vec<f32>, Vec<f32>) {
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for q in 0..rr.n_queries() {
        let (d, hits) = (rr.distances(q), rr.hits(q));
        if let Some(i) = hits.iter().position(|&h| h) {
            pos.push(d[i]);
        }
        if let Some(i) = hits.iter().position(|&h| !h) {
            neg.push(d[i]);
        }
    }
    (pos, neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_file_reads_back_up_to_a_step() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("metrics.jsonl");
        let step = |n: usize, loss: &str| {
            format!(
                r#"{{"kind":"step","epoch":0,"step":{n},"loss":{loss},"lr":0.1,"logs":{{}},"seconds":1.0}}"#
            )
        };
        let val =
            r#"{"kind":"validation","epoch":0,"step":2,"metrics":{},"pos_dist":[],"neg_dist":[]}"#;
        // A NaN loss (written as null), a validation, a later step, and a torn last line.
        let text = [
            step(1, "0.5"),
            step(2, "null"),
            val.into(),
            step(3, "0.4"),
            "{\"kind\":\"st".into(),
        ]
        .join("\n");
        std::fs::write(&path, text).expect("write");
        let kept = read_history(&path, 2).expect("read");
        assert_eq!(kept.len(), 3);
        assert!(matches!(kept[1], Record::Step { loss, .. } if loss.is_nan()));
        assert!(matches!(kept[2], Record::Validation { step: 2, .. }));
        // An unreadable line before the last is an error naming it.
        std::fs::write(
            &path,
            format!("{}\nnot json\n{}", step(1, "0.5"), step(2, "0.4")),
        )
        .expect("write");
        let e = read_history(&path, 2)
            .expect_err("a broken line")
            .to_string();
        assert!(e.contains("line 2") && e.contains("metrics.jsonl"), "{e}");
        assert!(
            read_history(&dir.path().join("none.jsonl"), 2)
                .expect("no file")
                .is_empty()
        );
    }
}
