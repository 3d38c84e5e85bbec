//! `oml demo`: the whole workflow offline in one call. Generates the glyph dataset (cross-font
//! validation on unseen letters), measures zero-shot retrieval (raw pixels, and a pretrained
//! backbone when one is given or cached), fine-tunes within a time budget (the pretrained backbone,
//! else a ResNet-18 from scratch), validates again and writes an HTML report with the metrics
//! before and after, the training curves and retrieval grids before and after.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::data::{
    GlyphsConfig, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, SampleTable, Split,
    Transform,
};
use crate::losses::{HardTripletsMiner, TripletLossWithMiner};
use crate::metrics::{Metrics, MetricsConfig};
use crate::models::{Extractor, ModelSpec};
use crate::retrieval::{QueryGalleryInfo, RetrievalResults, SearchConfig};
use crate::train::{FitConfig, OptimizerKind, Schedule, Trainer};
use crate::{Error, Result};

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

fn metrics_config() -> MetricsConfig {
    MetricsConfig {
        cmc_top_k: vec![1, 5],
        precision_top_k: vec![5],
        map_top_k: vec![5],
        pcf_variance: vec![],
        ..MetricsConfig::default()
    }
}

fn evaluate(
    emb: &Tensor,
    val: &ImageQueryGalleryLabeledDataset,
) -> Result<(RetrievalResults, Metrics)> {
    let info = QueryGalleryInfo::from_dataset(val);
    let search = SearchConfig {
        top_n: 8,
        ..SearchConfig::default()
    };
    crate::metrics::evaluate(emb, &info, &metrics_config(), &search)
}

fn cmc1(m: &Metrics) -> f64 {
    m.get_path("OVERALL/cmc/1").unwrap_or(f64::NAN)
}

fn map5(m: &Metrics) -> f64 {
    m.get_path("OVERALL/map/5").unwrap_or(f64::NAN)
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
    let device = Device::Cpu;
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
    let (rr_pixels, m_pixels) = evaluate(&pixels, &val)?;
    let _ = rr_pixels;

    let weights = find_weights(cfg);
    let (spec, backbone_name, lr) = match &weights {
        Some(_) => (
            ModelSpec::new("vits14"),
            "DINOv2 ViT-S/14 (pretrained)",
            2e-5,
        ),
        None => (ModelSpec::new("resnet18"), "ResNet-18 from scratch", 1e-3),
    };
    let lr = cfg.lr.unwrap_or(lr);
    let size = if weights.is_some() {
        (cfg.image_size / 14).max(1) * 14
    } else {
        cfg.image_size
    };
    let varmap = VarMap::new();
    let model: Box<dyn Extractor> = match &weights {
        Some(w) => crate::models::load(&spec, w, &device, Some(&varmap))?,
        None => crate::models::init(&spec, &varmap, &device)?,
    };
    let val_transform = Transform::preset("norm_resize_torch", size)?;
    let embed = |m: &dyn Extractor| {
        crate::embed::embed(m, Arc::new(val.clone()), val_transform.clone(), 64, &device)
    };
    println!("3/5 zero-shot: {backbone_name} at {size} px");
    let (rr_before, m_before) = evaluate(&embed(model.as_ref())?, &val)?;

    println!(
        "4/5 fine-tuning for {:.0} s (triplet loss, hard triplets, AdamW)",
        cfg.budget_seconds
    );
    let fit = FitConfig {
        seed: cfg.seed,
        max_epochs: 1000,
        n_labels: 8,
        n_instances: 4,
        optimizer: OptimizerKind::Adamw {
            lr,
            weight_decay: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        scheduler: Schedule::Constant { warmup_steps: 20 },
        max_seconds: Some(cfg.budget_seconds),
        valid_every_epochs: 0,
        log_every_steps: 25,
        log_every_seconds: 30.0,
        metrics: metrics_config(),
        logs_dir: Some(cfg.out.join("run")),
        cache_images: true,
        ..FitConfig::default()
    };
    let criterion = TripletLossWithMiner::new(
        Some(0.1),
        Some(Box::new(HardTripletsMiner)),
        Default::default(),
    )?;
    let train_transform = Transform::preset("augs_torch", size)?;
    let mut trainer = Trainer::new(
        model,
        varmap,
        Box::new(criterion),
        VarMap::new(),
        train,
        train_transform,
        Some((val.clone(), val_transform.clone())),
        device.clone(),
        fit,
    )?;
    let report = trainer.fit()?;
    println!("5/5 validating on unseen letters");
    let (rr_after, m_after) = evaluate(&embed(trainer.model())?, &val)?;

    let history = trainer
        .history()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let plots = crate::train::plots::history_plots(&history)?;
    let queries: Vec<usize> = (0..rr_before.n_queries().min(6)).collect();
    let grid_before = crate::viz::retrieval_grid(&rr_before, &val, &queries, 6, 2, 64)?;
    let grid_after = crate::viz::retrieval_grid(&rr_after, &val, &queries, 6, 2, 64)?;
    let out = DemoReport {
        backbone: backbone_name.to_owned(),
        raw_pixels_cmc1: cmc1(&m_pixels),
        before_cmc1: cmc1(&m_before),
        after_cmc1: cmc1(&m_after),
        before_map5: map5(&m_before),
        after_map5: map5(&m_after),
        steps: report.steps,
        train_seconds: report.seconds,
        report: cfg.out.join("report.html"),
    };
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>oml demo</title>\
         <style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 10px}</style></head><body><h1>oml demo: glyphs</h1>",
    );
    html += &format!(
        "<p>{} letters never seen in training; queries drawn in serif faces, gallery in sans and mono \
         faces. Backbone: {}, {} px, fine-tuned for {} steps ({:.0} s).</p>",
        summary.validation_labels, out.backbone, size, out.steps, out.train_seconds
    );
    html += "<table><tr><th></th><th>CMC@1</th><th>mAP@5</th></tr>";
    for (name, m) in [
        ("raw pixels", &m_pixels),
        ("before fine-tuning", &m_before),
        ("after fine-tuning", &m_after),
    ] {
        html += &format!(
            "<tr><td>{name}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            cmc1(m),
            map5(m)
        );
    }
    html += "</table><h2>Training</h2>";
    for (name, png) in &plots {
        html += &format!(
            "<img title=\"{name}\" src=\"{}\"/>",
            crate::notebook::png_data_url(png)
        );
    }
    html += "<h2>Retrieval before fine-tuning</h2>";
    html += &format!(
        "<img src=\"{}\"/>",
        crate::notebook::png_data_url(&grid_before.to_png()?)
    );
    html += "<h2>Retrieval after fine-tuning</h2>";
    html += &format!(
        "<img src=\"{}\"/>",
        crate::notebook::png_data_url(&grid_after.to_png()?)
    );
    html += "</body></html>";
    std::fs::write(&out.report, html).map_err(|e| Error::io("cannot write", &out.report, e))?;
    let json = serde_json::to_string_pretty(&out).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(cfg.out.join("demo.json"), json)
        .map_err(|e| Error::io("cannot write", cfg.out.join("demo.json"), e))?;
    Ok(out)
}
