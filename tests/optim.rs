//! Optimisers and learning-rate schedules against torch (`tests/golden/optim_torch.json`, made by
//! `tests/golden/make_optim_fixtures.py`): the parameters after each of four steps of fixed
//! gradients, and the learning rate and momentum at every step of a run.

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use oml::train::{Optimizer, OptimizerKind, ParamGroup, Schedule};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/optim_torch.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn optimisers_follow_torch_step_by_step() {
    let fx = fixture();
    let dev = Device::Cpu;
    let p0 = floats(&fx["p0"]);
    let grads: Vec<Vec<f32>> = fx["grads"]
        .as_array()
        .expect("grads")
        .iter()
        .map(floats)
        .collect();
    let cases = fx["optimisers"].as_object().expect("optimisers");
    assert_eq!(cases.len(), 4);
    for (name, case) in cases {
        let kind: OptimizerKind =
            serde_json::from_value(case["config"].clone()).expect("an optimizer config");
        let var = Var::from_vec(p0.clone(), (2, 3), &dev).expect("var");
        let group = ParamGroup {
            name: "p".into(),
            params: vec![("p".into(), var.clone())],
            lr_scale: 1.0,
            frozen: false,
        };
        let mut opt = Optimizer::new(kind, vec![group]).expect("optimizer");
        let params = case["params"].as_array().expect("params");
        assert_eq!(params.len(), grads.len(), "{name}");
        for (i, (g, want)) in grads.iter().zip(params).enumerate() {
            // d/dp sum(p * g) = g: the gradient torch was given.
            let g = Tensor::from_vec(g.clone(), (2, 3), &dev).expect("g");
            let store = (var.as_tensor() * &g)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward");
            opt.step(&store, kind.lr(), 1.0).expect("step");
            let got: Vec<f32> = var
                .as_tensor()
                .flatten_all()
                .expect("flat")
                .to_vec1()
                .expect("vec");
            let want = floats(want);
            assert_eq!(got.len(), want.len(), "{name}");
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-6,
                    "{name} step {}: {got:?} vs torch {want:?}",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn schedules_follow_torch_at_every_step() {
    let fx = fixture();
    let total = fx["total_steps"].as_u64().expect("total") as usize;
    let cases = fx["schedules"].as_object().expect("schedules");
    assert_eq!(cases.len(), 5);
    for (name, case) in cases {
        let schedule: Schedule =
            serde_json::from_value(case["config"].clone()).expect("a schedule config");
        let lrs = case["lr"].as_array().expect("lr");
        assert_eq!(lrs.len(), total);
        for (step, want) in lrs.iter().enumerate() {
            let (got, want) = (schedule.factor(step, total), want.as_f64().expect("lr"));
            assert!(
                (got - want).abs() < 1e-9,
                "{name} lr at step {step}: {got} vs torch {want}"
            );
        }
        match case["momentum"].as_array() {
            Some(moms) => {
                assert_eq!(moms.len(), total, "{name}");
                for (step, want) in moms.iter().enumerate() {
                    let got = schedule
                        .momentum(step, total)
                        .expect("one cycle sets the momentum");
                    let want = want.as_f64().expect("momentum");
                    assert!(
                        (got - want).abs() < 1e-9,
                        "{name} momentum at step {step}: {got} vs torch {want}"
                    );
                }
            }
            None => assert_eq!(schedule.momentum(0, total), None, "{name}"),
        }
    }
}

/// The one-cycle momentum reaches the update: SGD's buffer decays by the scheduled momentum.
#[test]
fn a_scheduled_momentum_replaces_the_configured_one() {
    let dev = Device::Cpu;
    let var = Var::from_vec(vec![0f32], 1, &dev).expect("var");
    let group = ParamGroup {
        name: "p".into(),
        params: vec![("p".into(), var.clone())],
        lr_scale: 1.0,
        frozen: false,
    };
    let kind = OptimizerKind::Sgd {
        lr: 1.0,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    };
    let mut opt = Optimizer::new(kind, vec![group]).expect("optimizer");
    let one = Tensor::new(&[1f32], &dev).expect("one");
    let step = |opt: &mut Optimizer| {
        let g = (var.as_tensor() * &one)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.backward())
            .expect("backward");
        opt.step(&g, 1.0, 1.0).expect("step");
    };
    step(&mut opt); // buffer 1, p = -1
    opt.set_momentum(Some(0.5));
    step(&mut opt); // buffer 0.5 * 1 + 1 = 1.5, p = -2.5 (0.9 would give -2.9)
    let p: Vec<f32> = var.as_tensor().to_vec1().expect("p");
    assert!((p[0] + 2.5).abs() < 1e-6, "{p:?}");
}

/// The squared gradient norm that a training step reads with its scalars: summed on the device
/// for gradients the CPU's fused kernel does not take (here `f64`), on the host for the others
/// (`f32` on the CPU), and both added; frozen groups left out; `None` without gradients.
#[test]
fn the_gradient_norm_adds_the_devices_and_the_fused_kernels_sums() {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::new(&[1f32, -2.0, 3.0], &dev).expect("a")).expect("var");
    let b = Var::from_tensor(&Tensor::new(&[0.5f64, 4.0], &dev).expect("b")).expect("var");
    let c = Var::from_tensor(&Tensor::new(&[7f32], &dev).expect("c")).expect("var");
    // loss = sum(a^2) + sum(b^3) + c: gradients 2a, 3b^2, 1.
    let loss = (a.as_tensor().sqr().expect("sq").sum_all().expect("sum")
        + b.as_tensor()
            .powf(3.0)
            .expect("cube")
            .sum_all()
            .expect("sum")
            .to_dtype(candle_core::DType::F32)
            .expect("f32"))
    .expect("add");
    let loss = (loss + c.as_tensor().sum_all().expect("c")).expect("add");
    let grads = loss.backward().expect("backward");
    let group = |name: &str, params: Vec<(String, Var)>, frozen: bool| ParamGroup {
        name: name.into(),
        params,
        lr_scale: 1.0,
        frozen,
    };
    let opt = Optimizer::new(
        OptimizerKind::adamw(1e-3),
        vec![
            group("a", vec![("a".into(), a.clone())], false),
            group("b", vec![("b".into(), b.clone())], false),
            group("c", vec![("c".into(), c.clone())], true),
        ],
    )
    .expect("optimizer");
    let sq = opt
        .grad_norm_sq(&grads)
        .expect("norm")
        .expect("gradients")
        .to_scalar::<f64>()
        .expect("f64");
    let want = 4.0 * (1.0 + 4.0 + 9.0) + (3.0f64 * 0.25).powi(2) + (3.0f64 * 16.0).powi(2);
    assert!((sq - want).abs() < 1e-9 * want, "{sq} vs {want}");
    assert!((opt.grad_norm(&grads).expect("norm") - want.sqrt()).abs() < 1e-9 * want);
    let none = Optimizer::new(
        OptimizerKind::adamw(1e-3),
        vec![group("c", vec![("c".into(), c)], false)],
    )
    .expect("optimizer");
    let other = (a.as_tensor().sum_all().expect("s") * 2.0).expect("x");
    let only_a = other.backward().expect("backward");
    assert!(none.grad_norm_sq(&only_a).expect("norm").is_none());
}
