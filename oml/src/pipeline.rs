//! OML's config pipelines without Hydra: `train`, `validate` and `predict` from one YAML file with
//! typed fields, and the `embed` and `evaluate` jobs of the command line. Unknown keys are refused
//! with the known ones listed, every error names the key's path ([`Error::Config`]), and files and
//! names are checked before any work starts.
//!
//! A config is the library's own types: the fit settings are a [`FitConfig`] at the top level of
//! the file, the loss a [`CriterionConfig`], the sampler a [`crate::samplers::SamplerConfig`].
//! [`JobConfig::trainer`] builds the same [`Trainer`] a notebook builds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::{
    CheckOptions, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, SampleTable, Split,
    Transform,
};
use crate::losses::CriterionConfig;
use crate::metrics::{Metrics, MetricsConfig, NoGtPolicy};
use crate::models::ModelSpec;
use crate::retrieval::{QueryGalleryInfo, RetrievalResults, SearchConfig};
use crate::train::{FitConfig, FitReport, OptimizerKind, Trainer};
use crate::{Error, Model, Precision, Result};

/// The model: an arch, its options and where its weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// OML's arch.
    pub arch: String,
    /// `zoo:NAME` (the zoo: local folder, Hub cache, download), a file, or `random` (train from
    /// scratch).
    pub weights: String,
    /// L2-normalise embeddings.
    #[serde(default)]
    pub normalise: bool,
    /// ResNet GeM power.
    #[serde(default)]
    pub gem_p: Option<f64>,
    /// MLP head sizes.
    #[serde(default)]
    pub mlp: Vec<usize>,
    /// The network's whole configuration, for a network that is not one of the named archs
    /// (`arch` is then its name): e.g. `{ family: resnet, block: basic, layers: [1, 1, 1, 1],
    /// width: 32, gem_p: null, head: { linear: 1 }, remove_fc: true, normalise: true }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::models::NetworkConfig>,
}

impl ModelConfig {
    /// The arch and options.
    pub fn spec(&self) -> ModelSpec {
        let mut s = match &self.network {
            Some(n) => ModelSpec::custom(&self.arch, n.clone()),
            None => ModelSpec::new(&self.arch),
        };
        s.normalise = self.normalise;
        s.gem_p = self.gem_p;
        s.mlp = self.mlp.clone();
        s
    }
}

/// The model of `config` with its weights: `weights` instead when given, a seeded random
/// initialisation for `random`, the zoo's file for `zoo:NAME`, else the file named.
fn load_model(config: &ModelConfig, weights: Option<&Path>, seed: u64) -> Result<Model> {
    let spec = config.spec();
    match (weights, config.weights.as_str()) {
        (Some(p), _) => Model::from_spec(spec, p),
        (None, "random") => Model::init(spec, seed),
        (None, w) if w.starts_with("zoo:") => {
            let m = crate::zoo::find(&w[4..])?;
            let found = crate::zoo::locate(m, &crate::zoo::Hub::from_env())?;
            println!("model weights: zoo {} ({})", &w[4..], found.origin);
            Model::from_spec(spec, &found.path)
        }
        (None, w) => Model::from_spec(spec, w),
    }
}

