//! Losses and miners against Python OML 4.0 (`tests/golden/losses_oml.json`, made by
//! `tests/golden/make_loss_fixtures.py`; semantics in `tests/golden/loss_semantics.md`).

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;
mod losses_pml;

use std::collections::BTreeSet;

use candle_core::{Device, Tensor, Var};
use common::f32s;
use oml::losses::miners::{IndexMiner, TripletMiner};
use oml::losses::{
    AllTripletsMiner, ArcFaceLoss, Criterion, HardClusterMiner, HardTripletsMiner,
    NHardTripletsMiner, NRange, Reduction, SurrogatePrecision, TripletLoss, TripletLossPlain,
    TripletLossWithMiner, label_smoothing,
};
use serde_json::Value;

fn fixture() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/losses_oml.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("shape")
        .iter()
        .map(|x| x.as_u64().expect("dim") as usize)
        .collect()
}

fn tensor(case: &Value, name: &str) -> Tensor {
    let data = f32s(case[format!("{name}_f32_b64")].as_str().expect(name));
    Tensor::from_vec(
        data,
        shape(&case[format!("{name}_shape")]).as_slice(),
        &Device::Cpu,
    )
    .expect("tensor")
}

fn var(case: &Value, name: &str) -> Var {
    Var::from_tensor(&tensor(case, name)).expect("var")
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flat").to_vec1().expect("vec")
}

fn close(ours: &[f32], theirs: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= atol + rtol * b.abs(),
            "{what}[{i}]: ours {a}, OML {b}"
        );
    }
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().expect("scalar")
}

/// Our scalar `loss` against the case's `loss`.
fn check_loss(loss: &Tensor, case: &Value, atol: f32, rtol: f32, what: &str) {
    let theirs = case["loss"].as_f64().expect("loss") as f32;
    close(&[scalar(loss)], &[theirs], atol, rtol, what);
}

/// The gradient of `f` in `grads` against the case's `grad_features`.
fn check_feature_grad(
    grads: &candle_core::backprop::GradStore,
    f: &Var,
    case: &Value,
    atol: f32,
    rtol: f32,
    what: &str,
) {
    let ours = vec(grads.get(f.as_tensor()).expect("grad"));
    close(
        &ours,
        &vec(&tensor(case, "grad_features")),
        atol,
        rtol,
        what,
    );
}

fn labels(case: &Value) -> Vec<i64> {
    case["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|v| v.as_i64().expect("label"))
        .collect()
}

fn reduction(case: &Value) -> Reduction {
    case["reduction"]
        .as_str()
        .unwrap_or("mean")
        .parse()
        .expect("reduction")
}

fn margin(case: &Value) -> Option<f64> {
    case["margin"].as_f64()
}

fn check_logs(ours: &std::collections::BTreeMap<String, f64>, theirs: &Value, what: &str) {
    for (k, v) in theirs.as_object().expect("logs") {
        if let (Some(t), Some(o)) = (v.as_f64(), ours.get(k)) {
            assert!(
                (o - t).abs() <= 1e-5 + 1e-5 * t.abs(),
                "{what} log {k}: ours {o}, OML {t}"
            );
        }
    }
}

#[test]
fn triplet_losses_match_oml_values_gradients_and_logs() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["triplet_loss_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let (a, p, n) = (
            var(case, "anchor"),
            var(case, "positive"),
            var(case, "negative"),
        );
        let loss = TripletLoss::new(margin(case), reduction(case)).expect("loss");
        let out = loss
            .forward_triplets(a.as_tensor(), p.as_tensor(), n.as_tensor())
            .expect("forward");
        if name == "soft_large_gap_log1p_exp" {
            assert!(
                !vec(&out.loss).iter().all(|v| v.is_finite()),
                "{name}: overflow as OML"
            );
            continue;
        }
        match case["loss"].as_f64() {
            Some(l) => close(&[scalar(&out.loss)], &[l as f32], 1e-6, 1e-5, name),
            None => {
                let values: Vec<f32> = case["loss_values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("v") as f32)
                    .collect();
                close(&vec(&out.loss), &values, 1e-6, 1e-5, name);
            }
        }
        let total = out.loss.sum_all().expect("sum");
        let grads = total.backward().expect("backward");
        for (v, g) in [
            (&a, "grad_anchor"),
            (&p, "grad_positive"),
            (&n, "grad_negative"),
        ] {
            let ours = grads
                .get(v.as_tensor())
                .map(vec)
                .unwrap_or_else(|| vec![0.0; v.as_tensor().elem_count()]);
            close(
                &ours,
                &vec(&tensor(case, g)),
                1e-6,
                1e-5,
                &format!("{name} {g}"),
            );
        }
        check_logs(&out.read_logs().expect("logs"), &case["logs"], name);
        checked += 1;
    }
    for case in fx["triplet_plain_cases"].as_array().expect("plain") {
        let f = var(case, "features");
        let out = TripletLossPlain(TripletLoss::new(margin(case), reduction(case)).expect("loss"))
            .forward(f.as_tensor())
            .expect("forward");
        check_loss(&out.loss, case, 1e-6, 1e-5, "plain");
        let g = out.loss.backward().expect("backward");
        check_feature_grad(&g, &f, case, 1e-6, 1e-5, "plain grad");
        checked += 1;
    }
    assert!(checked >= 11, "{checked}");
}

