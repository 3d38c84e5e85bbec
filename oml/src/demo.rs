//! `oml demo`: the whole workflow in one call, with or without network and weights.
//!
//! 1. The glyph dataset: letters of 12 scripts in the DejaVu faces; half the letters for training,
//!    the other half never seen in training. Validation is across font families, and the queries
//!    are drawn with handwriting-like variation (affine jitter, stroke weight, blur, noise): the
//!    gallery holds the clean sans and mono drawings. Raw pixels do not solve that.
//! 2. Raw pixels, the baseline any network has to beat.
//! 3. The backbone: a weights file when given; else the zoo's DINOv2 ViT-S/14 (`vits14_dinov2`:
//!    a local weights folder, the Hub cache, or a download with a progress line); else, offline or
//!    when the Hub fails (one line says why), a small ResNet sized for glyphs, trained from scratch.
//! 4. Retrieval before fine-tuning, fine-tuning within the time budget, retrieval after.
//! 5. `report.html` and `demo.json`: the path taken and why, the protocol, raw pixels / before /
//!    after, steps and time, training curves, retrieval grids of varied queries before and after.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{
    CheckOptions, GlyphsConfig, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, SampleTable,
    Split, Transform,
};
use crate::losses::CriterionConfig;
use crate::metrics::Metrics;
use crate::models::resnet::{ResNetBlock, ResNetHead};
use crate::models::{ModelSpec, NetworkConfig, ResNetConfig};
use crate::retrieval::RetrievalResults;
use crate::samplers::SamplerConfig;
use crate::train::{FitConfig, FitReport, OptimizerKind, Schedule, Trainer};
use crate::{Error, Model, Report, Result, Table};

/// Settings of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoConfig {
    /// Output folder (dataset, run, report).
    pub out: PathBuf,
    /// Fine-tuning budget in seconds.
    pub budget_seconds: f64,
    /// Letters used (a random subset of the ~2,500; half train, half validation).
    pub max_labels: usize,
    /// Pretrained DINOv2 ViT-S/14 weights (`vits14`) to use instead of the zoo's.
    pub weights: Option<PathBuf>,
    /// Skip the zoo: train the glyph network from scratch.
    pub from_scratch: bool,
    /// Seed.
    pub seed: u64,
    /// Learning rate (default: the path's recipe).
    pub lr: Option<f64>,
    /// Input side (default: the path's recipe).
    pub image_size: Option<u32>,
    /// Device of the backbone (`cpu`, `cuda`, `cuda:i`).
    #[serde(default = "cpu_name")]
    pub device: String,
    /// Precision of the backbone's training and embeddings.
    #[serde(default)]
    pub precision: crate::Precision,
}

fn cpu_name() -> String {
    "cpu".to_owned()
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            out: PathBuf::from("runs/demo"),
            budget_seconds: 300.0,
            max_labels: 400,
            weights: None,
            from_scratch: false,
            seed: 0,
            lr: None,
            image_size: None,
            device: cpu_name(),
            precision: crate::Precision::F32,
        }
    }
}

/// One row of the demo's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoRow {
    /// What was measured.
    pub name: String,
    /// CMC@1.
    pub cmc1: f64,
    /// CMC@5.
    pub cmc5: f64,
    /// mAP@5.
    pub map5: f64,
}

