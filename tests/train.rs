//! The trainer on a tiny model (the small DINO ViT of the extractor fixtures) and a small glyph
//! dataset: it learns, a resumed run ends exactly as one that ran through, a NaN loss stops it
//! with the step named, budgets and the stop handle end it, and configs are checked before work.

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use oml::data::{
    GlyphsConfig, ImageLabeledDataset, ImageQueryGalleryLabeledDataset, ImageSource, SampleTable,
    Split, Transform,
};
use oml::losses::NRange;
use oml::models::{ModelSpec, NetworkConfig, ViTConfig};
use oml::samplers::SamplerConfig;
use oml::train::{Ending, FitConfig, OptimizerKind, Record, Schedule, Trainer};
use oml::{Loss, Miner, Model, Precision};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn glyphs(dir: &Path) -> Arc<SampleTable> {
    let s = oml::data::generate_glyphs(
        dir,
        &GlyphsConfig {
            size: 32,
            max_labels: Some(24),
            ..GlyphsConfig::default()
        },
    )
    .expect("glyphs");
    Arc::new(
        SampleTable::from_csv(
            &s.csv,
            &oml::data::CheckOptions {
                dataset_root: Some(dir.to_path_buf()),
                ..Default::default()
            },
        )
        .expect("table"),
    )
}

/// The small DINO ViT of the extractor fixtures, as a model with a 32-pixel transform.
fn tiny_vit(precision: Precision) -> Model {
    let cfg = ViTConfig {
        patch_size: 16,
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4,
        layerscale: false,
        pos_grid: 4,
        n_registers: 0,
        eps: 1e-6,
        normalise: false,
        multi_scale: false,
    };
    Model::from_spec(
        ModelSpec::custom("tiny_vit", NetworkConfig::Vit(cfg)),
        repo().join("tests/data/extractors/vit_dino_small.safetensors"),
    )
    .expect("vit")
    .with_transform(Transform::preset("norm_resize_torch", 32).expect("t"))
    .with_precision(precision)
}

fn trainer(table: &Arc<SampleTable>, logs: Option<PathBuf>, lr: f64, epochs: usize) -> Trainer {
    trainer_in(table, logs, lr, epochs, Precision::F32)
}

fn trainer_in(
    table: &Arc<SampleTable>,
    logs: Option<PathBuf>,
    lr: f64,
    epochs: usize,
    precision: Precision,
) -> Trainer {
    trainer_with(table, logs, lr, epochs, precision, Miner::HardTriplets)
}

fn trainer_with(
    table: &Arc<SampleTable>,
    logs: Option<PathBuf>,
    lr: f64,
    epochs: usize,
    precision: Precision,
    miner: Miner,
) -> Trainer {
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    let val = ImageQueryGalleryLabeledDataset::from_table(table.clone()).expect("val");
    let cfg = FitConfig {
        seed: 3,
        max_epochs: epochs,
        sampler: SamplerConfig::balance(4, 2),
        optimizer: OptimizerKind::adamw(lr),
        scheduler: Schedule::Cosine {
            warmup_steps: 2,
            min_lr_ratio: 0.1,
        },
        clip_grad_norm: Some(10.0),
        log_every_steps: 1000,
        logs_dir: logs,
        ..FitConfig::default()
    };
    Trainer::builder(tiny_vit(precision), &train, Loss::triplet(0.2, miner))
        .config(cfg)
        .train_transform(Transform::preset("augs_torch", 32).expect("t"))
        .validate(&val)
        .build()
        .expect("trainer")
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let t =
        candle_core::safetensors::load(dir.join("last.safetensors"), &Device::Cpu).expect("load");
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().expect("flat").to_vec1().expect("vec")))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The newest checkpoint set of a run folder.
fn latest_set(dir: &Path) -> PathBuf {
    let ck = dir.join("checkpoints");
    let name = std::fs::read_to_string(ck.join("LATEST")).expect("LATEST");
    ck.join(name.trim())
}