/// The miner of a case, from OML's constructor call.
fn miner_of(python: &str, kind: &str) -> Box<dyn TripletMiner> {
    let args = |name: &str| -> Option<String> {
        let start = python.find(&format!("{name}("))? + name.len() + 1;
        let mut depth = 1;
        let mut end = start;
        for (i, c) in python[start..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        Some(python[start..end].to_owned())
    };
    match kind {
        "AllTripletsMiner" => {
            let cap = args("AllTripletsMiner").and_then(|a| {
                a.strip_prefix("max_output_triplets=")
                    .map(|v| v.trim().parse().expect("cap"))
            });
            Box::new(AllTripletsMiner::new(cap, 0))
        }
        "HardTripletsMiner" => Box::new(HardTripletsMiner),
        "HardClusterMiner" => Box::new(HardClusterMiner),
        "NHardTripletsMiner" => {
            let a = args("NHardTripletsMiner").expect("args");
            Box::new(nhard(&a))
        }
        other => panic!("unknown miner {other}"),
    }
}

fn nhard(args: &str) -> NHardTripletsMiner {
    let parse = |s: &str| -> NRange {
        let s = s.trim();
        let s = s.split_once('=').map(|(_, v)| v.trim()).unwrap_or(s);
        if let Some(inner) = s.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
            let v: Vec<usize> = inner
                .split(',')
                .map(|x| x.trim().parse().expect("n"))
                .collect();
            NRange::Range(v[0], v[1])
        } else {
            NRange::First(s.parse().expect("n"))
        }
    };
    // Split at the top-level comma.
    let mut depth = 0;
    let mut cut = args.len();
    for (i, c) in args.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                cut = i;
                break;
            }
            _ => {}
        }
    }
    let (p, n) = if cut < args.len() {
        (&args[..cut], &args[cut + 1..])
    } else {
        (args, "1")
    };
    NHardTripletsMiner {
        n_positive: parse(p),
        n_negative: parse(n),
    }
}

fn ids(v: &Value, key: &str) -> Vec<usize> {
    v[key]
        .as_array()
        .expect(key)
        .iter()
        .map(|x| x.as_u64().expect("id") as usize)
        .collect()
}

fn triplet_set(v: &Value) -> BTreeSet<(usize, usize, usize)> {
    let (a, p, n) = (ids(v, "ids_anchor"), ids(v, "ids_pos"), ids(v, "ids_neg"));
    (0..a.len()).map(|i| (a[i], p[i], n[i])).collect()
}