/// Checks that `config` names a known arch and weights that can be found, naming `key`.
fn check_model(config: &ModelConfig, key: &str) -> Result<()> {
    config
        .spec()
        .feat_dim()
        .map_err(|e| Error::config(format!("{key}.arch"), e))?;
    match config.weights.as_str() {
        "random" => {}
        w if w.starts_with("zoo:") => {
            crate::zoo::find(&w[4..]).map_err(|e| Error::config(format!("{key}.weights"), e))?;
        }
        w if !Path::new(w).is_file() => {
            return Err(Error::config(
                format!("{key}.weights"),
                format!("{w} does not exist (give a file, zoo:NAME or random)"),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The keys of a job besides the fit settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobKeys {
    #[serde(default = "cpu")]
    device: String,
    #[serde(default)]
    precision: Precision,
    #[serde(default)]
    dataset_root: Option<PathBuf>,
    dataframe: PathBuf,
    model: ModelConfig,
    #[serde(default = "size224")]
    image_size: u32,
    #[serde(default = "augs")]
    transforms_train: String,
    #[serde(default = "norm")]
    transforms_val: String,
    #[serde(default = "default_criterion")]
    criterion: CriterionConfig,
    #[serde(default = "b32")]
    batch_size: usize,
    #[serde(default = "ten")]
    top_n: usize,
}

/// A whole job: OML's config keys. The fit settings ([`FitConfig`]: seed, epochs, sampler,
/// optimizer, scheduler, budgets, metrics, logs_dir, ...) sit at the top level beside these.
#[derive(Debug, Clone, Serialize)]
pub struct JobConfig {
    /// `cpu`, `cuda`, `cuda:i`.
    pub device: String,
    /// `f32`, or mixed precision `bf16` / `f16` (meant for CUDA) for training, validation and
    /// prediction.
    pub precision: Precision,
    /// Folder the CSV's paths are relative to (default: the CSV's folder).
    pub dataset_root: Option<PathBuf>,
    /// The CSV, relative to `dataset_root` when not absolute.
    pub dataframe: PathBuf,
    /// The model.
    pub model: ModelConfig,
    /// Image side for the transforms.
    pub image_size: u32,
    /// Train transform preset.
    pub transforms_train: String,
    /// Validation transform preset.
    pub transforms_val: String,
    /// Loss.
    pub criterion: CriterionConfig,
    /// Images per batch when embedding (validation, prediction).
    pub batch_size: usize,
    /// `predict`: results kept per query.
    pub top_n: usize,
    /// The fit settings (`logs_dir` defaults to `runs/oml`, the learning rate to OML's 1e-5).
    #[serde(flatten)]
    pub fit: FitConfig,
}

fn cpu() -> String {
    "cpu".into()
}
fn size224() -> u32 {
    224
}
fn augs() -> String {
    "augs_hypvit_torch".into()
}
fn norm() -> String {
    "norm_resize_hypvit".into()
}
fn default_criterion() -> CriterionConfig {
    CriterionConfig::default()
}
fn ten() -> usize {
    10
}
fn b32() -> usize {
    32
}

/// The top-level keys of each part: the job's own, the fit settings'.
fn key_sets() -> (Vec<String>, Vec<String>) {
    let keys = |v: serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let job = keys(
        serde_json::to_value(JobKeys {
            device: cpu(),
            precision: Precision::F32,
            dataset_root: None,
            dataframe: PathBuf::new(),
            model: ModelConfig {
                arch: String::new(),
                weights: String::new(),
                normalise: false,
                gem_p: None,
                mlp: Vec::new(),
                network: None,
            },
            image_size: 0,
            transforms_train: String::new(),
            transforms_val: String::new(),
            criterion: default_criterion(),
            batch_size: 0,
            top_n: 0,
        })
        .unwrap_or_default(),
    );
    let fit = keys(serde_json::to_value(FitConfig::default()).unwrap_or_default());
    (job, fit)
}

/// Applies `key=value` overrides to a config. Values of `path_keys` given as relative paths are
/// relative to the current folder (the command line's), not to the config's.
fn apply_overrides(
    value: &mut serde_norway::Value,
    overrides: &[String],
    path_keys: &[&str],
) -> Result<()> {
    for o in overrides {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| Error::Msg(format!("--set {o}: expected key=value")))?;
        let (k, mut v) = (k.trim(), v.trim().to_owned());
        if path_keys.contains(&k)
            && !v.starts_with("zoo:")
            && v != "random"
            && Path::new(&v).is_relative()
            && let Ok(cwd) = std::env::current_dir()
        {
            v = cwd.join(&v).to_string_lossy().into_owned();
        }
        set_key(value, k, &v)?;
    }
    Ok(())
}

/// The CSV's path: `dataframe` under `dataset_root` when relative.
fn csv_path(dataset_root: &Option<PathBuf>, dataframe: &Path) -> PathBuf {
    match dataset_root {
        Some(r) if dataframe.is_relative() => r.join(dataframe),
        _ => dataframe.to_path_buf(),
    }
}

/// Sets `a.b.c = value` (the value read as YAML) in a YAML mapping.
fn set_key(root: &mut serde_norway::Value, key: &str, value: &str) -> Result<()> {
    let parsed: serde_norway::Value = serde_norway::from_str(value)
        .map_err(|e| Error::config(key, format!("--set {key}={value}: not a YAML value ({e})")))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = node.as_mapping_mut().ok_or_else(|| {
            Error::config(parts[..i].join("."), format!("--set {key}: not a mapping"))
        })?;
        let k = serde_norway::Value::String((*part).to_owned());
        if i + 1 == parts.len() {
            map.insert(k, parsed);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| serde_norway::Value::Mapping(Default::default()));
    }
    Ok(())
}

/// Deserialises `value` as `T`, an error naming the key path below `prefix`.
///
/// serde loses the path inside internally tagged enums (`optimizer: { name: adamw, lr: fast }`
/// fails "at `optimizer`"): there, each key of the failing mapping is tried alone with the tag,
/// and the first that fails for a reason other than a missing key is named (`optimizer.lr`).
fn typed<T: serde::de::DeserializeOwned>(value: serde_norway::Value, prefix: &str) -> Result<T> {
    let attempt = |v: serde_norway::Value| {
        serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
            let path = e.path().to_string();
            (path, e.into_inner().to_string())
        })
    };
    let (path, message) = match attempt(value.clone()) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let mut key = path.clone();
    let mut message = message;
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let node = parts
        .iter()
        .try_fold(&value, |v, p| v.as_mapping().and_then(|m| m.get(*p)));
    if let Some(map) = node.and_then(|n| n.as_mapping())
        && let Some(tag) = map.get("name")
    {
        for (k, v) in map {
            let Some(name) = k.as_str().filter(|n| *n != "name") else {
                continue;
            };
            let mut alone = serde_norway::Mapping::new();
            alone.insert("name".into(), tag.clone());
            alone.insert(k.clone(), v.clone());
            let mut trial = value.clone();
            let slot = parts.iter().try_fold(&mut trial, |v, p| {
                v.as_mapping_mut().and_then(|m| m.get_mut(*p))
            });
            if let Some(slot) = slot {
                *slot = serde_norway::Value::Mapping(alone);
            }
            if let Err((_, m)) = attempt(trial)
                && !m.contains("missing field")
            {
                key = format!("{path}.{name}");
                message = m;
                break;
            }
        }
    }
    let key = match (prefix, key.as_str()) {
        (p, ".") => p.to_owned(),
        ("", k) => k.to_owned(),
        (p, k) => format!("{p}.{k}"),
    };
    Err(Error::config(key, message))
}

impl JobConfig {
    /// Reads a YAML config, applies `key=value` overrides, checks every field (the error names
    /// the key path) and that the files it names exist.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        Self::from_yaml(&text, overrides, path.parent()).map_err(|e| match e {
            Error::Config { key, message } => Error::Config {
                key,
                message: format!("{message} (in {})", path.display()),
            },
            other => other,
        })
    }

    /// As [`JobConfig::from_file`] from text; relative paths are resolved against `base`.
    pub fn from_yaml(text: &str, overrides: &[String], base: Option<&Path>) -> Result<Self> {
        let mut value: serde_norway::Value = serde_norway::from_str(text)
            .map_err(|e| Error::Msg(format!("not a YAML config: {e}")))?;
        if value.is_null() {
            value = serde_norway::Value::Mapping(Default::default());
        }
        apply_overrides(
            &mut value,
            overrides,
            &["dataset_root", "dataframe", "logs_dir", "model.weights"],
        )?;
        let Some(map) = value.as_mapping() else {
            return Err(Error::Msg("a config is a mapping of keys to values".into()));
        };
        // Split the keys between the job's and the fit settings'; anything else is unknown.
        let (job_keys, fit_keys) = key_sets();
        let mut job = serde_norway::Mapping::new();
        let mut fit = serde_norway::Mapping::new();
        for (k, v) in map {
            let name = k.as_str().unwrap_or_default();
            if job_keys.iter().any(|j| j == name) {
                job.insert(k.clone(), v.clone());
            } else if fit_keys.iter().any(|f| f == name) {
                fit.insert(k.clone(), v.clone());
            } else {
                let mut known: Vec<&String> = job_keys.iter().chain(&fit_keys).collect();
                known.sort();
                let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                return Err(Error::config(
                    name,
                    format!("unknown field `{name}`; known keys: {}", known.join(", ")),
                ));
            }
        }
        if !fit.contains_key("optimizer") {
            // OML's pipelines fine-tune pretrained backbones at 1e-5.
            fit.insert(
                "optimizer".into(),
                serde_norway::to_value(OptimizerKind::adamw(1e-5))
                    .map_err(|e| Error::Msg(e.to_string()))?,
            );
        }
        let job: JobKeys = typed(serde_norway::Value::Mapping(job), "")?;
        let mut fit: FitConfig = typed(serde_norway::Value::Mapping(fit), "")?;
        if fit.logs_dir.is_none() {
            fit.logs_dir = Some(PathBuf::from("runs/oml"));
        }
        let mut cfg = JobConfig {
            device: job.device,
            precision: job.precision,
            dataset_root: job.dataset_root,
            dataframe: job.dataframe,
            model: job.model,
            image_size: job.image_size,
            transforms_train: job.transforms_train,
            transforms_val: job.transforms_val,
            criterion: job.criterion,
            batch_size: job.batch_size,
            top_n: job.top_n,
            fit,
        };
        if let Some(base) = base.filter(|b| !b.as_os_str().is_empty()) {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            if let Some(r) = cfg.dataset_root.as_mut() {
                fix(r);
            } else {
                fix(&mut cfg.dataframe);
            }
            if let Some(l) = cfg.fit.logs_dir.as_mut() {
                fix(l);
            }
            if !cfg.model.weights.starts_with("zoo:") && cfg.model.weights != "random" {
                let mut w = PathBuf::from(&cfg.model.weights);
                fix(&mut w);
                cfg.model.weights = w.to_string_lossy().into_owned();
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// The CSV's path.
    pub fn dataframe_path(&self) -> PathBuf {
        csv_path(&self.dataset_root, &self.dataframe)
    }

    /// Where outputs go.
    pub fn logs_dir(&self) -> PathBuf {
        self.fit
            .logs_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/oml"))
    }

    fn check(&self) -> Result<()> {
        let csv = self.dataframe_path();
        if !csv.is_file() {
            return Err(Error::config(
                "dataframe",
                format!("{} does not exist", csv.display()),
            ));
        }
        check_model(&self.model, "model")?;
        Transform::preset(&self.transforms_train, self.image_size)
            .map_err(|e| Error::config("transforms_train", e))?;
        Transform::preset(&self.transforms_val, self.image_size)
            .map_err(|e| Error::config("transforms_val", e))?;
        self.criterion.validate().map_err(|e| e.at("criterion"))?;
        self.fit.validate()?;
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "at least 1"));
        }
        crate::device(&self.device).map_err(|e| Error::config("device", e))?;
        Ok(())
    }

    fn table(&self, require_labels: bool) -> Result<Arc<SampleTable>> {
        let options = CheckOptions {
            dataset_root: self.dataset_root.clone(),
            require_labels,
            ..CheckOptions::default()
        };
        Ok(Arc::new(SampleTable::from_csv(
            self.dataframe_path(),
            &options,
        )?))
    }

    /// The job's model: its weights (or `weights` instead), device, precision, validation
    /// transform and batch size.
    pub fn model(&self, weights: Option<&Path>) -> Result<Model> {
        load_model(&self.model, weights, self.fit.seed)?
            .with_device(&self.device)?
            .with_precision(self.precision)
            .with_transform(Transform::preset(&self.transforms_val, self.image_size)?)
            .with_batch_size(self.batch_size)
    }

    /// The trainer of this job: the same one a notebook builds with [`Trainer::builder`].
    pub fn trainer(&self) -> Result<Trainer> {
        let table = self.table(true)?;
        let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train))?;
        let model = self.model(None)?;
        let mut builder = Trainer::builder(model, &train, self.criterion.clone())
            .config(self.fit.clone())
            .train_transform(Transform::preset(&self.transforms_train, self.image_size)?);
        if !table.rows_of(Split::Validation).is_empty() {
            builder = builder.validate(&ImageQueryGalleryLabeledDataset::from_table(table)?);
        }
        builder.build()
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("cannot create folder", parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io("cannot write", path, e))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Msg(e.to_string()))?;
    write_text(path, &text)
}

