//! Fine-tuning: a trainer that runs the same from a notebook cell, a background thread and the
//! command line.
//!
//! [`Trainer::builder`] takes a [`crate::Model`], the train set and a loss
//! ([`crate::losses::CriterionConfig`]); the
//! builder's settings are a [`FitConfig`] (sampler, optimiser, schedule, budgets, validation,
//! checkpoints). [`Trainer::fit`] runs in the foreground, [`Trainer::spawn`] in a background thread
//! and returns a [`Run`] (progress, history, stop, join). Both continue where the last run ended.
//!
//! A trainer holds only data: the model's weights, the optimiser's moments, the loss's parameters
//! and state, the position in the run. Each `fit` builds the network, the loss and the optimiser
//! from that data in the calling code and writes the data back when it ends, so a trainer (and its
//! model) built in one notebook cell can be trained in any later one (see [`crate::Model`]).
//!
//! Budgets (steps, seconds) and the stop handle end a run cleanly; a NaN or infinite loss stops it
//! with the step named. State files make a resumed run end exactly where an uninterrupted one does.
//!
//! ## Checkpoints
//! A run with a `logs_dir` writes a complete checkpoint set after every epoch and when it ends,
//! crash-safe: each set is written into a temporary folder, flushed to the disk and switched to by
//! a rename, and the set before it is kept until the new one is complete.
//!
//! ```text
//! logs_dir/checkpoints/step-000000120/  last.safetensors (the model), optimizer.safetensors,
//!                                       criterion.safetensors, criterion_state.safetensors (a
//!                                       miner's bank), state.json (position, config, the size
//!                                       and sha256 of every file of the set)
//! logs_dir/checkpoints/step-000000090/  the set before
//! logs_dir/checkpoints/LATEST           the newest set's name
//! logs_dir/last.safetensors             the newest set's weights (a hard link)
//! logs_dir/best.safetensors             the best validation's weights
//! logs_dir/metrics.jsonl                the history
//! ```
//!
//! [`Trainer::resume`] (or the builder's `.resume(dir)`, or `oml train --resume`) reads the newest
//! set whose files agree with its `state.json`; one that does not is refused by name and the set
//! before it is used. A failed write (a full disk) stops the run and leaves the sets intact.

mod checkpoint;
mod engine;
pub mod optim;
pub mod plots;
pub mod tensorboard;
mod trainer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use optim::{GradScaler, Optimizer, OptimizerKind, ParamGroup, PlateauState, Schedule};
pub use trainer::{Progress, Run, Trainer, TrainerBuilder};

use crate::metrics::MetricsConfig;
use crate::notebook::{Figure, Report, Show, Table};
use crate::samplers::SamplerConfig;
use crate::{Error, Result};

