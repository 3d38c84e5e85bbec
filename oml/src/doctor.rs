//! `oml doctor`: what this build and this machine can do, checked.
//!
//! It reports the build's features and the devices it sees (for a GPU: name, memory, compute
//! capability, driver version), then runs on each device:
//! - every backbone family's embeddings (DINO ViT, DINOv2 ViT with registers, ResNet, CLIP's
//!   visual tower) against the CPU's in f32 on the same batch (pass: cosine >= 0.9999 for every
//!   row), and in bf16 and f16 (pass: >= 0.99; the figures are printed);
//! - a few training steps in f32, bf16 and f16 on one fixed batch (pass: the loss goes down);
//! - throughput: images/s of a ViT-S/16 forward pass and of a training step (forward + backward)
//!   at 224 px with the largest batch that fits (GPUs; a fixed batch on the CPU), and the model
//!   FLOP/s utilisation against the card's peak where it is known.
//!
//! `quick` runs the same checks on tiny networks at 32 px (seconds on a CPU: what the tests run).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::data::{ImageLabeledDataset, Transform};
use crate::models::{ClipConfig, ModelSpec, NetworkConfig, ResNetConfig, ViTConfig};
use crate::notebook::{Show, Table};
use crate::train::{FitConfig, OptimizerKind, Schedule, Trainer};
use crate::{Error, Loss, Model, Precision, Result};

/// What to check.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Devices to check (`cpu`, `cuda`, `cuda:i`); empty: the CPU and every GPU found.
    pub devices: Vec<String>,
    /// Tiny networks at 32 px instead of the real archs at 224 px.
    pub quick: bool,
}

/// The build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    /// oml's version.
    pub version: String,
    /// Built with the `cuda` feature.
    pub cuda: bool,
    /// Built with the `cudnn` feature.
    pub cudnn: bool,
    /// The CUDA version the build targeted (`CUDARC_CUDA_VERSION` at build time), when known.
    pub cuda_version: Option<String>,
    /// CPU threads the matrix products use.
    pub cpu_threads: usize,
    /// The CPU's vector extensions that the kernels use.
    pub cpu_features: String,
}

/// A device found.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// `cpu`, `cuda:0`, ...
    pub name: String,
    /// What it is (a GPU's name).
    pub description: String,
    /// Memory in GiB (GPUs).
    pub memory_gib: Option<f64>,
    /// Compute capability (GPUs).
    pub compute_capability: Option<(i32, i32)>,
    /// The driver's CUDA version (GPUs).
    pub driver: Option<String>,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Passed.
    Pass,
    /// Failed: `oml doctor` exits non-zero.
    Fail,
    /// A measurement, nothing to pass.
    Info,
}

impl Status {
    /// `ok`, `FAILED` or `-`.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Fail => "FAILED",
            Status::Info => "-",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The device checked.
    pub device: String,
    /// What was checked.
    pub check: String,
    /// Pass, fail or a measurement.
    pub status: Status,
    /// The figure (`min cosine 0.999998`, `loss 2.31 -> 1.02`, `812 images/s`).
    pub figure: String,
}

/// What `oml doctor` found.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    /// The build.
    pub build: BuildInfo,
    /// The devices found.
    pub devices: Vec<DeviceInfo>,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// What else a user should know (no CUDA in this build, no GPU found, ...).
    pub notes: Vec<String>,
}

