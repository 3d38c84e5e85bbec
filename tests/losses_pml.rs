//! pytorch-metric-learning 2.9's losses and miners against PML itself
//! (`tests/golden/losses_pml.json`, made by `tests/golden/make_pml_fixtures.py`; semantics in
//! `tests/golden/pml_semantics.md`): values, gradients of the embeddings and of the trainable
//! parameters, and mined indices (ties, one-label batches and single-sample labels included).
//! Part of the `losses` test binary.

use std::collections::BTreeMap;

use crate::common::f32s;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use oml::losses::{
    BatchEasyHardMiner, BatchHardMiner, ContrastiveLoss, CosFaceLoss, Indices, LossOutput,
    MultiSimilarityLoss, MultiSimilarityMiner, NTXentLoss, PmlMiner, ProxyAnchorLoss, Strategy,
    SubCenterArcFaceLoss, SupConLoss, TripletMarginMiner, TripletType,
};
use serde_json::Value;

fn fixture() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/losses_pml.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn tensor(case: &Value, name: &str) -> Tensor {
    let data = f32s(case[format!("{name}_f32_b64")].as_str().expect(name));
    let shape: Vec<usize> = case[format!("{name}_shape")]
        .as_array()
        .expect("shape")
        .iter()
        .map(|x| x.as_u64().expect("dim") as usize)
        .collect();
    Tensor::from_vec(data, shape.as_slice(), &Device::Cpu).expect("tensor")
}

fn labels(case: &Value) -> Vec<i64> {
    case["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_i64().expect("label"))
        .collect()
}

fn f(params: &Value, key: &str, default: f64) -> f64 {
    params.get(key).and_then(Value::as_f64).unwrap_or(default)
}

fn u(params: &Value, key: &str, default: usize) -> usize {
    params
        .get(key)
        .and_then(Value::as_u64)
        .map_or(default, |v| v as usize)
}

fn strategy(params: &Value, key: &str, default: Strategy) -> Strategy {
    params.get(key).map_or(default, |v| {
        serde_json::from_value(v.clone()).expect("strategy")
    })
}

fn range(params: &Value, key: &str) -> Option<(f64, f64)> {
    params.get(key).filter(|v| !v.is_null()).map(|v| {
        let a = v.as_array().expect("range");
        (a[0].as_f64().expect("lo"), a[1].as_f64().expect("hi"))
    })
}

/// The miner a case names, or PML's error for it.
fn miner(name: &str, params: &Value) -> oml::Result<Box<dyn PmlMiner>> {
    Ok(match name {
        "BatchHardMiner" => Box::new(BatchHardMiner),
        "BatchEasyHardMiner" => Box::new(BatchEasyHardMiner::new(
            strategy(params, "pos_strategy", Strategy::Easy),
            strategy(params, "neg_strategy", Strategy::Semihard),
            range(params, "allowed_pos_range"),
            range(params, "allowed_neg_range"),
        )?),
        "TripletMarginMiner" => Box::new(TripletMarginMiner {
            margin: f(params, "margin", 0.2),
            type_of_triplets: params
                .get("type_of_triplets")
                .map_or(TripletType::All, |v| {
                    serde_json::from_value(v.clone()).expect("type")
                }),
        }),
        "MultiSimilarityMiner" => Box::new(MultiSimilarityMiner {
            epsilon: f(params, "epsilon", 0.1),
        }),
        other => panic!("unknown miner {other}"),
    })
}

fn close(ours: &[f32], theirs: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= atol + rtol * b.abs(),
            "{what}[{i}]: ours {a}, PML {b}"
        );
    }
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flat").to_vec1().expect("vec")
}

