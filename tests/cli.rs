//! The `oml` binary: exit codes and outputs of check-data, convert and datasets.

use std::path::Path;
use std::process::{Command, Output};

fn oml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oml"))
        .args(args)
        .output()
        .expect("run oml")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn folder_dataset(root: &Path, labels: usize, per_label: usize) {
    for l in 0..labels {
        let dir = root.join(format!("class_{l}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for k in 0..per_label {
            let img =
                image::RgbImage::from_pixel(8, 8, image::Rgb([(l * 30) as u8, (k * 40) as u8, 0]));
            img.save(dir.join(format!("{k}.jpg"))).expect("jpg");
        }
    }
}

#[test]
fn convert_image_folder_then_check_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("photos");
    folder_dataset(&root, 6, 3);
    let csv = dir.path().join("df.csv");
    let out = oml(&[
        "convert",
        "image-folder",
        root.to_str().expect("utf8"),
        "--out",
        csv.to_str().expect("utf8"),
        "--val-labels-fraction",
        "0.5",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("18 rows"), "{stdout}");

    // Relative paths resolve against --dataset-root; without it against the CSV's folder (wrong here).
    let ok = oml(&[
        "check-data",
        csv.to_str().expect("utf8"),
        "--dataset-root",
        root.to_str().expect("utf8"),
    ]);
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("validation         9 rows, 3 labels"),
        "{stdout}"
    );

    let bad = oml(&["check-data", csv.to_str().expect("utf8")]);
    let (_, stderr) = text(&bad);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr.contains("18 error(s)") && stderr.contains("line 2: column path"),
        "{stderr}"
    );

    let json = oml(&[
        "check-data",
        csv.to_str().expect("utf8"),
        "--json",
        "--no-files",
    ]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["ok"], true);
    assert_eq!(value["summary"]["rows"], 18);
    assert_eq!(value["summary"]["queries"], 9);
}

#[test]
fn check_data_reports_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "label,path,split,is_query\nx,a.png,train,\n1,b.png,nope,\n",
    )
    .expect("write");
    let out = oml(&["check-data", csv.to_str().expect("utf8"), "--no-files"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    for expected in [
        "line 1: column is_gallery: required column is missing",
        "line 2: column label: 'x' is not an integer label",
        "line 3: column split: 'nope' is not a split",
    ] {
        assert!(
            stderr.contains(expected),
            "missing '{expected}' in:\n{stderr}"
        );
    }
    let json = oml(&[
        "check-data",
        csv.to_str().expect("utf8"),
        "--no-files",
        "--json",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["errors"].as_array().map(Vec::len), Some(3));
    assert_eq!(value["errors"][1]["line"], 2);
    assert_eq!(value["errors"][1]["column"], "label");

    let missing = oml(&["check-data", "/nonexistent/df.csv"]);
    let (_, stderr) = text(&missing);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: ") && stderr.contains("/nonexistent/df.csv"),
        "{stderr}"
    );
}

#[test]
fn glyphs_command_writes_a_checked_dataset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("glyphs");
    let run = oml(&[
        "datasets",
        "glyphs",
        "--out",
        out.to_str().expect("utf8"),
        "--max-labels",
        "10",
        "--size",
        "24",
    ]);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("of 10 labels (5 train, 5 validation"),
        "{stdout}"
    );
    let check = oml(&[
        "check-data",
        out.join("df.csv").to_str().expect("utf8"),
        "--strict",
    ]);
    assert!(check.status.success(), "{:?}", text(&check));

    let no_fonts = oml(&[
        "datasets",
        "glyphs",
        "--out",
        out.to_str().expect("utf8"),
        "--fonts",
        "/nonexistent",
    ]);
    let (_, stderr) = text(&no_fonts);
    assert_eq!(no_fonts.status.code(), Some(1));
    assert!(
        stderr.contains("/nonexistent") && stderr.contains("embedded"),
        "{stderr}"
    );
}

fn oml_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oml"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run oml")
}

