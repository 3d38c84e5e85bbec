//! Vision Transformer as DINO (v1) and DINOv2 define it, with OML's extractor semantics: the CLS
//! token after the final  position embeddings resized for any input whose sides are
//! multiples of the patch.
//!
//! Shapes: input `[B, 3, H, W]` (`H`, `W` multiples of the patch), tokens `[B, 1 + h * w, D]`,
//! output `[B, D]`. Weights in the original DINO/DINOv2 (and timm) layout: `patch_embed.proj`,
//! `cls_token [1, 1, D]`, `pos_embed [1, 1 + M * M, D]`, `blocks.N.{norm1, attn.qkv, attn.proj,
//! ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm`.
//!
//! Position embeddings (OML's vendored DINO/DINOv2 code): the `M x M` grid is resized with PyTorch's
//! bicubic (`a = -0.75`, `align_corners = False`) at `scale_factor = (g + 0.1) / M`, so that output
//! index `i` reads source `(i + 0.5) * M / (g + 0.1) - 0.5`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Architecture of a ViT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTConfig {
    /// Patch side in pixels (14 or 16, 8).
    pub patch_size: usize,
    /// Token dimension.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP hidden size over the token dimension.
    pub mlp_ratio: usize,
    /// Whether blocks scale their branches (DINOv2's LayerScale, `ls1.gamma`, `ls2.gamma`).
    pub layerscale: bool,
    /// Side `M` of the position-embedding grid the weights carry (`pos_embed [1, 1 + M * M, D]`):
    /// 37 for DINOv2 (518 px), 224 / patch for DINO.
    pub pos_grid: usize,
    /// Register tokens (DINOv2 `_reg` models: 4), placed after CLS, without position embedding.
    /// Models with registers resize position embeddings with the antialiased (PIL-style) bicubic
    /// filter at the target size, as OML's vendored DINOv2 does for them.
    pub n_registers: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Whether to L2-normalise the output.
    pub normalise: bool,
    /// OML's `use_multi_scale`: the mean of the embeddings at scales 1, 1/sqrt(2) and 1/2
    /// (bilinear, as DINO's evaluation does). DINO (v1) only: DINOv2 needs multiples of 14.
    #[serde(default)]
    pub multi_scale: bool,
}

/// Every arch [`ViTConfig::from_arch`] knows.
pub const VIT_ARCHS: [&str; 10] = [
    "vits16",
    "vits8",
    "vitb16",
    "vitb8",
    "vits14",
    "vitb14",
    "vitl14",
    "vits14_reg",
    "vitb14_reg",
    "vitl14_reg",
];

impl ViTConfig {
    /// OML's arch names: `vits16`, `vits8`, `vitb16`, `vitb8` (DINO), `vits14`, `vitb14`, `vitl14`
    /// (DINOv2).
    pub fn from_arch(arch: &str) -> Result<Self> {
        if let Some(base) = arch.strip_suffix("_reg").filter(|b| b.ends_with("14")) {
            let mut cfg = Self::from_arch(base)?;
            cfg.n_registers = 4;
            return Ok(cfg);
        }
        let (patch, dim, depth, heads, layerscale, grid) = match arch {
            "vits16" => (16, 384, 12, 6, false, 14),
            "vits8" => (8, 384, 12, 6, false, 28),
            "vitb16" => (16, 768, 12, 12, false, 14),
            "vitb8" => (8, 768, 12, 12, false, 28),
            "vits14" => (14, 384, 12, 6, true, 37),
            "vitb14" => (14, 768, 12, 12, true, 37),
            "vitl14" => (14, 1024, 24, 16, true, 37),
            other => {
                return Err(Error::UnknownName {
                    kind: "ViT arch",
                    name: other.to_owned(),
                    known: VIT_ARCHS.map(String::from).to_vec(),
                });
            }
        };
        Ok(ViTConfig {
            patch_size: patch,
            embed_dim: dim,
            depth,
            num_heads: heads,
            mlp_ratio: 4,
            layerscale,
            pos_grid: grid,
            n_registers: 0,
            eps: 1e-6,
            normalise: false,
            multi_scale: false,
        })
    }
}

