//! OML's config pipelines without Hydra: `train`, `validate` and `predict` from one YAML file with
//! typed fields. Unknown keys are refused with the known ones listed, every error names the key's
//! path, and files and names are checked before any work starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::data::{
    CheckOptions, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, SampleTable, Split,
    Transform,
};
use crate::losses::{
    AllTripletsMiner, ArcFaceLoss, Criterion, HardClusterMiner, HardTripletsMiner, MinerWithBank,
    NHardTripletsMiner, NRange, Reduction, SurrogatePrecision, TripletLossWithMiner, TripletMiner,
    TripletMinerWithMemory,
};
use crate::metrics::MetricsConfig;
use crate::models::{Extractor, ModelSpec};
use crate::train::{FitConfig, FitReport, OptimizerKind, Schedule, Trainer};
use crate::{Error, Result};

/// The model: an arch, its options and where its weights come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// OML's arch.
    pub arch: String,
    /// `zoo:NAME` (the Hub cache), a file, or `random` (train from scratch).
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
}

impl ModelConfig {
    fn spec(&self) -> ModelSpec {
        let mut s = ModelSpec::new(&self.arch);
        s.normalise = self.normalise;
        s.gem_p = self.gem_p;
        s.mlp = self.mlp.clone();
        s
    }
}

/// The batch sampler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerConfig {
    /// `n_labels` labels x `n_instances` images per batch.
    Balance {
        /// Labels per batch.
        n_labels: usize,
        /// Images per label.
        n_instances: usize,
    },
}

/// A miner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum MinerConfig {
    /// Every triplet (optionally capped).
    AllTriplets {
        /// Cap.
        #[serde(default)]
        max_output_triplets: Option<usize>,
    },
    /// Hardest positive and negative per anchor.
    HardTriplets,
    /// n hardest positives and negatives per anchor.
    NHardTriplets {
        /// Positives (an int, or a 1-based `[lo, hi]`).
        n_positive: NRange,
        /// Negatives.
        n_negative: NRange,
    },
    /// Per-label means.
    HardCluster,
    /// n-hard over the batch and a memory bank.
    MinerWithBank {
        /// Batches in the bank.
        bank_size_in_batches: usize,
        /// Positives.
        n_positive: NRange,
        /// Negatives.
        n_negative: NRange,
    },
    /// Triplets expanded with a memory bank.
    TripletMinerWithMemory {
        /// Batches in the bank.
        bank_size_in_batches: usize,
        /// Expansion factor.
        tri_expand_k: usize,
    },
}

impl MinerConfig {
    fn build(&self, seed: u64) -> Result<Box<dyn TripletMiner>> {
        Ok(match self {
            MinerConfig::AllTriplets {
                max_output_triplets,
            } => Box::new(AllTripletsMiner::new(*max_output_triplets, seed)),
            MinerConfig::HardTriplets => Box::new(HardTripletsMiner),
            MinerConfig::NHardTriplets {
                n_positive,
                n_negative,
            } => Box::new(NHardTripletsMiner {
                n_positive: *n_positive,
                n_negative: *n_negative,
            }),
            MinerConfig::HardCluster => Box::new(HardClusterMiner),
            MinerConfig::MinerWithBank {
                bank_size_in_batches,
                n_positive,
                n_negative,
            } => Box::new(MinerWithBank::new(
                *bank_size_in_batches,
                NHardTripletsMiner {
                    n_positive: *n_positive,
                    n_negative: *n_negative,
                },
            )?),
            MinerConfig::TripletMinerWithMemory {
                bank_size_in_batches,
                tri_expand_k,
            } => Box::new(TripletMinerWithMemory::new(
                *bank_size_in_batches,
                *tri_expand_k,
                seed,
            )?),
        })
    }
}

/// The loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum CriterionConfig {
    /// Triplet loss on mined triplets.
    TripletWithMiner {
        /// Margin (`null`: soft).
        margin: Option<f64>,
        /// The miner.
        miner: MinerConfig,
        /// Reduction.
        #[serde(default)]
        reduction: Reduction,
    },
    /// ArcFace over the train labels.
    Arcface {
        /// Angular margin.
        #[serde(default = "arc_m")]
        m: f64,
        /// Scale.
        #[serde(default = "arc_s")]
        s: f64,
        /// Label smoothing.
        #[serde(default)]
        smoothing_epsilon: f64,
    },
    /// Smooth precision@k.
    SurrogatePrecision {
        /// k.
        k: usize,
        /// Top-k temperature.
        #[serde(default = "one")]
        temperature1: f64,
        /// Rank temperature.
        #[serde(default = "t2")]
        temperature2: f64,
    },
}

