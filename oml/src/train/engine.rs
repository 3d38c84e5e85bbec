//! One `fit`: the network, the loss and the optimiser built from a trainer's data by the calling
//! code, the loop over batches, and the data written back when it ends (see the module docs of
//! [`crate::train`] for why).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::trainer::Live;
use super::{
    Ending, FitConfig, FitReport, GradScaler, History, Optimizer, ParamGroup, Record, RunState,
};
use crate::data::{
    ImageLabeledDataset, ImageLoader, ImageQueryGalleryLabeledDataset, LoaderConfig, Transform,
};
use crate::device::Precision;
use crate::losses::{Criterion, CriterionConfig, CriterionContext, LossState};
use crate::metrics::Metrics;
use crate::models::{Autocast, Extractor};
use crate::retrieval::{QueryGalleryInfo, RetrievalResults, SearchConfig};
use crate::samplers::BatchSampler;
use crate::{Error, Model, Result};

/// What a fit reads: the trainer's data.
pub(crate) struct Job<'a> {
    pub model: &'a Model,
    pub train: &'a ImageLabeledDataset,
    pub train_transform: &'a Transform,
    pub val: Option<&'a ImageQueryGalleryLabeledDataset>,
    pub loss: &'a CriterionConfig,
    pub cfg: &'a FitConfig,
    pub live: &'a Live,
}

/// The loss's parameters for a first run: drawn with the run's seed (a fresh trainer gives the
/// same ArcFace centres on every machine).
pub(crate) fn initial_criterion_params(
    loss: &CriterionConfig,
    ctx: &CriterionContext,
) -> Result<HashMap<String, Tensor>> {
    let drawn = crate::models::model::seeded_tensors(ctx.seed ^ 0x5eed_c417, |vb| {
        loss.build(ctx, vb).map(|_| ())
    })?;
    Ok(drawn.into_iter().collect())
}

/// `tensors` as fresh variables of a new `VarMap` on `device` (copies made by this code).
fn fresh_vars(tensors: &HashMap<String, Tensor>, device: &Device) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for (k, t) in tensors {
            data.insert(k.clone(), Var::from_tensor(&t.to_device(device)?.detach())?);
        }
    }
    Ok(varmap)
}

/// Copies of every variable of `varmap` (CPU, detached): data to keep after the fit.
fn copies(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    data.iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                crate::host::to_cpu(v.as_tensor(), "train: weights to the CPU")?
                    .copy()?
                    .detach(),
            ))
        })
        .collect()
}

/// A loss state whose tensors are copies made by this code (fresh ids in this code's graph).
fn fresh_state(state: &LossState, device: &Device) -> Result<LossState> {
    let mut tensors = HashMap::new();
    for (k, t) in &state.tensors {
        tensors.insert(k.clone(), t.to_device(device)?.copy()?.detach());
    }
    Ok(LossState {
        tensors,
        values: state.values.clone(),
    })
}

/// The step a schedule that needs the run's length (cosine, one cycle) ends at: the epochs' last,
/// or, for a fit with a time budget, the step the budget is expected to end at (this fit's steps
/// so far, at this fit's pace, from its tenth step on), whichever comes first; so that the
/// schedule completes with the run that the clock ends.
fn schedule_horizon(
    cfg: &FitConfig,
    step: usize,
    first_step: usize,
    total: usize,
    start: &Instant,
) -> usize {
    let needs = matches!(
        cfg.scheduler,
        super::Schedule::Cosine { .. } | super::Schedule::OneCycle { .. }
    );
    let done = step.saturating_sub(first_step);
    match cfg.max_seconds {
        Some(budget) if needs && done >= 10 => {
            let elapsed = start.elapsed().as_secs_f64().max(1e-9);
            let expected = first_step as f64 + done as f64 * budget / elapsed;
            (expected.round() as usize).clamp(step + 1, total.max(step + 1))
        }
        _ => total,
    }
}

struct Engine<'a> {
    job: &'a Job<'a>,
    net: Box<dyn Extractor>,
    weights: VarMap,
    criterion: Box<dyn Criterion>,
    criterion_vars: VarMap,
    optimizer: Optimizer,
    sampler: Box<dyn BatchSampler>,
    device: Device,
    precision: Precision,
    run: RunState,
    /// TensorBoard's event file (`logs_dir/tb/`), opened when the fit starts.
    tb: Option<super::tensorboard::EventWriter>,
}

