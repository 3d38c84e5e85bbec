//! The notebook API as a user types it: a model, embeddings, retrieval results with their metrics
//! and grids, a trainer in the foreground and in the background, configs that reach every sampler
//! and loss.

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use oml::data::{GlyphsConfig, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, Transform};
use oml::metrics::MetricsConfig;
use oml::models::resnet::{ResNetBlock, ResNetHead};
use oml::models::{ModelSpec, NetworkConfig, ResNetConfig};
use oml::train::Ending;
use oml::{Error, Loss, Model, RetrievalResults, Trainer};

/// A 4-stage ResNet 8 channels wide: seconds to train on the CPU.
fn tiny_resnet() -> ModelSpec {
    ModelSpec::custom(
        "tiny_resnet",
        NetworkConfig::Resnet(ResNetConfig {
            block: ResNetBlock::Basic,
            layers: [1, 1, 1, 1],
            width: 8,
            gem_p: None,
            head: ResNetHead::Linear(10),
            remove_fc: true,
            normalise: false,
        }),
    )
}

fn glyphs(dir: &Path, labels: usize) -> (ImageLabeledDataset, ImageQueryGalleryLabeledDataset) {
    let s = oml::data::generate_glyphs(
        dir,
        &GlyphsConfig {
            size: 32,
            max_labels: Some(labels),
            ..GlyphsConfig::default()
        },
    )
    .expect("glyphs");
    (
        ImageLabeledDataset::from_csv(&s.csv, None).expect("train"),
        ImageQueryGalleryLabeledDataset::from_csv(&s.csv, None).expect("val"),
    )
}

fn model() -> Model {
    Model::init(tiny_resnet(), 7)
        .expect("init")
        .with_transform(Transform::preset("norm_resize_torch", 32).expect("t"))
}

fn max_abs_diff(a: &Model, b: &Model) -> f32 {
    let (a, b) = (a.state_dict(), b.state_dict());
    a.iter()
        .map(|(k, t)| {
            (t - &b[k])
                .and_then(|d| d.abs())
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>())
                .expect("diff")
        })
        .fold(0.0, f32::max)
}

#[test]
fn a_model_is_data_clones_share_weights_and_snapshots_copy_them() {
    let a = Model::init(tiny_resnet(), 7).expect("init");
    let same = Model::init(tiny_resnet(), 7).expect("init");
    let other = Model::init(tiny_resnet(), 8).expect("init");
    assert_eq!(
        max_abs_diff(&a, &same),
        0.0,
        "a seed gives the same weights"
    );
    assert!(max_abs_diff(&a, &other) > 0.0, "another seed other weights");
    assert_eq!(a.feat_dim().expect("dim"), 64);
    // Clones share the weights (training one trains all); a snapshot is a copy.
    let clone = a.clone();
    let snap = a.snapshot();
    clone
        .set_state_dict(&other.state_dict())
        .expect("same names");
    assert_eq!(max_abs_diff(&a, &other), 0.0);
    assert_eq!(max_abs_diff(&snap, &same), 0.0);
    // Weights that do not fit are refused by name; nothing changes.
    let mut partial = a.state_dict();
    partial.remove("conv1.weight");
    let e = a.set_state_dict(&partial).expect_err("missing").to_string();
    assert!(e.contains("conv1.weight"), "{e}");
    assert_eq!(max_abs_diff(&a, &other), 0.0);
    // Settings make new handles on the same weights, checked at the boundary.
    assert!(a.with_batch_size(0).is_err());
    let e = a.with_device("tpu").expect_err("tpu").to_string();
    assert!(e.contains("tpu") && e.contains("cpu"), "{e}");
    let small = a.with_image_size(48).expect("size");
    assert_eq!(small.transform().output_size(), Some((48, 48)));
    // A model saved and read back is the same.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("w.safetensors");
    a.save(&path).expect("save");
    let back = Model::from_spec(tiny_resnet(), &path).expect("load");
    assert_eq!(max_abs_diff(&a, &back), 0.0);
    assert!(a.summary().contains("tiny_resnet"), "{}", a.summary());
}