#[test]
fn triplet_loss_with_every_miner_matches_oml() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["triplet_with_miner_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let kind = case["miner"].as_str().expect("miner");
        let python = case["python"].as_str().expect("python");
        let f = var(case, "features");
        let labels = labels(case);
        let capped = python.contains("max_output_triplets");
        let loss =
            TripletLossWithMiner::new(margin(case), Some(miner_of(python, kind)), reduction(case))
                .expect("loss");
        let result = loss.forward(f.as_tensor(), &labels);
        if case.get("error").is_some() {
            assert!(result.is_err(), "{name}: OML raised {}", case["error"]);
            continue;
        }
        let out = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        if capped {
            // A random subset in OML and here: compare only the size through the logs' counts.
            continue;
        }
        check_loss(&out.loss, case, 1e-6, 2e-5, name);
        let g = out.loss.backward().expect("backward");
        check_feature_grad(&g, &f, case, 2e-6, 2e-5, &format!("{name} grad"));
        check_logs(&out.read_logs().expect("logs"), &case["logs"], name);
        checked += 1;
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn miners_pick_oml_triplets_including_ties_and_degenerate_batches() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["miner_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let python = case["python"].as_str().expect("python");
        let labels = labels(case);
        let dist = vec(&tensor(case, "distmat"));
        let miner: Box<dyn IndexMiner> = if python.starts_with("HardTripletsMiner") {
            Box::new(HardTripletsMiner)
        } else if python.starts_with("AllTripletsMiner") {
            let cap = python.contains("max_output_triplets=7").then_some(7);
            Box::new(AllTripletsMiner::new(cap, 0))
        } else {
            let inner = python.trim_start_matches("NHardTripletsMiner(");
            let inner = &inner[..inner.rfind(')').expect("paren")];
            let inner = inner.split(")._sample").next().expect("args");
            Box::new(nhard(inner))
        };
        // OML's `sample` checks labels first (an AssertionError there); `_sample` does not.
        let checked_labels = case["method"] == "sample";
        let mask: Option<Vec<bool>> = name
            .contains("ignore_anchor_mask")
            .then(|| (0..labels.len()).map(|i| i % 3 == 0).collect());
        let result = if checked_labels {
            oml::losses::miners::check_labels(&labels)
                .and_then(|_| miner.mine(&dist, &labels, mask.as_deref()))
        } else {
            miner.mine(&dist, &labels, mask.as_deref())
        };
        if let Some(e) = case.get("error") {
            // OML's AllTripletsMiner._sample crashes on no positives; ours returns no triplets.
            let ok_empty = result.as_ref().is_ok_and(|t| t.is_empty());
            assert!(
                result.is_err() || ok_empty,
                "{name}: OML raised {e}, ours gave {result:?}"
            );
            checked += 1;
            continue;
        }
        let ours = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = &case["triplets"];
        if python.starts_with("AllTripletsMiner") {
            let canonical = triplet_set(&case["canonical"]);
            let mine: BTreeSet<_> = (0..ours.len())
                .map(|i| (ours.anchors[i], ours.positives[i], ours.negatives[i]))
                .collect();
            if python.contains("max_output_triplets") {
                // The fixture's `canonical` is cut to the cap: compare with every triplet.
                let all = AllTripletsMiner::default()
                    .mine(&dist, &labels, None)
                    .expect("all");
                let every: BTreeSet<_> = (0..all.len())
                    .map(|i| (all.anchors[i], all.positives[i], all.negatives[i]))
                    .collect();
                assert_eq!(ours.len(), 7, "{name}");
                assert!(
                    mine.is_subset(&every) && canonical.is_subset(&every),
                    "{name}"
                );
            } else {
                assert_eq!(mine, canonical, "{name}");
                assert_eq!(
                    ours.anchors,
                    ids(&case["canonical"], "ids_anchor"),
                    "{name}: canonical order"
                );
            }
        } else if name.starts_with("ties20") {
            // torch's unstable sort on rows > 16: compare the distances picked, per anchor.
            let pd: Vec<f32> = case["pos_dist"]
                .as_array()
                .expect("pd")
                .iter()
                .map(|v| v.as_f64().expect("d") as f32)
                .collect();
            let b = labels.len();
            let ours_pd: Vec<f32> = (0..ours.len())
                .map(|i| dist[ours.anchors[i] * b + ours.positives[i]])
                .collect();
            close(&ours_pd, &pd, 1e-6, 0.0, name);
        } else {
            assert_eq!(ours.anchors, ids(theirs, "ids_anchor"), "{name} anchors");
            assert_eq!(ours.positives, ids(theirs, "ids_pos"), "{name} positives");
            assert_eq!(ours.negatives, ids(theirs, "ids_neg"), "{name} negatives");
        }
        checked += 1;
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn hard_cluster_miner_matches_oml_and_refuses_unbalanced_batches() {
    let fx = fixture();
    for case in fx["hard_cluster_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let f = tensor(case, "features");
        let result = HardClusterMiner.sample(&f, &labels(case));
        if case.get("error").is_some() {
            assert!(result.is_err(), "{name}");
            continue;
        }
        let s = result.expect("sample");
        close(
            &vec(&s.anchors),
            &vec(&tensor(case, "anchors_mean_vectors")),
            1e-6,
            1e-5,
            name,
        );
        close(
            &vec(&s.positives),
            &vec(&tensor(case, "positives")),
            1e-6,
            1e-5,
            name,
        );
        close(
            &vec(&s.negatives),
            &vec(&tensor(case, "negatives_mean_vectors")),
            1e-6,
            1e-5,
            name,
        );
    }
}

#[test]
fn label_smoothing_and_arcface_match_oml() {
    let fx = fixture();
    for case in fx["label_smoothing_cases"].as_array().expect("cases") {
        let y: Vec<usize> = case["y"]
            .as_array()
            .expect("y")
            .iter()
            .map(|v| v.as_u64().expect("y") as usize)
            .collect();
        let cats: Option<Vec<usize>> = case["categories"]
            .as_array()
            .map(|c| c.iter().map(|v| v.as_u64().expect("c") as usize).collect());
        let ours = label_smoothing(
            &y,
            case["num_classes"].as_u64().expect("c") as usize,
            case["epsilon"].as_f64().expect("e"),
            cats.as_deref(),
        )
        .expect("smoothing");
        close(
            &ours,
            &vec(&tensor(case, "smoothed")),
            1e-7,
            1e-6,
            case["name"].as_str().expect("name"),
        );
    }
    let mut checked = 0;
    for case in fx["arcface_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        if name.contains("cos_eq_1") {
            continue; // OML's NaN case: ours clamps (tested below)
        }
        let p = &case["params"];
        let w = tensor(case, "weight");
        let (c, d) = w.dims2().expect("w");
        let vm = candle_nn::VarMap::new();
        vm.data()
            .lock()
            .expect("lock")
            .insert("weight".into(), Var::from_tensor(&w).expect("var"));
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        let l2c: Option<std::collections::BTreeMap<usize, String>> =
            case["label2category_tensor"].as_array().map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, c)| (i, format!("{:08}", c.as_u64().expect("cat"))))
                    .collect()
            });
        let eps = p["smoothing_epsilon"].as_f64().unwrap_or(0.0);
        let red: Reduction = p["reduction"]
            .as_str()
            .unwrap_or("mean")
            .parse()
            .expect("reduction");
        let arc = ArcFaceLoss::new(
            d,
            c,
            p["m"].as_f64().expect("m"),
            p["s"].as_f64().expect("s"),
            eps,
            l2c.as_ref(),
            red,
            vb,
        )
        .expect("arcface");
        let f = var(case, "features");
        let y: Vec<i64> = labels(case);
        let out = arc.forward(f.as_tensor(), &y).expect("forward");
        match case["loss"].as_f64() {
            Some(l) => close(&[scalar(&out.loss)], &[l as f32], 1e-4, 1e-5, name),
            None => {
                let values: Vec<f32> = case["loss_values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("v") as f32)
                    .collect();
                close(&vec(&out.loss), &values, 1e-4, 1e-5, name);
            }
        }
        let g = out
            .loss
            .sum_all()
            .expect("sum")
            .backward()
            .expect("backward");
        check_feature_grad(&g, &f, case, 1e-4, 1e-4, &format!("{name} features"));
        close(
            &vec(g.get(arc.weight()).expect("grad")),
            &vec(&tensor(case, "grad_weight")),
            1e-4,
            1e-4,
            &format!("{name} weight"),
        );
        check_logs(&out.read_logs().expect("logs"), &case["logs"], name);
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
}