/// `oml train`: fine-tunes and writes checkpoints, history, plots, the resolved config and the
/// report into `logs_dir`. With `resume`, continues the run saved in that folder (`None`: start a
/// new run, refused when `logs_dir` holds an earlier run's checkpoint, so that nothing is lost).
pub fn train(cfg: &JobConfig, resume: Option<&Path>) -> Result<FitReport> {
    let logs = cfg.logs_dir();
    if resume.is_none() && crate::train::has_checkpoint(&logs) {
        return Err(Error::Msg(format!(
            "{} holds the checkpoints of an earlier run: continue it with `oml train --config \
             ... --resume`, or start a new one elsewhere (--set logs_dir=runs/new) or after \
             deleting the folder",
            logs.display()
        )));
    }
    let trainer = cfg.trainer()?;
    if let Some(dir) = resume {
        trainer.resume(dir)?;
    }
    let resolved = serde_norway::to_string(cfg).map_err(|e| Error::Msg(e.to_string()))?;
    write_text(&logs.join("config.yaml"), &resolved)?;
    let report = trainer.fit()?;
    write_json(&logs.join("report.json"), &report)?;
    Ok(report)
}

/// `oml validate`: metrics of the job's model (or `weights`) on the CSV's validation rows;
/// writes `metrics.json` and a grid of the worst queries into `logs_dir`.
pub fn validate(cfg: &JobConfig, weights: Option<&Path>) -> Result<Metrics> {
    let val = ImageQueryGalleryLabeledDataset::from_table(cfg.table(true)?)?;
    let model = cfg.model(weights)?;
    let emb = model.embed(&val)?;
    let search = SearchConfig {
        top_n: cfg.fit.metrics.max_k().max(8),
        ..Default::default()
    };
    let rr = RetrievalResults::from_embeddings_with(
        &emb,
        &QueryGalleryInfo::from_dataset(&val),
        &search,
    )?;
    let metrics = rr.metrics_with(&cfg.fit.metrics)?;
    let logs = cfg.logs_dir();
    write_json(&logs.join("metrics.json"), &metrics.to_json())?;
    rr.visualize(&val)
        .worst(8)
        .results(6)
        .gt(3)
        .save_png(&logs.join("worst_queries.png"))?;
    Ok(metrics)
}