#[test]
fn a_short_run_lowers_the_loss_and_writes_its_outputs() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let logs = data.path().join("run");
    let t = trainer(&table, Some(logs.clone()), 1e-3, 3);
    let report = t.fit().expect("fit");
    assert_eq!(report.ending, Ending::Completed);
    assert_eq!(report.epochs, 3);
    let history = t.history().0;
    let losses: Vec<f64> = history
        .iter()
        .filter_map(|r| match r {
            Record::Step { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert!(losses.len() >= 6, "{}", losses.len());
    let head: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let tail: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(tail < head, "the loss goes down: {head} -> {tail}");
    let validations = history
        .iter()
        .filter(|r| matches!(r, Record::Validation { .. }))
        .count();
    assert_eq!(validations, 3);
    for f in [
        "last.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "loss.png",
        "lr.png",
        "metrics.png",
        "distances.png",
    ] {
        assert!(logs.join(f).is_file(), "{f} missing");
    }
    let lines = std::fs::read_to_string(logs.join("metrics.jsonl"))
        .expect("jsonl")
        .lines()
        .count();
    assert_eq!(lines, history.len());
    assert!(report.best.is_some() && report.last_metrics.is_some());
    // The checkpoint: one complete set per epoch, the newest and the one before kept; the top
    // level's last.safetensors is the newest set's.
    let set = latest_set(&logs);
    assert!(
        set.ends_with(format!("step-{:09}", report.steps)),
        "{set:?}"
    );
    for f in [
        "state.json",
        "optimizer.safetensors",
        "criterion.safetensors",
        "last.safetensors",
    ] {
        assert!(set.join(f).is_file(), "{f} missing in {set:?}");
    }
    assert_eq!(
        std::fs::read(set.join("last.safetensors")).expect("set"),
        std::fs::read(logs.join("last.safetensors")).expect("top")
    );
    let sets: Vec<_> = std::fs::read_dir(logs.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(sets.len(), 2, "the newest set and the one before: {sets:?}");
}

#[test]
fn a_resumed_run_ends_with_the_same_weights_as_one_that_ran_through() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let straight = data.path().join("straight");
    let through = trainer(&table, Some(straight.clone()), 1e-3, 2);
    through.fit().expect("fit");

    let resumed = data.path().join("resumed");
    let first = trainer(&table, Some(resumed.clone()), 1e-3, 2);
    first.set_max_steps(Some(5));
    let r = first.fit().expect("first part");
    assert_eq!(r.ending, Ending::StepBudget);
    assert_eq!(r.steps, 5);
    drop(first);
    // A step logged after the last saved state (a run killed between the two) is run again,
    // so its record must go.
    let mut jsonl = std::fs::read_to_string(resumed.join("metrics.jsonl")).expect("jsonl");
    jsonl += r#"{"kind":"step","epoch":1,"step":6,"loss":99.0,"lr":0.001,"logs":{},"seconds":1.0}"#;
    jsonl.push('\n');
    std::fs::write(resumed.join("metrics.jsonl"), jsonl).expect("write");
    let second = trainer(&table, Some(resumed.clone()), 1e-3, 2);
    second.resume(&resumed).expect("resume");
    assert_eq!(second.steps(), 5);
    let r = second.fit().expect("second part");
    assert_eq!(r.ending, Ending::Completed);
    // The history: the first part's records (from metrics.jsonl) and the second's, as one run.
    // (JSON keeps f64 exactly: serde_json reads with `float_roundtrip`.)
    let (a, b) = (steps(&second), steps(&through));
    assert_eq!(a.len(), b.len());
    for ((la, _), (lb, _)) in a.iter().zip(&b) {
        assert_eq!(la.to_bits(), lb.to_bits(), "{la} vs {lb}");
    }
    assert_eq!(
        second.history().records().len(),
        through.history().records().len()
    );
    let lines = std::fs::read_to_string(resumed.join("metrics.jsonl"))
        .expect("jsonl")
        .lines()
        .count();
    assert_eq!(lines, second.history().records().len());
    let (a, b) = (weights(&straight), weights(&resumed));
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs after resuming");
    }
}

/// Miners that keep state between batches (memory banks, a capped subset's counter): a resumed
/// run restores it and ends as one that ran through.
#[test]
fn resuming_restores_the_miners_memory() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let miners = [
        (
            "bank",
            Miner::MinerWithBank {
                bank_size_in_batches: 2,
                n_positive: NRange::First(1),
                n_negative: NRange::First(2),
            },
        ),
        (
            "memory",
            Miner::TripletMinerWithMemory {
                bank_size_in_batches: 2,
                tri_expand_k: 3,
            },
        ),
        (
            "capped",
            Miner::AllTriplets {
                max_output_triplets: Some(12),
            },
        ),
    ];
    for (name, miner) in miners {
        let straight = data.path().join(format!("{name}_straight"));
        let run = |logs: &Path| {
            trainer_with(
                &table,
                Some(logs.to_path_buf()),
                1e-3,
                2,
                Precision::F32,
                miner.clone(),
            )
        };
        run(&straight).fit().expect("fit");
        let resumed = data.path().join(format!("{name}_resumed"));
        let first = run(&resumed);
        first.set_max_steps(Some(5));
        assert_eq!(first.fit().expect("first part").ending, Ending::StepBudget);
        drop(first);
        let second = run(&resumed);
        second.resume(&resumed).expect("resume");
        second.fit().expect("second part");
        let (a, b) = (weights(&straight), weights(&resumed));
        assert_eq!(a.len(), b.len());
        for ((ka, va), (_, vb)) in a.iter().zip(&b) {
            assert_eq!(va, vb, "{name}: {ka} differs after resuming");
        }
    }
    // A bank saved with another size is refused by name, not written out of range.
    let other = Miner::MinerWithBank {
        bank_size_in_batches: 3,
        n_positive: NRange::First(1),
        n_negative: NRange::First(2),
    };
    let dir = data.path().join("bank_resumed");
    let t = trainer_with(&table, Some(dir.clone()), 1e-3, 2, Precision::F32, other);
    let e = t.resume(&dir).expect_err("another bank size").to_string();
    assert!(
        e.contains("criterion.miner.bank_size_in_batches: 2 -> 3"),
        "{e}"
    );
    // A set without the saved settings (an older state file) is still checked tensor by tensor.
    let state_path = latest_set(&dir).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    state.as_object_mut().expect("object").remove("identity");
    std::fs::write(&state_path, state.to_string()).expect("write");
    let e = t.resume(&dir).expect_err("another bank size").to_string();
    assert!(
        e.contains("MinerWithBank") && e.contains("does not fit"),
        "{e}"
    );
}

#[test]
fn a_nan_loss_stops_with_the_step_and_the_stop_handle_and_time_budget_end_runs() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let logs = data.path().join("nan");
    let t = trainer(&table, Some(logs.clone()), 1e30, 2);
    t.set_max_steps(Some(50));
    let e = t.fit().expect_err("diverges").to_string();
    assert!(e.contains("at step") && e.contains("learning rate"), "{e}");

    let t = trainer(&table, None, 1e-3, 50);
    t.stop();
    assert_eq!(t.fit().expect("fit").ending, Ending::Stopped);
    // The stop was consumed: the next fit trains (here up to a step budget).
    t.set_max_steps(Some(2));
    let r = t.fit().expect("fit");
    assert_eq!((r.ending, r.steps), (Ending::StepBudget, 2));

    let t = trainer(&table, None, 1e-3, 500);
    t.set_max_seconds(Some(1.0)).expect("budget");
    let r = t.fit().expect("fit");
    assert_eq!(r.ending, Ending::TimeBudget);
    assert!(r.seconds < 20.0, "{}", r.seconds);
}