impl DoctorReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The report as text: the build, the devices, a table of the checks, the notes.
    pub fn text(&self) -> String {
        let b = &self.build;
        let mut out = format!(
            "oml {}: cuda {}, cudnn {}{}; CPU: {} threads, {}\n",
            b.version,
            yes_no(b.cuda),
            yes_no(b.cudnn),
            b.cuda_version
                .as_ref()
                .map(|v| format!(" (built for CUDA {v})"))
                .unwrap_or_default(),
            b.cpu_threads,
            b.cpu_features
        );
        for d in &self.devices {
            out += &format!("device {}: {}", d.name, d.description);
            if let Some(m) = d.memory_gib {
                out += &format!(", {m:.1} GiB");
            }
            if let Some((a, c)) = d.compute_capability {
                out += &format!(", compute capability {a}.{c}");
            }
            if let Some(v) = &d.driver {
                out += &format!(", driver CUDA {v}");
            }
            out.push('\n');
        }
        let w0 = self
            .checks
            .iter()
            .map(|c| c.device.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let w1 = self
            .checks
            .iter()
            .map(|c| c.check.len())
            .max()
            .unwrap_or(5)
            .max(5);
        out += &format!(
            "{:w0$}  {:w1$}  {:6}  figure\n",
            "device", "check", "result"
        );
        for c in &self.checks {
            let s = c.status.label();
            out += &format!("{:w0$}  {:w1$}  {s:6}  {}\n", c.device, c.check, c.figure);
        }
        for n in &self.notes {
            out += &format!("note: {n}\n");
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        out += &if failed == 0 {
            format!("all {} checks passed\n", self.checks.len())
        } else {
            format!("{failed} of {} checks FAILED\n", self.checks.len())
        };
        out
    }
}

impl Show for DoctorReport {
    fn html(&self) -> Result<String> {
        let mut t = Table::new(&["device", "check", "result", "figure"]);
        for c in &self.checks {
            let s = c.status.label();
            t = t.row(&[
                c.device.clone(),
                c.check.clone(),
                s.into(),
                c.figure.clone(),
            ]);
        }
        t.html()
    }
    fn plain(&self) -> String {
        self.text()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The build's features and the CPU.
pub fn build_info() -> BuildInfo {
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                features.push(name);
            }
        }
    }
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        cuda: cfg!(feature = "cuda"),
        cudnn: cfg!(feature = "cudnn"),
        cuda_version: option_env!("CUDARC_CUDA_VERSION").map(cuda_version_name),
        cpu_threads: rayon::current_num_threads(),
        cpu_features: if features.is_empty() {
            "no AVX2".to_owned()
        } else {
            features.join(" ")
        },
    }
}

/// `13040` -> `13.4`.
fn cuda_version_name(v: &str) -> String {
    match v.parse::<u32>() {
        Ok(n) => format!("{}.{}", n / 1000, (n % 1000) / 10),
        Err(_) => v.to_owned(),
    }
}

/// The GPUs this build can see, or why it sees none.
fn gpus() -> (Vec<DeviceInfo>, Option<String>) {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::{CudaContext, sys};
        let n = match CudaContext::device_count() {
            Ok(n) => n.max(0) as usize,
            Err(e) => {
                return (
                    Vec::new(),
                    Some(format!(
                        "no usable NVIDIA driver ({e}): install the driver, or run on the CPU"
                    )),
                );
            }
        };
        let mut driver = 0i32;
        // SAFETY: cuDriverGetVersion writes one int; the driver is loaded (device_count worked).
        let ok = unsafe { sys::cuDriverGetVersion(&mut driver) } == sys::CUresult::CUDA_SUCCESS;
        let driver = ok.then(|| cuda_version_name(&driver.to_string()));
        let mut out = Vec::new();
        for i in 0..n {
            match CudaContext::new(i) {
                Ok(ctx) => out.push(DeviceInfo {
                    name: format!("cuda:{i}"),
                    description: ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                    memory_gib: ctx.total_mem().ok().map(|b| b as f64 / (1u64 << 30) as f64),
                    compute_capability: ctx.compute_capability().ok(),
                    driver: driver.clone(),
                }),
                Err(e) => out.push(DeviceInfo {
                    name: format!("cuda:{i}"),
                    description: format!("cannot be opened: {e}"),
                    memory_gib: None,
                    compute_capability: None,
                    driver: driver.clone(),
                }),
            }
        }
        let why = out
            .is_empty()
            .then(|| "the driver reports no CUDA device".to_owned());
        (out, why)
    }
    #[cfg(not(feature = "cuda"))]
    {
        (
            Vec::new(),
            Some(
                "this build has no CUDA support: build oml with `--features cuda` (see the \
                 README's CUDA section: nvcc and the CUDA libraries) to use an NVIDIA GPU"
                    .to_owned(),
            ),
        )
    }
}

