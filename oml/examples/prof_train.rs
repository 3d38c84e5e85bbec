//! Where a fine-tuning step's time goes (ViT-S/14 at 56 px, batch 32): forward, loss, backward,
//! optimiser. `cargo run --example prof_train [SIDE [ARCH]]`, e.g. `-- 224 vits16`.

// A profile reads tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use oml::losses::{Criterion, HardTripletsMiner, TripletLossWithMiner};
use oml::models::ModelSpec;
use oml::train::{Optimizer, OptimizerKind, ParamGroup};

fn main() -> oml::Result<()> {
    // OML_MALLOC_DEFAULTS=1 measures without it.
    if std::env::var_os("OML_MALLOC_DEFAULTS").is_none() {
        oml_kernels::keep_freed_memory();
    }
    let dev = Device::Cpu;
    let side: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(56);
    let arch = std::env::args().nth(2).unwrap_or_else(|| "vits14".into());
    let vm = VarMap::new();
    let net = oml::models::init(&ModelSpec::new(&arch), &vm, &dev)?;
    let mut opt = Optimizer::new(
        OptimizerKind::Adamw {
            lr: 1e-5,
            weight_decay: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
        },
        vec![ParamGroup::all("b", &vm)],
    )?;
    let loss = TripletLossWithMiner::new(
        Some(0.1),
        Some(Box::new(HardTripletsMiner)),
        Default::default(),
    )?;
    let labels: Vec<i64> = (0..32).map(|i| i / 4).collect();
    let x = Tensor::randn(0f32, 1.0, (32, 3, side, side), &dev)?;
    let mut parts: Vec<[f64; 4]> = Vec::new();
    for i in 0..4 {
        let t0 = Instant::now();
        let emb = net.forward_t(&x, true)?;
        let t1 = Instant::now();
        let out = loss.forward(&emb, &labels)?;
        let _ = out.loss.to_scalar::<f32>()?;
        let t2 = Instant::now();
        let grads = out.loss.backward()?;
        let t3 = Instant::now();
        opt.step(&grads, 1e-5, 1.0)?;
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let p = [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4)];
        println!(
            "step {i}: forward {:.0} ms, loss {:.0} ms, backward {:.0} ms, optimiser {:.0} ms",
            p[0], p[1], p[2], p[3]
        );
        parts.push(p);
    }
    // Medians over the steps after the first, as benches/python_train_step.py reports them.
    let median = |j: usize| {
        let mut v: Vec<f64> = parts[1..].iter().map(|p| p[j]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let med: Vec<f64> = (0..4).map(median).collect();
    println!(
        "median of steps 1-3: forward {:.0} ms, loss {:.0} ms, backward {:.0} ms, optimiser {:.0} ms, step {:.0} ms",
        med[0],
        med[1],
        med[2],
        med[3],
        med.iter().sum::<f64>()
    );
    let t = Instant::now();
    let _ = net.forward(&x)?;
    println!(
        "inference-style forward (variables): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