impl DemoRow {
    fn of(name: &str, m: &Metrics) -> Self {
        DemoRow {
            name: name.to_owned(),
            cmc1: m.cmc(1),
            cmc5: m.cmc(5),
            map5: m.map(5),
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoReport {
    /// The backbone fine-tuned and where its weights came from.
    pub backbone: String,
    /// Which path ran and why.
    pub path: String,
    /// The evaluation protocol.
    pub protocol: String,
    /// Raw pixels, before, after.
    pub rows: Vec<DemoRow>,
    /// Optimiser steps run.
    pub steps: usize,
    /// Training seconds.
    pub train_seconds: f64,
    /// The HTML report.
    pub report: PathBuf,
}

impl DemoReport {
    /// The table as text.
    pub fn table(&self) -> Table {
        let mut t = Table::new(&["unseen letters", "CMC@1", "CMC@5", "mAP@5"]);
        for r in &self.rows {
            t = t.row(&[
                r.name.clone(),
                format!("{:.3}", r.cmc1),
                format!("{:.3}", r.cmc5),
                format!("{:.3}", r.map5),
            ]);
        }
        t
    }
}

/// A backbone and the recipe that fine-tunes it.
struct Recipe {
    model: Model,
    name: String,
    path: String,
    loss: CriterionConfig,
    lr: f64,
    sampler: SamplerConfig,
    size: u32,
}

/// The small ResNet the demo trains from scratch: two basic blocks per stage would be too slow on
/// two cores; one per stage, 32 channels wide, L2-normalised (a ResNet-10 at a quarter width).
pub fn glyph_resnet() -> ModelSpec {
    glyph_resnet_with(32, [1, 1, 1, 1])
}

/// A basic-block ResNet for glyph-sized images: `width` channels in the first stage (doubling at
/// each of the four), `layers` blocks per stage, L2-normalised output.
pub fn glyph_resnet_with(width: usize, layers: [usize; 4]) -> ModelSpec {
    let depth = 2 + 2 * layers.iter().sum::<usize>();
    let mut spec = ModelSpec::custom(
        &format!("glyph_resnet{depth}"),
        NetworkConfig::Resnet(ResNetConfig {
            block: ResNetBlock::Basic,
            layers,
            width,
            gem_p: None,
            head: ResNetHead::Linear(1),
            remove_fc: true,
            normalise: true,
        }),
    );
    spec.normalise = true;
    spec
}

fn recipe(cfg: &DemoConfig) -> Result<Recipe> {
    let pretrained = |model: Model, name: String, path: String| -> Result<Recipe> {
        let size = cfg.image_size.unwrap_or(56);
        Ok(Recipe {
            model: model.with_image_size(size)?,
            name,
            path,
            loss: CriterionConfig::triplet_hard(0.1),
            lr: cfg.lr.unwrap_or(2e-5),
            sampler: SamplerConfig::balance(8, 4),
            size,
        })
    };
    if let Some(w) = &cfg.weights {
        let model = Model::from_file("vits14", w)?;
        return pretrained(
            model,
            format!("DINOv2 ViT-S/14 from {}", w.display()),
            "pretrained: the weights file given with --weights".into(),
        );
    }
    let why = if cfg.from_scratch {
        "--from-scratch was given".to_owned()
    } else {
        match Model::from_pretrained("vits14_dinov2") {
            Ok(model) => {
                let name = format!("DINOv2 ViT-S/14 ({})", model.source());
                return pretrained(model, name, "pretrained: the zoo's vits14_dinov2".into());
            }
            Err(e) => {
                let reason = e.to_string();
                let first = reason.split(". ").next().unwrap_or(&reason).to_owned();
                println!("   zoo: {first}");
                println!("   going on offline: a small ResNet trained from scratch");
                let cause = if crate::zoo::Hub::from_env().offline {
                    "the network is off: OML_OFFLINE or HF_HUB_OFFLINE is set".to_owned()
                } else {
                    // The cause: what the download said, after the request it names.
                    first
                        .rsplit(": ")
                        .next()
                        .unwrap_or(&first)
                        .trim()
                        .to_owned()
                };
                format!("the zoo's vits14_dinov2 could not be had ({cause})")
            }
        }
    };
    let size = cfg.image_size.unwrap_or(32);
    let model = Model::init(glyph_resnet(), cfg.seed)?
        .with_transform(Transform::preset("norm_resize_torch", size)?);
    // Measured with examples/demo_recipes.rs (120 s each, CMC@1 after): ArcFace s=16 at 3e-3 0.409,
    // at 1e-3 0.384, s=30 0.283, s=10 0.307; triplet losses from scratch collapse here (hard
    // triplets 0.100, all triplets 0.026; before training 0.102, raw pixels 0.237).
    Ok(Recipe {
        model,
        name: "glyph ResNet-10 (32 channels), random initialisation".into(),
        path: format!("from scratch: {why}"),
        loss: CriterionConfig::arcface_with(0.5, 16.0),
        lr: cfg.lr.unwrap_or(3e-3),
        sampler: SamplerConfig::balance(16, 4),
        size,
    })
}

/// Runs the demo.
pub fn run(cfg: &DemoConfig) -> Result<DemoReport> {
    if !(cfg.budget_seconds.is_finite() && cfg.budget_seconds > 0.0) {
        return Err(Error::param("budget", cfg.budget_seconds, "seconds > 0"));
    }
    let root = cfg.out.join("glyphs");
    println!(
        "1/5 generating the glyph dataset ({} letters) in {}",
        cfg.max_labels,
        root.display()
    );
    let summary = crate::data::generate_glyphs(
        &root,
        &GlyphsConfig {
            max_labels: Some(cfg.max_labels),
            seed: cfg.seed,
            cross_font: true,
            distort_queries: true,
            ..GlyphsConfig::default()
        },
    )?;
    let table = Arc::new(SampleTable::from_csv(
        &summary.csv,
        &CheckOptions {
            dataset_root: Some(root.clone()),
            ..Default::default()
        },
    )?);
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train))?;
    let val = ImageQueryGalleryLabeledDataset::from_table(table.clone())?;
    let protocol = format!(
        "{} letters never seen in training ({} queries, {} gallery images). Queries: the serif \
         faces, drawn with handwriting-like variation (affine jitter, stroke weight, blur, noise); \
         gallery: the clean sans and mono faces. {} train images of {} other letters.",
        summary.validation_labels,
        val.query_ids().len(),
        val.gallery_ids().len(),
        train.len(),
        summary.train_labels
    );
    println!("   {protocol}");

    println!("2/5 raw pixels (32 x 32 grey, L2-normalised)");
    let pixels = crate::data::pixel_embeddings(&val, 32)?;
    let m_pixels = RetrievalResults::from_embeddings(&pixels, &val, 5)?.metrics()?;

    println!("3/5 the backbone");
    let r = recipe(cfg)?;
    println!("   {}; {}", r.name, r.path);
    let model = r
        .model
        .with_batch_size(64)?
        .with_device(&cfg.device)?
        .with_precision(cfg.precision);
    let rr_before = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 5)?;
    let m_before = rr_before.metrics()?;
    println!("   before fine-tuning: CMC@1 {:.3}", m_before.cmc(1));

