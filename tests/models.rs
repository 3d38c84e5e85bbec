//! Backbones against Python OML 4.0's extractors: small random-weight DINO and DINOv2 ViTs
//! (`tests/golden/extractor_small.json`, weights in `tests/data/extractors/`), made by
//! `tests/golden/make_extractor_fixtures.py`. The real DINOv2-S/14 parity test is in
//! `tests/real_data.rs` (it needs the shared weights).

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;
mod reranker;

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
    let cfg = vit_cfg(model);
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

fn input(fx: &Value, name: &str) -> Tensor {
    let input = &fx["inputs"][name];
    let shape: Vec<usize> = input["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("dim") as usize)
        .collect();
    Tensor::from_vec(
        f32s(input["f32_b64"].as_str().expect("b64")),
        shape.as_slice(),
        &Device::Cpu,
    )
    .expect("tensor")
}

fn model<'a>(fx: &'a Value, name: &str) -> &'a Value {
    fx["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["name"] == name)
        .expect("model")
}

fn rows(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flat").to_vec1().expect("vec")
}

fn assert_close(ours: &Tensor, expected: &Value, what: &str) {
    let theirs = f32s(expected["output_f32_b64"].as_str().expect("output"));
    let dim = ours.dim(1).expect("dim");
    let (cos, diff) = compare(&rows(ours), &theirs, dim);
    assert!(
        cos >= 0.99999 && diff < 1e-4,
        "{what}: cosine {cos}, max diff {diff}"
    );
}

fn small_resnet_cfg(model: &Value) -> oml::models::ResNetConfig {
    use oml::models::resnet::{ResNetBlock, ResNetConfig, ResNetHead};
    let c = &model["config"];
    let layers: Vec<usize> = c["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|v| v.as_u64().expect("n") as usize)
        .collect();
    ResNetConfig {
        block: if c["block"] == "Bottleneck" {
            ResNetBlock::Bottleneck
        } else {
            ResNetBlock::Basic
        },
        layers: [layers[0], layers[1], layers[2], layers[3]],
        width: c["widths"][0].as_u64().expect("width") as usize,
        gem_p: None,
        head: ResNetHead::Linear(10),
        remove_fc: true,
        normalise: false,
    }
}

/// The small CLIP tower's configuration from its fixture entry, at 64 px.
fn clip_cfg(model: &Value, normalise: bool) -> oml::models::ClipConfig {
    let c = &model["config"];
    let get = |k: &str| c[k].as_u64().expect(k) as usize;
    oml::models::ClipConfig {
        patch_size: get("patch_size"),
        width: get("width"),
        layers: get("layers"),
        heads: get("heads"),
        output_dim: get("output_dim"),
        input_resolution: 64,
        normalise,
    }
}

fn weights_path(model: &Value) -> PathBuf {
    repo().join(model["weights"]["file"].as_str().expect("file"))
}

#[test]
fn small_resnets_match_oml_with_average_and_gem_pooling_and_normalised() {
    use oml::models::{Family, ResNetExtractor};
    let fx = fixture();
    for name in ["resnet_basic_small", "resnet_bottleneck_small"] {
        let m = model(&fx, name);
        let mut cfg = small_resnet_cfg(m);
        let path = weights_path(m);
        let load = |cfg: &oml::models::ResNetConfig| {
            oml::models::load_with(Family::Resnet, &path, &Device::Cpu, None, |vb| {
                ResNetExtractor::new(cfg, vb)
            })
            .expect("resnet")
        };
        let x = input(&fx, "x64");
        let net = load(&cfg);
        assert_eq!(
            net.feat_dim(),
            m["config"]["feat_dim"].as_u64().unwrap() as usize
        );
        assert_close(
            &net.forward_t(&x, false).expect("forward"),
            &m["runs"][0],
            name,
        );
        cfg.gem_p = Some(5.0);
        assert_close(
            &load(&cfg).forward_t(&x, false).expect("forward"),
            &m["gem_p5_runs"][0],
            &format!("{name} GeM"),
        );
        cfg.gem_p = None;
        cfg.normalise = true;
        assert_close(
            &load(&cfg).forward_t(&x, false).expect("forward"),
            &m["normalised_x64"],
            &format!("{name} normalised"),
        );
    }
}

#[test]
fn small_clip_matches_oml_and_refuses_other_sizes() {
    use oml::models::{ClipConfig, ClipVisual, Family};
    let fx = fixture();
    let m = model(&fx, "vit_clip_small");
    let mut cfg = clip_cfg(m, false);
    let path = weights_path(m);
    let load = |cfg: &ClipConfig| {
        oml::models::load_with(Family::Clip, &path, &Device::Cpu, None, |vb| {
            ClipVisual::new(cfg, vb)
        })
        .expect("clip")
    };
    let x = input(&fx, "x64");
    let clip = load(&cfg);
    assert_close(&clip.forward(&x).expect("forward"), &m["runs"][0], "clip");
    let e = clip.forward(&input(&fx, "x48")).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 64, 64]"), "{e}");
    cfg.normalise = true;
    assert_close(
        &load(&cfg).forward(&x).expect("forward"),
        &m["normalised_x64"],
        "clip normalised",
    );
}