#[test]
fn configs_are_checked_before_any_work_with_the_key_named() {
    use oml::pipeline::JobConfig;
    let data = tempfile::tempdir().expect("tmp");
    let _ = glyphs(data.path());
    let base = "dataframe: df.csv\nmodel: { arch: resnet18, weights: random }\n";
    let ok = JobConfig::from_yaml(base, &[], Some(data.path())).expect("valid");
    assert_eq!(ok.model.arch, "resnet18");
    let cases = [
        (
            format!("{base}unknown_key: 1\n"),
            "unknown field `unknown_key`",
        ),
        (
            format!("{base}criterion: {{ name: circle }}\n"),
            "criterion",
        ),
        (
            format!("{base}optimizer: {{ name: adamw, lr: -1 }}\n"),
            "optimizer",
        ),
        (
            "dataframe: missing.csv\nmodel: { arch: resnet18, weights: random }\n".to_owned(),
            "missing.csv",
        ),
        (
            "dataframe: df.csv\nmodel: { arch: resnet19, weights: random }\n".to_owned(),
            "model.arch",
        ),
        (
            "dataframe: df.csv\nmodel: { arch: resnet18, weights: nope.safetensors }\n".to_owned(),
            "model.weights",
        ),
        (
            format!("{base}sampler: {{ name: balance, n_labels: 4 }}\n"),
            "sampler",
        ),
        (
            format!("{base}model: {{ arch: resnet18, weights: random, colour: red }}\n"),
            "model",
        ),
        (format!("{base}precision: int8\n"), "at `precision`"),
        (
            format!("{base}scheduler: {{ name: one_cycle, max_momentum: 1.0 }}\n"),
            "at `scheduler`",
        ),
    ];
    for (yaml, expected) in cases {
        let e = JobConfig::from_yaml(&yaml, &[], Some(data.path()))
            .err()
            .unwrap_or_else(|| panic!("{yaml} was accepted"))
            .to_string();
        assert!(e.contains(expected), "{yaml}: {e}");
    }
    // Known keys are listed for an unknown one; --set overrides reach nested keys.
    let e = JobConfig::from_yaml(&format!("{base}max_epoch: 3\n"), &[], Some(data.path()))
        .expect_err("typo")
        .to_string();
    assert!(e.contains("max_epochs"), "{e}");
    let c = JobConfig::from_yaml(
        base,
        &[
            "optimizer.lr=0.5".into(),
            "max_epochs=2".into(),
            "optimizer.name=sgd".into(),
            "precision=16-mixed".into(),
        ],
        Some(data.path()),
    )
    .expect("overrides");
    assert_eq!(c.fit.max_epochs, 2);
    assert_eq!(c.precision, Precision::F16);
    assert!((c.fit.optimizer.lr() - 0.5).abs() < 1e-12);
}

