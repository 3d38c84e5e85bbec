//! Golden tests against Python OML 4.0: every case of `tests/golden/metrics_oml.json`, made by
//! `tests/golden/make_metrics_fixtures.py` (OML's own test and docstring cases, plus seeded random
//! ones). Values agree to 1e-5; where torch orders equal distances differently, the tie groups
//! recorded in the fixture are compared as sets (we order ties by gallery index, always).

use std::path::Path;

use candle_core::{Device, Tensor};
use oml::metrics::{
    MetricsConfig, QueryMetric, compute_metrics, evaluate, fnmr_at_fmr_from_distances, pcf,
    per_query,
};
use oml::retrieval::{
    AdaptiveThresholding, ConstantThresholding, QueryGalleryInfo, RetrievalPostprocessor,
    RetrievalResults, SearchConfig,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/metrics_oml.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("uint") as usize)
        .collect()
}

fn lists(v: &Value) -> Vec<Vec<usize>> {
    v.as_array().expect("array").iter().map(usizes).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect()
}

fn float_lists(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().expect("array").iter().map(floats).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_f64().expect("float")).collect())
        .unwrap_or_default()
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    })
}

fn matrix(v: &Value) -> Tensor {
    let rows = float_lists(v);
    let d = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), d), &Device::Cpu).expect("tensor")
}

fn close(ours: f64, theirs: &Value, what: &str) {
    match theirs {
        Value::Null => assert!(ours.is_nan(), "{what}: expected NaN (null), got {ours}"),
        v => {
            let t = v.as_f64().expect("number");
            assert!((ours - t).abs() <= 1e-5, "{what}: ours {ours}, OML {t}");
        }
    }
}

/// Compares a nested `{group: {metric: {k: v}}}` (or `{metric: {k: v}}` without categories).
fn compare_metrics(metrics: &oml::metrics::Metrics, expected: &Value, nested: bool, name: &str) {
    let groups: Vec<(String, &Value)> = if nested {
        expected
            .as_object()
            .expect("object")
            .iter()
            .map(|(g, v)| (g.clone(), v))
            .collect()
    } else {
        vec![("OVERALL".to_owned(), expected)]
    };
    for (group, values) in groups {
        for (metric, per_k) in values.as_object().expect("object") {
            for (k, v) in per_k.as_object().expect("object") {
                let ours = metrics.get(&group, metric, k).unwrap_or_else(|| {
                    panic!(
                        "{name}: missing {group}/{metric}/{k} in {}",
                        metrics.to_json()
                    )
                });
                close(ours, v, &format!("{name} {group}/{metric}/{k}"));
            }
        }
    }
    let expected_groups = if nested {
        expected.as_object().map_or(0, |o| o.len())
    } else {
        1
    };
    assert_eq!(
        metrics.groups.len(),
        expected_groups,
        "{name}: groups {:?}",
        metrics.to_json()
    );
}

/// Our retrieved list equals OML's up to the order inside the recorded tie groups.
fn compare_retrieved(ours: &[usize], theirs: &[usize], ties: Option<&Value>, what: &str) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: lengths {ours:?} vs {theirs:?}"
    );
    let mut tied = vec![false; ours.len()];
    for group in ties.and_then(Value::as_array).into_iter().flatten() {
        let (a, b) = (
            group[0].as_u64().expect("start") as usize,
            group[1].as_u64().expect("end") as usize,
        );
        let mut x = ours[a..b].to_vec();
        let mut y = theirs[a..b].to_vec();
        x.sort_unstable();
        y.sort_unstable();
        assert_eq!(x, y, "{what}: tie group {a}..{b}");
        // Ours are ordered by gallery index inside a tie.
        assert!(
            ours[a..b].windows(2).all(|w| w[0] < w[1]),
            "{what}: ties by gallery index"
        );
        tied[a..b].iter_mut().for_each(|t| *t = true);
    }
    for i in 0..ours.len() {
        if !tied[i] {
            assert_eq!(
                ours[i], theirs[i],
                "{what}: position {i}: {ours:?} vs {theirs:?}"
            );
        }
    }
}

fn compare_distances(ours: &[f32], exact: &[f32], what: &str) {
    for (a, b) in ours.iter().zip(exact) {
        // torch and we both use |q|^2 + |g|^2 - 2 q.g in f32: tiny distances are only accurate to
        // ~sqrt(eps) * |x|.
        let tol = 1e-5 + 2e-3 * (b.abs() < 0.05) as i32 as f32 + 1e-5 * b.abs();
        assert!((a - b).abs() <= tol, "{what}: ours {a}, exact {b}");
    }
}