/// Runs one loss case: the loss built from the case (its parameter set from the fixture), the
/// indices from the case's miner, value and gradients.
fn run_loss(case: &Value) -> oml::Result<(LossOutput, Var, Option<Var>)> {
    let name = case["loss"].as_str().expect("loss");
    let params = &case["params"];
    let emb = Var::from_tensor(&tensor(case, "embeddings")).expect("var");
    let labels = labels(case);
    let varmap = VarMap::new();
    let param = case["param_name"].as_str().map(|p| {
        let v = Var::from_tensor(&tensor(case, "param")).expect("param");
        varmap
            .data()
            .lock()
            .expect("lock")
            .insert(p.to_owned(), v.clone());
        v
    });
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let indices: Option<Indices> = match case["miner"].as_object() {
        Some(m) => Some(
            miner(m["miner"].as_str().expect("miner"), &m["params"])?
                .mine(emb.as_tensor(), &labels)?,
        ),
        None => None,
    };
    let ix = indices.as_ref();
    let x = emb.as_tensor();
    let n_classes = u(params, "num_classes", 0);
    let dim = u(params, "embedding_size", 0);
    let out = match name {
        "ContrastiveLoss" => {
            ContrastiveLoss::new(f(params, "pos_margin", 0.0), f(params, "neg_margin", 1.0))?
                .forward_indices(x, &labels, ix)?
        }
        "MultiSimilarityLoss" => MultiSimilarityLoss::new(
            f(params, "alpha", 2.0),
            f(params, "beta", 50.0),
            f(params, "base", 0.5),
        )?
        .forward_indices(x, &labels, ix)?,
        "SupConLoss" => {
            SupConLoss::new(f(params, "temperature", 0.1))?.forward_indices(x, &labels, ix)?
        }
        "NTXentLoss" => {
            NTXentLoss::new(f(params, "temperature", 0.07))?.forward_indices(x, &labels, ix)?
        }
        "ProxyAnchorLoss" => ProxyAnchorLoss::new(
            n_classes,
            dim,
            f(params, "margin", 0.1),
            f(params, "alpha", 32.0),
            vb,
        )?
        .forward_indices(x, &labels, ix)?,
        "CosFaceLoss" => CosFaceLoss::new(
            n_classes,
            dim,
            f(params, "margin", 0.35),
            f(params, "scale", 64.0),
            vb,
        )?
        .forward_indices(x, &labels, ix)?,
        "SubCenterArcFaceLoss" => SubCenterArcFaceLoss::new(
            n_classes,
            dim,
            f(params, "margin", 28.6),
            f(params, "scale", 64.0),
            u(params, "sub_centers", 3),
            vb,
        )?
        .forward_indices(x, &labels, ix)?,
        other => panic!("unknown loss {other}"),
    };
    Ok((out, emb, param))
}

#[test]
fn losses_match_pml_in_value_and_gradients() {
    let fx = fixture();
    let cases = fx["loss_cases"].as_array().expect("cases");
    let mut by_loss: BTreeMap<String, usize> = BTreeMap::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let result = run_loss(case);
        if let Some(err) = case["error"].as_str() {
            let e = result
                .err()
                .unwrap_or_else(|| panic!("{name}: PML raised {err}; we did not"));
            assert!(
                e.to_string().contains("class ids"),
                "{name}: the error should name the class ids: {e}"
            );
            continue;
        }
        let (out, emb, param) = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let value = out.loss.to_scalar::<f32>().expect("scalar");
        let theirs = case["value"].as_f64().map_or(f32::NAN, |v| v as f32);
        close(&[value], &[theirs], 2e-5, 2e-5, &format!("{name}: value"));
        let grads = out.loss.backward().expect("backward");
        let want = vec(&tensor(case, "grad_embeddings"));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let got = grads
            .get(emb.as_tensor())
            .map_or_else(|| vec![0.0; want.len()], vec);
        close(&got, &want, 5e-5 * scale, 1e-4, &format!("{name}: d/dx"));
        if let Some(p) = param {
            let want = vec(&tensor(case, "grad_param"));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let got = grads
                .get(p.as_tensor())
                .map_or_else(|| vec![0.0; want.len()], vec);
            close(
                &got,
                &want,
                5e-5 * scale,
                1e-4,
                &format!("{name}: d/dparam"),
            );
        }
        *by_loss
            .entry(case["loss"].as_str().expect("loss").to_owned())
            .or_default() += 1;
    }
    // Every loss is covered, each with its edge cases.
    assert_eq!(by_loss.len(), 7, "{by_loss:?}");
    assert!(by_loss.values().all(|&n| n >= 8), "{by_loss:?}");
}

fn index_lists(ix: &Indices) -> Vec<Vec<usize>> {
    match ix {
        Indices::Triplets(t) => vec![t.anchors.clone(), t.positives.clone(), t.negatives.clone()],
        Indices::Pairs(p) => vec![p.a1.clone(), p.p.clone(), p.a2.clone(), p.n.clone()],
    }
}

