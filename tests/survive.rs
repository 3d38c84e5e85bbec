//! Runs that survive. `oml train` on a tiny ResNet: killed with SIGKILL at random moments and
//! aborted at each step of a checkpoint write, resumed with `--resume` every time, it ends with
//! the weights, history and metrics of a run that was never interrupted, bit for bit. A full disk
//! (a file-size limit) and a read-only `logs_dir` stop a run with a clear message and leave the
//! last complete checkpoint whole. `check-data --decode` finds the images that cannot be decoded.

#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use oml::data::GlyphsConfig;
use oml::models::{NetworkConfig, ResNetBlock, ResNetConfig, ResNetHead};

fn oml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oml"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// A glyph dataset and a config of a tiny ResNet trained from scratch for `epochs` epochs.
fn setup(dir: &Path, epochs: usize) -> PathBuf {
    oml::data::generate_glyphs(
        &dir.join("glyphs"),
        &GlyphsConfig {
            size: 32,
            max_labels: Some(24),
            ..GlyphsConfig::default()
        },
    )
    .expect("glyphs");
    let network = NetworkConfig::Resnet(ResNetConfig {
        block: ResNetBlock::Basic,
        layers: [1, 1, 1, 1],
        width: 8,
        gem_p: None,
        head: ResNetHead::Linear(1),
        remove_fc: true,
        normalise: true,
    });
    let cfg = dir.join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "dataset_root: glyphs\ndataframe: df.csv\n\
             model: {{ arch: tiny_resnet, weights: random, normalise: true, network: {} }}\n\
             image_size: 32\ntransforms_train: augs_torch\ntransforms_val: norm_resize_torch\n\
             sampler: {{ name: balance, n_labels: 4, n_instances: 2 }}\n\
             criterion: {{ name: arcface, m: 0.4, s: 16 }}\n\
             optimizer: {{ name: adamw, lr: 0.003 }}\n\
             scheduler: {{ name: cosine, warmup_steps: 2 }}\n\
             seed: 5\nmax_epochs: {epochs}\nlog_every_steps: 1000\nlogs_dir: run\n",
            serde_json::to_string(&network).expect("json")
        ),
    )
    .expect("cfg");
    cfg
}