fn config_of(case: &Value) -> MetricsConfig {
    MetricsConfig {
        cmc_top_k: case.get("cmc_top_k").map(usizes).unwrap_or_default(),
        precision_top_k: case.get("precision_top_k").map(usizes).unwrap_or_default(),
        map_top_k: case.get("map_top_k").map(usizes).unwrap_or_default(),
        fmr_vals: case.get("fmr_vals").map(f64s).unwrap_or_default(),
        pcf_variance: case.get("pcf_variance").map(f64s).unwrap_or_default(),
        ..MetricsConfig::default()
    }
}

#[test]
fn functional_cases_match_oml() {
    let fx = fixture();
    let cases = fx["functional_cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let retrieved = lists(&case["retrieved_ids"]);
        let distances: Vec<Vec<f32>> = retrieved
            .iter()
            .map(|r| (0..r.len()).map(|i| i as f32).collect())
            .collect();
        let gt = lists(&case["gt_ids"]);
        let mut rr = RetrievalResults::new(distances, retrieved, Some(gt)).expect("rr");
        let categories = strings(&case["query_categories"]);
        if let Some(c) = &categories {
            rr = rr.with_query_categories(c.clone()).expect("categories");
        }
        let config = config_of(case);
        let metrics = compute_metrics(&rr, &config).expect("metrics");
        compare_metrics(&metrics, &case["reduced"], categories.is_some(), name);
        // Per-query vectors.
        let per_q = if categories.is_some() {
            &case["per_query"]["OVERALL"]
        } else {
            &case["per_query"]
        };
        for (metric, per_k) in per_q.as_object().expect("object") {
            for (k, values) in per_k.as_object().expect("object") {
                let k: usize = k.parse().expect("k");
                let m = match metric.as_str() {
                    "cmc" => QueryMetric::Cmc(k),
                    "precision" => QueryMetric::Precision(k),
                    "map" => QueryMetric::Map(k),
                    other => panic!("unknown metric {other}"),
                };
                let ours = per_query(&rr, m);
                for (q, v) in values.as_array().expect("values").iter().enumerate() {
                    close(ours[q], v, &format!("{name} {metric}@{k} query {q}"));
                }
            }
        }
    }
}

#[test]
fn knn_cases_match_oml() {
    let fx = fixture();
    for case in fx["knn_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let top_n = case["top_n"].as_u64().expect("top_n") as usize;
        let config = SearchConfig {
            top_n,
            query_block: 3,
            gallery_block: 4,
            ..SearchConfig::default()
        };
        let rr = if case["function"].as_str() == Some("oml.functional.knn.batched_knn") {
            let e = matrix(&case["embeddings"]);
            let n = e.dims()[0];
            let ids_q = usizes(&case["ids_query"]);
            let ids_g = usizes(&case["ids_gallery"]);
            assert!(ids_q.windows(2).all(|w| w[0] < w[1]) && ids_g.windows(2).all(|w| w[0] < w[1]));
            let labels: Option<Vec<i64>> = case["labels"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_i64().expect("label")).collect());
            let info = QueryGalleryInfo {
                labels,
                is_query: (0..n).map(|i| ids_q.contains(&i)).collect(),
                is_gallery: (0..n).map(|i| ids_g.contains(&i)).collect(),
                categories: None,
                sequences: strings(&case["sequence_ids"]),
            };
            RetrievalResults::from_embeddings_with(&e, &info, &config).expect("knn")
        } else {
            let lq: Option<Vec<i64>> = case["labels_query"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_i64().expect("l")).collect());
            let lg: Option<Vec<i64>> = case["labels_gallery"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_i64().expect("l")).collect());
            let sq = strings(&case["sequence_query"]);
            let sg = strings(&case["sequence_gallery"]);
            RetrievalResults::from_embeddings_qg(
                &matrix(&case["embeddings_query"]),
                &matrix(&case["embeddings_gallery"]),
                lq.as_deref(),
                lg.as_deref(),
                sq.as_deref(),
                sg.as_deref(),
                None,
                &config,
            )
            .expect("knn qg")
        };
        let expected = lists(&case["retrieved_ids"]);
        let exact = float_lists(&case["distances_f64"]);
        assert_eq!(rr.n_queries(), expected.len(), "{name}");
        for q in 0..rr.n_queries() {
            let what = format!("{name} query {q}");
            compare_retrieved(
                rr.retrieved_ids(q).expect("query"),
                &expected[q],
                case["tie_groups"].get(q),
                &what,
            );
            compare_distances(rr.distances(q).expect("query"), &exact[q], &what);
        }
        match case["gt_ids"].as_array() {
            Some(_) => {
                let gt = lists(&case["gt_ids"]);
                for (q, g) in gt.iter().enumerate() {
                    assert_eq!(&rr.gt_ids(q).expect("query"), g, "{name} gt of query {q}");
                    assert_eq!(rr.n_gt(q).expect("query"), g.len());
                }
            }
            None => assert!(!rr.has_ground_truth(), "{name}: no labels, no ground truth"),
        }
    }
}

