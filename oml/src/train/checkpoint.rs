//! Crash-safe checkpoint sets.
//!
//! A run folder (a `logs_dir`, or the folder given to [`super::Trainer::save_state`]) holds:
//!
//! ```text
//! checkpoints/step-000000120/   one complete set: last.safetensors (the model),
//!                               criterion.safetensors, optimizer.safetensors,
//!                               criterion_state.safetensors (a miner's bank, when there is one),
//!                               state.json (position, config, and the size and sha256 of each file)
//! checkpoints/step-000000090/   the set before it, kept until the next one is complete
//! checkpoints/LATEST            the name of the newest set
//! last.safetensors              the newest set's weights (a hard link, replaced by a rename)
//! best.safetensors              the best validation's weights (written aside, then renamed)
//! metrics.jsonl                 the history (append-only; a torn last line is ignored)
//! ```
//!
//! A set is written into a temporary folder, each file flushed to the disk, then renamed into
//! place; `LATEST` is replaced the same way. So at any instant the folder holds complete sets
//! only. Reading checks every file against the sizes and hashes `state.json` records and the step
//! against the folder's name; a set that does not agree is refused with the file named, and the
//! previous complete set is used instead.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{FitConfig, GradScaler, Record, RunState, Skipped};
use crate::data::{ImageLabeledDataset, Transform};
use crate::fsio::{self, crash_point};
use crate::losses::CriterionConfig;
use crate::{Error, Model, Result};

/// The folder of the sets inside a run folder.
pub(crate) const CHECKPOINTS: &str = "checkpoints";
const LATEST: &str = "LATEST";
const STATE: &str = "state.json";
const MODEL: &str = "last.safetensors";
const CRITERION: &str = "criterion.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const BANK: &str = "criterion_state.safetensors";

/// Size and hash of one file of a set, as `state.json` records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    sha256: String,
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
    /// The plateau schedule's and early stopping's counts (absent in older state files).
    #[serde(default)]
    plateau: super::PlateauState,
    /// The loss's state besides tensors (a miner's bank labels and position, counters, logs);
    /// its tensors are in `criterion_state.safetensors`.
    #[serde(default)]
    criterion_state: serde_json::Value,
    config: FitConfig,
    /// The loss.
    #[serde(default)]
    loss: Option<CriterionConfig>,
    /// What a resumed run must share with this one (see [`identity`]).
    #[serde(default)]
    identity: BTreeMap<String, serde_json::Value>,
    /// Training images skipped as unreadable so far.
    #[serde(default)]
    skipped_images: Vec<Skipped>,
    /// The set's other files (absent in older state files, which are read unchecked).
    #[serde(default)]
    files: BTreeMap<String, FileEntry>,
}

/// A set read back: everything a resume needs.
pub(crate) struct Loaded {
    /// The model's weights, by name.
    pub weights: HashMap<String, Tensor>,
    pub run: RunState,
    /// The history up to the set's step.
    pub history: Vec<Record>,
    /// What the saved run was (empty for older sets).
    pub identity: BTreeMap<String, serde_json::Value>,
    /// The set read.
    pub dir: PathBuf,
    /// Why a newer set was passed over, when one was.
    pub warning: Option<String>,
}