/// A ResNet-18 with random weights, as safetensors (what `oml zoo import` or a Hub file gives).
fn random_resnet18(path: &Path) {
    let vm = candle_nn::VarMap::new();
    oml::models::init(
        &oml::models::ModelSpec::new("resnet18"),
        &vm,
        &candle_core::Device::Cpu,
    )
    .expect("init");
    vm.save(path).expect("save");
}

#[test]
fn zoo_list_and_an_offline_download_say_what_they_can() {
    let out = oml(&["zoo", "list"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(
        stdout.contains("vits14_dinov2")
            && stdout.contains("timm/vit_small_patch14_dinov2.lvd142m")
    );
    let json = oml(&["zoo", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert!(v.as_array().expect("array").len() >= 20);
    let cache = tempfile::tempdir().expect("tmp");
    let cache_dir = cache.path().to_str().expect("utf8");
    let out = oml_env(
        &["zoo", "download", "vits16_dino"],
        &[("HF_HUB_CACHE", cache_dir), ("OML_OFFLINE", "1")],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("network is off") && stderr.contains("timm/vit_small_patch16_224.dino"),
        "{stderr}"
    );
    let out = oml_env(
        &["zoo", "download", "vits16_imagenet"],
        &[("HF_HUB_CACHE", cache_dir)],
    );
    assert!(text(&out).1.contains("unknown zoo model"));
}

#[test]
fn embed_import_evaluate_train_validate_predict() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let glyphs = d.join("glyphs");
    let s = oml(&[
        "datasets",
        "glyphs",
        "--out",
        glyphs.to_str().expect("utf8"),
        "--size",
        "32",
        "--max-labels",
        "16",
        "--cross-font",
    ]);
    assert!(s.status.success(), "{:?}", text(&s));
    let csv = glyphs.join("df.csv");
    let weights = d.join("rn18.safetensors");
    random_resnet18(&weights);
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();

    // embed: every row, .npy and parquet
    let e1 = d.join("e1.npy");
    let out = oml(&[
        "embed",
        "--arch",
        "resnet18",
        "--weights",
        &p(&weights),
        "--data",
        &p(&csv),
        "--transform",
        "norm_resize_torch",
        "--image-size",
        "32",
        "--out",
        &p(&e1),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let rows = std::fs::read_to_string(&csv).expect("csv").lines().count() - 1;
    let e = candle_core::Tensor::read_npy(&e1).expect("npy");
    assert_eq!(e.dims(), &[rows, 512]);
    let pq = d.join("e.parquet");
    let out = oml(&[
        "embed",
        "--arch",
        "resnet18",
        "--weights",
        &p(&weights),
        "--data",
        &p(&csv),
        "--image-size",
        "32",
        "--out",
        &p(&pq),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(std::fs::read(&pq).expect("parquet").starts_with(b"PAR1"));

    // import a prefixed checkpoint with a loss head: the clean file embeds identically
    let tensors =
        candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).expect("load");
    let mut wrapped: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    wrapped.insert(
        "criterion.weight".into(),
        candle_core::Tensor::zeros((3, 512), candle_core::DType::F32, &candle_core::Device::Cpu)
            .expect("z"),
    );
    let ckpt = d.join("wrapped.safetensors");
    candle_core::safetensors::save(&wrapped, &ckpt).expect("save");
    let clean = d.join("clean.safetensors");
    let out = oml(&[
        "zoo",
        "import",
        &p(&ckpt),
        "--arch",
        "resnet18",
        "--out",
        &p(&clean),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let e2 = d.join("e2.npy");
    let out = oml(&[
        "embed",
        "--arch",
        "resnet18",
        "--weights",
        &p(&clean),
        "--data",
        &p(&csv),
        "--transform",
        "norm_resize_torch",
        "--image-size",
        "32",
        "--out",
        &p(&e2),
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read(&e1).expect("e1"),
        std::fs::read(&e2).expect("e2")
    );
    let out = oml(&[
        "zoo",
        "import",
        &p(&ckpt),
        "--arch",
        "vits16",
        "--out",
        &p(&d.join("x.safetensors")),
    ]);
    assert!(
        text(&out).1.contains("do not fit the vits16"),
        "{:?}",
        text(&out)
    );

    // evaluate takes every row's embeddings and keeps the validation ones
    let out = oml(&["evaluate", "--embeddings", &p(&e1), "--data", &p(&csv)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("cmc"), "{stdout}");

    // train / validate / predict from a config
    let cfg = d.join("cfg.yaml");
    std::fs::write(
        &cfg,
        "dataset_root: glyphs\ndataframe: df.csv\nmodel: { arch: resnet18, weights: rn18.safetensors }\n\
         image_size: 32\ntransforms_train: augs_torch\ntransforms_val: norm_resize_torch\n\
         sampler: { name: balance, n_labels: 4, n_instances: 2 }\n\
         criterion: { name: triplet_with_miner, margin: 0.2, miner: { name: all_triplets } }\n\
         optimizer: { name: sgd, lr: 0.01, momentum: 0.9, nesterov: true }\n\
         scheduler: { name: cosine, warmup_steps: 1 }\nmax_epochs: 2\nmax_steps: 3\nlogs_dir: run\n",
    )
    .expect("cfg");
    let out = oml(&["train", "--config", &p(&cfg)]);
    assert!(out.status.success(), "{:?}", text(&out));
    let run = d.join("run");
    for f in [
        "config.yaml",
        "metrics.jsonl",
        "last.safetensors",
        "checkpoints/LATEST",
        "report.json",
        "loss.png",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    let out = oml(&[
        "validate",
        "--config",
        &p(&cfg),
        "--weights",
        &p(&run.join("last.safetensors")),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(run.join("metrics.json").is_file() && run.join("worst_queries.png").is_file());
    let out = oml(&["predict", "--config", &p(&cfg), "--set", "top_n=3"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let preds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("predictions.json")).expect("json"))
            .expect("json");
    assert_eq!(
        preds[0]["retrieved"].as_array().expect("retrieved").len(),
        3
    );
    let out = oml(&[
        "train",
        "--config",
        &p(&cfg),
        "--set",
        "criterion.name=circle",
    ]);
    assert!(
        !out.status.success()
            && text(&out).1.contains("criterion")
            && text(&out).1.contains("sub_center_arcface"),
        "{:?}",
        text(&out)
    );
}

/// `oml notebook setup` with a stand-in `evcxr_jupyter` (which writes a kernel spec as the real one
/// does): the kernel gets oml's evcxr configuration and the toolchain's library path, evcxr a fixed
/// build folder with cells unoptimised, cargo the optimised dependencies. Without evcxr and with
/// --no-install it says what to install.
#[cfg(unix)]
#[test]
fn notebook_setup_configures_the_kernel_evcxr_and_cargo() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let fake = bin.join("evcxr_jupyter");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in\n  --help) echo 'To install, run:';;\n  --install) mkdir -p \"$JUPYTER_PATH/kernels/rust\" && printf '{\"argv\":[\"evcxr_jupyter\",\"--control_file\",\"{connection_file}\"],\"display_name\":\"Rust\",\"language\":\"rust\"}' > \"$JUPYTER_PATH/kernels/rust/kernel.json\";;\n  *) exit 2;;\nesac\n",
    )
    .expect("script");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (jupyter, build, config) = (
        dir.path().join("jupyter"),
        dir.path().join("build"),
        dir.path().join("config"),
    );
    let args = [
        "notebook",
        "setup",
        "--no-install",
        "--jupyter-dir",
        jupyter.to_str().expect("utf8"),
        "--build-dir",
        build.to_str().expect("utf8"),
        "--config-dir",
        config.to_str().expect("utf8"),
    ];
    let out = oml_env(&args, &[("PATH", &path)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(jupyter.join("kernels/rust/kernel.json")).expect("kernel.json"),
    )
    .expect("json");
    assert_eq!(spec["argv"][1], "--control_file", "evcxr's own spec kept");
    assert_eq!(
        spec["env"]["EVCXR_CONFIG_DIR"],
        config.to_str().expect("utf8")
    );
    let ld = spec["env"]["LD_LIBRARY_PATH"].as_str().expect("ld");
    assert!(ld.contains("rustlib"), "{ld}");
    let toml = std::fs::read_to_string(config.join("evcxr.toml")).expect("evcxr.toml");
    assert!(
        toml.contains(&format!("tmpdir = \"{}\"", build.join("build").display())),
        "{toml}"
    );
    assert!(toml.contains("opt_level = \"0\""), "{toml}");
    let cargo = std::fs::read_to_string(build.join(".cargo/config.toml")).expect("cargo config");
    assert!(
        cargo.contains("[profile.dev.package.\"*\"]\nopt-level = 3"),
        "{cargo}"
    );
    assert!(
        cargo.contains("[profile.dev.package.polars]\nopt-level = 0"),
        "{cargo}"
    );
    // Run twice: the same result (idempotent).
    assert!(oml_env(&args, &[("PATH", &path)]).status.success());

    // No evcxr_jupyter on PATH and no installing: one clear line.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("empty");
    let out = oml_env(&args, &[("PATH", empty.to_str().expect("utf8"))]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("cargo install evcxr_jupyter"), "{stderr}");
}

/// `oml doctor` on the CPU (tiny networks): every family against the CPU reference in f32, bf16
/// and f16, training steps that lower the loss, throughput lines; a CUDA device in a build without
/// CUDA is a failed check with the reason, and the exit code says so.
#[test]
fn doctor_checks_the_cpu_and_explains_a_missing_gpu() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("doctor.json");
    let out = oml(&[
        "doctor",
        "--quick",
        "--device",
        "cpu",
        "--json",
        json.to_str().expect("utf8"),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for family in ["DINO ViT", "DINOv2 ViT reg", "ResNet", "CLIP"] {
        for precision in ["f32", "bf16", "f16"] {
            assert!(
                stdout.contains(&format!(
                    "{family} (tiny) embeddings, {precision} vs CPU f32"
                )),
                "{family} {precision}: {stdout}"
            );
        }
    }
    assert!(
        stdout.contains("training, bf16") && stdout.contains("images/s"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 4 * 3 + 3 + 5 + 4, "{stdout}");
    assert!(checks.iter().all(|c| c["status"] != "fail"), "{stdout}");
    // What a training step copies to the host: one read of its scalars with four losses; PML's
    // miner selects on the host (a measurement).
    let copies: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|c| {
            c["check"]
                .as_str()
                .is_some_and(|s| s.starts_with("copies to the host"))
        })
        .collect();
    assert_eq!(copies.len(), 5, "{stdout}");
    for c in &copies[..4] {
        assert_eq!(c["status"], "pass", "{c}");
        assert!(
            c["figure"]
                .as_str()
                .is_some_and(|f| f.starts_with("per step: 1 x train: step scalars")),
            "{c}"
        );
    }
    assert_eq!(copies[4]["status"], "info", "{}", copies[4]);
    assert!(
        copies[4]["figure"]
            .as_str()
            .is_some_and(|f| f.contains("miner: distances (PML batch-hard)")),
        "{}",
        copies[4]
    );
    // The training checks: the loss went down in each precision.
    for c in checks.iter().filter(|c| {
        c["check"]
            .as_str()
            .is_some_and(|s| s.starts_with("training"))
    }) {
        assert_eq!(c["status"], "pass", "{c}");
    }
    if !cfg!(feature = "cuda") {
        assert!(
            stdout.contains("this build has no CUDA support"),
            "{stdout}"
        );
        let out = oml(&["doctor", "--quick", "--device", "cuda"]);
        let (stdout, _) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains("FAILED") && stdout.contains("--features cuda"),
            "{stdout}"
        );
    }
}