fn steps(t: &Trainer) -> Vec<(f64, std::collections::BTreeMap<String, f64>)> {
    t.history()
        .records()
        .iter()
        .filter_map(|r| match r {
            Record::Step { loss, logs, .. } => Some((*loss, logs.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn mixed_precision_follows_f32_and_f16_skips_overflowed_steps_and_resumes_its_scale() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let run = |precision: Precision, logs: Option<PathBuf>, n: usize| {
        let t = trainer_in(&table, logs, 1e-3, 2, precision);
        t.set_max_steps(Some(n));
        assert_eq!(t.fit().expect("fit").ending, Ending::StepBudget);
        t
    };
    let f32_losses: Vec<f64> = steps(&run(Precision::F32, None, 4))
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(f32_losses.len(), 4);
    for precision in [Precision::Bf16, Precision::F16] {
        let t = run(precision, None, 4);
        let s = steps(&t);
        assert_eq!(s.len(), 4, "{precision:?}");
        for (i, ((loss, logs), want)) in s.iter().zip(&f32_losses).enumerate() {
            assert!(
                (loss - want).abs() <= 0.05 * want.abs().max(0.1),
                "{precision:?} step {}: loss {loss} vs f32 {want}",
                i + 1
            );
            assert_eq!(
                logs.get("loss_scale").copied(),
                (precision == Precision::F16).then_some(65536.0),
                "{precision:?}: the loss scale is logged under f16 only"
            );
            assert!(!logs.contains_key("skipped"));
        }
    }

    // An f16 run whose state is edited to a loss scale that overflows f16: the resumed step is
    // skipped (weights unchanged), the scale halves and is saved.
    let dir = data.path().join("f16");
    drop(run(Precision::F16, Some(dir.clone()), 2));
    let before = weights(&dir);
    let state_path = latest_set(&dir).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    assert_eq!(state["grad_scaler"]["scale"], 65536.0);
    assert_eq!(state["grad_scaler"]["good_steps"], 2);
    state["grad_scaler"]["scale"] = serde_json::json!(1e30);
    std::fs::write(&state_path, state.to_string()).expect("write state");
    let t = trainer_in(&table, Some(dir.clone()), 1e-3, 2, Precision::F16);
    t.resume(&dir).expect("resume");
    t.set_max_steps(Some(3));
    t.fit().expect("fit");
    let s = steps(&t);
    let (loss, logs) = s.last().expect("a step");
    assert!(loss.is_finite());
    assert_eq!(logs.get("loss_scale").map(|s| s / 1e30), Some(1.0));
    assert_eq!(logs.get("skipped"), Some(&1.0), "{logs:?}");
    assert_eq!(weights(&dir), before, "a skipped step leaves the weights");
    let state_path = latest_set(&dir).join("state.json");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    let scale = state["grad_scaler"]["scale"].as_f64().expect("scale");
    assert!((scale / 5e29 - 1.0).abs() < 1e-12, "halved: {scale}");
    assert_eq!(state["grad_scaler"]["good_steps"], 0);
    assert_eq!(state["step"], 3);

    // A forward pass that gives NaN embeddings (the final norm's weight set to NaN): under f16 that
    // is an overflow as far as the scaler can tell, so the step is skipped as PyTorch's GradScaler
    // skips it (in f32 it is an error: a_nan_loss_stops...).
    // The weights are edited through the trainer and saved as a new set of the same step (a
    // file edited in place would no longer match the hash its state.json records).
    let mut w = t.model().state_dict();
    let key = "norm.weight";
    let nan = (w[key].clone() * f64::NAN).expect("nan");
    w.insert(key.into(), nan);
    t.model().set_state_dict(&w).expect("set");
    t.save_state(&dir).expect("save");
    assert_eq!(
        latest_set(&dir).join("state.json"),
        state_path,
        "the same step's set"
    );
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    assert_eq!(state["step"], 3);
    state["grad_scaler"]["scale"] = serde_json::json!(65536.0);
    std::fs::write(&state_path, state.to_string()).expect("write state");
    let bits = |d: &Path| -> Vec<(String, Vec<u32>)> {
        weights(d)
            .into_iter()
            .map(|(k, v)| (k, v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    let edited = bits(&dir);
    let t = trainer_in(&table, Some(dir.clone()), 1e-3, 2, Precision::F16);
    t.resume(&dir).expect("resume");
    t.set_max_steps(Some(4));
    t.fit()
        .expect("a non-finite forward pass under f16 is skipped, not an error");
    let s = steps(&t);
    assert_eq!(s.len(), 4);
    assert_eq!(s[3].1.get("skipped"), Some(&1.0), "{:?}", s[3].1);
    assert_eq!(bits(&dir), edited, "a skipped step leaves the weights");
}

/// The steps of a trainer's checkpoint sets, newest first.
fn set_steps(dir: &Path) -> Vec<usize> {
    let mut v: Vec<usize> = std::fs::read_dir(dir.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("step-")
                .and_then(|s| s.parse().ok())
        })
        .collect();
    v.sort_unstable_by_key(|s| std::cmp::Reverse(*s));
    v
}

/// A set whose files do not agree with its state.json (a torn file, a step that is not the
/// folder's) is refused with the file named, and the set before it is used.
#[test]
fn a_torn_or_mismatched_checkpoint_set_is_refused_by_name_and_the_previous_one_is_used() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let dir = data.path().join("run");
    let t = trainer(&table, Some(dir.clone()), 1e-3, 2);
    let report = t.fit().expect("fit");
    let steps = set_steps(&dir);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[0], report.steps);
    let (newest, previous) = (steps[0], steps[1]);
    let newest_dir = latest_set(&dir);

    // A truncated optimizer file in the newest set.
    let opt = newest_dir.join("optimizer.safetensors");
    let bytes = std::fs::read(&opt).expect("read");
    std::fs::write(&opt, &bytes[..bytes.len() / 2]).expect("truncate");
    let r = trainer(&table, Some(dir.clone()), 1e-3, 2);
    r.resume(&dir).expect("the previous set");
    assert_eq!(r.steps(), previous);

    // Both sets broken: the error names each refused file.
    std::fs::write(&opt, &bytes).expect("restore");
    let state_path = newest_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("json");
    state["step"] = serde_json::json!(newest + 1);
    std::fs::write(&state_path, state.to_string()).expect("write");
    let prev_model = dir
        .join("checkpoints")
        .join(format!("step-{previous:09}"))
        .join("last.safetensors");
    let mut w = std::fs::read(&prev_model).expect("read");
    let last = w.len() - 1;
    w[last] ^= 0x55;
    std::fs::write(&prev_model, w).expect("write");
    let r = trainer(&table, Some(dir.clone()), 1e-3, 2);
    let e = r.resume(&dir).expect_err("no complete set").to_string();
    assert!(
        e.contains(&format!("step-{newest:09}/state.json"))
            && e.contains(&format!("records step {}", newest + 1)),
        "{e}"
    );
    assert!(
        e.contains(&format!("step-{previous:09}/last.safetensors")) && e.contains("sha256"),
        "{e}"
    );
    assert_eq!(r.steps(), 0, "a refused resume changes nothing");
    // The resume of a folder without checkpoints says so.
    let e = r
        .resume(&data.path().join("nothing"))
        .expect_err("empty")
        .to_string();
    assert!(e.contains("no checkpoint to resume from"), "{e}");
}

/// Resuming with settings that change what a step computes is refused with the keys listed;
/// budgets may grow.
#[test]
fn resuming_with_other_settings_is_refused_with_the_keys_and_budgets_may_grow() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let dir = data.path().join("run");
    let t = trainer(&table, Some(dir.clone()), 1e-3, 1);
    t.fit().expect("fit");
    let other = trainer_with(
        &table,
        Some(dir.clone()),
        2e-3,
        1,
        Precision::F32,
        Miner::AllTriplets {
            max_output_triplets: None,
        },
    );
    let e = other.resume(&dir).expect_err("other settings").to_string();
    assert!(
        e.contains("optimizer.lr: 0.001 -> 0.002") && e.contains("criterion.miner.name"),
        "{e}"
    );
    assert!(!e.contains("max_epochs"), "{e}");
    // More epochs: the run goes on from where it ended.
    let more = trainer(&table, Some(dir.clone()), 1e-3, 3);
    more.resume(&dir).expect("budgets may grow");
    let before = more.steps();
    let r = more.fit().expect("fit");
    assert_eq!(r.epochs, 3);
    assert!(r.steps > before);
}

/// An unreadable training image: by default the run stops naming the file and the step; with
/// `on_bad_image: skip` it is replaced by another image of its label, and reported.
#[test]
fn an_unreadable_training_image_stops_the_run_or_is_skipped_by_policy() {
    use oml::train::BadImagePolicy;
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    // Every image of one label but the last is corrupt: any batch with that label meets one.
    let label = train.labels()[0];
    let members: Vec<usize> = (0..train.len())
        .filter(|&i| train.labels()[i] == label)
        .collect();
    assert!(members.len() >= 3, "{members:?}");
    let bad: Vec<PathBuf> = members[..members.len() - 1]
        .iter()
        .map(|&i| train.image_path(i))
        .collect();
    for p in &bad {
        std::fs::write(p, b"\x89PNG\r\n\x1a\nnot really").expect("corrupt");
    }
    let e = trainer(&table, None, 1e-3, 1)
        .fit()
        .expect_err("a bad image")
        .to_string();
    assert!(
        bad.iter().any(|p| e.contains(&p.display().to_string()))
            && e.contains("training step")
            && e.contains("on_bad_image: skip"),
        "{e}"
    );
    let dir = data.path().join("skip");
    let t = trainer(&table, Some(dir.clone()), 1e-3, 2);
    let mut cfg = t.config();
    cfg.on_bad_image = BadImagePolicy::Skip;
    let t = Trainer::builder(t.model(), &train, t.loss().clone())
        .config(cfg)
        .train_transform(Transform::preset("augs_torch", 32).expect("t"))
        .build()
        .expect("trainer");
    let r = t.fit().expect("skipped");
    assert_eq!(r.ending, Ending::Completed);
    let n = r.skipped_images.len();
    let first = r.skipped_images.clone();
    assert!(n >= 1, "{:?}", r.skipped_images);
    assert!(r.skipped_images.iter().all(|s| bad.contains(&s.path)));
    assert!(
        r.summary()
            .contains(&format!("{n} unreadable training image(s) skipped")),
        "{}",
        r.summary()
    );
    let jsonl = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("jsonl");
    let skipped: Vec<&str> = jsonl
        .lines()
        .filter(|l| l.contains("\"kind\":\"skipped\""))
        .collect();
    assert_eq!(skipped.len(), n, "each reported once: {jsonl}");
    // A resumed run keeps the count (the skipped list is part of the checkpoint).
    let again = Trainer::builder(t.model(), &train, t.loss().clone())
        .config(t.config())
        .train_transform(Transform::preset("augs_torch", 32).expect("t"))
        .resume(&dir)
        .build()
        .expect("resume");
    again.set_max_epochs(3).expect("epochs");
    let r = again.fit().expect("fit");
    assert!(r.skipped_images.len() >= n && r.skipped_images.len() <= bad.len());
    assert_eq!(r.skipped_images[..n], first[..]);
}

/// `checkpoint_every_seconds`: sets after epochs only that often, and always one at the end.
#[test]
fn checkpoints_can_be_spaced_in_time_and_the_end_always_writes_one() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let dir = data.path().join("run");
    let t = trainer(&table, Some(dir.clone()), 1e-3, 3);
    let mut cfg = t.config();
    cfg.checkpoint_every_seconds = 1e6;
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    let t = Trainer::builder(t.model(), &train, t.loss().clone())
        .config(cfg)
        .train_transform(Transform::preset("augs_torch", 32).expect("t"))
        .build()
        .expect("trainer");
    let r = t.fit().expect("fit");
    assert_eq!(set_steps(&dir), vec![r.steps], "one set, at the end");
    let bad = FitConfig {
        checkpoint_every_seconds: f64::NAN,
        ..FitConfig::default()
    };
    let e = bad.validate().expect_err("NaN").to_string();
    assert!(e.contains("checkpoint_every_seconds"), "{e}");
}

/// The train split of the glyphs and a config for a few quick steps, no validation.
fn quick_cfg(steps: usize) -> FitConfig {
    FitConfig {
        seed: 3,
        max_epochs: 5,
        max_steps: Some(steps),
        sampler: SamplerConfig::balance(4, 2),
        optimizer: OptimizerKind::adamw(1e-3),
        valid_every_epochs: 0,
        log_every_steps: 1000,
        ..FitConfig::default()
    }
}

fn flat_weights(m: &Model) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = m
        .state_dict()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().expect("flat").to_vec1().expect("vec")))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn every_pml_loss_trains_a_few_steps_from_its_config() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    let configs = [
        "name: contrastive\npos_margin: 0.0\nneg_margin: 1.0",
        "name: multi_similarity\nminer: {name: multi_similarity, epsilon: 0.1}",
        "name: supcon\ntemperature: 0.1",
        "name: ntxent\ntemperature: 0.07\nminer: {name: batch_easy_hard}",
        "name: proxy_anchor\nmargin: 0.1\nalpha: 32\nlr_scale: 100",
        "name: cosface\nmargin: 0.35\nscale: 64",
        "name: sub_center_arcface\nmargin: 28.6\nscale: 64\nsub_centers: 3",
        "name: triplet_with_miner\nmargin: 0.2\nminer: {name: batch_hard}",
        "name: arcface\nmlp_features: [16]",
    ];
    // A category sampler too (the glyphs' `category` is their script; one has a single letter,
    // hence resampling).
    let samplers = [
        SamplerConfig::balance(4, 2),
        SamplerConfig::CategoryBalance {
            n_categories: 1,
            n_labels: 2,
            n_instances: 2,
            resample_labels: true,
            weight_categories: true,
        },
    ];
    for (i, yaml) in configs.iter().enumerate() {
        let loss: Loss = serde_norway::from_str(yaml).expect(yaml);
        let model = tiny_vit(Precision::F32);
        let before = flat_weights(&model);
        let t = Trainer::builder(model, &train, loss)
            .config(FitConfig {
                sampler: samplers[i % samplers.len()].clone(),
                ..quick_cfg(3)
            })
            .build()
            .unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let r = t.fit().unwrap_or_else(|e| panic!("{yaml}: {e}"));
        assert_eq!((r.ending, r.steps), (Ending::StepBudget, 3), "{yaml}");
        let losses = steps(&t);
        assert_eq!(losses.len(), 3, "{yaml}");
        assert!(
            losses.iter().all(|(l, _)| l.is_finite() && *l >= 0.0),
            "{yaml}: {losses:?}"
        );
        let after = flat_weights(&t.model());
        assert!(
            before.iter().zip(&after).any(|(a, b)| a.1 != b.1),
            "{yaml}: no weight moved"
        );
    }
}