#[test]
fn arcface_on_a_feature_parallel_to_a_centre_stays_finite() {
    let vm = candle_nn::VarMap::new();
    let w = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [-1.0, 0.0]], &Device::Cpu).expect("w");
    vm.data()
        .lock()
        .expect("lock")
        .insert("weight".into(), Var::from_tensor(&w).expect("var"));
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    let arc = ArcFaceLoss::new(2, 3, 0.5, 64.0, 0.0, None, Reduction::Mean, vb).expect("arcface");
    let f = Var::from_tensor(&Tensor::new(&[[2f32, 0.0], [0.0, 3.0]], &Device::Cpu).expect("x"))
        .expect("var");
    let out = arc.forward(f.as_tensor(), &[0, 2]).expect("forward");
    assert!(scalar(&out.loss).is_finite());
    let g = out.loss.backward().expect("backward");
    assert!(
        vec(g.get(f.as_tensor()).expect("grad"))
            .iter()
            .all(|v| v.is_finite()),
        "OML gives NaN here"
    );
}

#[test]
fn surrogate_precision_matches_oml() {
    let fx = fixture();
    for case in fx["surrogate_precision_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let mut sp = SurrogatePrecision::new(case["k"].as_u64().expect("k") as usize).expect("sp");
        sp.temperature1 = case["temperature1"].as_f64().expect("t1");
        sp.temperature2 = case["temperature2"].as_f64().expect("t2");
        sp.reduction = reduction(case);
        let f = var(case, "features");
        let out = sp.forward(f.as_tensor(), &labels(case)).expect("forward");
        match case["loss"].as_f64() {
            Some(l) => close(&[scalar(&out.loss)], &[l as f32], 1e-4, 1e-4, name),
            None => {
                let values: Vec<f32> = case["loss_values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|v| v.as_f64().expect("v") as f32)
                    .collect();
                close(&vec(&out.loss), &values, 1e-4, 1e-4, name);
            }
        }
        let g = out
            .loss
            .sum_all()
            .expect("sum")
            .backward()
            .expect("backward");
        check_feature_grad(&g, &f, case, 1e-4, 1e-3, &format!("{name} grad"));
    }
}

#[test]
fn invariants_from_omls_tests() {
    // NHard(1, 1) = Hard and NHard(large) = All as triplet sets, on random distances without ties.
    let labels: Vec<i64> = (0..12).map(|i| i / 3).collect();
    let x = Tensor::randn(0f32, 1.0, (12, 6), &Device::Cpu).expect("x");
    let d = oml::losses::miners::distance_matrix(&x, "test").expect("d");
    let hard = HardTripletsMiner.mine(&d, &labels, None).expect("hard");
    let n11 = NHardTripletsMiner::default()
        .mine(&d, &labels, None)
        .expect("n11");
    assert_eq!(hard, n11);
    let big = NHardTripletsMiner {
        n_positive: NRange::First(100),
        n_negative: NRange::First(100),
    }
    .mine(&d, &labels, None)
    .expect("big");
    let all = AllTripletsMiner::default()
        .mine(&d, &labels, None)
        .expect("all");
    let set = |t: &oml::losses::Triplets| -> BTreeSet<(usize, usize, usize)> {
        (0..t.len())
            .map(|i| (t.anchors[i], t.positives[i], t.negatives[i]))
            .collect()
    };
    assert_eq!(set(&big), set(&all));
    assert_eq!(all.len(), 4 * 3 * 2 * 9);
    // The soft triplet loss of identical vectors is ln 2.
    let v = Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu).expect("ones");
    let out = TripletLoss::new(None, Reduction::Mean)
        .expect("soft")
        .forward_triplets(&v, &v, &v)
        .expect("loss");
    assert!((scalar(&out.loss) - std::f32::consts::LN_2).abs() < 1e-7);
}