struct Block {
    norm1: super::Norm,
    qkv: Linear,
    proj: Linear,
    ls1: Option<Tensor>,
    norm2: super::Norm,
    fc1: Linear,
    fc2: Linear,
    ls2: Option<Tensor>,
    heads: usize,
}

impl Block {
    fn new(cfg: &ViTConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let hidden = d * cfg.mlp_ratio;
        let ln = |name: &str| super::Norm::new(d, cfg.eps, vb.pp(name));
        let gamma = |name: &str| -> Result<Option<Tensor>> {
            Ok(if cfg.layerscale {
                Some(vb.pp(name).get_with_hints(d, "gamma", Init::Const(1e-5))?)
            } else {
                None
            })
        };
        Ok(Block {
            norm1: ln("norm1")?,
            qkv: candle_nn::linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(d, d, vb.pp("attn.proj"))?,
            ls1: gamma("ls1")?,
            norm2: ln("norm2")?,
            fc1: candle_nn::linear(d, hidden, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(hidden, d, vb.pp("mlp.fc2"))?,
            ls2: gamma("ls2")?,
            heads: cfg.num_heads,
        })
    }

    /// The attention branch, its products in `dtype`.
    fn attention(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        let qkv = super::linear(&self.qkv, x, dtype)?;
        let out = super::self_attention(&qkv, self.heads, self.norm1.trainable())?;
        super::linear(&self.proj, &out, dtype)
    }

    /// The block on the residual stream `x`, the products in `dtype` (mixed precision: bf16 or
    /// f16 products, the stream in f32).
    fn forward(&self, x: &Tensor, dtype: DType) -> Result<Tensor> {
        // x + branch (widened to the stream's dtype), scaled by LayerScale's gamma when there is one.
        let residual = |x: &Tensor, branch: Tensor, g: &Option<Tensor>| -> Result<Tensor> {
            let branch = super::cast(&branch, x.dtype())?;
            Ok(match g {
                Some(g) => oml_kernels::residual_scale(x, &branch, g)?,
                None => (x + branch)?,
            })
        };
        let x = residual(
            x,
            self.attention(&self.norm1.forward(x)?, dtype)?,
            &self.ls1,
        )?;
        let h = super::linear_gelu(&self.fc1, &self.norm2.forward(&x)?, dtype)?;
        residual(&x, super::linear(&self.fc2, &h, dtype)?, &self.ls2)
    }
}

/// A DINO / DINOv2 ViT that returns the CLS token after the final norm. Weights are constants
/// (inference); build it through a `VarMap` to fine-tune.
pub struct ViTExtractor {
    cfg: ViTConfig,
    patch: Conv2d,
    cls: Tensor,
    pos: Tensor,
    registers: Option<Tensor>,
    blocks: Vec<Block>,
    norm: super::Norm,
    /// Interpolation matrices by patch grid `(gh, gw)`: built once per input size, not per batch.
    resize: Mutex<HashMap<(usize, usize), Tensor>>,
}

impl ViTExtractor {
    /// Builds the network from `vb` (original DINO/DINOv2 key names).
    pub fn new(cfg: &ViTConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            ..Conv2dConfig::default()
        };
        let patch = candle_nn::conv2d(3, d, cfg.patch_size, conv, vb.pp("patch_embed.proj"))?;
        let small = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let cls = vb.get_with_hints((1, 1, d), "cls_token", small)?;
        let m = cfg.pos_grid;
        if m == 0 {
            return Err(Error::param(
                "pos_grid",
                0,
                "the side of the position grid, > 0",
            ));
        }
        let pos = vb.get_with_hints((1, 1 + m * m, d), "pos_embed", small)?;
        let registers = if cfg.n_registers > 0 {
            Some(vb.get_with_hints((1, cfg.n_registers, d), "register_tokens", small)?)
        } else {
            None
        };
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        let norm = super::Norm::new(d, cfg.eps, vb.pp("norm"))?;
        Ok(ViTExtractor {
            cfg: cfg.clone(),
            patch,
            cls,
            pos,
            registers,
            blocks,
            norm,
            resize: Mutex::new(HashMap::new()),
        })
    }