fn train(cfg: &Path, logs: &Path, extra: &[&str]) -> Command {
    let mut c = oml();
    c.args(["train", "--config", p(cfg), "--set"])
        .arg(format!("logs_dir={}", p(logs)))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Whether a run folder holds a complete checkpoint set (then `--resume`, else a fresh start).
fn has_set(logs: &Path) -> bool {
    std::fs::read_dir(logs.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
        .unwrap_or(false)
}

/// The records of a history, without their wall-clock seconds.
fn history(logs: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(logs.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("record");
            if let Some(m) = v.as_object_mut() {
                m.remove("seconds");
            }
            v
        })
        .collect()
}

/// A small deterministic generator (the kill moments are the same on every run of the test).
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Interrupt {
    /// SIGKILL after this long.
    Kill(Duration),
    /// Abort at this point of a checkpoint write (`OML_CRASH_AT`).
    CrashAt(&'static str),
}

#[test]
fn a_run_killed_anywhere_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = setup(dir.path(), 30);
    let straight = dir.path().join("straight");
    let t0 = Instant::now();
    let out = train(&cfg, &straight, &[]).output().expect("run");
    let full = t0.elapsed();
    assert!(out.status.success(), "{:?}", text(&out));

    // Aborts at every point of a checkpoint write (each file, state.json, the rename, LATEST,
    // the top-level link; `:2` is the second set a process writes), then random kills.
    let mut plan: Vec<Interrupt> = [
        "checkpoint.file:1",
        "checkpoint.file:2",
        "checkpoint.file:3",
        "checkpoint.state:1",
        "checkpoint.renamed:1",
        "checkpoint.latest:1",
        "checkpoint.linked:1",
        "checkpoint.file:5",
        "checkpoint.renamed:2",
        "checkpoint.linked:2",
    ]
    .into_iter()
    .map(Interrupt::CrashAt)
    .collect();
    let mut rng = Lcg(20_261_205);
    for _ in 0..26 {
        let at = full.as_secs_f64() * (0.01 + 0.08 * rng.unit());
        plan.push(Interrupt::Kill(Duration::from_secs_f64(at)));
    }
    let killed = dir.path().join("killed");
    let mut interrupted = 0;
    let mut crashed_mid_write = 0;
    for step in &plan {
        let resume: &[&str] = if has_set(&killed) { &["--resume"] } else { &[] };
        let mut cmd = train(&cfg, &killed, resume);
        let status = match step {
            Interrupt::CrashAt(point) => {
                let out = cmd.env("OML_CRASH_AT", point).output().expect("run");
                let (_, stderr) = text(&out);
                assert!(
                    out.status.signal() == Some(6) && stderr.contains("aborting here"),
                    "{point}: {:?} {stderr}",
                    out.status
                );
                crashed_mid_write += 1;
                out.status
            }
            Interrupt::Kill(after) => {
                let mut child = cmd.spawn().expect("spawn");
                std::thread::sleep(*after);
                if child.try_wait().expect("wait").is_none() {
                    child.kill().expect("kill");
                }
                let out = child.wait_with_output().expect("wait");
                if out.status.signal().is_none() {
                    // It ended on its own: it must have succeeded (a torn checkpoint would fail).
                    assert!(out.status.success(), "{:?}", text(&out));
                }
                out.status
            }
        };
        if status.signal().is_some() {
            interrupted += 1;
        }
        // Whatever was killed, the folder never holds a torn set under a set's name: every
        // `step-*` folder is complete.
        for e in std::fs::read_dir(killed.join("checkpoints"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with("step-") {
                assert!(e.path().join("state.json").is_file(), "{:?}", e.path());
            }
        }
    }
    eprintln!(
        "uninterrupted: {full:?}; {interrupted} interruptions; the chain reached the set {:?} before the last resume",
        std::fs::read_to_string(killed.join("checkpoints/LATEST")).ok()
    );
    assert!(
        interrupted >= 20,
        "{interrupted} interruptions (the run finished too early)"
    );
    assert_eq!(crashed_mid_write, 10);
    let out = train(&cfg, &killed, &["--resume"]).output().expect("run");
    assert!(out.status.success(), "{:?}", text(&out));

    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).expect(f);
    assert!(
        read(&straight, "last.safetensors") == read(&killed, "last.safetensors"),
        "the final weights differ"
    );
    let (a, b) = (history(&straight), history(&killed));
    assert_eq!(a.len(), b.len(), "the history holds each step once");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    let bests = |d: &Path| -> String {
        let s = std::fs::read_to_string(d.join("report.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
        v["best"].to_string()
    };
    assert_eq!(bests(&straight), bests(&killed));
    assert!(
        read(&straight, "best.safetensors") == read(&killed, "best.safetensors"),
        "the best weights differ"
    );
    assert!(a.iter().filter(|r| r["kind"] == "validation").count() >= 20);
    let leftovers: Vec<String> = std::fs::read_dir(killed.join("checkpoints"))
        .expect("checkpoints")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A write that fails mid-run (here a file-size limit, as a full disk would) stops the run with a
/// message naming the last complete set, which stays whole and resumable.
#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_complete_set() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = setup(dir.path(), 1);
    let logs = dir.path().join("run");
    let out = train(&cfg, &logs, &[]).output().expect("run");
    assert!(out.status.success(), "{:?}", text(&out));
    let first = std::fs::read_to_string(logs.join("checkpoints/LATEST")).expect("LATEST");

    // A second run may not start over the first one's checkpoints by accident.
    let out = train(&cfg, &logs, &["--set", "max_epochs=3"])
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("--resume"),
        "{stderr}"
    );

    // Files over 128 KiB cannot be written (SIGXFSZ ignored: the write fails with EFBIG).
    let bin = env!("CARGO_BIN_EXE_oml");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 128; exec '{bin}' train --config '{}' --set logs_dir='{}' \
             --set max_epochs=3 --resume",
            p(&cfg),
            p(&logs)
        ))
        .output()
        .expect("bash");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: cannot write ")
            && stderr.contains(&format!(
                "the last complete set is {}",
                p(&logs.join("checkpoints").join(first.trim()))
            ))
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(logs.join("checkpoints/LATEST")).expect("LATEST"),
        first
    );
    let names: Vec<String> = std::fs::read_dir(logs.join("checkpoints"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp")), "{names:?}");

    // With space again, the run resumes from the kept set and completes.
    let out = train(&cfg, &logs, &["--set", "max_epochs=3", "--resume"])
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "resumed from {}",
            p(&logs.join("checkpoints").join(first.trim()))
        )),
        "{stdout}"
    );
    assert!(stdout.contains("Completed"), "{stdout}");
}

/// A `logs_dir` that cannot be written is one clear error, not a panic.
#[test]
fn a_read_only_logs_dir_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = setup(dir.path(), 1);
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&ro).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut cmd = train(&cfg, &ro, &[]);
    // root ignores permissions unless it gives up the capability to.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let bin = env!("CARGO_BIN_EXE_oml");
        cmd = Command::new("setpriv");
        cmd.args([
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
            bin,
            "train",
            "--config",
            p(&cfg),
            "--set",
        ])
        .arg(format!("logs_dir={}", p(&ro)));
    }
    let out = cmd.output().expect("run (setpriv is in util-linux)");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains(p(&ro))
            && stderr.contains("ermission denied")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// `check-data --decode` opens every image and names the ones that cannot be decoded, by line.
#[test]
fn check_data_decode_finds_undecodable_images() {
    let dir = tempfile::tempdir().expect("tmp");
    let summary = oml::data::generate_glyphs(
        &dir.path().join("glyphs"),
        &GlyphsConfig {
            size: 32,
            max_labels: Some(6),
            ..GlyphsConfig::default()
        },
    )
    .expect("glyphs");
    let csv = summary.csv;
    let text_csv = std::fs::read_to_string(&csv).expect("csv");
    let row = text_csv.lines().nth(3).expect("row 3");
    let header: Vec<&str> = text_csv
        .lines()
        .next()
        .expect("header")
        .split(',')
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "path")
        .expect("path column");
    let rel = row.split(',').nth(col).expect("path");
    std::fs::write(dir.path().join("glyphs").join(rel), b"GIF89a broken").expect("corrupt");
    let out = oml().args(["check-data", p(&csv)]).output().expect("run");
    assert!(
        out.status.success(),
        "without --decode the file only has to exist"
    );
    let out = oml()
        .args(["check-data", p(&csv), "--decode"])
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 4: column path")
            && stderr.contains(rel)
            && stderr.contains("cannot be decoded"),
        "{stderr}"
    );
}