/// The networks checked: one per family (`quick`: tiny ones at 32 px).
fn families(quick: bool) -> Result<Vec<(&'static str, ModelSpec, u32)>> {
    if !quick {
        return Ok(vec![
            ("DINO ViT-S/16", ModelSpec::new("vits16"), 224),
            ("DINOv2 ViT-S/14 reg", ModelSpec::new("vits14_reg"), 224),
            ("ResNet-50", ModelSpec::new("resnet50"), 224),
            ("CLIP ViT-B/32", ModelSpec::new("vitb32_224"), 224),
        ]);
    }
    let vit = |patch: usize, layerscale: bool, registers: usize| ViTConfig {
        patch_size: patch,
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4,
        layerscale,
        pos_grid: 32 / patch,
        n_registers: registers,
        eps: 1e-6,
        normalise: false,
        multi_scale: false,
    };
    let mut resnet = ResNetConfig::from_arch("resnet18")?;
    resnet.layers = [1, 1, 1, 1];
    resnet.width = 8;
    Ok(vec![
        (
            "DINO ViT (tiny)",
            ModelSpec::custom("tiny_dino", NetworkConfig::Vit(vit(16, false, 0))),
            32,
        ),
        (
            "DINOv2 ViT reg (tiny)",
            ModelSpec::custom("tiny_dinov2", NetworkConfig::Vit(vit(8, true, 4))),
            32,
        ),
        (
            "ResNet (tiny)",
            ModelSpec::custom("tiny_resnet", NetworkConfig::Resnet(resnet)),
            32,
        ),
        (
            "CLIP (tiny)",
            ModelSpec::custom(
                "tiny_clip",
                NetworkConfig::Clip(ClipConfig {
                    patch_size: 16,
                    width: 32,
                    layers: 2,
                    heads: 2,
                    output_dim: 16,
                    input_resolution: 32,
                    normalise: false,
                }),
            ),
            32,
        ),
    ])
}

/// Runs every check on every device (see the module docs).
pub fn run(opts: &DoctorOptions) -> Result<DoctorReport> {
    let build = build_info();
    let (found, why) = gpus();
    let mut notes: Vec<String> = why.into_iter().collect();
    let mut devices = vec![DeviceInfo {
        name: "cpu".into(),
        description: format!("CPU, {} threads", build.cpu_threads),
        memory_gib: None,
        compute_capability: None,
        driver: None,
    }];
    devices.extend(found);
    let names: Vec<String> = if opts.devices.is_empty() {
        devices.iter().map(|d| d.name.clone()).collect()
    } else {
        opts.devices.clone()
    };
    let mut checks = Vec::new();
    let families = families(opts.quick)?;
    let data = TempDir::new()?;
    let side = if opts.quick { 32 } else { 224 };
    let train = fixed_batch_dataset(&data.0, side)?;
    for name in &names {
        let device = match crate::device(name) {
            Ok(d) => d,
            Err(e) => {
                checks.push(Check {
                    device: name.clone(),
                    check: "open the device".into(),
                    status: Status::Fail,
                    figure: e.to_string(),
                });
                continue;
            }
        };
        let description = devices
            .iter()
            .find(|d| &d.name == name || (name == "cuda" && d.name == "cuda:0"))
            .map(|d| d.description.clone())
            .unwrap_or_default();
        for (family, spec, size) in &families {
            checks.extend(embedding_checks(name, family, spec, *size)?);
        }
        checks.extend(training_checks(name, &train, opts.quick)?);
        checks.extend(host_copy_checks(name, &train, opts.quick)?);
        checks.extend(throughput(name, &device, &description, opts.quick)?);
    }
    if names.iter().all(|n| n == "cpu") && build.cuda {
        notes.push("only the CPU was checked".into());
    }
    Ok(DoctorReport {
        build,
        devices,
        checks,
        notes,
    })
}

