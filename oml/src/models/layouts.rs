//! The Hub's key layouts for the same networks, converted to the original (OML) names.
//!
//! - timm DINO / DINOv2: the original names; DINOv2 with registers as timm converts it (`reg_token`,
//!   `pos_embed` without the class slot, the class position folded into `cls_token`): a zero class
//!   slot in front is exact.
//! - Hugging Face `transformers` ViT (`facebook/dino-*`), Dinov2 (`facebook/dinov2-*`),
//!   Dinov2WithRegisters and CLIP (`openai/clip-*`): renamed, with q, k and v as separate linears
//!   (concatenated here into `qkv` / `in_proj`), CLIP's projection stored transposed.
//! - OpenAI / OpenCLIP CLIP files: the visual tower is kept (`visual.*`), the text tower dropped.
//!
//! `tests/golden/layouts.md` lists every name; `tests/golden/make_layout_fixtures.py` checks the
//! mapping against `transformers` itself.

use candle_core::Tensor;

use super::Family;
use super::weights::{StateDict, strip_prefix_before};
use crate::Result;

/// Converts `tensors` (any supported layout of `family`) to the original names.
pub fn to_oml(family: Family, mut tensors: StateDict) -> Result<StateDict> {
    match family {
        Family::Vit => {
            if tensors
                .keys()
                .any(|k| k.ends_with("embeddings.patch_embeddings.projection.weight"))
            {
                strip_prefix_before(&mut tensors, "embeddings.");
                tensors = hf_vit(tensors)?;
            }
            timm_registers(&mut tensors)?;
            Ok(tensors)
        }
        Family::Clip => {
            if tensors
                .keys()
                .any(|k| k.ends_with("embeddings.patch_embedding.weight"))
            {
                return hf_clip(tensors);
            }
            if tensors.keys().any(|k| k.contains("visual.class_embedding")) {
                tensors.retain(|k, _| k.contains("visual."));
                strip_prefix_before(&mut tensors, "class_embedding");
            }
            Ok(tensors)
        }
        Family::Resnet => Ok(tensors),
    }
}

/// timm's DINOv2-with-registers names to the original ones (a no-op on other files).
fn timm_registers(tensors: &mut StateDict) -> Result<()> {
    if let Some(reg) = tensors.remove("reg_token") {
        tensors.entry("register_tokens".to_owned()).or_insert(reg);
    }
    if let Some(pos) = tensors.get("pos_embed")
        && let [1, n, d] = *pos.dims()
    {
        let side = (n as f64).sqrt().round() as usize;
        if side * side == n {
            let zero = Tensor::zeros((1, 1, d), pos.dtype(), pos.device())?;
            let full = Tensor::cat(&[&zero, pos], 1)?;
            tensors.insert("pos_embed".to_owned(), full);
        }
    }
    Ok(())
}

fn take(tensors: &mut StateDict, from: &str, to: &str, out: &mut StateDict) {
    if let Some(t) = tensors.remove(from) {
        out.insert(to.to_owned(), t);
    }
}

/// `q`, `k`, `v` weights (and biases) concatenated along the output dimension, when all three are
/// there; otherwise left in place so the check reports them.
fn fuse_qkv(
    tensors: &mut StateDict,
    names: [&str; 3],
    to: &str,
    out: &mut StateDict,
) -> Result<()> {
    for part in ["weight", "bias"] {
        let keys = names.map(|n| format!("{n}.{part}"));
        if keys.iter().all(|k| tensors.contains_key(k)) {
            let parts: Vec<Tensor> = keys.iter().filter_map(|k| tensors.remove(k)).collect();
            out.insert(format!("{to}_{part}"), Tensor::cat(&parts, 0)?);
        }
    }
    Ok(())
}

