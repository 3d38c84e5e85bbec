//! `oml demo`: the whole workflow offline in one call. Generates the glyph dataset (cross-font
//! validation on unseen letters), measures zero-shot retrieval (raw pixels, and a pretrained
//! backbone when one is given or cached), fine-tunes within a time budget (the pretrained backbone,
//! else a ResNet-18 from scratch), validates again and writes an HTML report with the metrics
//! before and after, the training curves and retrieval grids before and after.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{
    GlyphsConfig, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, SampleTable, Split,
    Transform,
};
use crate::losses::CriterionConfig;
use crate::models::ModelSpec;
use crate::retrieval::RetrievalResults;
use crate::train::{FitConfig, OptimizerKind, Schedule, Trainer};
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
    /// Input side for the network.
    pub image_size: u32,
    /// Pretrained DINOv2 ViT-S/14 weights (`vits14`); `None`: the zoo's cache, else a ResNet-18
    /// from scratch.
    pub weights: Option<PathBuf>,
    /// Seed.
    pub seed: u64,
    /// Learning rate (default: 2e-5 for the pretrained ViT, 1e-3 from scratch).
    pub lr: Option<f64>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            out: PathBuf::from("runs/demo"),
            budget_seconds: 300.0,
            max_labels: 400,
            image_size: 56,
            weights: None,
            seed: 0,
            lr: None,
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoReport {
    /// The backbone fine-tuned.
    pub backbone: String,
    /// CMC@1 of raw pixels.
    pub raw_pixels_cmc1: f64,
    /// CMC@1 of the backbone before fine-tuning.
    pub before_cmc1: f64,
    /// CMC@1 after.
    pub after_cmc1: f64,
    /// mAP@5 before and after.
    pub before_map5: f64,
    /// mAP@5 after.
    pub after_map5: f64,
    /// Optimiser steps run.
    pub steps: usize,
    /// Training seconds.
    pub train_seconds: f64,
    /// The HTML report.
    pub report: PathBuf,
}

/// The pretrained weights to use: the given file, `OML_SHARED_WEIGHTS`'s DINOv2 file, or the
/// zoo's cached `vits14_dinov2`.
fn find_weights(cfg: &DemoConfig) -> Option<PathBuf> {
    if let Some(w) = &cfg.weights {
        return Some(w.clone());
    }
    if let Ok(dir) = std::env::var("OML_SHARED_WEIGHTS") {
        let p = Path::new(&dir).join("vits14_dinov2_imgfocus.safetensors");
        if p.is_file() {
            return Some(p);
        }
    }
    let model = crate::zoo::find("vits14_dinov2").ok()?;
    let hub = crate::zoo::Hub::from_env();
    hub.cached(&model.hub_repo, &model.revision, &model.hub_file)
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
            ..GlyphsConfig::default()
        },
    )?;
    println!(
        "   {} images of {} letters: {} for training, {} unseen letters for validation \
         (queries: serif faces; gallery: sans and mono faces)",
        summary.images, summary.labels, summary.train_labels, summary.validation_labels
    );
    let table = Arc::new(SampleTable::from_csv(
        &summary.csv,
        &crate::data::CheckOptions {
            dataset_root: Some(root.clone()),
            ..Default::default()
        },
    )?);
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train))?;
    let val = ImageQueryGalleryLabeledDataset::from_table(table.clone())?;

    println!("2/5 zero-shot: raw pixels");
    let pixels = crate::data::pixel_embeddings(&val, 32)?;
    let m_pixels = RetrievalResults::from_embeddings(&pixels, &val, 8)?.metrics()?;

    let weights = find_weights(cfg);
    let (backbone_name, lr) = match &weights {
        Some(_) => ("DINOv2 ViT-S/14 (pretrained)", 2e-5),
        None => ("ResNet-18 from scratch", 1e-3),
    };
    let lr = cfg.lr.unwrap_or(lr);
    let size = if weights.is_some() {
        (cfg.image_size / 14).max(1) * 14
    } else {
        cfg.image_size
    };
    let model = match &weights {
        Some(w) => Model::from_file("vits14", w)?,
        None => Model::init(ModelSpec::new("resnet18"), cfg.seed)?,
    }
    .with_transform(Transform::preset("norm_resize_torch", size)?)
    .with_batch_size(64)?;
    println!("3/5 zero-shot: {backbone_name} at {size} px");
    let rr_before = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 8)?;
    let m_before = rr_before.metrics()?;

    println!(
        "4/5 fine-tuning for {:.0} s (triplet loss, hard triplets, AdamW)",
        cfg.budget_seconds
    );
    let fit = FitConfig {
        seed: cfg.seed,
        max_epochs: 1000,
        optimizer: OptimizerKind::adamw(lr),
        scheduler: Schedule::Constant { warmup_steps: 20 },
        max_seconds: Some(cfg.budget_seconds),
        valid_every_epochs: 0,
        log_every_steps: 25,
        logs_dir: Some(cfg.out.join("run")),
        cache_images: true,
        ..FitConfig::default()
    };
    let report = Trainer::builder(model.clone(), &train, CriterionConfig::triplet_hard(0.1))
        .config(fit)
        .train_transform(Transform::preset("augs_torch", size)?)
        .fit()?;
    println!("5/5 validating on unseen letters");
    let rr_after = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 8)?;
    let m_after = rr_after.metrics()?;

    let out = DemoReport {
        backbone: backbone_name.to_owned(),
        raw_pixels_cmc1: m_pixels.cmc(1),
        before_cmc1: m_before.cmc(1),
        after_cmc1: m_after.cmc(1),
        before_map5: m_before.map(5),
        after_map5: m_after.map(5),
        steps: report.steps,
        train_seconds: report.seconds,
        report: cfg.out.join("report.html"),
    };
    let table = Table::new(&["", "CMC@1", "mAP@5"])
        .row(&[
            "raw pixels".to_owned(),
            format!("{:.3}", m_pixels.cmc(1)),
            format!("{:.3}", m_pixels.map(5)),
        ])
        .row(&[
            "before fine-tuning".to_owned(),
            format!("{:.3}", m_before.cmc(1)),
            format!("{:.3}", m_before.map(5)),
        ])
        .row(&[
            "after fine-tuning".to_owned(),
            format!("{:.3}", m_after.cmc(1)),
            format!("{:.3}", m_after.map(5)),
        ]);
    let html = Report::new("oml demo: glyphs")
        .text(&format!(
            "{} letters never seen in training; queries drawn in serif faces, gallery in sans and \
             mono faces. Backbone: {}, {} px, fine-tuned for {} steps ({:.0} s).",
            summary.validation_labels, out.backbone, size, out.steps, out.train_seconds
        ))
        .item(&table)
        .heading("Training")
        .item(&report.history)
        .heading("Retrieval before fine-tuning")
        .item(&rr_before.visualize(&val).size(64))
        .heading("Retrieval after fine-tuning")
        .item(&rr_after.visualize(&val).size(64));
    html.save(&out.report)?;
    let json = serde_json::to_string_pretty(&out).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(cfg.out.join("demo.json"), json)
        .map_err(|e| Error::io("cannot write", cfg.out.join("demo.json"), e))?;
    Ok(out)
}
