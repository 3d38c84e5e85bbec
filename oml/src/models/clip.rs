//! CLIP's visual tower (OpenAI's ViT), with OML's `ViTCLIPExtractor` semantics: patches plus a
//! class embedding and position embeddings, `ln_pre`, pre-norm residual blocks with QuickGELU,
//! then `ln_post(x[:, 0]) @ proj`. No interpolation: the input must be the model's resolution.
//!
//! Weights in OpenAI's names under the tower (the caller strips `visual.`): `conv1.weight`
//! (no bias), `class_embedding [D]`, `positional_embedding [1 + g*g, D]`, `ln_pre`,
//! `transformer.resblocks.N.{ln_1, attn.in_proj_weight [3D, D], attn.in_proj_bias,
//! attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_post`, `proj [D, out]`.

use candle_core::{DType, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Architecture of a CLIP visual tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Token width.
    pub width: usize,
    /// Residual blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Output (projection) dimension.
    pub output_dim: usize,
    /// Input side in pixels (224 or 336); inputs must be exactly this.
    pub input_resolution: usize,
    /// Whether to L2-normalise the output.
    pub normalise: bool,
}

/// Every arch [`ClipConfig::from_arch`] knows.
pub const CLIP_ARCHS: [&str; 4] = ["vitb32_224", "vitb16_224", "vitl14_224", "vitl14_336"];

impl ClipConfig {
    /// OML's arch names: `vitb32_224`, `vitb16_224`, `vitl14_224`, `vitl14_336`.
    pub fn from_arch(arch: &str) -> Result<Self> {
        let (patch, width, layers, heads, out, res) = match arch {
            "vitb32_224" => (32, 768, 12, 12, 512, 224),
            "vitb16_224" => (16, 768, 12, 12, 512, 224),
            "vitl14_224" => (14, 1024, 24, 16, 768, 224),
            "vitl14_336" => (14, 1024, 24, 16, 768, 336),
            other => {
                return Err(Error::UnknownName {
                    kind: "CLIP arch",
                    name: other.to_owned(),
                    known: CLIP_ARCHS.iter().map(|s| s.to_string()).collect(),
                });
            }
        };
        Ok(ClipConfig {
            patch_size: patch,
            width,
            layers,
            heads,
            output_dim: out,
            input_resolution: res,
            normalise: false,
        })
    }
}

struct ResBlock {
    ln_1: super::Norm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: super::Norm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
}

fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

impl ResBlock {
    fn new(d: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let ln = |n: &str| super::Norm::new(d, 1e-5, vb.pp(n));
        let attn = vb.pp("attn");
        let w = attn.get((3 * d, d), "in_proj_weight")?;
        let b = attn.get(3 * d, "in_proj_bias")?;
        Ok(ResBlock {
            ln_1: ln("ln_1")?,
            in_proj: Linear::new(w, Some(b)),
            out_proj: candle_nn::linear(d, d, attn.pp("out_proj"))?,
            ln_2: ln("ln_2")?,
            c_fc: candle_nn::linear(d, 4 * d, vb.pp("mlp.c_fc"))?,
            c_proj: candle_nn::linear(4 * d, d, vb.pp("mlp.c_proj"))?,
            heads,
        })
    }

    /// The block on the residual stream `x`, the products in `dtype`.
    fn forward(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let qkv = super::linear(&self.in_proj, &self.ln_1.forward(x)?, dtype)?;
        let a = super::self_attention(&qkv, self.heads, self.ln_1.trainable())?;
        let x = super::residual_add(x, &super::linear(&self.out_proj, &a, dtype)?)?;
        let h = quick_gelu(&super::linear(&self.c_fc, &self.ln_2.forward(&x)?, dtype)?)?;
        super::residual_add(&x, &super::linear(&self.c_proj, &h, dtype)?)
    }
}

/// CLIP's visual tower returning the projected class token `[B, output_dim]`.
pub struct ClipVisual {
    cfg: ClipConfig,
    conv1: Conv2d,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: super::Norm,
    blocks: Vec<ResBlock>,
    ln_post: super::Norm,
    proj: Tensor,
}

impl ClipVisual {
    /// Builds the tower from `vb` (OpenAI names, without the `visual.` prefix).
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.width;
        if cfg.patch_size == 0 || cfg.heads == 0 || !d.is_multiple_of(cfg.heads) {
            return Err(Error::param(
                "clip width/heads",
                format!("{d}/{}", cfg.heads),
                "width a multiple of heads, patch > 0",
            ));
        }
        let g = cfg.input_resolution / cfg.patch_size;
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            ..Default::default()
        };
        Ok(ClipVisual {
            cfg: cfg.clone(),
            conv1: candle_nn::conv2d_no_bias(3, d, cfg.patch_size, conv, vb.pp("conv1"))?,
            class_embedding: vb.get(d, "class_embedding")?,
            positional_embedding: vb.get((1 + g * g, d), "positional_embedding")?,
            ln_pre: super::Norm::new(d, 1e-5, vb.pp("ln_pre"))?,
            blocks: (0..cfg.layers)
                .map(|i| ResBlock::new(d, cfg.heads, vb.pp(format!("transformer.resblocks.{i}"))))
                .collect::<Result<_>>()?,
            ln_post: super::Norm::new(d, 1e-5, vb.pp("ln_post"))?,
            proj: vb.get((d, cfg.output_dim), "proj")?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// Length of the output.
    pub fn feat_dim(&self) -> usize {
        self.cfg.output_dim
    }

    /// Embeddings `[B, output_dim]` of images `[B, 3, R, R]` (`R` = the input resolution).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let r = self.cfg.input_resolution;
        if c != 3 || h != r || w != r {
            return Err(Error::Msg(format!(
                "CLIP input must be [B, 3, {r}, {r}] (as in OML, no other size); got {:?}",
                images.dims()
            )));
        }
        let d = self.cfg.width;
        // Products in the images' dtype; the residual stream in the weights' (f32).
        let dtype = images.dtype();
        let x = super::patch_embed(&self.conv1, images, self.cfg.patch_size)?;
        let x = super::cast(&x, self.class_embedding.dtype())?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x =
            Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.positional_embedding.unsqueeze(0)?)?;
        let mut x = self.ln_pre.forward(&x)?;
        for block in &self.blocks {
            x = block.forward(&x, dtype)?;
        }
        let cls = self.ln_post.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        let out = super::cast(&cls, dtype)?.matmul(&super::cast(&self.proj, dtype)?)?;
        if self.cfg.normalise {
            return super::l2_normalise(&out);
        }
        Ok(out)
    }
}