/// transformers' ViTModel / Dinov2Model / Dinov2WithRegistersModel to DINO's names.
fn hf_vit(mut t: StateDict) -> Result<StateDict> {
    let mut out = StateDict::new();
    take(&mut t, "embeddings.cls_token", "cls_token", &mut out);
    take(&mut t, "embeddings.mask_token", "mask_token", &mut out);
    take(
        &mut t,
        "embeddings.register_tokens",
        "register_tokens",
        &mut out,
    );
    take(
        &mut t,
        "embeddings.position_embeddings",
        "pos_embed",
        &mut out,
    );
    for p in ["weight", "bias"] {
        take(
            &mut t,
            &format!("embeddings.patch_embeddings.projection.{p}"),
            &format!("patch_embed.proj.{p}"),
            &mut out,
        );
        take(
            &mut t,
            &format!("layernorm.{p}"),
            &format!("norm.{p}"),
            &mut out,
        );
    }
    let n_layers = (0..)
        .take_while(|i| {
            t.keys()
                .any(|k| k.starts_with(&format!("encoder.layer.{i}.")))
        })
        .count();
    for i in 0..n_layers {
        let s = format!("encoder.layer.{i}");
        let d = format!("blocks.{i}");
        let att = format!("{s}.attention.attention");
        let mut fused = StateDict::new();
        fuse_qkv(
            &mut t,
            [
                &format!("{att}.query"),
                &format!("{att}.key"),
                &format!("{att}.value"),
            ],
            "qkv",
            &mut fused,
        )?;
        for (k, v) in fused {
            let part = k.trim_start_matches("qkv_");
            out.insert(format!("{d}.attn.qkv.{part}"), v);
        }
        for p in ["weight", "bias"] {
            let pairs = [
                (
                    format!("{s}.attention.output.dense.{p}"),
                    format!("{d}.attn.proj.{p}"),
                ),
                // Dinov2 names
                (format!("{s}.norm1.{p}"), format!("{d}.norm1.{p}")),
                (format!("{s}.norm2.{p}"), format!("{d}.norm2.{p}")),
                (format!("{s}.mlp.fc1.{p}"), format!("{d}.mlp.fc1.{p}")),
                (format!("{s}.mlp.fc2.{p}"), format!("{d}.mlp.fc2.{p}")),
                // ViT (DINO v1) names
                (
                    format!("{s}.layernorm_before.{p}"),
                    format!("{d}.norm1.{p}"),
                ),
                (format!("{s}.layernorm_after.{p}"), format!("{d}.norm2.{p}")),
                (
                    format!("{s}.intermediate.dense.{p}"),
                    format!("{d}.mlp.fc1.{p}"),
                ),
                (format!("{s}.output.dense.{p}"), format!("{d}.mlp.fc2.{p}")),
            ];
            for (from, to) in pairs {
                take(&mut t, &from, &to, &mut out);
            }
        }
        take(
            &mut t,
            &format!("{s}.layer_scale1.lambda1"),
            &format!("{d}.ls1.gamma"),
            &mut out,
        );
        take(
            &mut t,
            &format!("{s}.layer_scale2.lambda1"),
            &format!("{d}.ls2.gamma"),
            &mut out,
        );
    }
    // Whatever is left (a pooler, a classifier) is kept under its own name: the check lists it.
    out.extend(t);
    Ok(out)
}

/// transformers' CLIPVisionModel(WithProjection) / CLIPModel to OpenAI's visual names.
fn hf_clip(mut t: StateDict) -> Result<StateDict> {
    t.retain(|k, _| k.contains("vision_model.") || k.contains("visual_projection."));
    strip_prefix_before(&mut t, "vision_model.");
    let mut out = StateDict::new();
    if let Some(w) = t.remove("visual_projection.weight") {
        out.insert("proj".to_owned(), w.t()?.contiguous()?);
    }
    let v = "vision_model";
    take(
        &mut t,
        &format!("{v}.embeddings.class_embedding"),
        "class_embedding",
        &mut out,
    );
    take(
        &mut t,
        &format!("{v}.embeddings.patch_embedding.weight"),
        "conv1.weight",
        &mut out,
    );
    take(
        &mut t,
        &format!("{v}.embeddings.position_embedding.weight"),
        "positional_embedding",
        &mut out,
    );
    t.remove(&format!("{v}.embeddings.position_ids"));
    for p in ["weight", "bias"] {
        take(
            &mut t,
            &format!("{v}.pre_layrnorm.{p}"),
            &format!("ln_pre.{p}"),
            &mut out,
        );
        take(
            &mut t,
            &format!("{v}.post_layernorm.{p}"),
            &format!("ln_post.{p}"),
            &mut out,
        );
    }
    let n_layers = (0..)
        .take_while(|i| {
            t.keys()
                .any(|k| k.starts_with(&format!("{v}.encoder.layers.{i}.")))
        })
        .count();
    for i in 0..n_layers {
        let s = format!("{v}.encoder.layers.{i}");
        let d = format!("transformer.resblocks.{i}");
        let mut fused = StateDict::new();
        fuse_qkv(
            &mut t,
            [
                &format!("{s}.self_attn.q_proj"),
                &format!("{s}.self_attn.k_proj"),
                &format!("{s}.self_attn.v_proj"),
            ],
            "in_proj",
            &mut fused,
        )?;
        for (k, x) in fused {
            out.insert(format!("{d}.attn.{k}"), x);
        }
        for p in ["weight", "bias"] {
            let pairs = [
                (
                    format!("{s}.self_attn.out_proj.{p}"),
                    format!("{d}.attn.out_proj.{p}"),
                ),
                (format!("{s}.layer_norm1.{p}"), format!("{d}.ln_1.{p}")),
                (format!("{s}.layer_norm2.{p}"), format!("{d}.ln_2.{p}")),
                (format!("{s}.mlp.fc1.{p}"), format!("{d}.mlp.c_fc.{p}")),
                (format!("{s}.mlp.fc2.{p}"), format!("{d}.mlp.c_proj.{p}")),
            ];
            for (from, to) in pairs {
                take(&mut t, &from, &to, &mut out);
            }
        }
    }
    out.extend(t);
    Ok(out)
}