#[test]
fn the_plateau_schedule_follows_torch() {
    let path = repo().join("tests/golden/plateau_torch.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    for case in fx["cases"].as_array().expect("cases") {
        let g = |k: &str| case[k].as_f64().expect(k);
        let schedule = Schedule::Plateau {
            factor: g("factor"),
            patience: case["patience"].as_u64().expect("patience") as usize,
            threshold: g("threshold"),
            cooldown: case["cooldown"].as_u64().expect("cooldown") as usize,
            min_lr: g("min_lr"),
            warmup_steps: 0,
        };
        schedule.validate().expect("valid");
        let base = g("base_lr");
        let mut state = oml::train::PlateauState::default();
        let metrics = case["metrics"].as_array().expect("metrics");
        let lrs = case["lrs"].as_array().expect("lrs");
        let mut reductions = 0;
        for (i, (m, lr)) in metrics.iter().zip(lrs).enumerate() {
            reductions += usize::from(
                state
                    .observe(&schedule, m.as_f64().expect("m"), base)
                    .is_some(),
            );
            let (ours, torch) = (base * state.lr_factor, lr.as_f64().expect("lr"));
            assert!(
                (ours - torch).abs() <= 1e-12 * torch,
                "validation {i}: ours {ours}, torch {torch}"
            );
        }
        assert!(reductions >= 1);
    }
}