    println!(
        "4/5 fine-tuning for {:.0} s ({}, AdamW at {:.0e} with a cosine decay to the budget's end, {} px)",
        cfg.budget_seconds,
        r.loss.describe(),
        r.lr,
        r.size
    );
    // Small --labels: no more labels per batch than there are.
    let sampler = match r.sampler {
        SamplerConfig::Balance {
            n_labels,
            n_instances,
        } => SamplerConfig::balance(n_labels.min(train.n_labels()), n_instances),
        other => other,
    };
    let fit = FitConfig {
        seed: cfg.seed,
        max_epochs: 100_000,
        sampler,
        optimizer: OptimizerKind::adamw(r.lr),
        // Cosine to the budget's end: the run ends annealed, not at a random point of a constant
        // rate (measured with a constant rate: CMC@1 from 0.415 to 0.519 over five 5-minute runs).
        scheduler: Schedule::Cosine {
            warmup_steps: 20,
            min_lr_ratio: 0.0,
        },
        max_seconds: Some(cfg.budget_seconds),
        valid_every_epochs: 0,
        log_every_steps: 50,
        logs_dir: Some(cfg.out.join("run")),
        cache_images: true,
        // Epochs of a few seconds: a checkpoint set a minute is enough.
        checkpoint_every_seconds: 60.0,
        ..FitConfig::default()
    };
    let report = Trainer::builder(model.clone(), &train, r.loss.clone())
        .config(fit)
        .train_transform(Transform::preset("augs_glyphs", r.size)?)
        .fit()?;
    println!("5/5 retrieval after fine-tuning");
    let rr_after = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 5)?;
    let m_after = rr_after.metrics()?;

    let out = DemoReport {
        backbone: r.name.clone(),
        path: r.path.clone(),
        protocol,
        rows: vec![
            DemoRow::of("raw pixels", &m_pixels),
            DemoRow::of("before fine-tuning", &m_before),
            DemoRow::of("after fine-tuning", &m_after),
        ],
        steps: report.steps,
        train_seconds: report.seconds,
        report: cfg.out.join("report.html"),
    };
    write_report(&out, &report, &rr_before, &rr_after, &val)?;
    let json = serde_json::to_string_pretty(&out).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(cfg.out.join("demo.json"), json)
        .map_err(|e| Error::io("cannot write", cfg.out.join("demo.json"), e))?;
    Ok(out)
}

fn write_report(
    out: &DemoReport,
    fit: &FitReport,
    before: &RetrievalResults,
    after: &RetrievalResults,
    val: &ImageQueryGalleryLabeledDataset,
) -> Result<()> {
    let grid = |rr: &RetrievalResults| rr.visualize(val).varied(8).results(5).gt(1).size(48);
    Report::new("oml demo: metric learning on glyphs")
        .text(&format!("Backbone: {}.", out.backbone))
        .text(&format!("Path: {}.", out.path))
        .text(&format!("Protocol: {}", out.protocol))
        .text(&format!(
            "Fine-tuned for {} steps in {:.0} s.",
            out.steps, out.train_seconds
        ))
        .item(&out.table())
        .heading("Training")
        .item(&fit.history)
        .heading("The same queries before (left) and after (right) fine-tuning")
        .row(&[&grid(before), &grid(after)])
        .save(&out.report)
}