/// The keys of a run that a resumed run must share, flattened to key paths (`criterion.margin`,
/// `sampler.n_labels`, `model.arch`, `data.train_rows`): the model, the data, the loss, the
/// sampler, the optimiser and everything else that changes what a step computes. Budgets
/// (`max_epochs`, `max_steps`, `max_seconds`, early stopping), logging, validation settings, the
/// device and the bad-image policy may change.
pub(crate) fn identity(
    model: &Model,
    train: &ImageLabeledDataset,
    loss: &CriterionConfig,
    cfg: &FitConfig,
    train_transform: &Transform,
) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    let value = |v: serde_json::Result<serde_json::Value>| v.unwrap_or(serde_json::Value::Null);
    flatten(
        "model",
        &value(serde_json::to_value(model.spec())),
        &mut out,
    );
    out.insert(
        "precision".into(),
        serde_json::Value::String(model.precision().to_string()),
    );
    // The CSV's full path, so that a run resumed from another folder is the same run.
    let csv = &train.table().csv_path;
    let csv = std::fs::canonicalize(csv).unwrap_or_else(|_| csv.clone());
    out.insert(
        "data.csv".into(),
        serde_json::Value::String(csv.display().to_string()),
    );
    out.insert("data.train_rows".into(), train.len().into());
    out.insert("data.labels".into(), train.n_labels().into());
    flatten("criterion", &value(serde_json::to_value(loss)), &mut out);
    flatten(
        "transforms_train",
        &value(serde_json::to_value(train_transform)),
        &mut out,
    );
    let mut fit = value(serde_json::to_value(cfg));
    if let Some(map) = fit.as_object_mut() {
        for free in [
            "max_epochs",
            "max_steps",
            "max_seconds",
            "log_every_steps",
            "log_every_seconds",
            "valid_every_epochs",
            "metrics",
            "logs_dir",
            "cache_images",
            "on_bad_image",
            "checkpoint_every_seconds",
            "early_stopping_patience",
            "tensorboard",
        ] {
            map.remove(free);
        }
    }
    flatten("", &fit, &mut out);
    out
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, x) in map {
                flatten(&key(k), x, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// The keys whose values differ between a saved identity and the current one, as
/// `key: saved -> now` lines (empty when the saved one is empty: older sets are not checked).
pub(crate) fn differences(
    saved: &BTreeMap<String, serde_json::Value>,
    now: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    if saved.is_empty() {
        return Vec::new();
    }
    let keys: std::collections::BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
    let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_owned(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .map(|k| format!("{k}: {} -> {}", show(saved.get(k)), show(now.get(k))))
        .collect()
}

fn set_name(step: usize) -> String {
    format!("step-{step:09}")
}

fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.parse().ok()
}

/// The complete sets in `root/checkpoints`, newest (by step) first.
fn sets(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(root.join(CHECKPOINTS))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((step_of(&name)?, e.path()))
        })
        .filter(|(_, p)| p.is_dir())
        .collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    out
}

/// Whether `dir` holds a checkpoint to resume from (a set folder, a run folder with sets, or an
/// older flat `state.json`).
pub(crate) fn exists(dir: &Path) -> bool {
    dir.join(STATE).is_file() || !sets(dir).is_empty()
}

/// The newest set of a run folder, named by `LATEST` (else the newest by step).
fn latest(root: &Path) -> Option<PathBuf> {
    let named = std::fs::read_to_string(root.join(CHECKPOINTS).join(LATEST))
        .ok()
        .map(|s| root.join(CHECKPOINTS).join(s.trim()))
        .filter(|p| p.is_dir());
    named.or_else(|| sets(root).into_iter().next().map(|(_, p)| p))
}