/// The optimiser's update count of one parameter, from the newest checkpoint set.
fn updates(dir: &Path) -> u64 {
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(latest_set(dir).join("state.json")).expect("state"),
    )
    .expect("json");
    state["param_steps"]
        .as_object()
        .expect("param_steps")
        .values()
        .map(|v| v.as_u64().expect("count"))
        .max()
        .expect("a parameter")
}

#[test]
fn accumulated_gradients_update_every_k_batches_and_resume_exactly() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    let build = |logs: PathBuf| {
        let cfg = FitConfig {
            max_steps: None,
            max_epochs: 2,
            sampler: SamplerConfig::balance(2, 2),
            accumulate_grad_batches: 4,
            logs_dir: Some(logs),
            ..quick_cfg(0)
        };
        Trainer::builder(tiny_vit(Precision::F32), &train, Loss::triplet_hard(0.2))
            .config(cfg)
            .build()
            .expect("trainer")
    };
    let straight = data.path().join("straight");
    let t = build(straight.clone());
    let r = t.fit().expect("fit");
    let per_epoch = r.steps / 2;
    assert!(
        per_epoch > 4 && per_epoch % 4 != 0,
        "{per_epoch} batches per epoch"
    );
    // Every 4 batches, and the remainder at each epoch's end.
    assert_eq!(updates(&straight), 2 * per_epoch.div_ceil(4) as u64);

    // A budget that falls between updates ends the run at the next update, and a resumed run
    // ends with the weights of one that ran through.
    let resumed = data.path().join("resumed");
    let first = build(resumed.clone());
    first.set_max_steps(Some(3));
    let r = first.fit().expect("first part");
    assert_eq!((r.ending, r.steps), (Ending::StepBudget, 4));
    assert_eq!(updates(&resumed), 1);
    drop(first);
    let second = build(resumed.clone());
    second.resume(&resumed).expect("resume");
    assert_eq!(second.fit().expect("second part").ending, Ending::Completed);
    let (a, b) = (weights(&straight), weights(&resumed));
    for ((ka, va), (_, vb)) in a.iter().zip(&b) {
        assert_eq!(va, vb, "{ka} differs after resuming");
    }
}