#[test]
fn dino_multi_scale_and_normalised_outputs_match_oml() {
    let fx = fixture();
    let m = model(&fx, "vit_dino_small");
    let x = input(&fx, "x64");
    let mut cfg = vit_cfg(m);
    cfg.multi_scale = true;
    let path = weights_path(m);
    let ms = ViTExtractor::from_safetensors(&cfg, &path, &Device::Cpu).expect("vit");
    assert_close(
        &ms.forward(&x).expect("forward"),
        &m["multi_scale_x64"],
        "multi-scale",
    );
    cfg.multi_scale = false;
    cfg.normalise = true;
    let n = ViTExtractor::from_safetensors(&cfg, &path, &Device::Cpu).expect("vit");
    assert_close(
        &n.forward(&x).expect("forward"),
        &m["normalised_x64"],
        "normalised",
    );
}

#[test]
fn weights_that_do_not_fit_are_listed_and_files_that_are_not_weights_are_named() {
    use oml::models::{ModelSpec, load};
    let fx = fixture();
    let m = model(&fx, "resnet_basic_small");
    // A ResNet-18 asked of a small ResNet's file: every tensor has another shape, some missing.
    let e = load(
        &ModelSpec::new("resnet18"),
        &weights_path(m),
        &Device::Cpu,
        None,
    )
    .err()
    .expect("does not fit")
    .to_string();
    assert!(
        e.contains("missing") && e.contains("with another shape"),
        "{e}"
    );
    assert!(e.contains("layer1.1.conv1.weight"), "{e}");
    assert!(e.contains("resnet_basic_small.safetensors"), "{e}");
    // A ViT file for a ResNet: the ViT's keys are unexpected.
    let vit = model(&fx, "vit_dino_small");
    let e = load(
        &ModelSpec::new("resnet18"),
        &weights_path(vit),
        &Device::Cpu,
        None,
    )
    .err()
    .expect("not a resnet")
    .to_string();
    assert!(e.contains("unexpected: blocks.0.attn.proj.bias"), "{e}");
    // Not weights at all.
    let dir = tempfile::tempdir().expect("tmp");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a weights file at all").expect("write");
    let e = load(&ModelSpec::new("vits16"), &junk, &Device::Cpu, None)
        .err()
        .expect("junk")
        .to_string();
    assert!(
        e.contains("junk.safetensors") && e.contains("neither"),
        "{e}"
    );
    let e = load(&ModelSpec::new("vit_giant"), &junk, &Device::Cpu, None)
        .err()
        .expect("unknown arch")
        .to_string();
    assert!(
        e.contains("unknown arch") && e.contains("resnet50") && e.contains("vitb32_224"),
        "{e}"
    );
}