/// Settings of a run (everything but the model, the loss and the data). Every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Seed of the sampler, the augmentations and the loss's random choices.
    pub seed: u64,
    /// Epochs to run.
    pub max_epochs: usize,
    /// Which batches (default: 8 labels x 4 images).
    pub sampler: SamplerConfig,
    /// Update rule and base learning rate (default: AdamW, 1e-4).
    pub optimizer: OptimizerKind,
    /// Learning rate over the run.
    pub scheduler: Schedule,
    /// Learning rate of the backbone over the base (the head and the loss's parameters get the
    /// base).
    pub backbone_lr_scale: f64,
    /// Epochs with the backbone frozen (OML's `freeze_n_epochs`).
    pub freeze_backbone_epochs: usize,
    /// Clip gradients to this global L2 norm.
    pub clip_grad_norm: Option<f64>,
    /// Validate every this many epochs (0: never; the last epoch always validates).
    pub valid_every_epochs: usize,
    /// Stop after this many steps (batches, counted over the whole run; with
    /// `accumulate_grad_batches` the run ends at the next update, up to k - 1 batches later).
    /// Warm-up and schedules count the same steps.
    pub max_steps: Option<usize>,
    /// Stop after this many seconds of training (counted from the start of each `fit`). A cosine
    /// or one-cycle schedule then ends with the budget: from the fit's tenth step on, its horizon
    /// is the step the budget is expected to end at (at the fit's pace so far), when that comes
    /// before the epochs' end.
    pub max_seconds: Option<f64>,
    /// A progress line every this many steps (in addition to `log_every_seconds`).
    pub log_every_steps: usize,
    /// A progress line at least this often, in seconds.
    pub log_every_seconds: f64,
    /// The metric that picks the best checkpoint (`OVERALL/cmc/1`).
    pub checkpoint_metric: String,
    /// Retrieval metrics at validation (default: cmc@1,5, precision@5, map@5).
    pub metrics: MetricsConfig,
    /// Where checkpoints, history and plots go (none: memory only).
    pub logs_dir: Option<PathBuf>,
    /// Keep decoded training images in memory after the first epoch (fast for small datasets;
    /// memory grows with the dataset).
    pub cache_images: bool,
    /// What a training image that cannot be read does to the run: `error` (the default) stops it
    /// naming the file and the step; `skip` replaces it by another image of its label and reports
    /// the skipped files (in the run's report and `metrics.jsonl`).
    pub on_bad_image: BadImagePolicy,
    /// With a `logs_dir`: write a checkpoint set after an epoch only when at least this many
    /// seconds have passed since the last one (0: after every epoch). The end of a run always
    /// writes one. For runs of many short epochs, where each set would cost more than it saves.
    pub checkpoint_every_seconds: f64,
    /// Gradients of this many batches are summed (and averaged) before each optimiser update:
    /// a larger effective batch for triplet mining on a small machine. The loss and the miner
    /// still see one batch at a time. An epoch's last update takes what is left; budgets and stop
    /// requests take effect at the next update.
    pub accumulate_grad_batches: usize,
    /// Stop after this many validations in a row without a better checkpoint metric (none:
    /// never).
    pub early_stopping_patience: Option<usize>,
    /// With a `logs_dir`: write TensorBoard event files to `logs_dir/tb/` (every step's loss,
    /// learning rate and logs, every validation metric).
    pub tensorboard: bool,
}

/// What an unreadable training image does to a run (see [`FitConfig::on_bad_image`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadImagePolicy {
    /// Stop the run with an error naming the file and the step.
    #[default]
    Error,
    /// Use another image of the same label instead; count and report the skipped files.
    Skip,
}

/// A training image that could not be read and was replaced (`on_bad_image: skip`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// The image file.
    pub path: PathBuf,
    /// Why it could not be read.
    pub error: String,
    /// The step that met it first (1-based).
    pub step: usize,
}

/// Whether `dir` holds a checkpoint a run can resume from: a run folder (a `logs_dir`) with a
/// complete checkpoint set, or one set's folder.
pub fn has_checkpoint(dir: &Path) -> bool {
    checkpoint::exists(dir)
}

/// The metrics a run validates with unless told otherwise: cmc@1 and @5, precision@5, map@5.
pub fn default_metrics() -> MetricsConfig {
    MetricsConfig::common()
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
        Err(Error::config(
            "checkpoint_metric",
            format!(
                "{path}: not a metric the validation computes; give GROUP/metric/k (e.g. \
                 OVERALL/cmc/1) with k among the metrics' top_k lists"
            ),
        ))
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            seed: 0,
            max_epochs: 10,
            sampler: SamplerConfig::default(),
            optimizer: OptimizerKind::adamw(1e-4),
            scheduler: Schedule::default(),
            backbone_lr_scale: 1.0,
            freeze_backbone_epochs: 0,
            clip_grad_norm: None,
            valid_every_epochs: 1,
            max_steps: None,
            max_seconds: None,
            log_every_steps: 10,
            log_every_seconds: 30.0,
            checkpoint_metric: "OVERALL/cmc/1".to_owned(),
            metrics: default_metrics(),
            logs_dir: None,
            cache_images: false,
            on_bad_image: BadImagePolicy::Error,
            checkpoint_every_seconds: 0.0,
            accumulate_grad_batches: 1,
            early_stopping_patience: None,
            tensorboard: true,
        }
    }
}

