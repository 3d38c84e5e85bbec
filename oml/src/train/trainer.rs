//! [`Trainer`] and its builder, and [`Run`], the handle of a run in a background thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use candle_core::Tensor;

use super::engine::{self, Job};
use super::{
    Ending, FitConfig, FitReport, History, OptimizerKind, Record, RunState, Schedule,
    check_metric_path,
};
use crate::data::{ImageLabeledDataset, ImageQueryGalleryLabeledDataset, Transform};
use crate::losses::{CriterionConfig, CriterionContext};
use crate::metrics::MetricsConfig;
use crate::notebook::{Report, Show, escape_html};
use crate::samplers::SamplerConfig;
use crate::{Error, Model, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a run stands: what [`Run::progress`] and [`Trainer::progress`] return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Whether a fit is going on.
    pub running: bool,
    /// Steps done (over the whole run).
    pub step: usize,
    /// The step the budget or the epochs end at.
    pub goal: usize,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Last step's loss.
    pub loss: f64,
    /// Last step's learning rate.
    pub lr: f64,
    /// Training speed.
    pub images_per_second: f64,
    /// Seconds left (by the step budget or the time budget, whichever ends first).
    pub eta_seconds: f64,
    /// Seconds since this fit started.
    pub elapsed_seconds: f64,
    /// The last validation's checkpoint metric.
    pub last_validation: Option<f64>,
    /// How the last fit ended.
    pub ending: Option<Ending>,
    /// The error that ended the last fit, if one did.
    pub error: Option<String>,
}

impl Progress {
    /// One line: `step 40/120 (epoch 1): loss 0.0712, 31.0 img/s, eta 52 s`.
    pub fn line(&self) -> String {
        let state = if self.running {
            format!("eta {:.0} s", self.eta_seconds)
        } else if let Some(e) = &self.error {
            format!("failed: {e}")
        } else if let Some(e) = self.ending {
            format!("{e} after {:.0} s", self.elapsed_seconds)
        } else {
            "not started".to_owned()
        };
        let val = self
            .last_validation
            .map(|v| format!(", last validation {v:.4}"))
            .unwrap_or_default();
        format!(
            "step {}/{} (epoch {}): loss {:.4}, {:.1} img/s{val}; {state}",
            self.step, self.goal, self.epoch, self.loss, self.images_per_second
        )
    }

    /// Shows the progress inline.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl Show for Progress {
    fn html(&self) -> Result<String> {
        Ok(format!(
            "<div><progress value=\"{}\" max=\"{}\" style=\"width:300px\"></progress> \
             <span style=\"font-family:monospace\">{}</span></div>",
            self.step,
            self.goal.max(1),
            escape_html(&self.line())
        ))
    }
    fn plain(&self) -> String {
        self.line()
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line())
    }
}

/// What a running fit shares with the caller: the history, the progress, the stop request.
#[derive(Default)]
pub(crate) struct Live {
    history: Mutex<Vec<Record>>,
    progress: Mutex<Progress>,
    started: Mutex<Option<Instant>>,
    pub(crate) stop: AtomicBool,
}

impl Live {
    pub(crate) fn push(&self, r: Record) {
        lock(&self.history).push(r);
    }

    pub(crate) fn history(&self) -> Vec<Record> {
        lock(&self.history).clone()
    }

    fn set_history(&self, records: Vec<Record>) {
        *lock(&self.history) = records;
    }

    pub(crate) fn started(&self, step: usize, goal: usize, _budget: Option<f64>) {
        *lock(&self.started) = Some(Instant::now());
        let mut p = lock(&self.progress);
        p.running = true;
        p.step = step;
        p.goal = goal;
        p.ending = None;
        p.error = None;
        p.elapsed_seconds = 0.0;
    }