/// `oml predict`: embeddings of every row (`embeddings.npy` or `.parquet`) and each query's top-n
/// gallery items (`predictions.json`) for a CSV with or without labels.
pub fn predict(cfg: &JobConfig, weights: Option<&Path>, out: Option<&Path>) -> Result<PathBuf> {
    let table = cfg.table(false)?;
    let model = cfg.model(weights)?;
    let emb = model.embed(&crate::embed::TableImages(table.clone()))?;
    let logs = cfg.logs_dir();
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| logs.join("embeddings.npy"));
    crate::embed::write_embeddings(&path, &emb, &table.paths, table.labels.as_deref())?;
    // Queries and gallery: the flags of the validation rows (all rows of a CSV without a split);
    // an item that is both never retrieves itself, as in OML.
    let rows: Vec<usize> = table.rows_of(Split::Validation);
    let info = QueryGalleryInfo::from_table(&table);
    if info.is_query.iter().any(|&q| q) && info.is_gallery.iter().any(|&g| g) {
        let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
        let val = emb.index_select(&Tensor::new(ids.as_slice(), emb.device())?, 0)?;
        let search = SearchConfig {
            top_n: cfg.top_n,
            ..Default::default()
        };
        let rr = RetrievalResults::from_embeddings_with(&val, &info, &search)?;
        let (Some(q_items), Some(g_items)) = (rr.query_item_ids(), rr.gallery_item_ids()) else {
            return Err(Error::Msg("retrieval results without item ids".into()));
        };
        let mut out = Vec::new();
        for (qi, &item) in q_items.iter().enumerate() {
            let items: Vec<BTreeMap<&str, serde_json::Value>> = rr
                .ids(qi)
                .iter()
                .zip(rr.dists(qi))
                .map(|(&gi, &d)| {
                    BTreeMap::from([
                        (
                            "path",
                            serde_json::Value::from(table.paths[rows[g_items[gi]]].clone()),
                        ),
                        ("distance", serde_json::Value::from(d as f64)),
                    ])
                })
                .collect();
            out.push(serde_json::json!({"query": table.paths[rows[item]], "retrieved": items}));
        }
        write_json(&logs.join("predictions.json"), &out)?;
    }
    Ok(path)
}

/// What `oml evaluate` computes: retrieval metrics (and optionally per-query results and a grid)
/// of precomputed embeddings.
#[derive(Debug, Clone)]
pub struct EvaluateJob {
    /// float32 `[N, D]` `.npy` (or parquet): row i = the i-th validation row of the CSV, or one row
    /// per CSV row (as `oml embed` writes), of which the validation rows are taken.
    pub embeddings: PathBuf,
    /// The OML CSV.
    pub data: PathBuf,
    /// Folder that relative image paths are relative to.
    pub dataset_root: Option<PathBuf>,
    /// The metrics.
    pub metrics: MetricsConfig,
    /// The search (distance, depth).
    pub search: SearchConfig,
    /// Nested metrics JSON.
    pub out: Option<PathBuf>,
    /// Per-query results JSON.
    pub retrieved: Option<PathBuf>,
    /// Retrieval grid of the worst queries (PNG).
    pub grid: Option<PathBuf>,
    /// Queries in the grid.
    pub grid_queries: usize,
    /// Search this saved index (`oml index build`) instead of the CSV's gallery rows: the
    /// embeddings give the queries, the index the gallery (approximate for an `hnsw` index).
    pub index: Option<PathBuf>,
}

impl EvaluateJob {
    /// The job with OML's metric defaults for `embeddings` and `data`.
    pub fn new(embeddings: PathBuf, data: PathBuf) -> Self {
        EvaluateJob {
            embeddings,
            data,
            dataset_root: None,
            metrics: MetricsConfig {
                no_gt_policy: NoGtPolicy::Oml,
                ..MetricsConfig::common()
            },
            search: SearchConfig {
                top_n: 10,
                ..SearchConfig::default()
            },
            out: None,
            retrieved: None,
            grid: None,
            grid_queries: 8,
            index: None,
        }
    }
}