/// Writes a complete checkpoint set of `run` into the run folder `root` and makes it the newest
/// (see the module docs); keeps the set before it and removes older ones. A failure leaves the
/// sets that were there untouched and says which is the last complete one.
pub(crate) fn write(
    root: &Path,
    model: &Model,
    run: &RunState,
    cfg: &FitConfig,
    loss: &CriterionConfig,
    identity: &BTreeMap<String, serde_json::Value>,
) -> Result<PathBuf> {
    let ck = root.join(CHECKPOINTS);
    let name = set_name(run.step);
    let tmp = ck.join(format!(".tmp-{name}-{}", std::process::id()));
    let written = write_into(&tmp, model, run, cfg, loss, identity);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(write_failed(
            root,
            &format!("the checkpoint of step {} into {}", run.step, ck.display()),
            e,
        ));
    }
    let dest = ck.join(&name);
    let aside = ck.join(format!(".old-{name}-{}", std::process::id()));
    if dest.exists() {
        // The same step saved again (a stop right after an epoch's checkpoint).
        std::fs::rename(&dest, &aside).map_err(|e| Error::io("cannot rename", &dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io("cannot rename", &tmp, e))?;
    fsio::sync_dir(&ck);
    crash_point("checkpoint.renamed");
    fsio::write_bytes_atomic(&ck.join(LATEST), format!("{name}\n").as_bytes())?;
    crash_point("checkpoint.latest");
    let _ = std::fs::remove_dir_all(&aside);
    link_last(root, &dest)?;
    crash_point("checkpoint.linked");
    prune(root, run.step);
    Ok(dest)
}

/// The error of a failed write in a run folder: what could not be written, why, and which
/// complete set stays to resume from.
pub(crate) fn write_failed(root: &Path, what: &str, e: Error) -> Error {
    let last = latest(root).map_or_else(
        || "there is no complete checkpoint set yet".to_owned(),
        |p| format!("the last complete set is {}", p.display()),
    );
    Error::Msg(format!(
        "cannot write {what}: {e}. The run stops here; {last} (free some space or choose another \
         logs_dir, then resume)"
    ))
}

/// The files of a set and its `state.json` (with their sizes and hashes) in `dir`, each flushed.
fn write_into(
    dir: &Path,
    model: &Model,
    run: &RunState,
    cfg: &FitConfig,
    loss: &CriterionConfig,
    identity: &BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("cannot remove", dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    let weights = model.state_dict();
    let mut parts: Vec<(&str, &HashMap<String, Tensor>)> = vec![
        (MODEL, &weights),
        (CRITERION, &run.criterion_params),
        (OPTIMIZER, &run.moments),
    ];
    if !run.loss_state.tensors.is_empty() {
        parts.push((BANK, &run.loss_state.tensors));
    }
    let mut files = BTreeMap::new();
    for (fname, tensors) in parts {
        let path = dir.join(fname);
        fsio::save_safetensors(&path, tensors)?;
        fsio::sync(&path)?;
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io("cannot read", &path, e))?
            .len();
        files.insert(
            fname.to_owned(),
            FileEntry {
                bytes,
                sha256: fsio::sha256_of(&path)?,
            },
        );
        crash_point("checkpoint.file");
    }
    let state = State {
        epoch: run.epoch,
        batch_in_epoch: run.batch_in_epoch,
        step: run.step,
        best: run.best,
        param_steps: run.param_steps.clone(),
        grad_scaler: run.scaler,
        plateau: run.plateau,
        criterion_state: run.loss_state.values.clone(),
        config: cfg.clone(),
        loss: Some(loss.clone()),
        identity: identity.clone(),
        skipped_images: run.skipped.clone(),
        files,
    };
    let text = serde_json::to_string_pretty(&state).map_err(|e| Error::Msg(e.to_string()))?;
    let path = dir.join(STATE);
    std::fs::write(&path, text).map_err(|e| Error::io("cannot write", &path, e))?;
    fsio::sync(&path)?;
    fsio::sync_dir(dir);
    crash_point("checkpoint.state");
    Ok(())
}

/// `root/last.safetensors` becomes the set's weights: a hard link (a copy where links are not
/// possible) under a temporary name, renamed over the old one.
fn link_last(root: &Path, set: &Path) -> Result<()> {
    let target = root.join(MODEL);
    let from = set.join(MODEL);
    let tmp = fsio::temp_name(&target);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&from, &tmp).is_err() {
        std::fs::copy(&from, &tmp).map_err(|e| Error::io("cannot copy", &from, e))?;
        fsio::sync(&tmp)?;
    }
    std::fs::rename(&tmp, &target).map_err(|e| Error::io("cannot rename", &tmp, e))?;
    fsio::sync_dir(root);
    Ok(())
}

/// Removes every set but the one of `step` and the newest before it, and what interrupted writes
/// left behind.
fn prune(root: &Path, step: usize) {
    let ck = root.join(CHECKPOINTS);
    let previous = sets(root).into_iter().map(|(s, _)| s).find(|&s| s < step);
    for (s, p) in sets(root) {
        if s != step && Some(s) != previous {
            // Renamed first, then removed: a kill in the middle leaves a leftover, not a torn set
            // under a set's name.
            let gone = ck.join(format!(".old-{}-{}", set_name(s), std::process::id()));
            if std::fs::rename(&p, &gone).is_ok() {
                let _ = std::fs::remove_dir_all(gone);
            }
        }
    }
    clean_leftovers(root);
}