/// A folder of this process under the system's temp folder, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("oml-doctor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Cosine similarity of each row of `a` with the same row of `b` (both `[N, D]`), the lowest.
fn min_row_cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let b = b.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let dot = (&a * &b)?.sum(1)?;
    let na = a.sqr()?.sum(1)?.sqrt()?;
    let nb = b.sqr()?.sum(1)?.sqrt()?;
    let cos: Vec<f64> = crate::host::read(
        &(dot / (na * nb)?.clamp(1e-300, f64::MAX)?)?,
        "doctor: cosines",
    )?;
    Ok(cos.into_iter().fold(f64::INFINITY, f64::min))
}

/// A seeded batch of images, `[n, 3, side, side]`.
fn images(n: usize, side: usize, seed: u64) -> Result<Tensor> {
    let g = crate::models::model::seeded_tensors(seed, |vb| {
        vb.get_with_hints(
            (n, 3, side, side),
            "x",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )
        .map(|_| ())
        .map_err(Error::from)
    })?;
    g.into_values()
        .next()
        .ok_or_else(|| Error::Msg("no images drawn".into()))
}

/// A model of `spec` with seeded weights; tensors that the network's own initialisation leaves at
/// zero (CLIP's projection, for one) get small random values, so that every layer counts.
fn checked_model(spec: &ModelSpec, seed: u64) -> Result<Model> {
    let model = Model::init(spec.clone(), seed)?;
    let mut weights = model.state_dict();
    let zero: Vec<(String, Vec<usize>)> = weights
        .iter()
        .filter(|(_, t)| {
            t.abs()
                .and_then(|a| a.max_all())
                .map_err(crate::Error::from)
                .and_then(|m| {
                    crate::host::scalar::<f32>(&m.to_dtype(DType::F32)?, "doctor: weights")
                })
                .is_ok_and(|m| m == 0.0)
        })
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    if zero.is_empty() {
        return Ok(model);
    }
    let drawn = crate::models::model::seeded_tensors(seed ^ 0x2e70, |vb| {
        for (k, dims) in &zero {
            vb.get_with_hints(
                dims.as_slice(),
                k,
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?;
        }
        Ok(())
    })?;
    weights.extend(drawn);
    model.set_state_dict(&weights)?;
    Ok(model)
}

fn embedding_checks(device: &str, family: &str, spec: &ModelSpec, size: u32) -> Result<Vec<Check>> {
    let model = checked_model(spec, 7)?;
    let x = images(4, size as usize, 11)?;
    let reference = model.network()?.forward(&x)?;
    let mut out = Vec::new();
    for (precision, threshold) in [
        (Precision::F32, 0.9999),
        (Precision::Bf16, 0.99),
        (Precision::F16, 0.99),
    ] {
        let m = model.with_device(device)?.with_precision(precision);
        let dev = m.device()?;
        let got = m
            .network()
            .and_then(|n| n.forward(&x.to_device(&dev)?))
            .and_then(|e| Ok(e.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
        let (status, figure) = match got.and_then(|e| min_row_cosine(&reference, &e)) {
            Ok(c) if c >= threshold => {
                (Status::Pass, format!("min cosine {c:.6} (>= {threshold})"))
            }
            Ok(c) => (Status::Fail, format!("min cosine {c:.6} (< {threshold})")),
            Err(e) => (Status::Fail, e.to_string()),
        };
        out.push(Check {
            device: device.to_owned(),
            check: format!("{family} embeddings, {precision} vs CPU f32"),
            status,
            figure,
        });
    }
    Ok(out)
}

/// Four labels of two images each (random patterns, one per label, with noise): one batch of
/// 4 x 2 that the trainer sees every epoch.
fn fixed_batch_dataset(dir: &Path, side: u32) -> Result<ImageLabeledDataset> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut csv = String::from("label,path,split,is_query,is_gallery\n");
    for label in 0..4 {
        let base: Vec<u8> = (0..side * side * 3).map(|_| rng.random::<u8>()).collect();
        for k in 0..2 {
            let px: Vec<u8> = base
                .iter()
                .map(|&v| v.saturating_add(rng.random_range(0..32)))
                .collect();
            let img = image::RgbImage::from_raw(side, side, px)
                .ok_or_else(|| Error::Msg("cannot make an image".into()))?;
            let name = format!("{label}_{k}.png");
            img.save(dir.join(&name)).map_err(|e| {
                Error::Msg(format!("cannot write {}: {e}", dir.join(&name).display()))
            })?;
            csv += &format!("{label},{name},train,,\n");
        }
    }
    let path = dir.join("df.csv");
    std::fs::write(&path, csv).map_err(|e| Error::io("cannot write", &path, e))?;
    ImageLabeledDataset::from_csv(&path, None)
}

/// `steps` steps (one batch of the fixed dataset each) of the probe ViT on `device` in
/// `precision` with `loss`, quietly; `clip`: `clip_grad_norm`.
#[allow(clippy::too_many_arguments)]
fn probe_fit(
    device: &str,
    train: &ImageLabeledDataset,
    (spec, side): &(ModelSpec, usize),
    precision: Precision,
    loss: Loss,
    steps: usize,
    clip: Option<f64>,
) -> Result<crate::train::FitReport> {
    let transform = Transform::preset("norm_resize_torch", *side as u32)?;
    let model = checked_model(spec, 5)?
        .with_device(device)?
        .with_precision(precision)
        .with_transform(transform.clone());
    let cfg = FitConfig {
        max_epochs: steps,
        sampler: crate::samplers::SamplerConfig::balance(4, 2),
        optimizer: OptimizerKind::adamw(1e-3),
        scheduler: Schedule::Constant { warmup_steps: 0 },
        clip_grad_norm: clip,
        valid_every_epochs: 0,
        log_every_steps: 1000,
        log_every_seconds: 1e9,
        ..FitConfig::default()
    };
    Trainer::builder(model, train, loss)
        .config(cfg)
        .train_transform(transform)
        .fit()
}

fn training_checks(device: &str, train: &ImageLabeledDataset, quick: bool) -> Result<Vec<Check>> {
    let probe = probe_vit(quick)?;
    let mut out = Vec::new();
    for precision in [Precision::F32, Precision::Bf16, Precision::F16] {
        let loss = Loss::arcface_with(0.5, 16.0);
        let fit = probe_fit(device, train, &probe, precision, loss, 6, None);
        let (status, figure) = match fit {
            Ok(r) => {
                let l = r.history.losses();
                let first = l.first().map_or(f64::NAN, |x| x.1);
                let last = l.last().map_or(f64::NAN, |x| x.1);
                let st = if last < first && last.is_finite() {
                    Status::Pass
                } else {
                    Status::Fail
                };
                (
                    st,
                    format!("loss {first:.4} -> {last:.4} in {} steps", l.len()),
                )
            }
            Err(e) => (Status::Fail, e.to_string()),
        };
        out.push(Check {
            device: device.to_owned(),
            check: format!("training, {precision}"),
            status,
            figure,
        });
    }
    Ok(out)
}

/// What a training step copies off the device (see [`crate::host`]): a few steps with each of
/// five losses, recorded with a [`crate::host::Profile`]. Pass: exactly one copy to the host per
/// step, the step's scalars (loss, the embeddings' sum, the gradients' norm where clipping or
/// the f16 loss scale needs it, the loss's logs). PML's miners select on the host: their line
/// shows the distance matrix they read (a measurement, not a check).
fn host_copy_checks(device: &str, train: &ImageLabeledDataset, quick: bool) -> Result<Vec<Check>> {
    let probe = probe_vit(quick)?;
    let steps = 3u64;
    let cases = [
        (
            "triplet, OML's hard miner",
            Loss::triplet_hard(0.1),
            Precision::F32,
            None,
            true,
        ),
        (
            "triplet, all triplets",
            Loss::triplet_all(0.1),
            Precision::F32,
            None,
            true,
        ),
        (
            "ArcFace, f16, clip_grad_norm",
            Loss::arcface_with(0.5, 16.0),
            Precision::F16,
            Some(1.0),
            true,
        ),
        (
            "SupCon, every pair",
            Loss::supcon(0.1),
            Precision::F32,
            None,
            true,
        ),
        (
            "contrastive, PML's batch-hard miner",
            Loss::contrastive().with_miner(crate::Miner::batch_hard()),
            Precision::F32,
            None,
            false,
        ),
    ];
    let mut out = Vec::new();
    for (what, loss, precision, clip, one) in cases {
        let profile = crate::host::Profile::start();
        let fit = probe_fit(device, train, &probe, precision, loss, steps as usize, clip);
        let transfers = profile.finish();
        let (status, figure) = match fit {
            Ok(_) => {
                let per = |s: u64| {
                    crate::host::per_step(&transfers, s..s + 1)
                        .into_iter()
                        .filter(|((_, d), _)| *d == crate::host::Direction::ToHost)
                        .collect::<Vec<_>>()
                };
                let first = per(0);
                let all_one = (0..steps).all(|s| {
                    let p = per(s);
                    p.len() == 1 && p[0].0.0 == "train: step scalars" && p[0].1.0 == 1
                });
                let figure = first
                    .iter()
                    .map(|((site, _), (n, bytes))| format!("{n} x {site} ({bytes} B)"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let status = match (one, all_one) {
                    (true, true) => Status::Pass,
                    (true, false) => Status::Fail,
                    (false, _) => Status::Info,
                };
                (status, format!("per step: {figure}"))
            }
            Err(e) => (Status::Fail, e.to_string()),
        };
        out.push(Check {
            device: device.to_owned(),
            check: format!("copies to the host, {what}"),
            status,
            figure,
        });
    }
    Ok(out)
}

/// The ViT that the training and throughput checks use: ViT-S/16 at 224 px, or the tiny DINO at
/// 32 px.
fn probe_vit(quick: bool) -> Result<(ModelSpec, usize)> {
    Ok(if quick {
        (families(true)?.swap_remove(0).1, 32)
    } else {
        (ModelSpec::new("vits16"), 224)
    })
}

/// Peak FLOP/s of known GPUs by name: (f32 without tensor cores, bf16/f16 dense tensor cores).
fn peak_flops(description: &str) -> Option<(f64, f64)> {
    let d = description.to_lowercase();
    let table: [(&str, f64, f64); 6] = [
        ("h200", 67e12, 989e12),
        ("h100 pcie", 51e12, 756e12),
        ("h100", 67e12, 989e12),
        ("a100", 19.5e12, 312e12),
        ("l40s", 91.6e12, 362e12),
        ("l4", 30.3e12, 121e12),
    ];
    table
        .iter()
        .find(|(k, _, _)| d.contains(k))
        .map(|&(_, f, h)| (f, h))
}

/// FLOPs of one forward pass of a ViT on one `side`-pixel image.
fn vit_flops(cfg: &ViTConfig, side: usize) -> f64 {
    let tokens = (side / cfg.patch_size).pow(2) + 1 + cfg.n_registers;
    let d = cfg.embed_dim as f64;
    let n = tokens as f64;
    let patch = 2.0 * (3 * cfg.patch_size * cfg.patch_size) as f64 * d * (tokens - 1) as f64;
    let per_layer = n * (2.0 * (4.0 + 2.0 * cfg.mlp_ratio as f64) * d * d) + 4.0 * n * n * d;
    patch + cfg.depth as f64 * per_layer
}

fn throughput(
    device_name: &str,
    device: &Device,
    description: &str,
    quick: bool,
) -> Result<Vec<Check>> {
    let (spec, side) = probe_vit(quick)?;
    let cfg = match &spec.network {
        Some(NetworkConfig::Vit(c)) => c.clone(),
        _ => ViTConfig::from_arch(&spec.arch)?,
    };
    let flops = vit_flops(&cfg, side);
    let peak = peak_flops(description);
    let iters = if quick { 2 } else { 5 };
    let mut out = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let model = checked_model(&spec, 1)?
            .with_device(device_name)?
            .with_precision(precision);
        // The largest batch that fits, halving from 512 on a GPU; a fixed batch on the CPU.
        let mut batch = if device.is_cpu() {
            if quick { 4 } else { 16 }
        } else {
            512
        };
        let measured = loop {
            match time_steps(&model, device, batch, side, iters) {
                Ok(t) => break Some(t),
                Err(_) if batch > 1 && !device.is_cpu() => batch /= 2,
                Err(e) => {
                    out.push(Check {
                        device: device_name.to_owned(),
                        check: format!("throughput, {precision}"),
                        status: Status::Fail,
                        figure: e.to_string(),
                    });
                    break None;
                }
            }
        };
        let Some((fwd, train)) = measured else {
            continue;
        };
        let peak_of = |p: (f64, f64)| {
            if precision == Precision::F32 {
                p.0
            } else {
                p.1
            }
        };
        for (what, seconds, mult) in [("forward", fwd, 1.0), ("train step", train, 3.0)] {
            let rate = batch as f64 / seconds;
            let mfu = peak
                .map(|p| format!(", {:.1}% of peak", 100.0 * rate * flops * mult / peak_of(p)))
                .unwrap_or_default();
            out.push(Check {
                device: device_name.to_owned(),
                check: format!(
                    "{what}, {} {side} px, {precision}, batch {batch}",
                    spec.arch
                ),
                status: Status::Info,
                figure: format!(
                    "{rate:.1} images/s, {:.2} TFLOP/s{mfu}",
                    rate * flops * mult / 1e12
                ),
            });
        }
    }
    Ok(out)
}

/// Seconds per forward pass and per training step (forward + backward) of `batch` images.
fn time_steps(
    model: &Model,
    device: &Device,
    batch: usize,
    side: usize,
    iters: usize,
) -> Result<(f64, f64)> {
    let x = images(batch, side, 2)?.to_device(device)?;
    let net = model.network()?;
    let run_forward = || -> Result<()> {
        let e = net.forward(&x)?;
        crate::host::scalar::<f32>(&e.sum_all()?.to_dtype(DType::F32)?, "doctor: forward")?;
        Ok(())
    };
    let fwd = seconds_per_call(device, iters, run_forward)?;
    drop(net);
    let (net, _vars) = model.trainable(device)?;
    let dtype = model.precision().dtype();
    let run_train = || -> Result<()> {
        let auto = crate::models::Autocast::new(net.as_ref(), dtype);
        let e = crate::models::Extractor::forward_t(&auto, &x, true)?;
        let loss = e.to_dtype(DType::F32)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        drop(grads);
        crate::host::scalar::<f32>(&loss, "doctor: train step")?;
        Ok(())
    };
    Ok((fwd, seconds_per_call(device, iters, run_train)?))
}

/// Seconds per call of `f` over `iters` calls after one warm-up call, the device synchronised.
fn seconds_per_call(device: &Device, iters: usize, f: impl Fn() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters.max(1) as f64)
}