#[test]
fn zero_shot_retrieval_in_four_lines_with_metrics_grids_and_checked_indices() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, val) = glyphs(dir.path(), 16);
    let model = model();
    let emb = model.embed(&val).expect("embed");
    assert_eq!(emb.dims(), &[val.len(), 64]);
    let rr = RetrievalResults::from_embeddings(&emb, &val, 5).expect("rr");
    let m = rr.metrics().expect("metrics");
    // The same numbers as the long way.
    let info = oml::retrieval::QueryGalleryInfo::from_dataset(&val);
    let search = oml::retrieval::SearchConfig {
        top_n: 5,
        ..Default::default()
    };
    let (_, long) =
        oml::metrics::evaluate(&emb, &info, &MetricsConfig::common(), &search).expect("long");
    for k in [1, 5] {
        assert_eq!(m.cmc(k), long.cmc(k));
    }
    assert_eq!(m.map(5), long.get_path("OVERALL/map/5").expect("map"));
    assert!(m.cmc(3).is_nan(), "not computed: NaN");
    let script = m.categories()[0].to_owned();
    assert!(m.category(&script).expect("a category").cmc(1) >= 0.0);
    assert!(m.category("klingon").is_none());
    // Deeper metrics and pcf search again from the embeddings kept in the results.
    let deep = rr
        .metrics_with(&MetricsConfig {
            cmc_top_k: vec![10],
            pcf_variance: vec![0.5],
            ..MetricsConfig::default()
        })
        .expect("deeper");
    assert!(deep.cmc(10) >= m.cmc(5));
    assert!(deep.overall().pcf(0.5) > 0.0);
    // Indices out of range are None, not panics.
    assert!(rr.distances(rr.n_queries()).is_none());
    assert!(rr.hits(usize::MAX).is_none());
    assert!(rr.distances(0).is_some_and(|d| d.len() == 5));
    // Grids: varied queries of distinct labels, the worst ones first, bad indices as errors.
    let labels = rr.query_labels().expect("labels").to_vec();
    let varied = rr.visualize(&val).varied(4).query_ids();
    assert_eq!(varied.len(), 4);
    let distinct: std::collections::HashSet<i64> = varied.iter().map(|&q| labels[q]).collect();
    assert_eq!(distinct.len(), 4, "{varied:?}");
    let worst = rr.visualize(&val).worst(3).query_ids();
    let cmc1 = oml::metrics::per_query(&rr, oml::metrics::QueryMetric::Cmc(1));
    let best_shown = worst.iter().map(|&q| cmc1[q]).fold(0.0, f64::max);
    assert!(
        cmc1.iter()
            .enumerate()
            .filter(|(q, _)| !worst.contains(q))
            .all(|(_, &v)| v >= best_shown),
        "worst first: {worst:?}"
    );
    let grid = rr.visualize(&val).worst(3).results(4).size(32);
    let img = grid.render().expect("render").to_image();
    assert!(img.width() > 4 * 32 && img.height() > 3 * 32);
    let e = rr
        .visualize(&val)
        .queries(&[rr.n_queries()])
        .render()
        .expect_err("out of range")
        .to_string();
    assert!(e.contains("queries"), "{e}");
    // Everything displayable has a plain summary.
    use oml::notebook::Show;
    assert!(m.plain().contains("cmc@1"));
    assert!(grid.plain().contains("retrieval grid"));
}

#[test]
fn a_trainer_fits_spawns_continues_and_stops_and_trains_the_model_it_was_given() {
    let dir = tempfile::tempdir().expect("tmp");
    let (train, val) = glyphs(dir.path(), 16);
    let model = model();
    let before = model.snapshot();
    let trainer = Trainer::builder(model.clone(), &train, Loss::triplet_hard(0.2))
        .sampler(oml::samplers::SamplerConfig::balance(4, 2))
        .lr(1e-3)
        .train_transform(Transform::preset("augs_torch", 32).expect("t"))
        .validate(&val)
        .max_steps(3)
        .log_every_steps(1000)
        .build()
        .expect("trainer");
    let run = trainer.spawn().expect("spawn");
    let report = run.join().expect("join");
    assert_eq!((report.ending, report.steps), (Ending::StepBudget, 3));
    assert_eq!(report.history.losses().len(), 3);
    assert!(run.is_finished());
    assert_eq!(run.join().expect("again").steps, 3, "joins again");
    assert!(
        max_abs_diff(&model, &before) > 0.0,
        "the model handed to the trainer is trained"
    );
    // The trainer continues where it ended once the budget grows.
    trainer.set_max_steps(Some(5));
    let r = trainer.fit().expect("continue");
    assert_eq!(r.steps, 5);
    assert_eq!(trainer.history().losses().len(), 5);
    // A long run stopped from outside ends at once and reports it; a second start meanwhile is
    // refused.
    trainer.set_max_steps(None);
    let run = trainer.spawn().expect("spawn");
    let e = trainer.fit().expect_err("one run at a time").to_string();
    assert!(e.contains("going on"), "{e}");
    assert!(trainer.spawn().is_err());
    run.stop();
    let r = run.join().expect("stopped");
    assert_eq!(r.ending, Ending::Stopped);
    assert!(
        run.progress().line().contains("stopped"),
        "{}",
        run.progress()
    );
}