#[test]
fn fnmr_cases_match_oml() {
    let fx = fixture();
    for case in fx["fnmr_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let fmr = f64s(&case["fmr_vals"]);
        if case.get("pos_dist").is_some() {
            let ours = fnmr_at_fmr_from_distances(
                &floats(&case["pos_dist"]),
                &floats(&case["neg_dist"]),
                &fmr,
            )
            .expect("fnmr");
            for (o, t) in ours.iter().zip(case["fnmr"].as_array().expect("fnmr")) {
                close(*o, t, name);
            }
        } else {
            // OML's calc_fnmr_at_fmr_rr: positives and negatives among the retrieved pairs.
            let rr = RetrievalResults::new(
                float_lists(&case["distances"]),
                lists(&case["retrieved_ids"]),
                Some(lists(&case["gt_ids"])),
            )
            .expect("rr");
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            for q in 0..rr.n_queries() {
                for (&g, &d) in rr
                    .retrieved_ids(q)
                    .expect("query")
                    .iter()
                    .zip(rr.distances(q).expect("query"))
                {
                    if rr.is_gt(q, g) {
                        pos.push(d)
                    } else {
                        neg.push(d)
                    }
                }
            }
            let ours = fnmr_at_fmr_from_distances(&pos, &neg, &fmr).expect("fnmr");
            for (f, o) in fmr.iter().zip(&ours) {
                close(*o, &case["result"]["fnmr@fmr"][format!("{f}")], name);
            }
        }
    }
}

#[test]
fn pcf_cases_match_oml() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["pcf_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let Some(rows) = case["embeddings"].as_array() else {
            continue;
        };
        let d = rows[0].as_array().expect("row").len();
        let flat: Vec<f32> = float_lists(&case["embeddings"])
            .into_iter()
            .flatten()
            .collect();
        let ours = pcf(&flat, d, &f64s(&case["pcf_variance"])).expect("pcf");
        for (o, t) in ours.iter().zip(case["pcf"].as_array().expect("pcf")) {
            close(*o, t, name);
        }
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn thresholding_cases_match_oml() {
    let fx = fixture();
    for case in fx["thresholding_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let input = &case["input"];
        let rr = RetrievalResults::new(
            float_lists(&input["distances"]),
            lists(&input["retrieved_ids"]),
            Some(lists(&input["gt_ids"])),
        )
        .expect("rr");
        let out = match case["kind"].as_str() {
            Some("constant") => ConstantThresholding {
                threshold: case["th"].as_f64().expect("th") as f32,
            }
            .process(&rr),
            _ => AdaptiveThresholding {
                n_std: case["n_std"].as_f64().expect("n_std") as f32,
            }
            .process(&rr),
        }
        .expect("process");
        let expected = &case["output"];
        assert_eq!(
            out.all_retrieved_ids(),
            lists(&expected["retrieved_ids"]).as_slice(),
            "{name}"
        );
        assert_eq!(
            out.all_distances(),
            float_lists(&expected["distances"]).as_slice(),
            "{name}"
        );
        for (q, g) in lists(&expected["gt_ids"]).iter().enumerate() {
            let mut g = g.clone();
            g.sort_unstable();
            assert_eq!(
                out.gt_ids(q).expect("query"),
                g,
                "{name}: ground truths kept"
            );
        }
    }
}