    /// Loads weights from a file onto `device` (safetensors or a PyTorch checkpoint, DINO's,
    /// timm's or Hugging Face's layout; see [`crate::models::load`] for the rules).
    pub fn from_safetensors(cfg: &ViTConfig, path: &Path, device: &Device) -> Result<Self> {
        super::load_with(super::Family::Vit, path, device, None, |vb| {
            Self::new(cfg, vb)
        })
    }

    /// Embedding dimension.
    pub fn feat_dim(&self) -> usize {
        self.cfg.embed_dim
    }

    /// Position embeddings for a `gh x gw` grid of patches: `[1, 1 + gh * gw, D]`. The resize is
    /// a product with a fixed interpolation matrix, so gradients reach `pos_embed` when
    /// fine-tuning at any size.
    fn position_embeddings(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let m = self.cfg.pos_grid;
        if gh == m && gw == m {
            return Ok(self.pos.clone());
        }
        let matrix = {
            let mut cache = self.resize.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&(gh, gw)) {
                Some(t) => t.clone(),
                None => {
                    let t = self.resize_matrix(gh, gw)?;
                    cache.insert((gh, gw), t.clone());
                    t
                }
            }
        };
        let grid = self.pos.narrow(1, 1, m * m)?.squeeze(0)?;
        let patch = matrix.matmul(&grid)?.unsqueeze(0)?;
        Ok(Tensor::cat(&[&self.pos.narrow(1, 0, 1)?, &patch], 1)?)
    }

    /// The `[gh * gw, M * M]` matrix that resizes the `M x M` position grid to `gh x gw`.
    fn resize_matrix(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let m = self.cfg.pos_grid;
        let (ty, tx) = if self.cfg.n_registers > 0 {
            (antialiased_taps(m, gh), antialiased_taps(m, gw))
        } else {
            (bicubic_taps(m, gh, 0.1), bicubic_taps(m, gw, 0.1))
        };
        let mut matrix = vec![0f32; gh * gw * m * m];
        for (oy, wy) in ty.iter().enumerate() {
            for (ox, wx) in tx.iter().enumerate() {
                let row = &mut matrix[(oy * gw + ox) * m * m..(oy * gw + ox + 1) * m * m];
                for &(iy, a) in wy {
                    for &(ix, b) in wx {
                        row[iy * m + ix] += a * b;
                    }
                }
            }
        }
        Ok(
            Tensor::from_vec(matrix, (gh * gw, m * m), self.pos.device())?
                .to_dtype(self.pos.dtype())?,
        )
    }

    /// Embeddings `[B, D]`: one scale, or OML's multi-scale mean when configured.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let out = if self.cfg.multi_scale {
            let (_, _, h, w) = images.dims4()?;
            let mut sum = self.forward_one(images)?;
            for s in [1.0 / 2f64.sqrt(), 0.5] {
                let scaled = bilinear_scale(images, h, w, s)?;
                sum = (sum + self.forward_one(&scaled)?)?;
            }
            (sum / 3.0)?
        } else {
            self.forward_one(images)?
        };
        if self.cfg.normalise {
            return super::l2_normalise(&out);
        }
        Ok(out)
    }

    /// Embeddings `[B, D]` of images `[B, 3, H, W]` at one scale, before normalisation. DINOv2
    /// (LayerScale) needs sides that are multiples of the patch, as its patch embedding asserts;
    /// DINO (v1) drops the remainder, as its convolution does.
    fn forward_one(&self, images: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let p = self.cfg.patch_size;
        let strict = self.cfg.layerscale || self.cfg.n_registers > 0;
        if c != 3 || h < p || w < p || (strict && (h % p != 0 || w % p != 0)) {
            return Err(Error::Msg(format!(
                "ViT input must be [B, 3, H, W] with H and W {} {p}; got {:?}",
                if strict { "multiples of" } else { "at least" },
                images.dims()
            )));
        }
        let (gh, gw) = (h / p, w / p);
        // Products in the images' dtype; the residual stream in the weights' (f32).
        let dtype = images.dtype();
        let x = super::patch_embed(&self.patch, images, p)?; // [B, gh * gw, D]
        let x = super::cast(&x, self.cls.dtype())?;
        let cls = self.cls.broadcast_as((b, 1, self.cfg.embed_dim))?;
        let pos = self.position_embeddings(gh, gw)?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&pos)?;
        if let Some(reg) = &self.registers {
            let (n, d) = (self.cfg.n_registers, self.cfg.embed_dim);
            let reg = reg.broadcast_as((b, n, d))?.contiguous()?;
            let patches = x.narrow(1, 1, gh * gw)?;
            x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &reg, &patches], 1)?;
        }
        for block in &self.blocks {
            x = block.forward(&x, dtype)?;
        }
        Ok(self.norm.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

/// PyTorch's bicubic interpolation (`a = -0.75`, `align_corners = False`) from `m` to `g`
/// samples with OML's `scale_factor = (g + offset) / m`: per output index, four (clamped) source
/// indices and weights. Output `i` reads source `(i + 0.5) * m / (g + offset) - 0.5`.
fn bicubic_taps(m: usize, g: usize, offset: f64) -> Vec<Vec<(usize, f32)>> {
    let scale = m as f64 / (g as f64 + offset);
    (0..g)
        .map(|i| {
            let src = (i as f64 + 0.5) * scale - 0.5;
            let f = src.floor();
            let w = cubic_weights((src - f) as f32);
            let base = f as i64;
            (0..4)
                .map(|j| {
                    let idx = (base - 1 + j as i64).clamp(0, m as i64 - 1) as usize;
                    (idx, w[j])
                })
                .collect()
        })
        .collect()
}

/// PyTorch's antialiased bicubic (the PIL filter, `a = -0.5`) from `m` to `g` samples: per output
/// index a normalised window of taps.
fn antialiased_taps(m: usize, g: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = m as f64 / g as f64;
    let support_scale = scale.max(1.0);
    let support = 2.0 * support_scale;
    (0..g)
        .map(|i| {
            let centre = scale * (i as f64 + 0.5);
            let lo = (centre - support + 0.5).floor().max(0.0) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(m);
            let mut w: Vec<(usize, f32)> = (lo..hi)
                .map(|j| {
                    (
                        j,
                        pil_cubic((j as f64 - centre + 0.5) / support_scale) as f32,
                    )
                })
                .collect();
            let total: f32 = w.iter().map(|(_, x)| x).sum();
            if total != 0.0 {
                w.iter_mut().for_each(|(_, x)| *x /= total);
            }
            w
        })
        .collect()
}

/// PyTorch's `interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)`: output side
/// `floor(n * s)`, source `(i + 0.5) / s - 0.5` clamped at 0, as two products with fixed matrices.
fn bilinear_scale(x: &Tensor, h: usize, w: usize, s: f64) -> Result<Tensor> {
    let matrix = |n: usize| -> Result<Tensor> {
        let out = (n as f64 * s).floor() as usize;
        let mut m = vec![0f32; out * n];
        for i in 0..out {
            let src = ((i as f64 + 0.5) / s - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let t = (src - i0 as f64) as f32;
            m[i * n + i0] += 1.0 - t;
            m[i * n + i1] += t;
        }
        Ok(Tensor::from_vec(m, (out, n), x.device())?.to_dtype(x.dtype())?)
    };
    let (my, mx) = (matrix(h)?, matrix(w)?);
    // [B, C, H, W] x [W, W'] -> [B, C, H, W'], then [H', H] x [B, C, H, W'] -> [B, C, H', W'].
    let x = x.broadcast_matmul(&mx.t()?)?;
    Ok(my.broadcast_matmul(&x)?)
}

/// The cubic kernel with `a = -0.5` (PIL's bicubic).
fn pil_cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The four cubic-convolution weights (`a = -0.75`) of a fractional offset `t`.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}