    pub(crate) fn stepped(
        &self,
        step: usize,
        epoch: usize,
        loss: f64,
        lr: f64,
        rate: f64,
        eta: f64,
    ) {
        let elapsed = lock(&self.started).map_or(0.0, |t| t.elapsed().as_secs_f64());
        let mut p = lock(&self.progress);
        p.step = step;
        p.epoch = epoch;
        p.loss = loss;
        p.lr = lr;
        p.images_per_second = rate;
        p.eta_seconds = eta;
        p.elapsed_seconds = elapsed;
    }

    pub(crate) fn validated(&self, value: f64) {
        lock(&self.progress).last_validation = Some(value);
    }

    fn finished(&self, outcome: &Result<FitReport>) {
        let elapsed = lock(&self.started).map_or(0.0, |t| t.elapsed().as_secs_f64());
        let mut p = lock(&self.progress);
        p.running = false;
        p.elapsed_seconds = elapsed;
        match outcome {
            Ok(r) => {
                p.ending = Some(r.ending);
                p.step = r.steps;
                p.epoch = r.epochs;
            }
            Err(e) => p.error = Some(e.to_string()),
        }
    }

    fn progress(&self) -> Progress {
        lock(&self.progress).clone()
    }
}

/// What a fit reads and writes besides the model and the settings.
struct Data {
    train_transform: Transform,
    run: RunState,
}

struct Inner {
    model: Model,
    train: ImageLabeledDataset,
    val: Option<ImageQueryGalleryLabeledDataset>,
    loss: CriterionConfig,
    /// The settings; a fit reads them when it starts (changes apply to the next fit).
    cfg: Mutex<FitConfig>,
    data: Mutex<Data>,
    live: Live,
    /// Set while a fit runs (or a spawned one is about to).
    running: AtomicBool,
}

/// The claim of a trainer's single run: released when dropped.
struct Claim<'a>(&'a AtomicBool);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A fine-tuning run of a [`Model`]: OML's trainer, for notebooks and the command line.
///
/// ```no_run
/// # fn main() -> oml::Result<()> {
/// use oml::prelude::*;
/// let model = Model::from_pretrained("vits14_dinov2")?;
/// let train = ImageLabeledDataset::from_csv("df.csv", None)?;
/// let val = ImageQueryGalleryLabeledDataset::from_csv("df.csv", None)?;
/// let run = Trainer::builder(model.clone(), &train, Loss::triplet_hard(0.1))
///     .validate(&val)
///     .max_seconds(90.0)
///     .spawn()?;               // returns at once; `run` in a later cell shows the progress
/// let report = run.join()?;    // the model is now fine-tuned
/// # Ok(())
/// # }
/// ```
///
/// Cheap to clone (clones share the run). Each [`Trainer::fit`] continues where the last one
/// ended; budgets can be raised in between ([`Trainer::set_max_seconds`], ...).
#[derive(Clone)]
pub struct Trainer {
    inner: Arc<Inner>,
}

impl Trainer {
    /// A builder: `model` fine-tuned on `train` (its train rows) with `loss`; everything else has
    /// OML's defaults (8 labels x 4 images per batch, AdamW at 1e-4, 10 epochs).
    pub fn builder(
        model: Model,
        train: &ImageLabeledDataset,
        loss: CriterionConfig,
    ) -> TrainerBuilder {
        TrainerBuilder {
            model,
            train: train.clone(),
            loss,
            val: None,
            train_transform: None,
            cfg: FitConfig::default(),
            resume: None,
        }
    }

    /// The model being trained (shared: it holds the trained weights after each fit).
    pub fn model(&self) -> Model {
        self.inner.model.clone()
    }

    /// The loss.
    pub fn loss(&self) -> &CriterionConfig {
        &self.inner.loss
    }

    /// The settings (those of the next fit).
    pub fn config(&self) -> FitConfig {
        lock(&self.inner.cfg).clone()
    }

    /// The history so far (also while a run goes on in another thread).
    pub fn history(&self) -> History {
        History(self.inner.live.history())
    }

    /// Where the run stands.
    pub fn progress(&self) -> Progress {
        self.inner.live.progress()
    }

