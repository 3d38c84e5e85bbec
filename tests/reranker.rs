//! OML's pairwise re-ranking against Python OML 4.0 (`tests/golden/reranker_oml.json`, made by
//! `tests/golden/make_reranker_fixtures.py`): `PairwiseReranker`'s order and (rescaled) distances,
//! `ConcatSiamese`'s logits and scores on the small ViT and ResNet, and `PairsMiner`'s pairs.
//! Part of the `models` test binary.

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use oml::Model;
use oml::models::{ModelSpec, NetworkConfig};
use oml::retrieval::{
    ConcatSiamese, PairsMiner, PairwiseReranker, PairwiseScorer, RetrievalPostprocessor,
    RetrievalResults,
};
use serde_json::Value;

use crate::common::f32s;

fn fixture() -> Value {
    let text = std::fs::read_to_string(super::repo().join("tests/golden/reranker_oml.json"))
        .expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn tensor(v: &Value, name: &str) -> Tensor {
    let shape: Vec<usize> = v[format!("{name}_shape")]
        .as_array()
        .expect("shape")
        .iter()
        .map(|x| x.as_u64().expect("dim") as usize)
        .collect();
    Tensor::from_vec(
        f32s(v[format!("{name}_f32_b64")].as_str().expect(name)),
        shape.as_slice(),
        &Device::Cpu,
    )
    .expect("tensor")
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_u64().expect("id") as usize)
        .collect()
}

fn lists<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<Vec<T>> {
    v.as_array()
        .expect("lists")
        .iter()
        .map(|l| l.as_array().expect("list").iter().map(&f).collect())
        .collect()
}

/// OML's `LinearTrivialDistanceSiamese`: `|P x1 - P x2| + bias` on the items' embeddings.
struct LinearDistance {
    projected: Vec<Vec<f32>>,
    bias: f32,
}

impl PairwiseScorer for LinearDistance {
    fn score(&self, pairs: &[(usize, usize)]) -> oml::Result<Vec<f32>> {
        Ok(pairs
            .iter()
            .map(|&(a, b)| {
                let d: f32 = self.projected[a]
                    .iter()
                    .zip(&self.projected[b])
                    .map(|(x, y)| (x - y) * (x - y))
                    .sum();
                d.sqrt() + self.bias
            })
            .collect())
    }
}

#[test]
fn the_reranker_orders_and_rescales_as_oml() {
    let fx = fixture();
    let mut rescaled = 0;
    for case in fx["rerank_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let emb = tensor(case, "embeddings");
        let proj = tensor(case, "proj");
        let projected: Vec<Vec<f32>> = emb
            .matmul(&proj.t().expect("t"))
            .expect("project")
            .to_vec2()
            .expect("rows");
        let scorer = LinearDistance {
            projected,
            bias: case["output_bias"].as_f64().expect("bias") as f32,
        };
        let f = |x: &Value| x.as_f64().expect("float") as f32;
        let u = |x: &Value| x.as_u64().expect("id") as usize;
        let before = &case["before"];
        let rr = RetrievalResults::new(
            lists(&before["distances"], f),
            lists(&before["retrieved_ids"], u),
            Some(lists(&case["gt_ids"], u)),
        )
        .expect("results")
        .with_item_ids(usizes(&case["query_rows"]), usizes(&case["gallery_rows"]))
        .expect("ids");
        // The scorer itself: OML's scores of each query's top-n pairs.
        let pairs: Vec<(usize, usize)> = case["pairs_rows"]
            .as_array()
            .expect("pairs")
            .iter()
            .map(|p| (u(&p[0]), u(&p[1])))
            .collect();
        let ours = scorer.score(&pairs).expect("score");
        let theirs: Vec<f32> = lists(&case["pair_scores"], f).concat();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{name}: score {a} vs OML {b}"
            );
        }
        let top_n = case["top_n"].as_u64().expect("top_n") as usize;
        let out = PairwiseReranker { top_n, scorer }
            .process(&rr)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let after = &case["after"];
        let want_ids = lists(&after["retrieved_ids"], u);
        let want_d = lists(&after["distances"], f);
        for q in 0..out.n_queries() {
            assert_eq!(
                out.retrieved_ids(q).expect("ids"),
                want_ids[q].as_slice(),
                "{name}: query {q}'s order"
            );
            let d = out.distances(q).expect("distances");
            for (a, b) in d.iter().zip(&want_d[q]) {
                assert!(
                    (a - b).abs() <= 2e-5 * b.abs().max(1.0),
                    "{name}: query {q}: {d:?} vs OML {:?}",
                    want_d[q]
                );
            }
        }
        rescaled += case["rescaled"]
            .as_array()
            .expect("rescaled")
            .iter()
            .filter(|r| r.as_bool() == Some(true))
            .count();
    }
    assert!(rescaled >= 4, "cases with OML's rescaling: {rescaled}");
}