impl<'a> Engine<'a> {
    fn new(job: &'a Job<'a>, run: &RunState) -> Result<Self> {
        let device = job.model.device()?;
        let (net, weights) = job.model.trainable(&device)?;
        let ctx = CriterionContext {
            feat_dim: net.feat_dim(),
            n_labels: job.train.n_labels(),
            seed: job.cfg.seed,
        };
        let params = if run.criterion_params.is_empty() {
            initial_criterion_params(job.loss, &ctx)?
        } else {
            run.criterion_params.clone()
        };
        let criterion_vars = fresh_vars(&params, &device)?;
        let criterion = job.loss.build(
            &ctx,
            VarBuilder::from_varmap(&criterion_vars, DType::F32, &device),
        )?;
        let state = fresh_state(&run.loss_state, &device)?;
        if !state.is_empty() {
            criterion.load_state(&state)?;
        }
        // An MLP head (`projection.*`) is not part of the backbone: it trains while the backbone
        // is frozen, as in OML.
        let (head, body): (Vec<_>, Vec<_>) = ParamGroup::vars_of(&weights)
            .into_iter()
            .partition(|(k, _)| k.starts_with("projection."));
        let cfg = job.cfg;
        let groups = vec![
            ParamGroup {
                name: "backbone".into(),
                params: body,
                lr_scale: cfg.backbone_lr_scale,
                frozen: cfg.freeze_backbone_epochs > run.epoch,
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
                lr_scale: job.loss.lr_scale(),
                frozen: false,
            },
        ];
        let mut optimizer = Optimizer::new(cfg.optimizer, groups)?;
        if !run.moments.is_empty() {
            let mut moments = HashMap::new();
            for (k, t) in &run.moments {
                moments.insert(k.clone(), t.to_device(&device)?);
            }
            optimizer.load_state(moments, run.param_steps.clone())?;
        }
        let precision = job.model.precision();
        let mut run = run.clone();
        if precision == Precision::F16 && run.scaler.is_none() {
            run.scaler = Some(GradScaler::default());
        }
        Ok(Engine {
            job,
            net,
            weights,
            criterion,
            criterion_vars,
            optimizer,
            sampler: cfg.sampler.build(job.train, cfg.seed)?,
            device,
            precision,
            run,
            tb: None,
        })
    }

    fn cfg(&self) -> &FitConfig {
        self.job.cfg
    }

    /// Whether an update needs the gradients' norm (clipping, or the f16 loss scale's check).
    fn needs_norm(&self) -> bool {
        self.job.cfg.clip_grad_norm.is_some() || self.run.scaler.is_some()
    }