#[test]
fn early_stopping_ends_a_run_whose_metric_stalls_and_tensorboard_reads_its_history() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let logs = data.path().join("run");
    // A learning rate too small to change any retrieval: the metric stays where it started.
    let t = trainer(&table, Some(logs.clone()), 1e-12, 8);
    t.set_early_stopping_patience(Some(2)).expect("patience");
    assert!(t.set_early_stopping_patience(Some(0)).is_err());
    let r = t.fit().expect("fit");
    assert_eq!(r.ending, Ending::EarlyStopped);
    // Best after epoch 0, no better after epochs 1 and 2: stopped after 3 of 8 epochs.
    assert_eq!(r.epochs, 3);
    assert_eq!(r.best.map(|b| b.1), Some(0));

    // The TensorBoard events hold what metrics.jsonl holds.
    let tb: Vec<PathBuf> = std::fs::read_dir(logs.join("tb"))
        .expect("tb")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(tb.len(), 1, "{tb:?}");
    let scalars = oml::train::tensorboard::read_scalars(&tb[0]).expect("events");
    let of = |tag: &str| -> Vec<(i64, f32)> {
        scalars
            .iter()
            .filter(|s| s.tag == tag)
            .map(|s| (s.step, s.value))
            .collect()
    };
    let history = t.history().0;
    let want: Vec<(i64, f32)> = history
        .iter()
        .filter_map(|r| match r {
            Record::Step { step, loss, .. } => Some((*step as i64, *loss as f32)),
            _ => None,
        })
        .collect();
    assert_eq!(of("train/loss"), want);
    assert_eq!(of("train/lr").len(), want.len());
    let cmc: Vec<(i64, f32)> = history
        .iter()
        .filter_map(|r| match r {
            Record::Validation { step, metrics, .. } => {
                Some((*step as i64, metrics["OVERALL/cmc/1"] as f32))
            }
            _ => None,
        })
        .collect();
    assert_eq!(cmc.len(), 3);
    assert_eq!(of("valid/OVERALL/cmc/1"), cmc);
}

#[test]
fn train_postprocessor_trains_a_reranker_and_reports_before_and_after() {
    use oml::pipeline::{PostprocessorJob, train_postprocessor};
    let data = tempfile::tempdir().expect("tmp");
    let _ = glyphs(data.path());
    let net = "{ family: resnet, block: basic, layers: [1, 1, 1, 1], width: 8, gem_p: null, \
               head: { linear: 1 }, remove_fc: true, normalise: false }";
    let yaml = format!(
        "dataframe: df.csv\n\
         extractor: {{ arch: tiny_resnet, weights: random, network: {net} }}\n\
         pairwise_model: {{ extractor: {{ arch: tiny_resnet, weights: random, network: {net} }}, mlp_hidden_dims: [8] }}\n\
         image_size: 32\n\
         transforms_train: augs_glyphs\n\
         transforms_extraction: norm_resize_torch\n\
         logs_dir: rr\n\
         max_epochs: 2\n\
         max_steps: 4\n\
         sampler: {{ name: balance, n_labels: 4, n_instances: 2 }}\n\
         optimizer: {{ name: adamw, lr: 0.001 }}\n\
         top_n: 3\n"
    );
    let cfg = data.path().join("rr.yaml");
    std::fs::write(&cfg, &yaml).expect("write");
    let job = PostprocessorJob::from_file(&cfg, &[]).expect("job");
    let report = train_postprocessor(&job).expect("train");
    assert_eq!(report.steps, 4);
    assert!(report.losses.iter().all(|l| l.is_finite() && *l > 0.0));
    // Validation after the last epoch: the first stage's metrics and the re-ranked ones; only the
    // top 3 move, so cmc@5 stays.
    let v = report.validations.last().expect("a validation");
    let (b1, a1) = (v.before["OVERALL/cmc/1"], v.after["OVERALL/cmc/1"]);
    assert!((0.0..=1.0).contains(&b1) && (0.0..=1.0).contains(&a1));
    assert_eq!(v.before["OVERALL/cmc/5"], v.after["OVERALL/cmc/5"]);
    let logs = data.path().join("rr");
    for f in ["reranker.safetensors", "report.json", "config.yaml"] {
        assert!(logs.join(f).is_file(), "{f}");
    }
    // The saved re-ranker loads onto its backbone and scores as it did.
    let back = oml::Model::init(
        oml::models::ModelSpec::custom(
            "tiny_resnet",
            serde_norway::from_str(net).expect("network"),
        ),
        0,
    )
    .expect("model");
    let s =
        oml::retrieval::ConcatSiamese::load(back.clone(), &[8], &logs.join("reranker.safetensors"))
            .expect("load");
    let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).expect("x");
    let p: Vec<f32> = s
        .predict(&x, &x.flip(&[0]).expect("flip"))
        .expect("predict")
        .to_vec1()
        .expect("vec");
    assert!(p.iter().all(|v| *v > 0.0 && *v < 1.0), "{p:?}");
    let e = oml::retrieval::ConcatSiamese::load(back, &[16], &logs.join("reranker.safetensors"))
        .err()
        .expect("another head");
    assert!(e.to_string().contains("reranker.safetensors"), "{e}");
    // Bad values are named by key.
    for (k, v, want) in [
        ("top_n", "1", "top_n"),
        ("pairwise_model.mlp_hidden_dims", "[0]", "mlp_hidden_dims"),
        ("max_epoch", "3", "known keys"),
        ("extractor.weights", "nope.safetensors", "extractor.weights"),
    ] {
        let e = PostprocessorJob::from_file(&cfg, &[format!("{k}={v}")])
            .err()
            .unwrap_or_else(|| panic!("{k}={v} was accepted"))
            .to_string();
        assert!(e.contains(want), "{k}={v}: {e}");
    }
}