/// Retrieval of a case with `top_n = case[top_n_key]` (exactly, not raised to the largest k), then
/// OML's `EmbeddingMetrics` computations.
fn run_embedding_case(case: &Value, top_n_key: &str) -> (RetrievalResults, oml::metrics::Metrics) {
    let e = matrix(&case["embeddings"]);
    let flags = |k: &str| -> Vec<bool> {
        case[k]
            .as_array()
            .expect("flags")
            .iter()
            .map(|x| x.as_bool().unwrap_or_else(|| x.as_f64() == Some(1.0)))
            .collect()
    };
    let info = QueryGalleryInfo {
        labels: case["labels"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_i64().expect("label")).collect()),
        is_query: flags("is_query"),
        is_gallery: flags("is_gallery"),
        categories: case.get("categories").and_then(strings),
        sequences: case.get("sequence").and_then(strings),
    };
    let search = SearchConfig {
        top_n: case[top_n_key].as_u64().expect("top_n") as usize,
        query_block: 7,
        gallery_block: 5,
        ..SearchConfig::default()
    };
    let metrics = evaluate(&e, &info, &config_of(case), &search)
        .expect("evaluate")
        .1;
    let rr = RetrievalResults::from_embeddings_with(&e, &info, &search).expect("retrieval");
    (rr, metrics)
}

#[test]
fn embedding_metrics_cases_match_oml() {
    let fx = fixture();
    let cases = fx["embedding_metrics_cases"].as_array().expect("cases");
    assert!(cases.len() >= 12);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let (rr, metrics) = run_embedding_case(case, "top_n_used");
        let expected = lists(&case["retrieved_ids"]);
        let exact = float_lists(&case["distances_f64"]);
        for q in 0..rr.n_queries() {
            let n = expected[q]
                .len()
                .min(rr.retrieved_ids(q).expect("query").len());
            let what = format!("{name} query {q}");
            compare_retrieved(
                &rr.retrieved_ids(q).expect("query")[..n],
                &expected[q][..n],
                case["tie_groups"].get(q),
                &what,
            );
            compare_distances(&rr.distances(q).expect("query")[..n], &exact[q][..n], &what);
        }
        compare_metrics(&metrics, &case["metrics"], true, name);
    }
}

#[test]
fn rr_metrics_case_matches_oml() {
    let fx = fixture();
    for case in fx["rr_metrics_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        // OML's calc_retrieval_metrics_rr on results retrieved with a small top_n: k past the
        // list is clipped to it.
        let (rr, _) = run_embedding_case(case, "top_n");
        let top_n = case["top_n"].as_u64().expect("top_n") as usize;
        assert!(
            rr.all_retrieved_ids()
                .iter()
                .all(|r| r.len() <= top_n.max(1))
                || top_n == 0
        );
        let metrics = compute_metrics(&rr, &config_of(case)).expect("metrics");
        compare_metrics(&metrics, &case["reduced"], false, name);
    }
}

#[test]
fn blocks_do_not_change_results() {
    // 300 items, 8-d, 30 labels: block sizes 1, 7, default all agree exactly.
    let n = 300;
    let data: Vec<f32> = (0..n * 8)
        .map(|i| ((i as f64 * 0.731_17).sin() * 1000.0).fract() as f32)
        .collect();
    let e = Tensor::from_vec(data, (n, 8), &Device::Cpu).expect("tensor");
    let info = QueryGalleryInfo {
        labels: Some((0..n as i64).map(|i| i % 30).collect()),
        is_query: (0..n).map(|i| i % 3 != 0).collect(),
        is_gallery: (0..n).map(|i| i % 5 != 0).collect(),
        categories: None,
        sequences: None,
    };
    let run = |qb: usize, gb: usize| {
        let c = SearchConfig {
            top_n: 12,
            query_block: qb,
            gallery_block: gb,
            ..SearchConfig::default()
        };
        RetrievalResults::from_embeddings_with(&e, &info, &c).expect("rr")
    };
    let a = run(1024, 4096);
    // Matrix products over other block shapes may round differently in the last bit: ids must
    // agree wherever neighbouring distances are not within 1e-5.
    for (qb, gb) in [(1, 1), (7, 13), (64, 5)] {
        let b = run(qb, gb);
        for q in 0..a.n_queries() {
            let (da, db) = (
                a.distances(q).expect("query"),
                b.distances(q).expect("query"),
            );
            for i in 0..da.len() {
                assert!((da[i] - db[i]).abs() < 1e-5, "blocks {qb}x{gb}: query {q}");
                let near_tie = (i > 0 && da[i] - da[i - 1] < 1e-5)
                    || (i + 1 < da.len() && da[i + 1] - da[i] < 1e-5);
                if !near_tie {
                    assert_eq!(
                        a.retrieved_ids(q).expect("query")[i],
                        b.retrieved_ids(q).expect("query")[i],
                        "blocks {qb}x{gb}: query {q}"
                    );
                }
            }
        }
    }
}