/// `oml evaluate`: returns the metrics and writes the outputs asked for.
pub fn evaluate(job: &EvaluateJob) -> Result<Metrics> {
    let options = CheckOptions {
        dataset_root: job.dataset_root.clone(),
        check_files: job.grid.is_some(),
        ..CheckOptions::default()
    };
    let table = Arc::new(SampleTable::from_csv(&job.data, &options)?);
    if let Some(dir) = &job.index {
        return evaluate_with_index(job, &table, dir);
    }
    let mut embeddings = crate::retrieval::read_embeddings(&job.embeddings)?;
    // `oml embed` writes every row of the CSV: keep the validation ones.
    let validation = table.rows_of(Split::Validation);
    if embeddings.dim(0)? == table.len() && validation.len() != table.len() {
        let ids: Vec<u32> = validation.iter().map(|&r| r as u32).collect();
        let ids = Tensor::new(ids.as_slice(), embeddings.device())?;
        embeddings = embeddings.index_select(&ids, 0)?;
    }
    let info = QueryGalleryInfo::from_table(&table);
    let (rr, metrics) = crate::metrics::evaluate(&embeddings, &info, &job.metrics, &job.search)
        .map_err(|e| Error::Msg(format!("{}: {e}", job.embeddings.display())))?;
    if let Some(out) = &job.out {
        write_json(out, &metrics.to_json())?;
    }
    if job.retrieved.is_some() || job.grid.is_some() {
        let dataset = ImageQueryGalleryLabeledDataset::from_table(table.clone())?;
        if let Some(path) = &job.retrieved {
            let names: Vec<String> = (0..dataset.len())
                .filter_map(|i| dataset.row(i).map(|r| table.paths[r].clone()))
                .collect();
            write_json(path, &rr.to_json(Some(&names), 10))?;
        }
        if let Some(path) = &job.grid {
            rr.visualize(&dataset)
                .worst(job.grid_queries)
                .results(job.search.top_n.min(8))
                .gt(3)
                .save_png(path)?;
        }
    }
    Ok(metrics)
}

/// What `oml embed` computes: embeddings of every row of a CSV (file order).
#[derive(Debug, Clone)]
pub struct EmbedJob {
    /// The OML CSV (labels optional).
    pub data: PathBuf,
    /// Folder that relative image paths are relative to.
    pub dataset_root: Option<PathBuf>,
    /// The output (`.npy` or `.parquet`).
    pub out: PathBuf,
    /// L2-normalise the embeddings.
    pub normalise: bool,
    /// What embeds.
    pub with: Embedder,
}

/// What embeds the images of an [`EmbedJob`].
#[derive(Debug, Clone)]
pub enum Embedder {
    /// A model.
    Model(Model),
    /// The raw-pixel baseline: grey `side x side` thumbnails, L2-normalised.
    Pixels(u32),
}

/// `oml embed`: writes the embeddings and returns their shape.
pub fn embed(job: &EmbedJob) -> Result<(usize, usize)> {
    let options = CheckOptions {
        dataset_root: job.dataset_root.clone(),
        require_labels: false,
        ..CheckOptions::default()
    };
    let table = Arc::new(SampleTable::from_csv(&job.data, &options)?);
    let images = crate::embed::TableImages(table.clone());
    let e = match &job.with {
        Embedder::Pixels(side) => crate::data::pixel_embeddings(&images, *side)?,
        Embedder::Model(model) => model.embed(&images)?,
    };
    let e = if job.normalise {
        crate::models::l2_normalise(&e)?
    } else {
        e
    };
    crate::embed::write_embeddings(&job.out, &e, &table.paths, table.labels.as_deref())?;
    Ok(e.dims2()?)
}

// --- gallery indexes ---

/// `oml evaluate --index`: queries from the embeddings, gallery from the index.
fn evaluate_with_index(job: &EvaluateJob, table: &Arc<SampleTable>, dir: &Path) -> Result<Metrics> {
    if !job.metrics.fmr_vals.is_empty() {
        return Err(Error::Msg(
            "fnmr@fmr needs the distance of every query-gallery pair: evaluate without --index"
                .into(),
        ));
    }
    let index = crate::retrieval::GalleryIndex::load(dir)?;
    let embeddings = crate::retrieval::read_embeddings(&job.embeddings)?;
    let (rows, info) = crate::retrieval::QueryItems::queries_of(table);
    let queries = rows_of_csv(&embeddings, table, &rows, &job.embeddings)?;
    let metrics_cfg = MetricsConfig {
        pcf_variance: Vec::new(),
        ..job.metrics.clone()
    };
    let top_n = job.search.top_n.max(metrics_cfg.max_k());
    let rr = index.search_items(&queries, &info, top_n)?;
    let metrics = crate::metrics::compute_metrics(&rr, &metrics_cfg)?;
    if let Some(out) = &job.out {
        write_json(out, &metrics.to_json())?;
    }
    let query_paths: Vec<PathBuf> = rows.iter().map(|&r| table.resolved_path(r)).collect();
    if let Some(path) = &job.retrieved {
        let mut names: Vec<String> = rows.iter().map(|&r| table.paths[r].clone()).collect();
        let nq = names.len();
        let item_names: Vec<String> = match &index.items().paths {
            Some(p) => p.clone(),
            None => index.items().ids.iter().map(|i| format!("#{i}")).collect(),
        };
        names.extend(item_names);
        let rr = rr.with_item_ids(
            (0..nq).collect(),
            (0..index.len()).map(|g| nq + g).collect(),
        )?;
        write_json(path, &rr.to_json(Some(&names), 10))?;
    }
    if let Some(path) = &job.grid {
        crate::retrieval::index::grid_of(&rr, &query_paths, index.items())?
            .worst(job.grid_queries)
            .results(job.search.top_n.min(8))
            .gt(3)
            .save_png(path)?;
    }
    Ok(metrics)
}