#[test]
fn miner_with_bank_matches_oml_step_by_step() {
    use oml::losses::MinerWithBank;
    let fx = fixture();
    let mut checked = 0;
    for run in fx["miner_with_bank"]["runs"].as_array().expect("runs") {
        let python = run["python"].as_str().expect("python");
        let bank: usize = python
            .split("bank_size_in_batches=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("bank size")
            .trim()
            .parse()
            .expect("int");
        let inner = python
            .split("miner=NHardTripletsMiner(")
            .nth(1)
            .expect("nhard");
        let inner = &inner[..inner.find("), need_logs").expect("end")];
        let miner = MinerWithBank::new(bank, nhard(inner)).expect("bank");
        let name = run["name"].as_str().expect("name");
        let margin = python
            .split("margin=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse::<f64>().ok());
        let loss = TripletLossWithMiner::new(margin, Some(Box::new(miner)), Reduction::Mean)
            .expect("loss");
        for step in run["steps"].as_array().expect("steps") {
            let f = var(step, "features");
            let out = loss
                .forward(f.as_tensor(), &labels(step))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let what = format!("{name} step {}", step["step"]);
            close(
                &[scalar(&out.loss)],
                &[step["loss"].as_f64().expect("loss") as f32],
                1e-6,
                2e-5,
                &what,
            );
            let g = out.loss.backward().expect("backward");
            close(
                &vec(g.get(f.as_tensor()).expect("grad")),
                &vec(&tensor(step, "grad_features")),
                2e-6,
                2e-5,
                &format!("{what} grad"),
            );
            check_logs(&out.read_logs().expect("logs"), &step["logs"], &what);
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
}

#[test]
fn triplet_miner_with_memory_keeps_omls_bank_and_counts() {
    use oml::losses::TripletMinerWithMemory;
    let fx = fixture();
    for run in fx["triplet_miner_with_memory"]["runs"]
        .as_array()
        .expect("runs")
    {
        let python = run["python"].as_str().expect("python");
        let get = |key: &str| -> usize {
            python
                .split(&format!("{key}="))
                .nth(1)
                .and_then(|s| s.split([',', ')']).next())
                .expect(key)
                .trim()
                .parse()
                .expect("int")
        };
        let miner =
            TripletMinerWithMemory::new(get("bank_size_in_batches"), get("tri_expand_k"), 0)
                .expect("miner");
        let k = get("tri_expand_k");
        let name = run["name"].as_str().expect("name");
        for step in run["steps"].as_array().expect("steps") {
            let f = tensor(step, "features");
            let l = labels(step);
            let s = miner
                .sample(&f, &l)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let n1 = step["n_part1_batch_triplets"].as_u64().expect("n1") as f64;
            assert_eq!(s.logs["batch_triplets"], n1, "{name}");
            if k == 1 {
                assert_eq!(s.logs["bank_triplets"], 0.0, "{name}");
                let loss = TripletLoss::new(Some(0.2), Reduction::Mean).expect("loss");
                let out = loss
                    .forward_triplets(&s.anchors, &s.positives, &s.negatives)
                    .expect("loss");
                close(
                    &[scalar(&out.loss)],
                    &[step["loss"].as_f64().expect("loss") as f32],
                    1e-6,
                    1e-5,
                    name,
                );
            }
            let bank_after: Vec<i64> = step["bank_labels_after"]
                .as_array()
                .expect("bank")
                .iter()
                .map(|v| v.as_i64().expect("l"))
                .collect();
            assert_eq!(miner.bank_labels(), bank_after, "{name} bank labels");
        }
    }
}

#[test]
fn arcface_with_mlp_matches_oml_values_and_every_gradient() {
    use oml::losses::ArcFaceLossWithMLP;
    let fx = fixture();
    let mut checked = 0;
    for case in fx["arcface_mlp_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let python = case["python"].as_str().expect("python");
        let arg = |key: &str| -> String {
            // `, s=` not `s=`: `in_features=` also ends in `s=`.
            python
                .split(&format!(", {key}="))
                .nth(1)
                .or_else(|| python.split(&format!("({key}=")).nth(1))
                .expect(key)
                .split([',', ')'])
                .next()
                .expect(key)
                .trim()
                .to_owned()
        };
        let mlp: Vec<usize> = python
            .split("mlp_features=[")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .expect("mlp")
            .split(',')
            .map(|v| v.trim().parse().expect("size"))
            .collect();
        let state = &case["state_dict"];
        let vm = candle_nn::VarMap::new();
        {
            let mut data = vm.data().lock().expect("lock");
            for (key, _) in state
                .as_object()
                .expect("state")
                .iter()
                .filter(|(k, _)| k.ends_with("_f32_b64"))
            {
                let param = key.trim_end_matches("_f32_b64");
                data.insert(
                    param.to_owned(),
                    Var::from_tensor(&tensor(state, param)).expect("var"),
                );
            }
        }
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
        let eps: f64 = arg("smoothing_epsilon").parse().unwrap_or(0.0);
        // label2category={0: 0, 1: 0, 2: 1, ...}
        let l2c: Option<std::collections::BTreeMap<usize, String>> = python
            .split("label2category={")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .map(|body| {
                body.split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once(':').expect("k: v");
                        (k.trim().parse().expect("class"), v.trim().to_owned())
                    })
                    .collect()
            });
        let loss = ArcFaceLossWithMLP::new(
            arg("in_features").parse().expect("in"),
            arg("num_classes").parse().expect("classes"),
            &mlp,
            arg("m").parse().expect("m"),
            arg("s").parse().expect("s"),
            eps,
            l2c.as_ref(),
            Reduction::Mean,
            vb,
        )
        .expect("loss");
        assert_eq!(
            vm.all_vars().len(),
            state.as_object().expect("s").len() / 2,
            "{name}: no parameter created anew"
        );
        let f = var(case, "features");
        close(
            &vec(&loss.project(f.as_tensor()).expect("mlp")),
            &vec(&tensor(case, "mlp_output")),
            1e-5,
            1e-5,
            &format!("{name} mlp"),
        );
        let out = loss.forward(f.as_tensor(), &labels(case)).expect("forward");
        check_loss(&out.loss, case, 1e-4, 1e-5, name);
        let g = out.loss.backward().expect("backward");
        check_feature_grad(&g, &f, case, 1e-4, 1e-4, &format!("{name} features"));
        let data = vm.data().lock().expect("lock");
        let grads = &case["grad_params"];
        for (param, v) in data.iter() {
            close(
                &vec(g.get(v.as_tensor()).expect("param grad")),
                &vec(&tensor(grads, param)),
                1e-4,
                1e-4,
                &format!("{name} {param}"),
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// OML's hard miner chooses on the device (nothing read back); its choices are the host miner's,
/// ties included (the first index), on random batches and on batches of 0/1 vectors, where most
/// distances tie (checked: ties among the farthest positives and the closest negatives occur).
#[test]
fn the_hard_miner_on_the_device_chooses_as_on_the_host() {
    use rand::{Rng, SeedableRng};
    let read = |t: &Tensor| -> Vec<usize> {
        t.to_vec1::<u32>()
            .expect("ids")
            .into_iter()
            .map(|i| i as usize)
            .collect()
    };
    let (mut pos_ties, mut neg_ties) = (0, 0);
    for seed in 0..8u64 {
        let b = 12;
        let labels: Vec<i64> = (0..b as i64).map(|i| (i * 7 + seed as i64) % 4).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Random values, or from seed 2 on 0/1 vectors of 3 entries: many exact ties.
        let values: Vec<f32> = if seed < 2 {
            (0..b * 3)
                .map(|_| rng.random::<f32>() * 2.0 - 1.0)
                .collect()
        } else {
            (0..b * 3)
                .map(|_| f32::from(u8::from(rng.random::<bool>())))
                .collect()
        };
        let x = Tensor::from_vec(values, (b, 3), &Device::Cpu).expect("x");
        let dist = oml::losses::pairwise_dist(&x, &x).expect("dist");
        let flat = dist
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("d");
        let host = HardTripletsMiner.mine(&flat, &labels, None).expect("host");
        for a in 0..b {
            let row = &flat[a * b..(a + 1) * b];
            let same = |j: &usize| labels[*j] == labels[a];
            let far = (0..b).filter(same).map(|j| row[j]).fold(f32::MIN, f32::max);
            let near = (0..b)
                .filter(|j| !same(j))
                .map(|j| row[j])
                .fold(f32::MAX, f32::min);
            pos_ties += usize::from((0..b).filter(|j| same(j) && row[*j] == far).count() > 1);
            neg_ties += usize::from((0..b).filter(|j| !same(j) && row[*j] == near).count() > 1);
        }
        let (pos, neg) = HardTripletsMiner
            .mine_on_device(&dist, &labels)
            .expect("device");
        assert_eq!(read(&pos), host.positives, "seed {seed}");
        assert_eq!(read(&neg), host.negatives, "seed {seed}");
        let sampled = HardTripletsMiner.sample(&x, &labels).expect("sample");
        assert!(sampled.triplets.is_none());
        assert_eq!(sampled.indices().expect("read"), Some(host.clone()));
        let (a, p, n) = host.gather(&x).expect("gather");
        for (ours, theirs) in [
            (&sampled.anchors, a),
            (&sampled.positives, p),
            (&sampled.negatives, n),
        ] {
            assert_eq!(
                ours.to_vec2::<f32>().expect("ours"),
                theirs.to_vec2::<f32>().expect("theirs")
            );
        }
    }
    assert!(pos_ties > 5 && neg_ties > 5, "ties: {pos_ties}, {neg_ties}");
}