#[test]
fn a_prefixed_checkpoint_with_a_loss_head_loads_as_oml_cleans_it() {
    use candle_core::DType;
    use oml::models::{Family, ResNetExtractor};
    let fx = fixture();
    let m = model(&fx, "resnet_basic_small");
    let cfg = small_resnet_cfg(m);
    let tensors = candle_core::safetensors::load(weights_path(m), &Device::Cpu).expect("load");
    let mut wrapped: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    wrapped.insert(
        "criterion.weight".into(),
        Tensor::zeros((5, 64), DType::F32, &Device::Cpu).expect("zeros"),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("prefixed.safetensors");
    candle_core::safetensors::save(&wrapped, &path).expect("save");
    let net = oml::models::load_with(Family::Resnet, &path, &Device::Cpu, None, |vb| {
        ResNetExtractor::new(&cfg, vb)
    })
    .expect("prefix stripped, criterion dropped");
    assert_close(
        &net.forward_t(&input(&fx, "x64"), false).expect("forward"),
        &m["runs"][0],
        "prefixed resnet",
    );
}

#[test]
fn trainable_weights_get_gradients_and_batch_norm_trains() {
    use candle_nn::VarMap;
    use oml::models::{Family, ResNetExtractor};
    let fx = fixture();
    let m = model(&fx, "resnet_basic_small");
    let cfg = small_resnet_cfg(m);
    let vm = VarMap::new();
    let net = oml::models::load_with(
        Family::Resnet,
        &weights_path(m),
        &Device::Cpu,
        Some(&vm),
        |vb| ResNetExtractor::new(&cfg, vb),
    )
    .expect("trainable");
    let vars = vm.data().lock().expect("lock").clone();
    assert!(vars.contains_key("conv1.weight") && vars.contains_key("layer4.0.bn2.running_var"));
    assert!(
        !vars.keys().any(|k| k.starts_with("fc.")),
        "the removed classifier is not trained"
    );
    let x = input(&fx, "x64");
    let before = rows(&vars["bn1.running_mean"].as_tensor().clone());
    let eval = net.forward_t(&x, false).expect("eval");
    let train = net.forward_t(&x, true).expect("train");
    let after = rows(&vars["bn1.running_mean"].as_tensor().clone());
    assert_ne!(before, after, "running statistics move in training mode");
    assert_ne!(
        rows(&eval),
        rows(&train),
        "batch statistics differ from running ones"
    );
    let grads = train
        .sqr()
        .expect("sqr")
        .sum_all()
        .expect("sum")
        .backward()
        .expect("backward");
    let g = grads
        .get(vars["conv1.weight"].as_tensor())
        .expect("conv1 has a gradient");
    assert!(rows(g).iter().any(|v| *v != 0.0));
    let g = grads
        .get(vars["layer4.0.bn2.weight"].as_tensor())
        .expect("bn weight has a gradient");
    assert!(rows(g).iter().any(|v| *v != 0.0));
}

#[test]
fn an_mlp_head_follows_torchvision_and_freezing_stops_gradients() {
    use candle_nn::{VarBuilder, VarMap};
    use oml::models::{Extractor, ExtractorWithMLP};
    let fx = fixture();
    let m = model(&fx, "vit_dino_small");
    let x = input(&fx, "x64");
    let backbone = small_vit(m);
    let plain = rows(&backbone.forward(&x).expect("backbone"));
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    let head = ExtractorWithMLP::new(Box::new(backbone), &[16, 8], true, vb).expect("head");
    assert_eq!(head.feat_dim(), 8);
    let out = head.forward(&x).expect("forward");
    // By hand: relu(x W0^T + b0) W3^T + b3.
    let vars = vm.data().lock().expect("lock").clone();
    let w = |k: &str| vars[k].as_tensor().clone();
    let feats = Tensor::from_vec(plain, (2, 32), &Device::Cpu).expect("t");
    let h = feats
        .matmul(&w("0.weight").t().expect("t"))
        .and_then(|t| t.broadcast_add(&w("0.bias")))
        .and_then(|t| t.relu())
        .expect("h");
    let y = h
        .matmul(&w("3.weight").t().expect("t"))
        .and_then(|t| t.broadcast_add(&w("3.bias")))
        .expect("y");
    let (cos, diff) = compare(&rows(&out), &rows(&y), 8);
    assert!(cos > 0.99999 && diff < 1e-5, "{cos} {diff}");
    // A trainable backbone: gradients reach it until the head is frozen.
    let bvm = VarMap::new();
    let trainable = oml::models::load_with(
        oml::models::Family::Vit,
        &weights_path(m),
        &Device::Cpu,
        Some(&bvm),
        |vb| ViTExtractor::new(&vit_cfg(m), vb),
    )
    .expect("trainable vit");
    let head = ExtractorWithMLP::new(
        Box::new(trainable),
        &[16, 8],
        true,
        VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu),
    )
    .expect("head");
    let cls = bvm.data().lock().expect("lock")["cls_token"]
        .as_tensor()
        .clone();
    let backward = |head: &ExtractorWithMLP| {
        head.forward_t(&x, true)
            .and_then(|t| Ok(t.sum_all()?.backward()?))
            .expect("backward")
    };
    let grads = backward(&head);
    assert!(grads.get(&cls).is_some(), "the backbone trains");
    head.freeze();
    let grads = backward(&head);
    assert!(grads.get(&w("0.weight")).is_some(), "the head trains");
    assert!(
        grads.get(&cls).is_none(),
        "a frozen backbone gets no gradient"
    );
    let e = ExtractorWithMLP::new(
        Box::new(small_vit(m)),
        &[],
        true,
        VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu),
    );
    assert!(e.is_err());
}