/// The embeddings of CSV rows `rows`, from a matrix with one row per CSV row (as `oml embed`
/// writes), one per validation row, or exactly one per wanted row.
fn rows_of_csv(e: &Tensor, table: &SampleTable, rows: &[usize], file: &Path) -> Result<Tensor> {
    let n = e.dim(0)?;
    let validation = table.rows_of(Split::Validation);
    let picks: Vec<u32> = if n == table.len() {
        rows.iter().map(|&r| r as u32).collect()
    } else if n == validation.len() {
        let at: std::collections::HashMap<usize, usize> = validation
            .iter()
            .enumerate()
            .map(|(i, &r)| (r, i))
            .collect();
        rows.iter()
            .map(|r| at.get(r).map(|&i| i as u32))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| Error::Msg("internal: a wanted row is not a validation row".into()))?
    } else if n == rows.len() {
        return Ok(e.clone());
    } else {
        return Err(Error::Format {
            path: file.to_path_buf(),
            message: format!(
                "{n} embeddings, but the CSV has {} rows, {} validation rows and {} wanted ones; \
                 give one row per CSV row (as `oml embed` writes)",
                table.len(),
                validation.len(),
                rows.len()
            ),
        });
    };
    let ids = Tensor::new(picks.as_slice(), e.device())?;
    Ok(e.index_select(&ids, 0)?)
}

/// Where a model named on the command line comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// `--model NAME`.
    Zoo(String),
    /// `--arch A --weights W`.
    File {
        /// The arch.
        arch: String,
        /// The weights file.
        weights: PathBuf,
    },
}

/// A model named on the command line, with the image side it embeds at.
#[derive(Debug, Clone)]
pub struct ModelRef {
    /// A zoo name, or an arch with a weights file.
    pub source: ModelSource,
    /// Image side (default: the model's transform's).
    pub image_size: Option<u32>,
}

impl ModelRef {
    /// Loads the model.
    pub fn load(&self) -> Result<Model> {
        let model = match &self.source {
            ModelSource::Zoo(name) => Model::from_pretrained(name)?,
            ModelSource::File { arch, weights } => Model::from_file(arch, weights)?,
        };
        match self.image_size {
            Some(side) => model.with_image_size(side),
            None => Ok(model),
        }
    }

    /// The model and the index's record of it.
    pub fn record(&self) -> Result<(Model, crate::retrieval::IndexModel)> {
        let model = self.load()?;
        let rec = match &self.source {
            ModelSource::Zoo(name) => crate::retrieval::IndexModel::of(&model, Some(name), None)?,
            ModelSource::File { weights, .. } => {
                let weights = std::fs::canonicalize(weights).unwrap_or_else(|_| weights.clone());
                crate::retrieval::IndexModel::of(&model, None, Some(&weights))?
            }
        };
        Ok((model, rec))
    }
}

/// `oml index build`.
#[derive(Debug, Clone)]
pub struct IndexBuildJob {
    /// `.npy` or `.parquet` embeddings.
    pub embeddings: PathBuf,
    /// The CSV whose gallery rows the embeddings are (`None`: every row, ids `0..N`).
    pub data: Option<PathBuf>,
    /// Folder that relative image paths are relative to.
    pub dataset_root: Option<PathBuf>,
    /// The index folder.
    pub out: PathBuf,
    /// Kind, metric, storage.
    pub config: crate::retrieval::IndexConfig,
    /// The model the embeddings came from (recorded for `oml search`).
    pub model: Option<ModelRef>,
}

/// The embeddings and items a CSV (or none) gives.
fn gallery_input(
    embeddings: &Path,
    data: Option<&Path>,
    dataset_root: Option<&PathBuf>,
) -> Result<(Tensor, crate::retrieval::GalleryItems)> {
    let e = crate::retrieval::read_embeddings(embeddings)?;
    match data {
        None => {
            let n = e.dim(0)?;
            Ok((e, crate::retrieval::GalleryItems::range(n)))
        }
        Some(csv) => {
            let options = CheckOptions {
                dataset_root: dataset_root.cloned(),
                require_labels: false,
                check_files: false,
                ..CheckOptions::default()
            };
            let table = SampleTable::from_csv(csv, &options)?;
            let items = crate::retrieval::GalleryItems::gallery_of(&table);
            let rows = rows_of_csv(&e, &table, &items.ids, embeddings)?;
            Ok((rows, items))
        }
    }
}

/// `oml index build`: builds and saves the index.
pub fn index_build(job: &IndexBuildJob) -> Result<crate::retrieval::GalleryIndex> {
    let (e, items) = gallery_input(
        &job.embeddings,
        job.data.as_deref(),
        job.dataset_root.as_ref(),
    )?;
    let record = match &job.model {
        Some(m) => {
            let (model, rec) = m.record()?;
            let dim = model.feat_dim()?;
            if dim != e.dim(1)? {
                return Err(Error::Msg(format!(
                    "{} gives {dim}-d embeddings, {} holds {}-d ones: these embeddings are not \
                     that model's",
                    model.arch(),
                    job.embeddings.display(),
                    e.dim(1)?
                )));
            }
            Some(rec)
        }
        None => None,
    };
    let mut index = crate::retrieval::GalleryIndex::build(&e, items, job.config.clone())
        .map_err(|err| Error::Msg(format!("{}: {err}", job.embeddings.display())))?;
    if let Some(rec) = record {
        index = index.with_model(rec);
    }
    index.save(&job.out)?;
    Ok(index)
}

/// `oml index add`: the embeddings (with the CSV's gallery rows as metadata, when given) join the
/// index under new ids, after its largest one. Returns the index and the first new id.
pub fn index_add(
    dir: &Path,
    embeddings: &Path,
    data: Option<&Path>,
    dataset_root: Option<&PathBuf>,
) -> Result<(crate::retrieval::GalleryIndex, usize)> {
    let mut index = crate::retrieval::GalleryIndex::load(dir)?;
    let (e, mut items) = gallery_input(embeddings, data, dataset_root)?;
    let first = index.items().ids.iter().max().map_or(0, |m| m + 1);
    items.ids = (first..first + items.len()).collect();
    index
        .add(&e, items)
        .map_err(|err| Error::Msg(format!("{}: {err}", embeddings.display())))?;
    index.save(dir)?;
    Ok((index, first))
}