/// The backbone of a ConcatSiamese case, as a model.
fn backbone(extractor: &str) -> Model {
    let fx = super::fixture();
    let m = super::model(&fx, extractor);
    let network = if extractor.starts_with("vit") {
        NetworkConfig::Vit(super::vit_cfg(m))
    } else {
        NetworkConfig::Resnet(super::small_resnet_cfg(m))
    };
    Model::from_spec(
        ModelSpec::custom(extractor, network),
        super::weights_path(m),
    )
    .expect("backbone")
}

#[test]
fn concat_siamese_matches_oml_on_vit_and_resnet() {
    let fx = fixture();
    let inputs = &fx["concat_siamese_inputs"];
    let (x1, x2) = (tensor(inputs, "x1"), tensor(inputs, "x2"));
    let mut checked = 0;
    for case in fx["concat_siamese_cases"].as_array().expect("cases") {
        if case["mode"] != "eval" {
            continue;
        }
        let name = case["name"].as_str().expect("name");
        let back = backbone(case["extractor"].as_str().expect("extractor"));
        let hidden = usizes(&case["mlp_hidden_dims"]);
        let mut s = ConcatSiamese::new(back.clone(), &hidden, 0).expect("siamese");
        let mut weights: HashMap<String, Tensor> = back
            .state_dict()
            .into_iter()
            .map(|(k, v)| (format!("extractor.{k}"), v))
            .collect();
        for k in case["head_keys"].as_array().expect("keys") {
            let k = k.as_str().expect("key");
            weights.insert(k.to_owned(), tensor(&case["head"], k));
        }
        s.set_state_dict(&weights).expect("weights");
        let close = |ours: &Tensor, key: &str| {
            let ours: Vec<f32> = ours.to_vec1().expect("vec");
            let theirs: Vec<f32> = tensor(case, key).to_vec1().expect("vec");
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() <= 2e-5,
                    "{name} {key}: {ours:?} vs OML {theirs:?}"
                );
            }
        };
        close(&s.logits(&x1, &x2).expect("logits"), "logits");
        close(&s.logits(&x2, &x1).expect("logits"), "logits_swapped");
        close(&s.predict(&x1, &x2).expect("predict"), "predict");
        s.use_tta = true;
        close(&s.predict(&x1, &x2).expect("predict"), "predict_tta");
        checked += 1;
    }
    assert_eq!(checked, 4);
    // A head of other sizes is refused by name.
    let mut s = ConcatSiamese::new(backbone("resnet_basic_small"), &[8], 0).expect("siamese");
    let other = ConcatSiamese::new(backbone("resnet_basic_small"), &[16], 0).expect("siamese");
    let e = s.set_state_dict(&other.state_dict()).expect_err("sizes");
    assert!(
        e.to_string().contains("`head.0.bias` is [16]") && e.to_string().contains("needs [8]"),
        "{e}"
    );
}

#[test]
fn pairs_miner_gives_omls_pairs_in_canonical_order() {
    let fx = fixture();
    for case in fx["pairs_miner_cases"].as_array().expect("cases") {
        let name = case["name"].as_str().expect("name");
        let labels: Vec<i64> = case["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .map(|l| l.as_i64().expect("label"))
            .collect();
        let miner = PairsMiner {
            hard_mining: case["hard_mining"].as_bool().expect("hard"),
        };
        let got = miner
            .sample(&tensor(case, "features"), &labels)
            .expect("pairs");
        let want = &case["canonical"];
        assert_eq!(got.first, usizes(&want["ids1"]), "{name}");
        assert_eq!(got.second, usizes(&want["ids2"]), "{name}");
        let neg: Vec<bool> = want["is_negative"]
            .as_array()
            .expect("neg")
            .iter()
            .map(|b| b.as_bool().expect("bool"))
            .collect();
        assert_eq!(got.is_negative, neg, "{name}");
    }
}