#[test]
fn the_training_stem_pooling_equals_the_inference_one() {
    use candle_nn::VarMap;
    use oml::models::{Family, ResNetExtractor};
    // The differentiable pooling used in training gives the same values as candle's, on odd and
    // even sides.
    let fx = fixture();
    let m = model(&fx, "resnet_basic_small");
    let cfg = small_resnet_cfg(m);
    let vm = VarMap::new();
    let net = oml::models::load_with(
        Family::Resnet,
        &weights_path(m),
        &Device::Cpu,
        Some(&vm),
        |vb| ResNetExtractor::new(&cfg, vb),
    )
    .expect("net");
    for side in [64usize, 65, 70, 33] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, side, side), &Device::Cpu).expect("x");
        let (a, b) = net.stem_pooled(&x).expect("stem");
        assert_eq!(a.dims(), b.dims(), "side {side}");
        let diff = (a - b)
            .expect("d")
            .abs()
            .expect("a")
            .max_all()
            .expect("m")
            .to_scalar::<f32>()
            .expect("s");
        assert!(diff == 0.0, "side {side}: {diff}");
    }
}

#[test]
fn the_trainable_vit_computes_what_the_inference_one_does() {
    use candle_nn::VarMap;
    let fx = fixture();
    let m = model(&fx, "vit_dinov2_small");
    let x = input(&fx, "x56");
    let constant = small_vit(m);
    let vm = VarMap::new();
    let cfg = vit_cfg(m);
    let trainable = oml::models::load_with(
        oml::models::Family::Vit,
        &weights_path(m),
        &Device::Cpu,
        Some(&vm),
        |vb| ViTExtractor::new(&cfg, vb),
    )
    .expect("trainable");
    let a = constant.forward(&x).expect("a");
    let b = trainable.forward(&x).expect("b");
    let (cos, diff) = compare(&rows(&a), &rows(&b), 32);
    assert!(cos > 0.999999 && diff < 1e-5, "{cos} {diff}");
    // Gradients reach every tensor, position embeddings included (resized at 56 px).
    let grads = b
        .sqr()
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("backward");
    let vars = vm.data().lock().expect("lock").clone();
    let without: Vec<&String> = vars
        .iter()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(without.is_empty(), "no gradient for {without:?}");
}

