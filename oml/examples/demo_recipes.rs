//! How the demo's from-scratch recipe was chosen: the demo's protocol (unseen letters, distorted
//! serif queries against clean sans/mono galleries) with several losses, learning rates and
//! widths, each trained for the same time from the same seed.
//!
//!     cargo run --example demo_recipes -- SECONDS [NAME ...]
//!
//! Prints one line per recipe: CMC@1 before and after, steps. Raw pixels are printed first.

use oml::data::{GlyphsConfig, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, Transform};
use oml::demo::glyph_resnet_with;
use oml::losses::{CriterionConfig, MinerConfig};
use oml::models::ModelSpec;
use oml::samplers::SamplerConfig;
use oml::train::{FitConfig, OptimizerKind, Schedule};
use oml::{Model, RetrievalResults, Trainer};

/// One recipe: name, network, input side, loss, learning rate, (labels, instances) per batch.
type Recipe = (
    &'static str,
    ModelSpec,
    u32,
    CriterionConfig,
    f64,
    (usize, usize),
);

/// A recipe ready to run.
struct Run {
    name: &'static str,
    model: Model,
    size: u32,
    loss: CriterionConfig,
    lr: f64,
    backbone_lr_scale: f64,
    batch: (usize, usize),
}

fn main() -> oml::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(120.0);
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let root = std::path::Path::new("runs/demo_recipes");
    let s = oml::data::generate_glyphs(
        &root.join("glyphs"),
        &GlyphsConfig {
            max_labels: Some(400),
            cross_font: true,
            distort_queries: true,
            ..GlyphsConfig::default()
        },
    )?;
    let train = ImageLabeledDataset::from_csv(&s.csv, None)?;
    let val = ImageQueryGalleryLabeledDataset::from_csv(&s.csv, None)?;
    let pixels =
        RetrievalResults::from_embeddings(&oml::data::pixel_embeddings(&val, 32)?, &val, 5)?;
    println!("raw pixels: CMC@1 {:.3}", pixels.metrics()?.cmc(1));
    let arcface = |s: f64| CriterionConfig::Arcface {
        m: 0.5,
        s,
        smoothing_epsilon: 0.0,
        mlp_features: Vec::new(),
    };
    let all = CriterionConfig::triplet(
        0.2,
        MinerConfig::AllTriplets {
            max_output_triplets: None,
        },
    );
    let recipes: Vec<Recipe> = vec![
        (
            "hard_1e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            CriterionConfig::triplet_hard(0.2),
            1e-3,
            (16, 4),
        ),
        (
            "all_1e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            all.clone(),
            1e-3,
            (16, 4),
        ),
        (
            "arcface16_1e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            arcface(16.0),
            1e-3,
            (16, 4),
        ),
        (
            "arcface30_1e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            arcface(30.0),
            1e-3,
            (16, 4),
        ),
        (
            "hard_3e-4",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            CriterionConfig::triplet_hard(0.2),
            3e-4,
            (16, 4),
        ),
        (
            "all_3e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            all.clone(),
            3e-3,
            (16, 4),
        ),
        (
            "all_w16_48px",
            glyph_resnet_with(16, [1, 1, 1, 1]),
            48,
            all.clone(),
            1e-3,
            (16, 4),
        ),
        (
            "arcface16_w16_48px",
            glyph_resnet_with(16, [1, 1, 1, 1]),
            48,
            arcface(16.0),
            1e-3,
            (16, 4),
        ),
        (
            "arcface16_3e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            arcface(16.0),
            3e-3,
            (16, 4),
        ),
        (
            "arcface10_1e-3",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            arcface(10.0),
            1e-3,
            (16, 4),
        ),
        (
            "arcface16_32x2",
            glyph_resnet_with(32, [1, 1, 1, 1]),
            32,
            arcface(16.0),
            1e-3,
            (32, 2),
        ),
    ];
    // The pretrained path: the zoo's DINOv2 ViT-S/14 at 56 px, the backbone at a fiftieth of the
    // base rate (ArcFace's class centres, new, at the base).
    let pretrained: Vec<(&str, CriterionConfig, f64, f64)> = vec![
        (
            "dino_triplet_2e-5",
            CriterionConfig::triplet_hard(0.1),
            2e-5,
            1.0,
        ),
        ("dino_arcface16", arcface(16.0), 1e-3, 0.02),
        ("dino_arcface16_bb0.1", arcface(16.0), 1e-3, 0.1),
    ];
    let mut runs: Vec<Run> = Vec::new();
    for (name, loss, lr, backbone_lr_scale) in pretrained {
        if only.contains(&name) {
            let model = Model::from_pretrained("vits14_dinov2")?.with_image_size(56)?;
            runs.push(Run {
                name,
                model,
                size: 56,
                loss,
                lr,
                backbone_lr_scale,
                batch: (8, 4),
            });
        }
    }
    for (name, spec, size, loss, lr, batch) in recipes {
        if only.is_empty() || only.contains(&name) {
            let model =
                Model::init(spec, 0)?.with_transform(Transform::preset("norm_resize_torch", size)?);
            runs.push(Run {
                name,
                model,
                size,
                loss,
                lr,
                backbone_lr_scale: 1.0,
                batch,
            });
        }
    }
    for Run {
        name,
        model,
        size,
        loss,
        lr,
        backbone_lr_scale,
        batch: (labels, instances),
    } in runs
    {
        let model = model.with_batch_size(64)?;
        let before = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 5)?
            .metrics()?
            .cmc(1);
        let report = Trainer::builder(model.clone(), &train, loss)
            .config(FitConfig {
                max_epochs: 100_000,
                sampler: SamplerConfig::balance(labels, instances),
                optimizer: OptimizerKind::adamw(lr),
                backbone_lr_scale,
                scheduler: Schedule::Constant { warmup_steps: 20 },
                max_seconds: Some(seconds),
                valid_every_epochs: 0,
                log_every_steps: 100_000,
                log_every_seconds: 1e9,
                cache_images: true,
                ..FitConfig::default()
            })
            .train_transform(Transform::preset("augs_glyphs", size)?)
            .fit()?;
        let after = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 5)?.metrics()?;
        println!(
            "{name}: CMC@1 {before:.3} -> {:.3} (mAP@5 {:.3}), {} steps in {:.0} s, last loss {:.3}",
            after.cmc(1),
            after.map(5),
            report.steps,
            report.seconds,
            report.history.recent_loss(20)
        );
    }
    Ok(())
}