/// `oml index query`: the `top_n` items of every row of `embeddings`, written to `out` (JSON, or
/// Parquet with one row per hit).
pub fn index_query(
    dir: &Path,
    embeddings: &Path,
    top_n: usize,
    out: &Path,
) -> Result<RetrievalResults> {
    let index = crate::retrieval::GalleryIndex::load(dir)?;
    let q = crate::retrieval::read_embeddings(embeddings)?;
    let rr = index
        .search(&q, top_n)
        .map_err(|err| Error::Msg(format!("{}: {err}", embeddings.display())))?;
    crate::retrieval::index::write_hits(out, &rr, index.items())?;
    Ok(rr)
}

/// `oml search`: embeds the images with the index's model and finds their nearest items.
#[derive(Debug, Clone)]
pub struct SearchJob {
    /// The index folder.
    pub index: PathBuf,
    /// The model (default: the one the index records).
    pub model: Option<ModelRef>,
    /// Query images.
    pub images: Vec<PathBuf>,
    /// Hits per image.
    pub top_n: usize,
    /// Grid of the images and their hits (PNG).
    pub grid: Option<PathBuf>,
    /// Hits as JSON.
    pub out: Option<PathBuf>,
}

/// `oml search`.
pub fn search(job: &SearchJob) -> Result<crate::retrieval::ImageSearch> {
    let index = crate::retrieval::GalleryIndex::load(&job.index)?;
    let model = job.model.as_ref().map(ModelRef::load).transpose()?;
    let found = index.search_images(model.as_ref(), &job.images, job.top_n)?;
    if let Some(out) = &job.out {
        write_json(out, &found.to_json())?;
    }
    if let Some(grid) = &job.grid {
        found
            .visualize()?
            .results(job.top_n.min(8))
            .save_png(grid)?;
    }
    Ok(found)
}

/// The re-ranker of `oml train-postprocessor`: OML's `pairwise_model: concat_siamese`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairwiseModelConfig {
    /// The siamese's backbone (often the first-stage model's arch and weights).
    pub extractor: ModelConfig,
    /// Hidden sizes of the head (OML's example: `[192]`).
    #[serde(default = "head_192")]
    pub mlp_hidden_dims: Vec<usize>,
    /// Average both orders of each pair when scoring.
    #[serde(default)]
    pub use_tta: bool,
}

fn head_192() -> Vec<usize> {
    vec![192]
}

/// The keys of a postprocessor job besides the fit settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostprocessorKeys {
    #[serde(default = "cpu")]
    device: String,
    #[serde(default)]
    dataset_root: Option<PathBuf>,
    dataframe: PathBuf,
    extractor: ModelConfig,
    pairwise_model: PairwiseModelConfig,
    #[serde(default = "size224")]
    image_size: u32,
    #[serde(default = "augs")]
    transforms_train: String,
    #[serde(default = "norm")]
    transforms_extraction: String,
    #[serde(default = "b32")]
    batch_size_inference: usize,
    #[serde(default)]
    logs_dir: Option<PathBuf>,
}

/// `oml train-postprocessor`: OML's pairwise re-ranker pipeline. A first-stage model
/// (`extractor`) embeds the CSV; a [`crate::retrieval::ConcatSiamese`] (`pairwise_model`) learns
/// from hard pairs of those embeddings; each validation re-ranks the first stage's top-n and
/// reports the metrics before and after. The fit settings
/// ([`crate::retrieval::PairwiseFitConfig`]: seed, max_epochs, sampler, optimizer,
/// freeze_n_epochs, hard_pairs_mining, top_n, ...) sit at the top level.
#[derive(Debug, Clone, Serialize)]
pub struct PostprocessorJob {
    /// `cpu`, `cuda`, `cuda:i`.
    pub device: String,
    /// Folder the CSV's paths are relative to (default: the CSV's folder).
    pub dataset_root: Option<PathBuf>,
    /// The CSV.
    pub dataframe: PathBuf,
    /// The first-stage model.
    pub extractor: ModelConfig,
    /// The re-ranker.
    pub pairwise_model: PairwiseModelConfig,
    /// Image side.
    pub image_size: u32,
    /// Augmentations of the re-ranker's training images.
    pub transforms_train: String,
    /// The transform of the first stage and of the re-ranker at validation.
    pub transforms_extraction: String,
    /// Images per batch when embedding and scoring.
    pub batch_size_inference: usize,
    /// Where `reranker.safetensors`, `report.json` and `config.yaml` go (default
    /// `runs/postprocessor`).
    pub logs_dir: PathBuf,
    /// The fit settings.
    #[serde(flatten)]
    pub fit: crate::retrieval::PairwiseFitConfig,
}