fn arc_m() -> f64 {
    0.5
}
fn arc_s() -> f64 {
    64.0
}
fn one() -> f64 {
    1.0
}
fn t2() -> f64 {
    0.01
}

/// A whole job: OML's config keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Seed.
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:i`.
    #[serde(default = "cpu")]
    pub device: String,
    /// `f32`, or mixed precision `bf16` / `f16` (meant for CUDA) for training, validation and
    /// prediction.
    #[serde(default)]
    pub precision: crate::Precision,
    /// Folder the CSV's paths are relative to (default: the CSV's folder).
    #[serde(default)]
    pub dataset_root: Option<PathBuf>,
    /// The CSV, relative to `dataset_root` when not absolute.
    pub dataframe: PathBuf,
    /// The model.
    pub model: ModelConfig,
    /// Image side for the transforms.
    #[serde(default = "size224")]
    pub image_size: u32,
    /// Train transform preset.
    #[serde(default = "augs")]
    pub transforms_train: String,
    /// Validation transform preset.
    #[serde(default = "norm")]
    pub transforms_val: String,
    /// Sampler.
    #[serde(default = "balance")]
    pub sampler: SamplerConfig,
    /// Loss.
    #[serde(default = "default_criterion")]
    pub criterion: CriterionConfig,
    /// Optimiser.
    #[serde(default = "default_optimizer")]
    pub optimizer: OptimizerKind,
    /// Schedule.
    #[serde(default)]
    pub scheduler: Schedule,
    /// Epochs.
    #[serde(default = "ten")]
    pub max_epochs: usize,
    /// Validate every N epochs.
    #[serde(default = "one_usize")]
    pub valid_every_epochs: usize,
    /// Metrics (default: cmc@1,5, precision@5, map@5).
    #[serde(default = "crate::train::default_metrics")]
    pub metrics: MetricsConfig,
    /// Best-checkpoint metric.
    #[serde(default = "cmc1")]
    pub checkpoint_metric: String,
    /// Output folder.
    #[serde(default = "runs")]
    pub logs_dir: PathBuf,
    /// Step budget.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Time budget in seconds.
    #[serde(default)]
    pub max_seconds: Option<f64>,
    /// Gradient clipping.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Frozen-backbone epochs.
    #[serde(default)]
    pub freeze_backbone_epochs: usize,
    /// Backbone learning rate over the base.
    #[serde(default = "one")]
    pub backbone_lr_scale: f64,
    /// Validation / prediction batch size.
    #[serde(default = "b32")]
    pub batch_size: usize,
    /// Progress line every N steps.
    #[serde(default = "ten")]
    pub log_every_steps: usize,
    /// `predict`: results kept per query.
    #[serde(default = "ten")]
    pub top_n: usize,
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
fn balance() -> SamplerConfig {
    SamplerConfig::Balance {
        n_labels: 8,
        n_instances: 4,
    }
}
fn default_criterion() -> CriterionConfig {
    CriterionConfig::TripletWithMiner {
        margin: None,
        miner: MinerConfig::HardTriplets,
        reduction: Reduction::Mean,
    }
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adamw {
        lr: 1e-5,
        weight_decay: 0.01,
        betas: (0.9, 0.999),
        eps: 1e-8,
    }
}
fn ten() -> usize {
    10
}
fn one_usize() -> usize {
    1
}
fn cmc1() -> String {
    "OVERALL/cmc/1".into()
}
fn runs() -> PathBuf {
    PathBuf::from("runs/oml")
}
fn b32() -> usize {
    32
}

/// Sets `a.b.c = value` (the value read as YAML) in a YAML mapping.
fn set_key(root: &mut serde_norway::Value, key: &str, value: &str) -> Result<()> {
    let parsed: serde_norway::Value = serde_norway::from_str(value)
        .map_err(|e| Error::Msg(format!("--set {key}={value}: not a YAML value ({e})")))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = node.as_mapping_mut().ok_or_else(|| {
            Error::Msg(format!(
                "--set {key}: {} is not a mapping",
                parts[..i].join(".")
            ))
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

impl JobConfig {
    /// Reads a YAML config, applies `key=value` overrides, checks every field (the error names
    /// the key path) and that the files it names exist.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))?;
        Self::from_yaml(&text, overrides, path.parent())
            .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))
    }

    /// As [`JobConfig::from_file`] from text; relative paths are resolved against `base`.
    pub fn from_yaml(text: &str, overrides: &[String], base: Option<&Path>) -> Result<Self> {
        let mut value: serde_norway::Value =
            serde_norway::from_str(text).map_err(|e| Error::Msg(format!("not YAML: {e}")))?;
        if value.is_null() {
            value = serde_norway::Value::Mapping(Default::default());
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| Error::Msg(format!("--set {o}: expected key=value")))?;
            let (k, mut v) = (k.trim(), v.trim().to_owned());
            // Paths given on the command line are relative to the current folder, not the file.
            let is_path = matches!(
                k,
                "dataset_root" | "dataframe" | "logs_dir" | "model.weights"
            );
            if is_path
                && !v.starts_with("zoo:")
                && v != "random"
                && Path::new(&v).is_relative()
                && let Ok(cwd) = std::env::current_dir()
            {
                v = cwd.join(&v).to_string_lossy().into_owned();
            }
            set_key(&mut value, k, &v)?;
        }
        let mut cfg: JobConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            Error::Msg(format!("at `{path}`: {}", e.into_inner()))
        })?;
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
            fix(&mut cfg.logs_dir);
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
        match &self.dataset_root {
            Some(r) if self.dataframe.is_relative() => r.join(&self.dataframe),
            _ => self.dataframe.clone(),
        }
    }

    fn check(&self) -> Result<()> {
        let csv = self.dataframe_path();
        if !csv.is_file() {
            return Err(Error::Msg(format!(
                "at `dataframe`: {} does not exist",
                csv.display()
            )));
        }
        let spec = self.model.spec();
        spec.feat_dim()
            .map_err(|e| Error::Msg(format!("at `model.arch`: {e}")))?;
        match self.model.weights.as_str() {
            "random" => {}
            w if w.starts_with("zoo:") => {
                crate::zoo::find(&w[4..])
                    .map_err(|e| Error::Msg(format!("at `model.weights`: {e}")))?;
            }
            w if !Path::new(w).is_file() => {
                return Err(Error::Msg(format!(
                    "at `model.weights`: {w} does not exist (give a file, zoo:NAME or random)"
                )));
            }
            _ => {}
        }
        Transform::preset(&self.transforms_train, self.image_size)
            .map_err(|e| Error::Msg(format!("at `transforms_train`: {e}")))?;
        Transform::preset(&self.transforms_val, self.image_size)
            .map_err(|e| Error::Msg(format!("at `transforms_val`: {e}")))?;
        self.optimizer
            .validate()
            .map_err(|e| Error::Msg(format!("at `optimizer`: {e}")))?;
        self.scheduler
            .validate()
            .map_err(|e| Error::Msg(format!("at `scheduler`: {e}")))?;
        self.metrics
            .validate()
            .map_err(|e| Error::Msg(format!("at `metrics`: {e}")))?;
        crate::train::check_metric_path(&self.checkpoint_metric, &self.metrics)
            .map_err(|e| Error::Msg(format!("at `checkpoint_metric`: {e}")))?;
        crate::device(&self.device).map_err(|e| Error::Msg(format!("at `device`: {e}")))?;
        Ok(())
    }

    /// The fit settings of this job.
    pub fn fit_config(&self) -> FitConfig {
        let SamplerConfig::Balance {
            n_labels,
            n_instances,
        } = self.sampler;
        FitConfig {
            seed: self.seed,
            max_epochs: self.max_epochs,
            n_labels,
            n_instances,
            optimizer: self.optimizer,
            scheduler: self.scheduler.clone(),
            backbone_lr_scale: self.backbone_lr_scale,
            freeze_backbone_epochs: self.freeze_backbone_epochs,
            clip_grad_norm: self.clip_grad_norm,
            valid_every_epochs: self.valid_every_epochs,
            max_steps: self.max_steps,
            max_seconds: self.max_seconds,
            log_every_steps: self.log_every_steps,
            log_every_seconds: 30.0,
            checkpoint_metric: self.checkpoint_metric.clone(),
            metrics: self.metrics.clone(),
            val_batch_size: self.batch_size,
            logs_dir: Some(self.logs_dir.clone()),
            cache_images: false,
            precision: self.precision,
        }
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

    /// The model with this job's weights, its variables in `varmap` when given (fine-tuning).
    pub fn model(
        &self,
        weights: Option<&Path>,
        varmap: Option<&VarMap>,
    ) -> Result<Box<dyn Extractor>> {
        let device = crate::device(&self.device)?;
        let spec = self.model.spec();
        let path = match weights {
            Some(p) => p.to_path_buf(),
            None => match self.model.weights.as_str() {
                "random" => {
                    let vm = match varmap {
                        Some(v) => v.clone(),
                        None => VarMap::new(),
                    };
                    return crate::models::init(&spec, &vm, &device);
                }
                w if w.starts_with("zoo:") => {
                    let m = crate::zoo::find(&w[4..])?;
                    crate::zoo::weights(m, &crate::zoo::Hub::from_env())?
                }
                w => PathBuf::from(w),
            },
        };
        crate::models::load(&spec, &path, &device, varmap)
    }
}

/// `oml train`: fine-tunes and writes checkpoints, history, plots, the resolved config and a
/// retrieval grid of the worst validation queries into `logs_dir`.
pub fn train(cfg: &JobConfig) -> Result<FitReport> {
    std::fs::create_dir_all(&cfg.logs_dir)
        .map_err(|e| Error::io("cannot create", &cfg.logs_dir, e))?;
    let resolved = serde_norway::to_string(cfg).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(cfg.logs_dir.join("config.yaml"), resolved)
        .map_err(|e| Error::io("cannot write", cfg.logs_dir.join("config.yaml"), e))?;
    let device = crate::device(&cfg.device)?;
    let table = cfg.table(true)?;
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train))?;
    let val = if table.rows_of(Split::Validation).is_empty() {
        None
    } else {
        Some((
            ImageQueryGalleryLabeledDataset::from_table(table.clone())?,
            Transform::preset(&cfg.transforms_val, cfg.image_size)?,
        ))
    };
    let backbone = VarMap::new();
    let model = cfg.model(None, Some(&backbone))?;
    let criterion_vars = VarMap::new();
    let criterion: Box<dyn Criterion> = match &cfg.criterion {
        CriterionConfig::TripletWithMiner { reduction, .. } if *reduction == Reduction::None => {
            return Err(Error::Msg(
                "at `criterion.reduction`: training needs a scalar loss (mean or sum)".into(),
            ));
        }
        CriterionConfig::TripletWithMiner {
            margin,
            miner,
            reduction,
        } => Box::new(TripletLossWithMiner::new(
            *margin,
            Some(miner.build(cfg.seed)?),
            *reduction,
        )?),
        CriterionConfig::Arcface {
            m,
            s,
            smoothing_epsilon,
        } => {
            let vb = VarBuilder::from_varmap(&criterion_vars, candle_core::DType::F32, &device);
            Box::new(ArcFaceLoss::new(
                model.feat_dim(),
                train.n_labels(),
                *m,
                *s,
                *smoothing_epsilon,
                None,
                Reduction::Mean,
                vb,
            )?)
        }
        CriterionConfig::SurrogatePrecision {
            k,
            temperature1,
            temperature2,
        } => {
            let mut sp = SurrogatePrecision::new(*k)?;
            sp.temperature1 = *temperature1;
            sp.temperature2 = *temperature2;
            Box::new(sp)
        }
    };
    let transform = Transform::preset(&cfg.transforms_train, cfg.image_size)?;
    let mut trainer = Trainer::new(
        model,
        backbone,
        criterion,
        criterion_vars,
        train,
        transform,
        val,
        device,
        cfg.fit_config(),
    )?;
    let report = trainer.fit()?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(cfg.logs_dir.join("report.json"), text)
        .map_err(|e| Error::io("cannot write", cfg.logs_dir.join("report.json"), e))?;
    Ok(report)
}

/// `oml validate`: metrics of the job's model (or `weights`) on the CSV's validation rows;
/// writes `metrics.json` (and a grid of the worst queries) into `logs_dir`.
pub fn validate(cfg: &JobConfig, weights: Option<&Path>) -> Result<crate::metrics::Metrics> {
    let device = crate::device(&cfg.device)?;
    let table = cfg.table(true)?;
    let val = ImageQueryGalleryLabeledDataset::from_table(table)?;
    let model = cfg.model(weights, None)?;
    let transform = Transform::preset(&cfg.transforms_val, cfg.image_size)?;
    let emb = crate::embed::embed(
        &crate::models::Autocast::new(model.as_ref(), cfg.precision.dtype()),
        Arc::new(val.clone()),
        transform,
        cfg.batch_size,
        &device,
    )?;
    let info = crate::retrieval::QueryGalleryInfo::from_dataset(&val);
    let search = crate::retrieval::SearchConfig {
        top_n: cfg.metrics.max_k().max(8),
        ..Default::default()
    };
    let (rr, metrics) = crate::metrics::evaluate(&emb, &info, &cfg.metrics, &search)?;
    std::fs::create_dir_all(&cfg.logs_dir)
        .map_err(|e| Error::io("cannot create", &cfg.logs_dir, e))?;
    let text =
        serde_json::to_string_pretty(&metrics.to_json()).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(cfg.logs_dir.join("metrics.json"), text)
        .map_err(|e| Error::io("cannot write", cfg.logs_dir.join("metrics.json"), e))?;
    let worst = rr.worst_queries(crate::metrics::QueryMetric::Cmc(1), 8);
    let grid = crate::viz::retrieval_grid(&rr, &val, &worst, 6, 3, 96)?;
    grid.save_png(&cfg.logs_dir.join("worst_queries.png"))?;
    Ok(metrics)
}

/// `oml predict`: embeddings of every row (`embeddings.npy` or `.parquet`) and each query's top-n
/// gallery items (`predictions.json`) for a CSV with or without labels.
pub fn predict(cfg: &JobConfig, weights: Option<&Path>, out: Option<&Path>) -> Result<PathBuf> {
    let device = crate::device(&cfg.device)?;
    let table = cfg.table(false)?;
    let model = cfg.model(weights, None)?;
    let transform = Transform::preset(&cfg.transforms_val, cfg.image_size)?;
    let source = Arc::new(crate::embed::TableImages(table.clone()));
    let net = crate::models::Autocast::new(model.as_ref(), cfg.precision.dtype());
    let emb = crate::embed::embed(&net, source, transform, cfg.batch_size, &device)?;
    std::fs::create_dir_all(&cfg.logs_dir)
        .map_err(|e| Error::io("cannot create", &cfg.logs_dir, e))?;
    let path = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.logs_dir.join("embeddings.npy"));
    crate::embed::write_embeddings(&path, &emb, &table.paths, table.labels.as_deref())?;
    // Queries and gallery: the flags of the validation rows (all rows of a CSV without a split);
    // an item that is both never retrieves itself, as in OML.
    let rows: Vec<usize> = table.rows_of(Split::Validation);
    let info = crate::retrieval::QueryGalleryInfo::from_table(&table);
    if info.is_query.iter().any(|&q| q) && info.is_gallery.iter().any(|&g| g) {
        let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
        let val = emb.index_select(&candle_core::Tensor::new(ids.as_slice(), emb.device())?, 0)?;
        let search = crate::retrieval::SearchConfig {
            top_n: cfg.top_n,
            ..Default::default()
        };
        let rr = crate::retrieval::RetrievalResults::from_embeddings(&val, &info, &search)?;
        let (Some(q_items), Some(g_items)) = (rr.query_item_ids(), rr.gallery_item_ids()) else {
            return Err(Error::Msg("retrieval results without item ids".into()));
        };
        let mut out = Vec::new();
        for (qi, &item) in q_items.iter().enumerate() {
            let items: Vec<BTreeMap<&str, serde_json::Value>> = rr
                .retrieved_ids(qi)
                .iter()
                .zip(rr.distances(qi))
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
        let text = serde_json::to_string_pretty(&out).map_err(|e| Error::Msg(e.to_string()))?;
        std::fs::write(cfg.logs_dir.join("predictions.json"), text)
            .map_err(|e| Error::io("cannot write", cfg.logs_dir.join("predictions.json"), e))?;
    }
    Ok(path)
}