/// Issue 14's "nothing copies to the CPU per step except the scalars logged", measured with
/// `oml::host::Profile` on the CPU build (every read of a tensor in the library goes through
/// `oml::host`, clippy enforces it): one read per step with OML's hard miner, all triplets,
/// ArcFace, clipping and accumulation; the images uploaded by the loader's thread; and a miner that
/// selects on the host shows up by name (so the profile does see reads).
#[test]
fn a_training_step_copies_only_its_logged_scalars_to_the_host() {
    use oml::host::{Direction, Profile, per_step};
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    let n = 4u64;
    // (loss, clip, accumulate, scalars read per step: the loss, the embeddings' sum, the norm at
    // updates that clip, the loss's device logs)
    let cases = [
        (Loss::triplet_hard(0.1), None, 1, vec![5]),
        (Loss::triplet_all(0.1), Some(1.0), 1, vec![6]),
        // The norm only at the updates (every second batch, and an epoch's last).
        (Loss::arcface_with(0.5, 16.0), Some(1.0), 2, vec![3, 4]),
        (Loss::supcon(0.1), None, 1, vec![2]),
    ];
    for (loss, clip, accumulate, scalars) in cases {
        let what = loss.describe();
        let t = Trainer::builder(tiny_vit(Precision::F32), &train, loss)
            .config(FitConfig {
                clip_grad_norm: clip,
                accumulate_grad_batches: accumulate,
                ..quick_cfg(n as usize)
            })
            .build()
            .expect("trainer");
        let profile = Profile::start();
        let r = t.fit().expect("fit");
        let copies = profile.finish();
        // Accumulation ends a run at an update: a step past the budget when an epoch's last
        // batch was one.
        assert!(r.steps == n as usize || (accumulate > 1 && r.steps == n as usize + 1));
        let mut seen = std::collections::BTreeSet::new();
        for s in 0..r.steps as u64 {
            let step = per_step(&copies, s..s + 1);
            let to_host: Vec<_> = step
                .iter()
                .filter(|((_, d), _)| *d == Direction::ToHost)
                .collect();
            assert_eq!(
                to_host.len(),
                1,
                "{what}, step {s}: {to_host:?} ({copies:?})"
            );
            let ((site, _), (count, bytes)) = to_host[0];
            assert_eq!(
                (*site, *count),
                ("train: step scalars", 1),
                "{what}, step {s}"
            );
            seen.insert(bytes / 8);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), scalars, "{what}");
        // The batches went to the device on the loader's thread (one upload each, 8 images).
        let uploads: usize = copies
            .iter()
            .filter(|c| c.site == "loader: images")
            .map(|c| c.bytes)
            .sum();
        assert!(
            uploads >= n as usize * 8 * 3 * 32 * 32 * 4,
            "{what}: {uploads}"
        );
        // The logged values are the scalars read.
        let logged = steps(&t);
        assert_eq!(logged.len(), r.steps);
        assert!(logged.iter().all(|(l, _)| l.is_finite()), "{what}");
    }
    // A miner that selects on the host: its `[B, B]` matrix is a second read, named.
    let loss = Loss::contrastive().with_miner(Miner::batch_hard());
    let t = Trainer::builder(tiny_vit(Precision::F32), &train, loss)
        .config(quick_cfg(2))
        .build()
        .expect("trainer");
    let profile = Profile::start();
    t.fit().expect("fit");
    let step = per_step(&profile.finish(), 0..1);
    assert_eq!(
        step.get(&("miner: distances (PML batch-hard)", Direction::ToHost)),
        Some(&(1, 8 * 8 * 4)),
        "{step:?}"
    );
    // A run on the trainer's own thread is recorded too.
    t.set_max_steps(Some(3));
    let profile = Profile::start();
    t.spawn().expect("spawn").join().expect("join");
    let step = per_step(&profile.finish(), 2..3);
    assert_eq!(
        step.get(&("train: step scalars", Direction::ToHost)),
        Some(&(1, 16)),
        "{step:?}"
    );
}

/// A cosine schedule in a fit that the clock ends completes with it: the horizon is the step the
/// budget is expected to end at, so the last steps run at a small fraction of the base rate (a
/// constant-rate run ends wherever the clock stops it).
#[test]
fn a_cosine_schedule_ends_with_the_time_budget() {
    let data = tempfile::tempdir().expect("tmp");
    let table = glyphs(data.path());
    let train = ImageLabeledDataset::from_table(table.clone(), Some(Split::Train)).expect("train");
    let base = 1e-3;
    let t = Trainer::builder(tiny_vit(Precision::F32), &train, Loss::triplet_hard(0.1))
        .config(FitConfig {
            max_epochs: 100_000,
            max_steps: None,
            max_seconds: Some(4.0),
            scheduler: Schedule::Cosine {
                warmup_steps: 0,
                min_lr_ratio: 0.0,
            },
            ..quick_cfg(1)
        })
        .build()
        .expect("trainer");
    let r = t.fit().expect("fit");
    assert_eq!(r.ending, Ending::TimeBudget);
    let lrs: Vec<f64> = t
        .history()
        .records()
        .iter()
        .filter_map(|r| match r {
            Record::Step { lr, .. } => Some(*lr),
            _ => None,
        })
        .collect();
    assert!(lrs.len() > 20, "{} steps", lrs.len());
    // Before the estimate (10 steps) the horizon is the epochs' end: the base rate.
    assert!((lrs[5] - base).abs() < 1e-9 * base, "{}", lrs[5]);
    let last = lrs[lrs.len() - 1];
    assert!(
        last < 0.05 * base,
        "the last step's rate {last:e} of {base:e}"
    );
    // Halfway through the steps, on the way down (where exactly depends on the pace).
    let mid = lrs[lrs.len() / 2];
    assert!(mid > 0.02 * base && mid < 0.98 * base, "{mid:e}");
}