#[test]
fn configs_reach_every_sampler_and_loss_and_name_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, _) = glyphs(dir.path(), 24);
    // The same rows in two categories (label parity), for the sampler that needs every category
    // to hold n_labels labels.
    let text = std::fs::read_to_string(dir.path().join("df.csv")).expect("csv");
    let two: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| match (i, l.rsplit_once(',')) {
            (0, _) | (_, None) => l.to_owned() + "\n",
            (_, Some((head, _))) => {
                let label: i64 = l
                    .split(',')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                format!("{head},{}\n", if label % 2 == 0 { "even" } else { "odd" })
            }
        })
        .collect();
    std::fs::write(dir.path().join("two.csv"), two).expect("two.csv");
    let base = "dataframe: df.csv\nmodel: { arch: resnet18, weights: random }\nimage_size: 32\n\
         max_steps: 2\nvalid_every_epochs: 0\nlogs_dir: run\nlog_every_steps: 1000\n\
         transforms_train: norm_resize_torch\ntransforms_val: norm_resize_torch\n"
        .to_owned();
    for (i, extra) in [
        "sampler: { name: category_balance, n_categories: 2, n_labels: 2, n_instances: 2, resample_labels: true }\n",
        "sampler: { name: distinct_category_balance, n_categories: 2, n_labels: 2, n_instances: 2, epoch_size: 4 }\n",
        "criterion: { name: arcface, mlp_features: [16], s: 16 }\nsampler: { name: balance, n_labels: 4, n_instances: 2 }\n",
        "criterion: { name: surrogate_precision, k: 2 }\nsampler: { name: balance, n_labels: 4, n_instances: 2 }\n",
    ]
    .into_iter()
    .enumerate()
    {
        // One run folder each: `oml train` does not start over an earlier run's checkpoints.
        let base = base.replace("logs_dir: run", &format!("logs_dir: run{i}"));
        let yaml = if extra.contains("distinct") {
            format!("{base}{extra}").replace("df.csv", "two.csv")
        } else {
            format!("{base}{extra}")
        };
        let cfg = oml::pipeline::JobConfig::from_yaml(&yaml, &[], Some(dir.path()))
            .unwrap_or_else(|e| panic!("{extra}: {e}"));
        let r = oml::pipeline::train(&cfg, None).unwrap_or_else(|e| panic!("{extra}: {e}"));
        assert_eq!(r.steps, 2, "{extra}");
        assert!(
            r.history.losses().iter().all(|(_, l)| l.is_finite()),
            "{extra}"
        );
    }
    // Errors are typed and name the key path.
    let key_of =
        |yaml: String| match oml::pipeline::JobConfig::from_yaml(&yaml, &[], Some(dir.path())) {
            Err(Error::Config { key, message }) => (key, message),
            other => panic!("{yaml}: {other:?}"),
        };
    let (key, _) = key_of(format!(
        "{base}criterion: {{ name: triplet_with_miner, margin: -1, miner: {{ name: hard_triplets }} }}\n"
    ));
    assert_eq!(key, "criterion.margin");
    let (key, _) = key_of(format!("{base}optimizer: {{ name: adamw, lr: fast }}\n"));
    assert_eq!(key, "optimizer.lr");
    let (key, message) = key_of(format!("{base}max_epoch: 3\n"));
    assert_eq!(key, "max_epoch");
    assert!(message.contains("max_epochs"), "{message}");
    // A category sampler on a CSV without categories is refused when the trainer is built.
    let csv = dir.path().join("df.csv");
    let text = std::fs::read_to_string(&csv).expect("csv");
    let header: Vec<&str> = text.lines().next().expect("header").split(',').collect();
    let ci = header
        .iter()
        .position(|h| *h == "category")
        .expect("category");
    let stripped: String = text
        .lines()
        .map(|l| {
            let mut cells: Vec<&str> = l.split(',').collect();
            cells.remove(ci);
            cells.join(",") + "\n"
        })
        .collect();
    std::fs::write(dir.path().join("plain.csv"), stripped).expect("write");
    let yaml = base.replace("df.csv", "plain.csv")
        + "sampler: { name: category_balance, n_categories: 2, n_labels: 2, n_instances: 2 }\n";
    let cfg = oml::pipeline::JobConfig::from_yaml(&yaml, &[], Some(dir.path())).expect("cfg");
    match cfg.trainer() {
        Err(Error::Config { key, message }) => {
            assert!(key.starts_with("sampler"), "{key}");
            assert!(message.contains("category"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