impl FitConfig {
    /// Checks every value that does not need the data, naming the key of the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.max_epochs == 0 {
            return Err(Error::config("max_epochs", "at least 1"));
        }
        if self.accumulate_grad_batches == 0 {
            return Err(Error::config("accumulate_grad_batches", "at least 1"));
        }
        if self.early_stopping_patience == Some(0) {
            return Err(Error::config(
                "early_stopping_patience",
                "at least 1 (or leave it out to never stop early)",
            ));
        }
        self.metrics.validate().map_err(|e| e.at("metrics"))?;
        self.scheduler.validate().map_err(|e| e.at("scheduler"))?;
        self.optimizer.validate().map_err(|e| e.at("optimizer"))?;
        check_metric_path(&self.checkpoint_metric, &self.metrics)?;
        if let Some(s) = self.max_seconds
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::config(
                "max_seconds",
                format!("{s}: a finite number of seconds > 0"),
            ));
        }
        if let Some(c) = self.clip_grad_norm
            && c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(Error::config(
                "clip_grad_norm",
                format!("{c}: a positive norm"),
            ));
        }
        if !(self.checkpoint_every_seconds.is_finite() && self.checkpoint_every_seconds >= 0.0) {
            return Err(Error::config(
                "checkpoint_every_seconds",
                "a finite number of seconds >= 0",
            ));
        }
        if !(self.backbone_lr_scale.is_finite() && self.backbone_lr_scale >= 0.0) {
            return Err(Error::config("backbone_lr_scale", "a finite number >= 0"));
        }
        if self.sampler.batch_size() == 0 {
            return Err(Error::config("sampler", "an empty batch"));
        }
        Ok(())
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
    /// A training image that could not be read, replaced by another of its label.
    Skipped {
        /// Epoch (0-based).
        epoch: usize,
        /// The step that met it (1-based).
        step: usize,
        /// The image file.
        path: PathBuf,
        /// Why it could not be read.
        error: String,
    },
}

impl Record {
    /// The global step of the record.
    pub fn step(&self) -> usize {
        match self {
            Record::Step { step, .. }
            | Record::Validation { step, .. }
            | Record::Skipped { step, .. } => *step,
        }
    }
}

/// A float that JSON wrote as `null` (serde_json's spelling of NaN and infinities) read as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `early_stopping_patience` validations without a better checkpoint metric.
    EarlyStopped,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ending::Completed => "all epochs done",
            Ending::StepBudget => "step budget reached",
            Ending::TimeBudget => "time budget reached",
            Ending::Stopped => "stopped",
            Ending::EarlyStopped => "stopped early: the checkpoint metric stopped improving",
        })
    }
}

/// The history of a run: every step and validation, in order. Displays its charts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History(pub Vec<Record>);

impl History {
    /// The records.
    pub fn records(&self) -> &[Record] {
        &self.0
    }

    /// `(step, loss)` of every step.
    pub fn losses(&self) -> Vec<(usize, f64)> {
        self.0
            .iter()
            .filter_map(|r| match r {
                Record::Step { step, loss, .. } => Some((*step, *loss)),
                _ => None,
            })
            .collect()
    }

    /// The mean loss of the last `n` steps (NaN without steps).
    pub fn recent_loss(&self, n: usize) -> f64 {
        let l = self.losses();
        let tail = &l[l.len().saturating_sub(n.max(1))..];
        if tail.is_empty() {
            return f64::NAN;
        }
        tail.iter().map(|(_, v)| v).sum::<f64>() / tail.len() as f64
    }

    /// Every validation's `(step, metrics)`.
    pub fn validations(&self) -> Vec<(usize, &BTreeMap<String, f64>)> {
        self.0
            .iter()
            .filter_map(|r| match r {
                Record::Validation { step, metrics, .. } => Some((*step, metrics)),
                _ => None,
            })
            .collect()
    }