fn vit_cfg(model: &Value) -> ViTConfig {
    let c = &model["config"];
    let get = |k: &str| c[k].as_u64().expect(k) as usize;
    ViTConfig {
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
        multi_scale: false,
    }
}

#[test]
fn hugging_face_transformers_layouts_give_oml_outputs_at_every_size() {
    use oml::models::ClipVisual;
    let fx = fixture();
    let dir = repo().join("tests/data/extractors");
    let mut checked = 0;
    for name in ["vit_dino_small", "vit_dinov2_small", "vit_dinov2_reg_small"] {
        let m = model(&fx, name);
        let vit = ViTExtractor::from_safetensors(
            &vit_cfg(m),
            &dir.join(format!("{name}_hf.safetensors")),
            &Device::Cpu,
        )
        .expect("hf layout");
        for run in m["runs"].as_array().expect("runs") {
            let x = input(&fx, run["input"].as_str().expect("input"));
            assert_close(
                &vit.forward(&x).expect("forward"),
                run,
                &format!("{name} hf {}", run["input"]),
            );
            checked += 1;
        }
    }
    let m = model(&fx, "vit_clip_small");
    let cfg = clip_cfg(m, false);
    let clip = oml::models::load_with(
        oml::models::Family::Clip,
        &dir.join("vit_clip_small_hf.safetensors"),
        &Device::Cpu,
        None,
        |vb| ClipVisual::new(&cfg, vb),
    )
    .expect("hf clip");
    assert_close(
        &clip.forward(&input(&fx, "x64")).expect("forward"),
        &m["runs"][0],
        "clip hf",
    );
    assert!(checked >= 11, "{checked}");
}