    /// Asks a running fit to stop after its current step (a notebook cannot interrupt a cell).
    /// The fit that stops clears the request, so a later fit continues.
    pub fn stop(&self) {
        self.inner.live.stop.store(true, Ordering::Relaxed);
    }

    /// Whether a fit is going on.
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Claims the trainer for one run, or says that another one is going on.
    fn claim(&self) -> Result<Claim<'_>> {
        self.inner
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Claim(&self.inner.running))
            .map_err(|_| {
                Error::Msg(
                    "a run of this trainer is going on: stop() it or join() its Run first".into(),
                )
            })
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        lock(&self.inner.data)
    }

    /// Steps run so far.
    pub fn steps(&self) -> usize {
        self.progress().step
    }

    /// Changes the step budget (counted over the whole run) for the next fit.
    pub fn set_max_steps(&self, steps: Option<usize>) {
        lock(&self.inner.cfg).max_steps = steps;
    }

    /// Changes early stopping for the next fit: stop after `patience` validations without a
    /// better checkpoint metric (`None`: never).
    pub fn set_early_stopping_patience(&self, patience: Option<usize>) -> Result<()> {
        if patience == Some(0) {
            return Err(Error::config(
                "early_stopping_patience",
                "at least 1 (or None to never stop early)",
            ));
        }
        lock(&self.inner.cfg).early_stopping_patience = patience;
        Ok(())
    }

    /// Changes the time budget (seconds, counted from the start of each fit) for the next fit.
    pub fn set_max_seconds(&self, seconds: Option<f64>) -> Result<()> {
        if let Some(s) = seconds
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::config("max_seconds", format!("{s}: seconds > 0")));
        }
        lock(&self.inner.cfg).max_seconds = seconds;
        Ok(())
    }

    /// Changes the number of epochs (for a run that completed and should go on).
    pub fn set_max_epochs(&self, epochs: usize) -> Result<()> {
        if epochs == 0 {
            return Err(Error::config("max_epochs", "at least 1"));
        }
        lock(&self.inner.cfg).max_epochs = epochs;
        Ok(())
    }

    /// Trains in the calling thread until the epochs are done, a budget is spent or
    /// [`Trainer::stop`] is called; continues where the last fit ended. The model holds the
    /// trained weights afterwards (also when the fit fails: then those of the last good step).
    pub fn fit(&self) -> Result<FitReport> {
        let _claim = self.claim()?;
        self.fit_claimed()
    }

    fn fit_claimed(&self) -> Result<FitReport> {
        let mut data = self.data();
        let data = &mut *data;
        let cfg = self.config();
        let job = Job {
            model: &self.inner.model,
            train: &self.inner.train,
            train_transform: &data.train_transform,
            val: self.inner.val.as_ref(),
            loss: &self.inner.loss,
            cfg: &cfg,
            live: &self.inner.live,
        };
        let outcome = engine::fit(&job, &mut data.run);
        self.inner.live.finished(&outcome);
        outcome
    }

    /// Trains in a background thread and returns at once: the [`Run`] shows the progress, gives
    /// the history, stops and joins the run.
    pub fn spawn(&self) -> Result<Run> {
        let claim = self.claim()?;
        let trainer = self.clone();
        // A host-copy profile started here records the run's thread too.
        let recorder = crate::host::Inherited::here();
        let handle = std::thread::Builder::new()
            .name("oml-train".into())
            .spawn(move || {
                recorder.install();
                // The claim taken above is this thread's now: released when the fit ends.
                let _claim = Claim(&trainer.inner.running);
                trainer.fit_claimed()
            })
            .map_err(|e| Error::Msg(format!("cannot start the training thread: {e}")))?;
        std::mem::forget(claim);
        Ok(Run {
            trainer: self.clone(),
            handle: Mutex::new(Some(handle)),
            outcome: Mutex::new(None),
        })
    }

    /// Writes a complete checkpoint set of the run into the run folder `dir` (as a run with a
    /// `logs_dir` does after each epoch; see the layout in [`crate::train`]'s docs):
    /// [`Trainer::resume`] continues from it exactly. The set is written aside and switched to
    /// by a rename, so an interrupted save leaves the previous set whole.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        let _claim = self.claim()?;
        let data = self.data();
        let cfg = self.config();
        let identity = self.identity(&cfg, &data.train_transform);
        super::checkpoint::write(
            dir,
            &self.inner.model,
            &data.run,
            &cfg,
            &self.inner.loss,
            &identity,
        )?;
        Ok(())
    }

    fn identity(
        &self,
        cfg: &FitConfig,
        train_transform: &Transform,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        super::checkpoint::identity(
            &self.inner.model,
            &self.inner.train,
            &self.inner.loss,
            cfg,
            train_transform,
        )
    }

    /// Restores the newest complete checkpoint set under `dir` (a run's `logs_dir`, a folder
    /// given to [`Trainer::save_state`], or one set's folder): the weights, the loss's parameters
    /// and state, the optimiser's moments, the position in the run, and the history up to that
    /// position from `metrics.jsonl` (records of later steps, which the resumed run repeats, are
    /// dropped). A set whose files do not match what its `state.json` records is refused by name
    /// and the previous complete set is used (the message says so).
    ///
    /// A checkpoint of a different run is refused with the differing keys listed: the model, the
    /// data, the loss, the sampler, the optimiser and the schedule must be those of the saved run;
    /// budgets (`max_epochs`, `max_steps`, `max_seconds`), logging, validation, the device and
    /// `on_bad_image` may change. Everything is read and checked before anything changes.
    pub fn resume(&self, dir: &Path) -> Result<()> {
        let _claim = self.claim()?;
        let mut data = self.data();
        let loaded = super::checkpoint::read(dir)?;
        if let Some(w) = &loaded.warning {
            println!("warning: {w}");
        }
        let cfg = self.config();
        let differ = super::checkpoint::differences(
            &loaded.identity,
            &self.identity(&cfg, &data.train_transform),
        );
        if !differ.is_empty() {
            return Err(Error::Msg(format!(
                "{} is a checkpoint of a different run; these settings differ (saved -> now): {}. \
                 Resume with the saved run's settings (only budgets, logging, validation, the \
                 device and on_bad_image may change), or start a new run in another logs_dir",
                loaded.dir.display(),
                differ.join("; ")
            )));
        }
        let super::checkpoint::Loaded {
            weights,
            mut run,
            history,
            dir: set,
            ..
        } = loaded;
        let model = &self.inner.model;
        // The weights: the model's names and shapes.
        let current = model.state_dict();
        check_names(&set.join("last.safetensors"), &current, &weights)?;
        // The loss: its parameters and its state must fit a loss built as this trainer builds it.
        let ctx = CriterionContext {
            feat_dim: model.feat_dim()?,
            n_labels: self.inner.train.n_labels(),
            seed: cfg.seed,
        };
        let expected = engine::initial_criterion_params(&self.inner.loss, &ctx)?;
        check_names(
            &set.join("criterion.safetensors"),
            &expected,
            &run.criterion_params,
        )?;
        let probe = self.inner.loss.build(
            &ctx,
            candle_nn::VarBuilder::from_tensors(
                expected.clone(),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            ),
        )?;
        if !run.loss_state.is_empty() {
            probe
                .load_state(&run.loss_state)
                .map_err(|e| Error::Format {
                    path: set.join("state.json"),
                    message: e.to_string(),
                })?;
        }
        // The optimiser's moments: one per parameter, with its shape.
        for (k, t) in &run.moments {
            let name = k
                .strip_prefix("m.")
                .or_else(|| k.strip_prefix("v."))
                .unwrap_or(k);
            let shape = current
                .get(name)
                .or_else(|| expected.get(name))
                .map(|p| p.dims().to_vec());
            if shape.as_deref() != Some(t.dims()) {
                return Err(Error::Format {
                    path: set.join("optimizer.safetensors"),
                    message: format!("{k} does not fit a parameter of this model and loss"),
                });
            }
        }
        if model.precision() != crate::Precision::F16 {
            run.scaler = None;
        } else if run.scaler.is_none() {
            run.scaler = Some(super::GradScaler::default());
        }
        model.set_state_dict(&weights)?;
        // The run's history file (in this run's logs_dir) holds exactly the kept records.
        if let Some(logs) = &cfg.logs_dir {
            let path = logs.join("metrics.jsonl");
            let mut out = String::new();
            for r in &history {
                out += &serde_json::to_string(r).map_err(|e| Error::Msg(e.to_string()))?;
                out.push('\n');
            }
            crate::fsio::write_bytes_atomic(&path, out.as_bytes())?;
        }
        {
            let mut p = lock(&self.inner.live.progress);
            p.step = run.step;
            p.epoch = run.epoch;
        }
        println!(
            "resumed from {} (step {}, epoch {})",
            set.display(),
            run.step,
            run.epoch
        );
        data.run = run;
        self.inner.live.set_history(history);
        Ok(())
    }

    /// A report of the run so far: progress, history charts.
    pub fn report(&self) -> Report {
        Report::new("").item(&self.progress()).item(&self.history())
    }

    /// Shows the progress and the history inline.
    pub fn evcxr_display(&self) {
        crate::notebook::show(&self.report());
    }
}