/// Removes what killed writes of other processes left in a run folder: `.tmp-*` and `.old-*`
/// folders, `.LATEST.*.tmp`, `.last.safetensors.*`, `.best.safetensors.*`, `.checkpoints-old-*`.
fn clean_leftovers(root: &Path) {
    let ck = root.join(CHECKPOINTS);
    let own = std::process::id();
    let is_own =
        |name: &str| name.ends_with(&format!("-{own}")) || name.ends_with(&format!(".{own}.tmp"));
    for e in std::fs::read_dir(&ck).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Leftovers of killed writes (`.tmp-*`, `.old-*`, `.LATEST.*.tmp`) of other processes:
        // this one writes one set at a time and has renamed its own by now.
        if name.starts_with('.') && !is_own(&name) {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".last.safetensors.") || name.starts_with(".best.safetensors.") {
            let _ = std::fs::remove_file(e.path());
        }
        if name.starts_with(".checkpoints-old-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes the sets of an earlier run from a run folder (a fresh run starts there).
pub(crate) fn clear(root: &Path) -> Result<()> {
    let ck = root.join(CHECKPOINTS);
    if ck.exists() {
        // Renamed first, then removed (see `prune`).
        let gone = root.join(format!(".checkpoints-old-{}", std::process::id()));
        std::fs::rename(&ck, &gone).map_err(|e| Error::io("cannot rename", &ck, e))?;
        std::fs::remove_dir_all(&gone).map_err(|e| Error::io("cannot remove", &gone, e))?;
    }
    Ok(())
}

/// Reads the newest complete set under `dir` (a run folder, a set folder, or a folder with an
/// older flat `state.json`), checking its files. When the newest set does not check out, the one
/// before it is read and [`Loaded::warning`] says why.
pub(crate) fn read(dir: &Path) -> Result<Loaded> {
    // A set folder (or an older flat layout) given directly; a run folder's sets come first (an
    // older flat state.json beside them is from before them).
    if dir.join(STATE).is_file() && latest(dir).is_none() {
        let root = match dir.parent() {
            Some(p) if p.file_name().is_some_and(|n| n == CHECKPOINTS) => {
                p.parent().unwrap_or(dir).to_path_buf()
            }
            _ => dir.to_path_buf(),
        };
        return read_set(dir, &root);
    }
    clean_leftovers(dir);
    let mut candidates: Vec<PathBuf> = latest(dir).into_iter().collect();
    for (_, p) in sets(dir) {
        if !candidates.contains(&p) {
            candidates.push(p);
        }
    }
    if candidates.is_empty() {
        return Err(Error::Msg(format!(
            "{}: no checkpoint to resume from (no {CHECKPOINTS}/ with a complete set, no \
             {STATE}); start the run without resuming, or give the run's folder",
            dir.display()
        )));
    }
    let mut refused = Vec::new();
    for set in candidates {
        match read_set(&set, dir) {
            Ok(mut loaded) => {
                if !refused.is_empty() {
                    loaded.warning = Some(format!(
                        "{}; resuming from the previous complete set {} (step {}) instead",
                        refused.join("; "),
                        set.display(),
                        loaded.run.step
                    ));
                }
                return Ok(loaded);
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    Err(Error::Msg(format!(
        "{}: no complete checkpoint set: {}",
        dir.display(),
        refused.join("; ")
    )))
}

/// Reads one set, checking its files against `state.json`.
fn read_set(set: &Path, root: &Path) -> Result<Loaded> {
    let state_path = set.join(STATE);
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| Error::io("cannot read", &state_path, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: state_path.clone(),
        message: format!("not a trainer state (a torn or edited file?): {e}"),
    })?;
    if let Some(step) = set.file_name().and_then(|n| step_of(&n.to_string_lossy()))
        && step != state.step
    {
        return Err(Error::Format {
            path: state_path,
            message: format!(
                "records step {} inside the set of step {step}: the set is not consistent",
                state.step
            ),
        });
    }
    for (fname, want) in &state.files {
        let path = set.join(fname);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io("missing checkpoint file", &path, e))?
            .len();
        if bytes != want.bytes {
            return Err(Error::Format {
                path,
                message: format!(
                    "{bytes} bytes where {STATE} records {} (a torn or replaced file)",
                    want.bytes
                ),
            });
        }
        if fsio::sha256_of(&path)? != want.sha256 {
            return Err(Error::Format {
                path,
                message: format!(
                    "its sha256 differs from the one {STATE} records (an altered file)"
                ),
            });
        }
    }
    if !state.files.is_empty() {
        for needed in [MODEL, CRITERION, OPTIMIZER] {
            if !state.files.contains_key(needed) {
                return Err(Error::Format {
                    path: state_path,
                    message: format!("records no {needed}: not a complete set"),
                });
            }
        }
    }
    let load = |name: &str| -> Result<HashMap<String, Tensor>> {
        let path = set.join(name);
        candle_core::safetensors::load(&path, &candle_core::Device::Cpu).map_err(|e| {
            Error::Format {
                path: path.clone(),
                message: format!("cannot read the checkpoint: {e}"),
            }
        })
    };
    let weights = load(MODEL)?;
    let criterion_params = load(CRITERION)?;
    let moments = load(OPTIMIZER)?;
    let bank = if set.join(BANK).is_file() {
        load(BANK)?
    } else {
        HashMap::new()
    };
    let history = super::read_history(&root.join("metrics.jsonl"), state.step)?;
    let run = RunState {
        epoch: state.epoch,
        batch_in_epoch: state.batch_in_epoch,
        step: state.step,
        best: state.best,
        moments,
        param_steps: state.param_steps,
        criterion_params,
        loss_state: crate::losses::LossState {
            tensors: bank,
            values: state.criterion_state,
        },
        scaler: state.grad_scaler,
        skipped: state.skipped_images,
        plateau: state.plateau,
    };
    Ok(Loaded {
        weights,
        run,
        history,
        identity: state.identity,
        dir: set.to_path_buf(),
        warning: None,
    })
}