#[test]
fn pytorch_checkpoints_load_with_oml_rules_and_broken_ones_are_named() {
    use oml::models::{Family, ResNetExtractor};
    let fx = fixture();
    let dir = repo().join("tests/data/extractors");
    let dino = model(&fx, "vit_dino_small");
    let x = input(&fx, "x64");
    // Lightning: state_dict wrapper, `model.` prefix, a criterion head, optimiser state.
    // DINO training checkpoint: the teacher's backbone (`backbone.` prefix, a projection head).
    for file in ["vit_dino_small_oml.ckpt", "vit_dino_small_dino_teacher.pth"] {
        let vit = ViTExtractor::from_safetensors(&vit_cfg(dino), &dir.join(file), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_close(&vit.forward(&x).expect("forward"), &dino["runs"][0], file);
    }
    // torchvision state dict with int64 num_batches_tracked.
    let m = model(&fx, "resnet_basic_small");
    let cfg = small_resnet_cfg(m);
    let net = oml::models::load_with(
        Family::Resnet,
        &dir.join("resnet_basic_small.pth"),
        &Device::Cpu,
        None,
        |vb| ResNetExtractor::new(&cfg, vb),
    )
    .expect("pth");
    assert_close(
        &net.forward_t(&x, false).expect("forward"),
        &m["runs"][0],
        "resnet pth",
    );
    // Truncated.
    let e = oml::models::load_with(
        Family::Resnet,
        &dir.join("broken.pth"),
        &Device::Cpu,
        None,
        |vb| ResNetExtractor::new(&cfg, vb),
    )
    .err()
    .expect("broken")
    .to_string();
    assert!(
        e.contains("broken.pth") && e.contains("not a readable PyTorch checkpoint"),
        "{e}"
    );
}

/// Every family under mixed precision ([`oml::models::Autocast`]): embeddings back in f32 and close
/// to the f32 network's, f32 gradients on the f32 variables, close to the f32 gradients. Covers each
/// place a weight meets an activation (patch and stem convolutions, CLS / position / register
/// tokens, layer scale, norms in f32, the attention's softmax, batch norm, GeM, the CLIP projection,
/// an MLP head).
#[test]
fn mixed_precision_runs_every_family_close_to_f32_with_f32_gradients() {
    use candle_core::DType;
    use candle_nn::VarMap;
    use oml::models::{Autocast, ClipVisual, Extractor, ExtractorWithMLP, Family, ResNetExtractor};
    let fx = fixture();
    type Build = Box<dyn Fn(&VarMap) -> Box<dyn Extractor>>;
    let mut cases: Vec<(String, Build, Tensor, bool)> = Vec::new();
    // A builder of the network in a file, its weights as variables of the given VarMap.
    fn trainable<E: Extractor + 'static>(
        family: Family,
        path: PathBuf,
        build: impl Fn(candle_nn::VarBuilder) -> oml::Result<E> + 'static,
    ) -> Build {
        Box::new(move |vm: &VarMap| -> Box<dyn Extractor> {
            Box::new(
                oml::models::load_with(family, &path, &Device::Cpu, Some(vm), &build)
                    .expect("trainable"),
            )
        })
    }
    for name in ["vit_dino_small", "vit_dinov2_small", "vit_dinov2_reg_small"] {
        let m = model(&fx, name).clone();
        let cfg = vit_cfg(&m);
        let build = trainable(Family::Vit, weights_path(&m), move |vb| {
            ViTExtractor::new(&cfg, vb)
        });
        cases.push((name.into(), build, input(&fx, "x56"), false));
    }
    for (name, gem) in [
        ("resnet_basic_small", Some(5.0)),
        ("resnet_bottleneck_small", None),
    ] {
        let m = model(&fx, name).clone();
        let mut cfg = small_resnet_cfg(&m);
        cfg.gem_p = gem;
        let build = trainable(Family::Resnet, weights_path(&m), move |vb| {
            ResNetExtractor::new(&cfg, vb)
        });
        cases.push((name.into(), build, input(&fx, "x64"), true));
    }
    {
        let m = model(&fx, "vit_clip_small").clone();
        let cfg = clip_cfg(&m, true);
        let path = weights_path(&m);
        cases.push((
            "vit_clip_small + MLP head".into(),
            Box::new(move |vm: &VarMap| -> Box<dyn Extractor> {
                let clip =
                    oml::models::load_with(Family::Clip, &path, &Device::Cpu, Some(vm), |vb| {
                        ClipVisual::new(&cfg, vb)
                    })
                    .expect("clip");
                let vb = candle_nn::VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
                let net =
                    ExtractorWithMLP::new(Box::new(clip), &[24, 8], true, vb.pp("projection"))
                        .expect("head");
                // The same head in every run (a fresh one is random).
                for (k, v) in vm.data().lock().expect("lock").iter() {
                    if k.starts_with("projection.") {
                        let n = v.elem_count();
                        let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 0.2).collect();
                        let t = Tensor::from_vec(w, v.shape(), &Device::Cpu).expect("head weights");
                        v.set(&t).expect("set");
                    }
                }
                Box::new(net)
            }),
            input(&fx, "x64"),
            false,
        ));
    }
    for (name, build, x, batch_norm) in &cases {
        // Training mode: batch statistics (each run starts from the file's weights).
        let run = |dtype: DType| {
            let vm = VarMap::new();
            let net = build(&vm);
            let out = Autocast::new(net.as_ref(), dtype)
                .forward_t(x, true)
                .expect("forward");
            if *batch_norm {
                let mean = vm.data().lock().expect("lock")["bn1.running_mean"]
                    .as_tensor()
                    .clone();
                assert_eq!(
                    mean.dtype(),
                    DType::F32,
                    "{name}: running statistics in f32"
                );
                assert!(
                    rows(&mean).iter().any(|v| *v != 0.0),
                    "{name}: running mean moved"
                );
            }
            assert_eq!(
                out.dtype(),
                DType::F32,
                "{name} {dtype:?}: embeddings in f32"
            );
            let grads = out
                .sqr()
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward");
            let vars = oml::train::ParamGroup::vars_of(&vm);
            let g: Vec<f32> = vars
                .iter()
                .filter_map(|(_, v)| grads.get(v.as_tensor()))
                .flat_map(|g| {
                    assert_eq!(g.dtype(), DType::F32, "{name}: f32 gradients");
                    rows(g)
                })
                .collect();
            (rows(&out), g, out.dim(1).expect("dim"))
        };
        let (o32, g32, dim) = run(DType::F32);
        // bf16 keeps 8 bits of mantissa, f16 11. The ResNets' gradients differ more: batch
        // statistics over 2 images amplify rounding layer by layer backwards, and rounding makes
        // ties in the stem's max pool, whose gradient candle splits (measured: bf16 0.973 and
        // 0.900, f16 0.9990 and 0.9876; the transformers >= 0.99994 and >= 0.99999).
        let tolerances = if *batch_norm {
            [(DType::BF16, 0.999, 0.85), (DType::F16, 0.9999, 0.98)]
        } else {
            [(DType::BF16, 0.9999, 0.9995), (DType::F16, 0.99999, 0.9999)]
        };
        for (dtype, out_cos, grad_cos) in tolerances {
            let (o, g, _) = run(dtype);
            let (cos, _) = compare(&o, &o32, dim);
            assert!(cos >= out_cos, "{name} {dtype:?}: embedding cosine {cos}");
            assert_eq!(
                g.len(),
                g32.len(),
                "{name} {dtype:?}: the same variables get gradients"
            );
            let (gcos, _) = compare(&g, &g32, g32.len());
            assert!(gcos >= grad_cos, "{name} {dtype:?}: gradient cosine {gcos}");
        }
    }
}