/// Checks that `found` has every tensor of `expected` with its shape, naming the file.
fn check_names(
    path: &Path,
    expected: &HashMap<String, Tensor>,
    found: &HashMap<String, Tensor>,
) -> Result<()> {
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    for k in names {
        let want = expected[k].dims();
        match found.get(k) {
            None => {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    message: format!("no tensor {k}"),
                });
            }
            Some(t) if t.dims() != want => {
                return Err(Error::Format {
                    path: path.to_path_buf(),
                    message: format!("{k} is {:?}, the model's {want:?}", t.dims()),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A run in a background thread ([`Trainer::spawn`]): shows its progress when displayed, and
/// gives its history, a stop and its report.
pub struct Run {
    trainer: Trainer,
    handle: Mutex<Option<JoinHandle<Result<FitReport>>>>,
    outcome: Mutex<Option<std::result::Result<FitReport, String>>>,
}

impl Run {
    /// Where the run stands.
    pub fn progress(&self) -> Progress {
        self.trainer.progress()
    }

    /// The history so far.
    pub fn history(&self) -> History {
        self.trainer.history()
    }

    /// Asks the run to stop after its current step; [`Run::join`] then returns at once.
    pub fn stop(&self) {
        self.trainer.stop();
    }

    /// Waits until the run ends or `seconds` pass, whichever comes first, and returns where it
    /// stands (a notebook cell that shows the progress a little later).
    pub fn wait(&self, seconds: f64) -> Progress {
        let deadline = Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.0));
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.progress()
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        lock(&self.handle)
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// The trainer (to continue with another fit or spawn, or to save its state).
    pub fn trainer(&self) -> Trainer {
        self.trainer.clone()
    }

    /// Waits for the run to end and returns its report (again on later calls).
    pub fn join(&self) -> Result<FitReport> {
        let handle = lock(&self.handle).take();
        if let Some(h) = handle {
            let outcome = match h.join() {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(panic) => Err(format!(
                    "the training thread panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
            };
            *lock(&self.outcome) = Some(outcome);
        }
        match lock(&self.outcome).as_ref() {
            Some(Ok(r)) => Ok(r.clone()),
            Some(Err(e)) => Err(Error::Msg(e.clone())),
            None => Err(Error::Msg("the run has no outcome".into())),
        }
    }

    /// The progress and a chart of the loss so far.
    pub fn report(&self) -> Report {
        let mut r = Report::new("").item(&self.progress());
        if let Ok(figures) = self.history().figures()
            && let Some(loss) = figures.into_iter().next()
        {
            r = r.item(&loss);
        }
        r
    }

    /// Shows the progress (and the loss so far) inline.
    pub fn evcxr_display(&self) {
        crate::notebook::show(&self.report());
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.progress().line())
    }
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.progress().line())
    }
}

/// Settings of a [`Trainer`] before it starts (see [`Trainer::builder`]).
#[derive(Clone)]
pub struct TrainerBuilder {
    model: Model,
    train: ImageLabeledDataset,
    loss: CriterionConfig,
    val: Option<ImageQueryGalleryLabeledDataset>,
    train_transform: Option<Transform>,
    cfg: FitConfig,
    resume: Option<PathBuf>,
}

impl TrainerBuilder {
    /// Validates on `val`'s query/gallery rows with the model's transform (every epoch by
    /// default; the best checkpoint follows `checkpoint_metric`).
    pub fn validate(mut self, val: &ImageQueryGalleryLabeledDataset) -> Self {
        self.val = Some(val.clone());
        self
    }

    /// All settings at once (a config file's, or one's own).
    pub fn config(mut self, cfg: FitConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// The training augmentation (default: OML's `augs_hypvit_torch` at the model's input size).
    pub fn train_transform(mut self, transform: Transform) -> Self {
        self.train_transform = Some(transform);
        self
    }

    /// The sampler (default: 8 labels x 4 images).
    pub fn sampler(mut self, sampler: SamplerConfig) -> Self {
        self.cfg.sampler = sampler;
        self
    }

    /// The optimiser (default: AdamW at 1e-4).
    pub fn optimizer(mut self, optimizer: OptimizerKind) -> Self {
        self.cfg.optimizer = optimizer;
        self
    }

    /// The base learning rate of the optimiser.
    pub fn lr(mut self, lr: f64) -> Self {
        self.cfg.optimizer = self.cfg.optimizer.with_lr(lr);
        self
    }

    /// The learning-rate schedule.
    pub fn scheduler(mut self, scheduler: Schedule) -> Self {
        self.cfg.scheduler = scheduler;
        self
    }

    /// Epochs (default 10).
    pub fn max_epochs(mut self, epochs: usize) -> Self {
        self.cfg.max_epochs = epochs;
        self
    }

    /// A step budget over the whole run.
    pub fn max_steps(mut self, steps: usize) -> Self {
        self.cfg.max_steps = Some(steps);
        self
    }

    /// A time budget in seconds per fit.
    pub fn max_seconds(mut self, seconds: f64) -> Self {
        self.cfg.max_seconds = Some(seconds);
        self
    }

    /// Sums the gradients of `k` batches before each update (a `k` times larger effective
    /// batch; the miner still sees one batch).
    pub fn accumulate_grad_batches(mut self, k: usize) -> Self {
        self.cfg.accumulate_grad_batches = k;
        self
    }

    /// Stops after `patience` validations without a better checkpoint metric.
    pub fn early_stopping(mut self, patience: usize) -> Self {
        self.cfg.early_stopping_patience = Some(patience);
        self
    }

    /// Whether a run with a `logs_dir` writes TensorBoard event files (on by default).
    pub fn tensorboard(mut self, yes: bool) -> Self {
        self.cfg.tensorboard = yes;
        self
    }

    /// Validate every this many epochs (0: only after the last epoch).
    pub fn valid_every_epochs(mut self, epochs: usize) -> Self {
        self.cfg.valid_every_epochs = epochs;
        self
    }

    /// The validation metrics.
    pub fn metrics(mut self, metrics: MetricsConfig) -> Self {
        self.cfg.metrics = metrics;
        self
    }

    /// Where checkpoints, `metrics.jsonl` and plots go.
    pub fn logs_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cfg.logs_dir = Some(dir.into());
        self
    }

    /// The seed of the sampler, the augmentations and the loss.
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// Keep decoded training images in memory (small datasets).
    pub fn cache_images(mut self, yes: bool) -> Self {
        self.cfg.cache_images = yes;
        self
    }

    /// What an unreadable training image does: stop the run (the default) or skip it.
    pub fn on_bad_image(mut self, policy: super::BadImagePolicy) -> Self {
        self.cfg.on_bad_image = policy;
        self
    }

    /// A progress line every this many steps.
    pub fn log_every_steps(mut self, steps: usize) -> Self {
        self.cfg.log_every_steps = steps;
        self
    }

    /// Continues the run saved in `dir` (a `logs_dir` or a [`Trainer::save_state`] folder): the
    /// built trainer starts from its newest complete checkpoint ([`Trainer::resume`]).
    pub fn resume(mut self, dir: impl Into<PathBuf>) -> Self {
        self.resume = Some(dir.into());
        self
    }

    /// Checks everything and builds the trainer (nothing runs yet).
    pub fn build(self) -> Result<Trainer> {
        let TrainerBuilder {
            model,
            train,
            loss,
            val,
            train_transform,
            cfg,
            resume,
        } = self;
        cfg.validate()?;
        loss.validate().map_err(|e| e.at("criterion"))?;
        model.device()?;
        cfg.sampler
            .build(&train, cfg.seed)
            .map_err(|e| e.at("sampler"))?;
        check_metric_path(&cfg.checkpoint_metric, &cfg.metrics)?;
        let steered = [
            (
                "early_stopping_patience",
                cfg.early_stopping_patience.is_some(),
            ),
            (
                "scheduler",
                matches!(cfg.scheduler, super::Schedule::Plateau { .. }),
            ),
        ];
        if let Some((key, _)) = steered.iter().find(|(_, on)| *on)
            && (val.is_none() || cfg.valid_every_epochs == 0)
        {
            return Err(Error::config(
                *key,
                "follows the validation metric: give a validation set (`.validate(&val)`, or \
                 validation rows in the CSV) and valid_every_epochs >= 1",
            ));
        }
        if let Some(v) = &val
            && (v.query_ids().is_empty() || v.gallery_ids().is_empty())
        {
            return Err(Error::Msg(format!(
                "{}: the validation rows need at least one query and one gallery item",
                v.table().csv_path.display()
            )));
        }
        if model.n_parameters() == 0 {
            return Err(Error::Msg(format!(
                "nothing to train: {} has no weights",
                model.arch()
            )));
        }
        let loss_has_params = loss.has_parameters();
        if cfg.freeze_backbone_epochs > 0 && model.spec().mlp.is_empty() && !loss_has_params {
            return Err(Error::config(
                "freeze_backbone_epochs",
                "0 for a model without a head and a loss without parameters: nothing would train",
            ));
        }
        let train_transform = match train_transform {
            Some(t) => t,
            None => {
                let side = model.transform().output_size().map_or(224, |(h, _)| h);
                Transform::preset("augs_hypvit_torch", side)?
            }
        };
        train_transform
            .validate()
            .map_err(|e| e.at("transforms_train"))?;
        let trainer = Trainer {
            inner: Arc::new(Inner {
                model,
                train,
                val,
                loss,
                cfg: Mutex::new(cfg),
                data: Mutex::new(Data {
                    train_transform,
                    run: RunState::default(),
                }),
                live: Live::default(),
                running: AtomicBool::new(false),
            }),
        };
        if let Some(dir) = resume {
            trainer.resume(&dir)?;
        }
        Ok(trainer)
    }

    /// Builds the trainer and trains in the foreground ([`Trainer::fit`]).
    pub fn fit(self) -> Result<FitReport> {
        self.build()?.fit()
    }

    /// Builds the trainer and trains in a background thread ([`Trainer::spawn`]).
    pub fn spawn(self) -> Result<Run> {
        self.build()?.spawn()
    }
}