    /// The charts: loss, learning rate, validation metrics, distances at the last validation.
    pub fn figures(&self) -> Result<Vec<Figure>> {
        Ok(plots::history_plots(&self.0)?
            .into_iter()
            .map(|(name, png)| Figure::new(name.trim_end_matches(".png"), png))
            .collect())
    }

    /// Shows the charts inline.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl Show for History {
    fn html(&self) -> Result<String> {
        let figures = self.figures()?;
        let items: Vec<&dyn Show> = figures.iter().map(|f| f as &dyn Show).collect();
        Report::new("").row(&items).html()
    }
    fn plain(&self) -> String {
        let steps = self.losses();
        format!(
            "history: {} steps, last loss {:.4} (mean of the last 10: {:.4}), {} validations",
            steps.len(),
            steps.last().map_or(f64::NAN, |s| s.1),
            self.recent_loss(10),
            self.validations().len()
        )
    }
}

/// The outcome of a fit.
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
    /// Training images skipped as unreadable over the whole run (`on_bad_image: skip`).
    #[serde(default)]
    pub skipped_images: Vec<Skipped>,
    /// The whole history of the run (not written to `report.json`: `metrics.jsonl` holds it).
    #[serde(skip)]
    pub history: History,
}

impl FitReport {
    /// One line: ending, steps, time, last loss, best metric.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} steps ({} epochs) in {:.0} s; loss {:.4} (mean of the last 10 steps){}",
            self.ending,
            self.steps,
            self.epochs,
            self.seconds,
            self.history.recent_loss(10),
            self.best
                .map(|(v, e)| format!("; best validation {v:.4} after epoch {e}"))
                .unwrap_or_default()
        ) + &if self.skipped_images.is_empty() {
            String::new()
        } else {
            format!(
                "; {} unreadable training image(s) skipped (first: {})",
                self.skipped_images.len(),
                self.skipped_images[0].path.display()
            )
        }
    }

    /// Shows the summary, the last metrics and the charts inline.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl Show for FitReport {
    fn html(&self) -> Result<String> {
        let mut report = Report::new("").text(&self.summary());
        if let Some(m) = &self.last_metrics {
            let mut table = Table::new(&["last validation", "value"]);
            for (k, v) in m {
                table = table.row(&[k.clone(), format!("{v:.4}")]);
            }
            report = report.item(&table);
        }
        report.item(&self.history).html()
    }
    fn plain(&self) -> String {
        self.summary()
    }
}

impl std::fmt::Display for FitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Position of a run and what its optimiser and loss keep between steps: what a checkpoint saves
/// besides the model's weights.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunState {
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub step: usize,
    pub best: Option<(f64, usize)>,
    /// The optimiser's moments (`m.<param>`, `v.<param>`) and per-parameter step counts.
    pub moments: HashMap<String, candle_core::Tensor>,
    pub param_steps: HashMap<String, u64>,
    /// The loss's parameters (ArcFace's class centres).
    pub criterion_params: HashMap<String, candle_core::Tensor>,
    /// What the loss keeps between batches (memory banks, counters).
    pub loss_state: crate::losses::LossState,
    /// The f16 loss scale.
    pub scaler: Option<GradScaler>,
    /// Training images skipped as unreadable (`on_bad_image: skip`).
    pub skipped: Vec<Skipped>,
    /// What the plateau schedule and early stopping count between validations.
    pub plateau: PlateauState,
}

/// The records of a history file (`metrics.jsonl`) up to `step`: those of later steps, which a
/// resumed run repeats, are left out; so is an unreadable last line (a run killed while writing
/// it). No file: no records.
pub(crate) fn read_history(path: &Path, step: usize) -> Result<Vec<Record>> {
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
        let at = r.step();
        if at <= step {
            kept.push(r);
        }
    }
    Ok(kept)
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