    /// One optimiser update from the (summed) gradients `grads`, `unscale` turning them into the
    /// mean gradient at loss scale 1; the f16 loss scale and gradient clipping as PyTorch's.
    /// `norm`: the gradients' global norm at loss scale 1, read with the step's scalars, where
    /// [`Engine::needs_norm`]. `overflowed`: a batch since the last update was not finite (f16),
    /// so the update is skipped.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        grads: Option<candle_core::backprop::GradStore>,
        unscale: f64,
        norm: Option<f64>,
        lr: f64,
        total: usize,
        overflowed: bool,
        logs: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let cfg = self.job.cfg;
        let apply = match self.run.scaler.as_mut() {
            Some(sc) => {
                logs.insert("loss_scale".into(), sc.scale);
                // No norm: no trainable parameter got a gradient (nothing overflowed).
                let ok = sc.update(!overflowed && norm.is_none_or(f64::is_finite));
                if !ok && sc.scale < 1.0 / GradScaler::INIT {
                    return Err(Error::Msg(format!(
                        "the forward pass or the gradients overflow f16 at every loss \
                         scale down to {:e} (step {}, epoch {}): train with precision bf16 \
                         or f32, or lower the learning rate",
                        sc.scale,
                        self.run.step + 1,
                        self.run.epoch
                    )));
                }
                ok
            }
            None => true,
        };
        let scale = match (cfg.clip_grad_norm, norm) {
            (Some(c), Some(n)) if apply => {
                if !n.is_finite() {
                    return Err(Error::Msg(format!(
                        "the gradient norm is {n} at step {} (epoch {}): lower the learning rate",
                        self.run.step + 1,
                        self.run.epoch
                    )));
                }
                unscale * if n > c { c / n } else { 1.0 }
            }
            _ => unscale,
        };
        if let (true, Some(grads)) = (apply, &grads) {
            let momentum = cfg.scheduler.momentum(self.run.step, total);
            self.optimizer.set_momentum(momentum);
            self.optimizer.step(grads, lr, scale)?;
        } else {
            // An overflowed f16 step: no update, the scale halved (PyTorch's GradScaler).
            logs.insert("skipped".into(), 1.0);
        }
        Ok(())
    }

    /// Writes the weights back into the model and returns the run state: what stays after the fit.
    fn finish(self) -> Result<RunState> {
        self.job.model.set_state_dict(&copies(&self.weights)?)?;
        let mut run = self.run;
        run.criterion_params = copies(&self.criterion_vars)?;
        let (moments, steps) = self.optimizer.state();
        let mut cpu = HashMap::new();
        for (k, t) in moments {
            cpu.insert(
                k,
                crate::host::to_cpu(&t, "train: moments to the CPU")?.detach(),
            );
        }
        run.moments = cpu;
        run.param_steps = steps;
        let state = self.criterion.state()?;
        let mut tensors = HashMap::new();
        for (k, t) in state.tensors {
            tensors.insert(
                k,
                crate::host::to_cpu(&t, "train: loss state to the CPU")?.detach(),
            );
        }
        run.loss_state = LossState {
            tensors,
            values: state.values,
        };
        Ok(run)
    }

    fn record(&mut self, r: Record) -> Result<()> {
        if let Some(tb) = self.tb.as_mut() {
            let (step, scalars) = match &r {
                Record::Step {
                    step,
                    loss,
                    lr,
                    logs,
                    ..
                } => {
                    let mut v = vec![
                        ("train/loss".to_owned(), *loss as f32),
                        ("train/lr".to_owned(), *lr as f32),
                    ];
                    v.extend(logs.iter().map(|(k, x)| (format!("train/{k}"), *x as f32)));
                    (*step, v)
                }
                Record::Validation { step, metrics, .. } => (
                    *step,
                    metrics
                        .iter()
                        .map(|(k, x)| (format!("valid/{k}"), *x as f32))
                        .collect(),
                ),
                Record::Skipped { .. } => (0, Vec::new()),
            };
            tb.scalars(step, &scalars)?;
        }
        if let Some(dir) = &self.cfg().logs_dir {
            let path = dir.join("metrics.jsonl");
            let line = serde_json::to_string(&r).map_err(|e| Error::Msg(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io("cannot write", &path, e))?;
            writeln!(f, "{line}").map_err(|e| Error::io("cannot write", &path, e))?;
        }
        self.job.live.push(r);
        Ok(())
    }

    /// Embeddings of the validation set with the network being trained, and its metrics.
    fn validate(&self) -> Result<Option<(Metrics, Record)>> {
        let Some(val) = self.job.val else {
            return Ok(None);
        };
        let emb = crate::embed::embed(
            &Autocast::new(self.net.as_ref(), self.precision.dtype()),
            Arc::new(val.clone()),
            self.job.model.transform().clone(),
            self.job.model.batch_size(),
            &self.device,
        )?;
        let info = QueryGalleryInfo::from_dataset(val);
        let search = SearchConfig {
            top_n: self.cfg().metrics.max_k().max(1),
            ..SearchConfig::default()
        };
        let (rr, metrics) = crate::metrics::evaluate(&emb, &info, &self.cfg().metrics, &search)?;
        let (pos, neg) = first_hits(&rr);
        let rec = Record::Validation {
            epoch: self.run.epoch.saturating_sub(1),
            step: self.run.step,
            metrics: metrics.flat(),
            pos_dist: pos,
            neg_dist: neg,
        };
        Ok(Some((metrics, rec)))
    }

    fn save_weights(&self, path: &std::path::Path) -> Result<()> {
        crate::fsio::save_safetensors_atomic(path, &copies(&self.weights)?)
    }

    /// A complete checkpoint set of the current state in the run folder `dir` (see
    /// [`super::checkpoint`]).
    fn checkpoint(&self, dir: &std::path::Path) -> Result<()> {
        let snapshot = self.job.model.snapshot();
        snapshot.set_state_dict(&copies(&self.weights)?)?;
        let mut run = self.run.clone();
        run.criterion_params = copies(&self.criterion_vars)?;
        let (moments, steps) = self.optimizer.state();
        run.moments = moments;
        run.param_steps = steps;
        run.loss_state = self.criterion.state()?;
        let identity = super::checkpoint::identity(
            self.job.model,
            self.job.train,
            self.job.loss,
            self.cfg(),
            self.job.train_transform,
        );
        super::checkpoint::write(dir, &snapshot, &run, self.cfg(), self.job.loss, &identity)?;
        Ok(())
    }

    /// Records the training images the loader found unreadable since the last call.
    fn note_skipped(&mut self, loader: &ImageLoader) -> Result<()> {
        let mut new: Vec<(usize, std::path::PathBuf, String)> = loader
            .unreadable()
            .into_iter()
            .filter(|(_, p, _)| !self.run.skipped.iter().any(|s| &s.path == p))
            .collect();
        new.sort_by_key(|(i, _, _)| *i);
        let step = self.run.step + 1;
        for (_, path, error) in new {
            println!(
                "skipped an unreadable training image at step {step} (on_bad_image: skip): {error}"
            );
            self.record(Record::Skipped {
                epoch: self.run.epoch,
                step,
                path: path.clone(),
                error: error.clone(),
            })?;
            self.run.skipped.push(super::Skipped { path, error, step });
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Outcome> {
        let start = Instant::now();
        let cfg = self.job.cfg;
        if let Some(dir) = &cfg.logs_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
            if self.run.step == 0 && self.run.epoch == 0 && self.run.batch_in_epoch == 0 {
                // A fresh run does not append to an old run's history, nor keep its checkpoints.
                let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
                super::checkpoint::clear(dir)?;
            }
            let text = serde_norway::to_string(cfg).map_err(|e| Error::Msg(e.to_string()))?;
            let path = dir.join("fit_config.yaml");
            std::fs::write(&path, text).map_err(|e| Error::io("cannot write", &path, e))?;
            if cfg.tensorboard {
                let tb = dir.join("tb");
                if self.run.step == 0 && self.run.epoch == 0 && self.run.batch_in_epoch == 0 {
                    clear_event_files(&tb)?;
                }
                let mut writer = super::tensorboard::EventWriter::create(&tb)?;
                if self.run.step > 0 {
                    // TensorBoard drops the older files' points past a session start: the steps
                    // a resumed run repeats are shown once.
                    writer.session_start(self.run.step + 1)?;
                }
                self.tb = Some(writer);
            }
        }
        let loader = ImageLoader::new(
            Arc::new(self.job.train.clone()),
            self.job.train_transform.clone(),
            LoaderConfig {
                prefetch: 2,
                cache: cfg.cache_images,
                seed: cfg.seed,
            },
        )?
        .with_device(self.device.clone());
        let loader = match cfg.on_bad_image {
            super::BadImagePolicy::Skip => loader.skip_unreadable(self.job.train.labels())?,
            super::BadImagePolicy::Error => loader,
        };
        let per_epoch = self.sampler.len();
        let total = per_epoch * cfg.max_epochs;
        let batch = cfg.sampler.batch_size();
        let goal = cfg.max_steps.map_or(total, |m| m.min(total));
        let first_step = self.run.step;
        let mut last_line = Instant::now();
        let mut images_since = 0usize;
        let mut since = Instant::now();
        let mut last_metrics = None;
        let live = self.job.live;
        live.started(self.run.step, goal, cfg.max_seconds);
        // The last checkpoint set written by this fit (a resumed run starts from one).
        let mut last_set = Instant::now();
        let mut set_at = (self.run.step > 0).then_some(self.run.step);
        // Gradient accumulation: the summed gradients of `micro` batches since the last update,
        // and whether one of them overflowed (f16).
        let accumulate = cfg.accumulate_grad_batches.max(1);
        let mut pending: Option<candle_core::backprop::GradStore> = None;
        let mut micro = 0usize;
        let mut poisoned = false;
        let ending = 'run: loop {
            if self.run.epoch >= cfg.max_epochs {
                break 'run Ending::Completed;
            }
            // Checked here, not only after a validation, so that a resumed run that had stopped
            // early stops again instead of training another epoch.
            if let Some(patience) = cfg.early_stopping_patience
                && self.run.plateau.stale >= patience
            {
                println!(
                    "stopping early: {} has not improved in {} validations (best {:.4} after \
                     epoch {})",
                    cfg.checkpoint_metric,
                    self.run.plateau.stale,
                    self.run.best.map_or(f64::NAN, |b| b.0),
                    self.run.best.map_or(0, |b| b.1)
                );
                break 'run Ending::EarlyStopped;
            }
            let frozen = self.run.epoch < cfg.freeze_backbone_epochs;
            self.optimizer.groups[0].frozen = frozen;
            let batches: Vec<Vec<usize>> = self
                .sampler
                .batches(self.run.epoch as u64)
                .into_iter()
                .skip(self.run.batch_in_epoch)
                .collect();
            let n_batches = batches.len();
            let batches = loader.iter_from(batches, self.run.epoch as u64, self.run.batch_in_epoch);
            for (i, b) in batches.enumerate() {
                // Budgets and stop requests end a run between updates only.
                if micro == 0 {
                    if live.stop.load(Ordering::Relaxed) {
                        break 'run Ending::Stopped;
                    }
                    if cfg.max_steps.is_some_and(|m| self.run.step >= m) {
                        break 'run Ending::StepBudget;
                    }
                    if cfg
                        .max_seconds
                        .is_some_and(|s| start.elapsed().as_secs_f64() >= s)
                    {
                        break 'run Ending::TimeBudget;
                    }
                }
                let b = b.map_err(|e| {
                    Error::Msg(format!(
                        "{e} (training step {}, epoch {}): fix or remove the file (`oml \
                         check-data --decode` finds every one), or set on_bad_image: skip to \
                         train on without it",
                        self.run.step + 1,
                        self.run.epoch
                    ))
                })?;
                if cfg.on_bad_image == super::BadImagePolicy::Skip {
                    self.note_skipped(&loader)?;
                }
                let labels: Vec<i64> = b
                    .indices
                    .iter()
                    .map(|&j| self.job.train.labels()[j] as i64)
                    .collect();
                crate::host::set_step(Some(self.run.step as u64));
                // Uploaded by the loader's prefetch thread: a no-op here.
                let x = b.images.to_device(&self.device)?;
                let net = Autocast::new(self.net.as_ref(), self.precision.dtype());
                let emb = net.forward_t(&x, !frozen)?;
                let out = self.criterion.forward(&emb, &labels)?;
                // The backward pass runs whatever the loss: a non-finite one is an error (f32,
                // bf16) or a skipped update (f16, as PyTorch's GradScaler) once it is read below.
                let grads = match &self.run.scaler {
                    Some(sc) => (&out.loss * sc.scale)?.backward()?,
                    None => out.loss.backward()?,
                };
                let unscale = self.run.scaler.as_ref().map_or(1.0, |sc| 1.0 / sc.scale);
                match pending.as_mut() {
                    Some(p) => p.extend(grads)?,
                    None => pending = Some(grads),
                }
                micro += 1;
                let due = micro >= accumulate || i + 1 == n_batches;
                // The one copy off the device of this step: the loss, the embeddings' sum (a relu
                // can turn NaN embeddings into a finite loss: both are checked), the gradients'
                // squared norm when the update needs it, and the loss's logs.
                let mut scalars = vec![out.loss.to_dtype(DType::F32)?, emb.detach().sum_all()?];
                let norm_sq = match (&pending, due && self.needs_norm()) {
                    (Some(g), true) => self.optimizer.grad_norm_sq(g)?,
                    _ => None,
                };
                scalars.extend(norm_sq.clone());
                scalars.extend(out.device_logs.values().cloned());
                let read = crate::host::scalars(&scalars, "train: step scalars")?;
                let (loss, emb_sum) = (read[0], read[1]);
                let norm_sq = norm_sq.map(|_| read[2]);
                let skip = 2 + usize::from(norm_sq.is_some());
                let mut logs = out.logs.clone();
                logs.extend(
                    out.device_logs
                        .keys()
                        .cloned()
                        .zip(read[skip..].iter().copied()),
                );
                let finite = loss.is_finite() && emb_sum.is_finite();
                // Under f16 a non-finite forward pass is an overflow, handled below as PyTorch's
                // GradScaler handles it: the step skipped, the loss scale halved.
                if !finite && self.run.scaler.is_none() {
                    let kept = cfg.logs_dir.as_ref().map(|d| {
                        format!(
                            "; the last good checkpoint is {}",
                            d.join("last.safetensors").display()
                        )
                    });
                    return Err(Error::Msg(format!(
                        "the loss is {loss} (embeddings finite: {}) at step {} (epoch {}): lower the \
                         learning rate or clip gradients (clip_grad_norm){}; the model keeps the \
                         weights of step {}",
                        emb_sum.is_finite(),
                        self.run.step + 1,
                        self.run.epoch,
                        kept.unwrap_or_default(),
                        self.run.step
                    )));
                }
                poisoned |= !finite;
                let horizon = schedule_horizon(cfg, self.run.step, first_step, total, &start);
                let lr = cfg.optimizer.lr()
                    * cfg.scheduler.factor(self.run.step, horizon)
                    * self.run.plateau.lr_factor;
                if due {
                    // The mean gradient of the accumulated batches.
                    let unscale = unscale / micro as f64;
                    let norm = norm_sq.map(|sq| sq.sqrt() * unscale);
                    let grads = pending.take();
                    let overflowed = std::mem::take(&mut poisoned);
                    micro = 0;
                    self.update(grads, unscale, norm, lr, horizon, overflowed, &mut logs)?;
                }
                self.run.step += 1;
                self.run.batch_in_epoch += 1;
                images_since += batch;
                self.record(Record::Step {
                    epoch: self.run.epoch,
                    step: self.run.step,
                    loss,
                    lr,
                    logs: logs.clone(),
                    seconds: start.elapsed().as_secs_f64(),
                })?;
                crate::host::set_step(None);
                let rate = images_since as f64 / since.elapsed().as_secs_f64().max(1e-9);
                let left = goal.saturating_sub(self.run.step);
                let mut eta = left as f64 * batch as f64 / rate.max(1e-9);
                if let Some(budget) = cfg.max_seconds {
                    eta = eta.min((budget - start.elapsed().as_secs_f64()).max(0.0));
                }
                live.stepped(self.run.step, self.run.epoch, loss, lr, rate, eta);
                let due = self.run.step.is_multiple_of(cfg.log_every_steps.max(1))
                    || last_line.elapsed().as_secs_f64() >= cfg.log_every_seconds;
                if due {
                    let logs: Vec<String> =
                        logs.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
                    // The step the run ends at, when steps (not the clock) end it.
                    let of = if cfg.max_seconds.is_none() || cfg.max_steps.is_some() {
                        format!("/{goal}")
                    } else {
                        String::new()
                    };
                    println!(
                        "epoch {} step {}{of}: loss {loss:.4}, lr {lr:.2e}, {}, {rate:.1} img/s, eta {eta:.0} s",
                        self.run.epoch,
                        self.run.step,
                        logs.join(", ")
                    );
                    last_line = Instant::now();
                    images_since = 0;
                    since = Instant::now();
                }
            }
            // Epoch done.
            self.run.epoch += 1;
            self.run.batch_in_epoch = 0;
            let last_epoch = self.run.epoch == cfg.max_epochs;
            let every = cfg.valid_every_epochs;
            if ((every > 0 && self.run.epoch.is_multiple_of(every)) || last_epoch)
                && let Some((metrics, rec)) = self.validate()?
            {
                let value = metrics.get_path(&cfg.checkpoint_metric).ok_or_else(|| {
                    Error::config(
                        "checkpoint_metric",
                        format!(
                            "{} is not among the metrics computed",
                            cfg.checkpoint_metric
                        ),
                    )
                })?;
                println!(
                    "validation after epoch {}: {} = {value:.4}",
                    self.run.epoch - 1,
                    cfg.checkpoint_metric
                );
                if let Record::Validation { metrics, .. } = &rec {
                    last_metrics = Some(metrics.clone());
                }
                self.record(rec)?;
                live.validated(value);
                let base_lr = cfg.optimizer.lr();
                if let Some(f) = self.run.plateau.observe(&cfg.scheduler, value, base_lr) {
                    println!(
                        "{} has not improved for a while: learning rate now {:.2e}",
                        cfg.checkpoint_metric,
                        base_lr * f
                    );
                }
                self.run.plateau.stale += 1;
                if self.run.best.is_none_or(|(b, _)| b.is_nan() || value > b) {
                    self.run.plateau.stale = 0;
                    self.run.best = Some((value, self.run.epoch - 1));
                    if let Some(dir) = &cfg.logs_dir {
                        let path = dir.join("best.safetensors");
                        self.save_weights(&path).map_err(|e| {
                            super::checkpoint::write_failed(
                                dir,
                                &format!("the best weights {}", path.display()),
                                e,
                            )
                        })?;
                    }
                }
            }
            if let Some(dir) = &cfg.logs_dir
                && last_set.elapsed().as_secs_f64() >= cfg.checkpoint_every_seconds
            {
                self.checkpoint(dir)?;
                last_set = Instant::now();
                set_at = Some(self.run.step);
            }
        };
        // The end of a run always leaves a set of where it ended.
        if let Some(dir) = &cfg.logs_dir
            && set_at != Some(self.run.step)
        {
            self.checkpoint(dir)?;
        }
        Ok(Outcome {
            ending,
            last_metrics,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// How a fit's loop ended.
struct Outcome {
    ending: Ending,
    last_metrics: Option<BTreeMap<String, f64>>,
    seconds: f64,
}

/// Runs one fit of `job` from `run` and returns the report and the run state to keep. The model's
/// weights are written back whatever happens (a failed step never reaches the weights, so they are
/// those of the last good step).
pub(crate) fn fit(job: &Job<'_>, run: &mut RunState) -> Result<FitReport> {
    let mut engine = Engine::new(job, run)?;
    let outcome = engine.run();
    *run = engine.finish()?;
    let live = job.live;
    if outcome.as_ref().is_ok_and(|o| o.ending == Ending::Stopped) {
        // The request is consumed by the run it stopped: a later `fit` continues.
        live.stop.store(false, Ordering::Relaxed);
    }
    let Outcome {
        ending,
        last_metrics,
        seconds,
    } = outcome?;
    let history = History(live.history());
    if !run.skipped.is_empty() {
        println!(
            "{} unreadable training image(s) skipped and replaced by others of their labels: {}",
            run.skipped.len(),
            run.skipped
                .iter()
                .map(|s| s.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(dir) = &job.cfg.logs_dir {
        super::plots::save_history_plots(&history.0, dir)?;
    }
    Ok(FitReport {
        ending,
        steps: run.step,
        epochs: run.epoch,
        best: run.best,
        last_metrics,
        seconds,
        history,
        skipped_images: run.skipped.clone(),
    })
}

/// Per query, the distance to its nearest positive and nearest negative among the retrieved.
fn first_hits(rr: &RetrievalResults) -> (Vec<f32>, Vec<f32>) {
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for q in 0..rr.n_queries() {
        let (d, hits) = (rr.dists(q), rr.hits_of(q));
        if let Some(i) = hits.iter().position(|&h| h) {
            pos.push(d[i]);
        }
        if let Some(i) = hits.iter().position(|&h| !h) {
            neg.push(d[i]);
        }
    }
    (pos, neg)
}

/// Removes an earlier run's TensorBoard event files from `dir` (a fresh run starts a fresh
/// history); other files stay.
fn clear_event_files(dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
        {
            std::fs::remove_file(e.path())
                .map_err(|err| Error::io("cannot remove", e.path(), err))?;
        }
    }
    Ok(())
}
