//! Backbones against Python OML 4.0's extractors: small random-weight DINO and DINOv2 ViTs
//! (`tests/golden/extractor_small.json`, weights in `tests/data/extractors/`), made by
//! `tests/golden/make_extractor_fixtures.py`. The real DINOv2-S/14 parity test is in
//! `tests/real_data.rs` (it needs the shared weights).

mod common;

use common::f32s;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use oml::models::{ViTConfig, ViTExtractor};
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Cosine of every row pair and the largest absolute difference.
pub fn compare(ours: &[f32], theirs: &[f32], dim: usize) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    let mut worst_cos = 1.0f32;
    for (a, b) in ours.chunks(dim).zip(theirs.chunks(dim)) {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        worst_cos = worst_cos.min(dot / (na * nb));
    }
    let max_diff = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    (worst_cos, max_diff)
}

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(repo().join("tests/golden/extractor_small.json")).expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn small_vit(model: &Value) -> ViTExtractor {
    small_vit_from(model, &model["weights"])
}

fn small_vit_from(model: &Value, weights: &Value) -> ViTExtractor {
    let c = &model["config"];
    let get = |k: &str| c[k].as_u64().expect(k) as usize;
    let cfg = ViTConfig {
        patch_size: get("patch_size"),
        embed_dim: get("embed_dim"),
        depth: get("depth"),
        num_heads: get("num_heads"),
        mlp_ratio: get("mlp_ratio"),
        layerscale: c["layerscale"].as_bool().expect("layerscale"),
        pos_grid: get("pos_embed_grid"),
        n_registers: c["num_register_tokens"].as_u64().unwrap_or(0) as usize,
        eps: 1e-6,
        normalise: false,
    };
    let weights = repo().join(weights["file"].as_str().expect("file"));
    ViTExtractor::from_safetensors(&cfg, &weights, &Device::Cpu).expect("weights")
}

#[test]
fn small_dino_and_dinov2_vits_match_oml_at_every_size() {
    let fx = fixture();
    let mut checked = 0;
    // DINO, DINOv2, DINOv2 with registers in OML's layout and in timm's (Hub) layout.
    for (name, layout) in [
        ("vit_dino_small", "weights"),
        ("vit_dinov2_small", "weights"),
        ("vit_dinov2_reg_small", "weights"),
        ("vit_dinov2_reg_small", "weights_timm_layout"),
    ] {
        let model = fx["models"]
            .as_array()
            .expect("models")
            .iter()
            .find(|m| m["name"] == name)
            .expect("model");
        let vit = small_vit_from(model, &model[layout]);
        for run in model["runs"].as_array().expect("runs") {
            let input = &fx["inputs"][run["input"].as_str().expect("input")];
            let shape: Vec<usize> = input["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|v| v.as_u64().expect("dim") as usize)
                .collect();
            let x = Tensor::from_vec(
                f32s(input["f32_b64"].as_str().expect("b64")),
                shape.as_slice(),
                &Device::Cpu,
            )
            .expect("tensor");
            let ours: Vec<f32> = vit
                .forward(&x)
                .and_then(|t| Ok(t.flatten_all()?.to_vec1()?))
                .expect("forward");
            let theirs = f32s(run["output_f32_b64"].as_str().expect("output"));
            let (cos, diff) = compare(&ours, &theirs, vit.feat_dim());
            assert!(
                cos >= 0.99999 && diff < 1e-4,
                "{name} on {}: cosine {cos}, max diff {diff}",
                run["input"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} runs");
}

#[test]
fn bad_inputs_and_weights_are_errors() {
    let fx = fixture();
    let model = fx["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == "vit_dinov2_small")
        .expect("model");
    let vit = small_vit(model);
    let odd = Tensor::zeros((1, 3, 50, 56), candle_core::DType::F32, &Device::Cpu).expect("tensor");
    assert!(
        vit.forward(&odd)
            .unwrap_err()
            .to_string()
            .contains("multiples of 14")
    );
    let cfg = ViTConfig::from_arch("vits14").expect("arch");
    let e = ViTExtractor::from_safetensors(
        &cfg,
        &repo().join(model["weights"]["file"].as_str().expect("file")),
        &Device::Cpu,
    )
    .err()
    .expect("a small file does not fit ViT-S");
    assert!(e.to_string().contains("weights do not fit"), "{e}");
    assert!(
        ViTConfig::from_arch("vit_huge")
            .unwrap_err()
            .to_string()
            .contains("vits14")
    );
    let missing =
        ViTExtractor::from_safetensors(&cfg, Path::new("/nonexistent.safetensors"), &Device::Cpu)
            .err()
            .expect("missing");
    assert!(missing.to_string().contains("/nonexistent.safetensors"));
}