impl PostprocessorJob {
    /// Reads a YAML config with `key=value` overrides; relative paths are resolved against the
    /// config's folder; every value is checked, naming its key.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        let mut value: serde_norway::Value = serde_norway::from_str(&text)
            .map_err(|e| Error::Msg(format!("{}: not a YAML config: {e}", path.display())))?;
        if value.is_null() {
            value = serde_norway::Value::Mapping(Default::default());
        }
        apply_overrides(
            &mut value,
            overrides,
            &[
                "dataset_root",
                "dataframe",
                "logs_dir",
                "extractor.weights",
                "pairwise_model.extractor.weights",
            ],
        )?;
        let Some(map) = value.as_mapping() else {
            return Err(Error::Msg("a config is a mapping of keys to values".into()));
        };
        let keys = |v: serde_json::Value| -> Vec<String> {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        let fit_keys = keys(
            serde_json::to_value(crate::retrieval::PairwiseFitConfig::default())
                .unwrap_or_default(),
        );
        let job_keys = [
            "device",
            "dataset_root",
            "dataframe",
            "extractor",
            "pairwise_model",
            "image_size",
            "transforms_train",
            "transforms_extraction",
            "batch_size_inference",
            "logs_dir",
        ];
        let mut job = serde_norway::Mapping::new();
        let mut fit = serde_norway::Mapping::new();
        for (k, v) in map {
            let name = k.as_str().unwrap_or_default();
            if job_keys.contains(&name) {
                job.insert(k.clone(), v.clone());
            } else if fit_keys.iter().any(|f| f == name) {
                fit.insert(k.clone(), v.clone());
            } else {
                let mut known: Vec<&str> = job_keys
                    .iter()
                    .copied()
                    .chain(fit_keys.iter().map(String::as_str))
                    .collect();
                known.sort();
                return Err(Error::config(
                    name,
                    format!(
                        "unknown field `{name}`; known keys: {} (in {})",
                        known.join(", "),
                        path.display()
                    ),
                ));
            }
        }
        let keys: PostprocessorKeys = typed(serde_norway::Value::Mapping(job), "")?;
        let fit: crate::retrieval::PairwiseFitConfig =
            typed(serde_norway::Value::Mapping(fit), "")?;
        let base = path.parent().unwrap_or(Path::new(""));
        let fix = |p: PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                base.join(p)
            } else {
                p
            }
        };
        let fix_weights = |m: &mut ModelConfig| {
            if !m.weights.starts_with("zoo:") && m.weights != "random" {
                m.weights = fix(PathBuf::from(&m.weights))
                    .to_string_lossy()
                    .into_owned();
            }
        };
        let (dataset_root, dataframe) = match keys.dataset_root {
            Some(r) => (Some(fix(r)), keys.dataframe),
            None => (None, fix(keys.dataframe)),
        };
        let mut extractor = keys.extractor;
        fix_weights(&mut extractor);
        let mut pairwise_model = keys.pairwise_model;
        fix_weights(&mut pairwise_model.extractor);
        let job = PostprocessorJob {
            device: keys.device,
            dataset_root,
            dataframe,
            extractor,
            pairwise_model,
            image_size: keys.image_size,
            transforms_train: keys.transforms_train,
            transforms_extraction: keys.transforms_extraction,
            batch_size_inference: keys.batch_size_inference,
            logs_dir: fix(keys
                .logs_dir
                .unwrap_or_else(|| PathBuf::from("runs/postprocessor"))),
            fit,
        };
        job.check()?;
        Ok(job)
    }

    fn csv(&self) -> PathBuf {
        csv_path(&self.dataset_root, &self.dataframe)
    }

    fn check(&self) -> Result<()> {
        if !self.csv().is_file() {
            return Err(Error::config(
                "dataframe",
                format!("{} does not exist", self.csv().display()),
            ));
        }
        check_model(&self.extractor, "extractor")?;
        check_model(&self.pairwise_model.extractor, "pairwise_model.extractor")?;
        if self.pairwise_model.mlp_hidden_dims.contains(&0) {
            return Err(Error::config(
                "pairwise_model.mlp_hidden_dims",
                "every layer size > 0",
            ));
        }
        Transform::preset(&self.transforms_train, self.image_size)
            .map_err(|e| Error::config("transforms_train", e))?;
        Transform::preset(&self.transforms_extraction, self.image_size)
            .map_err(|e| Error::config("transforms_extraction", e))?;
        if self.batch_size_inference == 0 {
            return Err(Error::config("batch_size_inference", "at least 1"));
        }
        crate::device(&self.device).map_err(|e| Error::config("device", e))?;
        self.fit.validate()
    }

    /// A model of `config` on the job's device, with the extraction transform.
    fn model(&self, config: &ModelConfig) -> Result<Model> {
        load_model(config, None, self.fit.seed)?
            .with_device(&self.device)?
            .with_transform(Transform::preset(
                &self.transforms_extraction,
                self.image_size,
            )?)
            .with_batch_size(self.batch_size_inference)
    }
}

/// Runs a [`PostprocessorJob`]: writes `reranker.safetensors` (the siamese's weights),
/// `report.json` (every step's loss, metrics before and after re-ranking at each validation) and
/// the resolved `config.yaml` into `logs_dir`.
pub fn train_postprocessor(job: &PostprocessorJob) -> Result<crate::retrieval::PairwiseFitReport> {
    let table = Arc::new(SampleTable::from_csv(
        job.csv(),
        &CheckOptions {
            dataset_root: job.dataset_root.clone(),
            require_labels: true,
            ..CheckOptions::default()
        },
    )?);
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train))?;
    let val = if table.rows_of(Split::Validation).is_empty() {
        None
    } else {
        Some(ImageQueryGalleryLabeledDataset::from_table(table)?)
    };
    // The sampler is checked against the labels before any image is embedded.
    job.fit
        .sampler
        .build(&train, job.fit.seed)
        .map_err(|e| e.at("sampler"))?;
    let first = job.model(&job.extractor)?;
    println!(
        "first stage: embedding {} training and {} validation images with {}",
        train.len(),
        val.as_ref().map_or(0, |v| v.len()),
        first.arch()
    );
    let train_emb = first.embed(&train)?;
    let val_emb = match &val {
        Some(v) => Some(first.embed(v)?),
        None => None,
    };
    let backbone = job.model(&job.pairwise_model.extractor)?;
    let mut siamese = crate::retrieval::ConcatSiamese::new(
        backbone,
        &job.pairwise_model.mlp_hidden_dims,
        job.fit.seed,
    )?;
    siamese.use_tta = job.pairwise_model.use_tta;
    let resolved = serde_norway::to_string(job).map_err(|e| Error::Msg(e.to_string()))?;
    write_text(&job.logs_dir.join("config.yaml"), &resolved)?;
    let report = crate::retrieval::fit_siamese(
        &mut siamese,
        &train,
        &train_emb,
        val.as_ref().zip(val_emb.as_ref()),
        Transform::preset(&job.transforms_train, job.image_size)?,
        &job.fit,
    )?;
    siamese.save(&job.logs_dir.join("reranker.safetensors"))?;
    write_json(&job.logs_dir.join("report.json"), &report)?;
    Ok(report)
}