/// A head on a backbone file: fine-tuning starts a fresh head on the file's backbone (OML's
/// `ExtractorWithMLP` on a pretrained extractor); our checkpoint of both loads back as it was; for
/// inference, a file without a head is an error that says so.
#[test]
fn an_mlp_head_on_a_backbone_file_starts_fresh_and_our_checkpoints_load_back() {
    use candle_nn::VarMap;
    use oml::models::ModelSpec;
    let dir = tempfile::tempdir().expect("tmp");
    let plain = dir.path().join("resnet18.safetensors");
    let vm = VarMap::new();
    oml::models::init(&ModelSpec::new("resnet18"), &vm, &Device::Cpu).expect("init");
    vm.save(&plain).expect("save");
    let spec = ModelSpec {
        mlp: vec![24, 16],
        ..ModelSpec::new("resnet18")
    };
    let tuned = VarMap::new();
    let net = oml::models::load(&spec, &plain, &Device::Cpu, Some(&tuned)).expect("fresh head");
    assert_eq!(net.feat_dim(), 16);
    let vars = tuned.data().lock().expect("lock").clone();
    for k in [
        "projection.0.weight",
        "projection.0.bias",
        "projection.3.weight",
        "conv1.weight",
    ] {
        assert!(vars.contains_key(k), "{k} is trained");
    }
    let file = vm.data().lock().expect("lock")["conv1.weight"]
        .as_tensor()
        .clone();
    assert_eq!(
        rows(vars["conv1.weight"].as_tensor()),
        rows(&file),
        "the backbone comes from the file"
    );
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).expect("x");
    let out = net.forward_t(&x, false).expect("forward");
    assert_eq!(out.dims(), &[2, 16]);

    // Our checkpoint (backbone at the root, head under projection.) loads back, for inference.
    let ckpt = dir.path().join("tuned.safetensors");
    tuned.save(&ckpt).expect("save");
    let back = oml::models::load(&spec, &ckpt, &Device::Cpu, None).expect("reload");
    let (cos, diff) = compare(&rows(&back.forward(&x).expect("forward")), &rows(&out), 16);
    assert!(cos > 0.999999 && diff < 1e-5, "{cos} {diff}");

    let e = oml::models::load(&spec, &plain, &Device::Cpu, None)
        .err()
        .expect("no head for inference")
        .to_string();
    assert!(
        e.contains("no MLP head") && e.contains("resnet18.safetensors"),
        "{e}"
    );
}