#[test]
fn miners_pick_what_pml_picks() {
    let fx = fixture();
    let cases = fx["miner_cases"].as_array().expect("cases");
    let mut ties_checked = 0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let built = miner(case["miner"].as_str().expect("miner"), &case["params"]);
        if let Some(err) = case["error"].as_str() {
            let e = built
                .err()
                .unwrap_or_else(|| panic!("{name}: PML refused ({err}); we did not"));
            assert!(e.to_string().contains("semihard"), "{name}: {e}");
            continue;
        }
        let m = built.unwrap_or_else(|e| panic!("{name}: {e}"));
        let emb = tensor(case, "embeddings");
        let got = index_lists(&m.mine(&emb, &labels(case)).expect("mine"));
        let want: Vec<Vec<usize>> = case["indices"]
            .as_array()
            .expect("indices")
            .iter()
            .map(|l| {
                l.as_array()
                    .expect("list")
                    .iter()
                    .map(|i| i.as_u64().expect("index") as usize)
                    .collect()
            })
            .collect();
        // PML's order is reproduced exactly, ties included (first index on ties, stable sorts).
        assert_eq!(got, want, "{name}");
        if case["batch"] == "ties" && !want[0].is_empty() {
            ties_checked += 1;
        }
    }
    assert!(ties_checked >= 10, "tie batches with picks: {ties_checked}");
}

#[test]
fn pml_losses_train_from_configs_and_refuse_bad_values() {
    use oml::losses::{CriterionConfig, CriterionContext, MinerConfig};
    let ctx = CriterionContext {
        feat_dim: 6,
        n_labels: 4,
        seed: 0,
    };
    let yaml = |s: &str| -> CriterionConfig { serde_norway::from_str(s).expect(s) };
    let configs = [
        yaml("name: contrastive\nminer: {name: batch_hard}"),
        yaml("name: multi_similarity\nminer: {name: multi_similarity, epsilon: 0.1}"),
        yaml("name: supcon\ntemperature: 0.1"),
        yaml(
            "name: ntxent\nminer: {name: batch_easy_hard, pos_strategy: easy, neg_strategy: semihard}",
        ),
        yaml("name: proxy_anchor\nmargin: 0.1\nalpha: 32"),
        yaml(
            "name: cosface\nminer: {name: triplet_margin, margin: 0.2, type_of_triplets: semihard}",
        ),
        yaml("name: sub_center_arcface\nsub_centers: 2"),
        yaml(
            "name: triplet_with_miner\nmargin: 0.2\nminer: {name: triplet_margin, type_of_triplets: all}",
        ),
        CriterionConfig::contrastive().with_miner(MinerConfig::HardTriplets),
    ];
    let x = Tensor::randn(0f32, 1.0, (8, 6), &Device::Cpu).expect("x");
    let labels = [0i64, 0, 1, 1, 2, 2, 3, 3];
    for cfg in &configs {
        cfg.validate().unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let loss = cfg.build(&ctx, vb).expect("build");
        let out = oml::losses::Criterion::forward(loss.as_ref(), &x, &labels).expect("forward");
        let v = out.loss.to_scalar::<f32>().expect("scalar");
        assert!(v.is_finite() && v >= 0.0, "{}: {v}", cfg.describe());
    }
    // Bad values are named by key; unknown names list the known ones.
    let err = yaml("name: supcon\ntemperature: 0")
        .validate()
        .expect_err("t");
    assert!(err.to_string().contains("temperature"), "{err}");
    let err = yaml("name: sub_center_arcface\nsub_centers: 0")
        .validate()
        .expect_err("k");
    assert!(err.to_string().contains("sub_centers"), "{err}");
    let err = yaml("name: contrastive\nminer: {name: miner_with_bank, bank_size_in_batches: 2, n_positive: 1, n_negative: 1}")
        .validate()
        .expect_err("bank");
    assert!(
        err.to_string().contains("miner") && err.to_string().contains("triplet_with_miner"),
        "{err}"
    );
    let err = yaml("name: ntxent\nminer: {name: batch_easy_hard, pos_strategy: semihard, neg_strategy: semihard}")
        .validate()
        .expect_err("semihard");
    assert!(err.to_string().contains("semihard"), "{err}");
    let err = yaml("name: supcon\nminer: {name: all_triplets, max_output_triplets: 10}")
        .validate()
        .expect_err("cap");
    assert!(err.to_string().contains("max_output_triplets"), "{err}");
    assert!(oml::losses::NTXentLoss::new(0.0).is_err());
    let err = serde_norway::from_str::<CriterionConfig>("name: proxy_anchr").expect_err("unknown");
    assert!(
        err.to_string().contains("proxy_anchor") && err.to_string().contains("ntxent"),
        "{err}"
    );
}
