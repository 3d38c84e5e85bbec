//! CPU throughput of the backbones (random weights of the real shapes; speed does not depend on
//! the values), side by side with the torch figures the backbones issue measured on this machine
//! (2 threads: ViT-S/16 17.1 images/s, ResNet18 42.1, ResNet50 12.7 at 224 px, batch 32), and one
//! fine-tuning step of ViT-S/16 (batch 32 = 8 labels x 4, 224 px, triplet loss with all triplets,
//! AdamW; Python OML: 5.71 s per step here).
//!
//! `cargo run --example bench_backbones [-- quick]` (dev profile: dependencies optimised).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use oml::losses::{AllTripletsMiner, Criterion, TripletLossWithMiner};
use oml::models::ModelSpec;
use oml::train::{Optimizer, OptimizerKind, ParamGroup};

fn main() -> oml::Result<()> {
    let quick = std::env::args().any(|a| a == "quick");
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (32, 3, 224, 224), &dev)?;
    let reps = if quick { 1 } else { 3 };
    for arch in ["vits16", "vits14", "resnet18", "resnet50"] {
        let vm = VarMap::new();
        let net = oml::models::init(&ModelSpec::new(arch), &vm, &dev)?;
        // Inference path: constants, not variables (as `oml embed` loads weights).
        let tensors: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .map_err(|_| oml::Error::Msg("lock".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let net_const = ModelSpec::new(arch).build(vb)?;
        let _ = net_const.forward(&x)?;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = net_const.forward(&x)?;
        }
        let rate = 32.0 * reps as f64 / t.elapsed().as_secs_f64();
        println!(
            "{{\"bench\": \"forward_224_b32\", \"arch\": \"{arch}\", \"images_per_s\": {rate:.1}}}"
        );
        drop(net);
    }
    // One training step of ViT-S/16.
    let vm = VarMap::new();
    let net = oml::models::init(&ModelSpec::new("vits16"), &vm, &dev)?;
    let mut opt = Optimizer::new(
        OptimizerKind::Adamw {
            lr: 1e-5,
            weight_decay: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        vec![ParamGroup::all("backbone", &vm)],
    )?;
    let loss = TripletLossWithMiner::new(
        None,
        Some(Box::new(AllTripletsMiner::default())),
        Default::default(),
    )?;
    let labels: Vec<i64> = (0..32).map(|i| i / 4).collect();
    let mut times = Vec::new();
    for _ in 0..(reps + 1) {
        let t = Instant::now();
        let out = loss.forward(&net.forward_t(&x, true)?, &labels)?;
        let grads = out.loss.backward()?;
        opt.step(&grads, 1e-5, 1.0)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"train_step_vits16_224_b32\", \"seconds_per_step\": {:.2}}}",
        times[times.len() / 2]
    );
    Ok(())
}
