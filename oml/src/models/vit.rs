//! Vision Transformer as DINO (v1) and DINOv2 define it, with OML's extractor semantics: the CLS
//! token after the final LayerNorm, position embeddings resized for any input whose sides are
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

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};
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
}

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
                    known: [
                        "vits16", "vits8", "vitb16", "vitb8", "vits14", "vitb14", "vitl14",
                    ]
                    .map(String::from)
                    .to_vec(),
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
        })
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    ls2: Option<Tensor>,
    heads: usize,
}

impl Block {
    fn new(cfg: &ViTConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let hidden = d * cfg.mlp_ratio;
        let ln = |name: &str| candle_nn::layer_norm(d, cfg.eps, vb.pp(name));
        let gamma = |name: &str| -> Result<Option<Tensor>> {
            Ok(if cfg.layerscale {
                Some(vb.pp(name).get(d, "gamma")?)
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

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)? * (hd as f64).powf(-0.5))?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let out = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(self.proj.forward(&out)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let scale = |t: Tensor, g: &Option<Tensor>| -> Result<Tensor> {
            Ok(match g {
                Some(g) => t.broadcast_mul(g)?,
                None => t,
            })
        };
        let a = scale(self.attention(&self.norm1.forward(x)?)?, &self.ls1)?;
        let x = (x + a)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        let m = scale(self.fc2.forward(&h)?, &self.ls2)?;
        Ok((x + m)?)
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
    norm: LayerNorm,
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
        let cls = vb.get((1, 1, d), "cls_token")?;
        let m = cfg.pos_grid;
        if m == 0 {
            return Err(Error::param(
                "pos_grid",
                0,
                "the side of the position grid, > 0",
            ));
        }
        let pos = vb.get((1, 1 + m * m, d), "pos_embed")?;
        let registers = if cfg.n_registers > 0 {
            Some(vb.get((1, cfg.n_registers, d), "register_tokens")?)
        } else {
            None
        };
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        let norm = candle_nn::layer_norm(d, cfg.eps, vb.pp("norm"))?;
        Ok(ViTExtractor {
            cfg: cfg.clone(),
            patch,
            cls,
            pos,
            registers,
            blocks,
            norm,
        })
    }

    /// Loads weights from a safetensors file onto `device`.
    pub fn from_safetensors(cfg: &ViTConfig, path: &Path, device: &Device) -> Result<Self> {
        let mut tensors =
            candle_core::safetensors::load(path, device).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                message: format!("not a readable safetensors file: {e}"),
            })?;
        // timm's DINOv2 layout: `reg_token`, and `pos_embed` without the class slot (the class
        // position is folded into `cls_token`): a zero slot in front is exact.
        if let Some(reg) = tensors.remove("reg_token") {
            tensors.entry("register_tokens".to_owned()).or_insert(reg);
        }
        let m = cfg.pos_grid;
        if let Some(pos) = tensors.get("pos_embed")
            && pos.dims() == [1, m * m, cfg.embed_dim]
        {
            let zero = Tensor::zeros((1, 1, cfg.embed_dim), pos.dtype(), device)?;
            let full = Tensor::cat(&[&zero, pos], 1)?;
            tensors.insert("pos_embed".to_owned(), full);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(cfg, vb).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            message: format!("weights do not fit the {} ViT: {e}", cfg.embed_dim),
        })
    }

    /// Embedding dimension.
    pub fn feat_dim(&self) -> usize {
        self.cfg.embed_dim
    }

    /// Position embeddings for a `gh x gw` grid of patches: `[1, 1 + gh * gw, D]`.
    fn position_embeddings(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let d = self.cfg.embed_dim;
        let m = self.cfg.pos_grid;
        if gh == m && gw == m {
            return Ok(self.pos.clone());
        }
        let grid: Vec<f32> = self
            .pos
            .narrow(1, 1, m * m)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        let resized = if self.cfg.n_registers > 0 {
            antialiased_resize_grid(&grid, m, d, gh, gw)
        } else {
            bicubic_resize_grid(&grid, m, d, gh, gw, 0.1)
        };
        let patch = Tensor::from_vec(resized, (1, gh * gw, d), self.pos.device())?;
        Ok(Tensor::cat(&[&self.pos.narrow(1, 0, 1)?, &patch], 1)?)
    }

    /// Embeddings `[B, D]` of images `[B, 3, H, W]`.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = images.dims4()?;
        let p = self.cfg.patch_size;
        if c != 3 || h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            return Err(Error::Msg(format!(
                "ViT input must be [B, 3, H, W] with H and W multiples of {p}; got {:?}",
                images.dims()
            )));
        }
        let x = self.patch.forward(images)?; // [B, D, gh, gw]
        let (gh, gw) = (h / p, w / p);
        let x = x.flatten_from(2)?.transpose(1, 2)?; // [B, gh * gw, D]
        let cls = self.cls.broadcast_as((b, 1, self.cfg.embed_dim))?;
        let mut x =
            Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embeddings(gh, gw)?)?;
        if let Some(reg) = &self.registers {
            let (n, d) = (self.cfg.n_registers, self.cfg.embed_dim);
            let reg = reg.broadcast_as((b, n, d))?.contiguous()?;
            let patches = x.narrow(1, 1, gh * gw)?;
            x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &reg, &patches], 1)?;
        }
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let out = self.norm.forward(&x)?.narrow(1, 0, 1)?.squeeze(1)?;
        if self.cfg.normalise {
            let norms = out.sqr()?.sum_keepdim(1)?.sqrt()?;
            return Ok(out.broadcast_div(&norms)?);
        }
        Ok(out)
    }
}

/// PyTorch's bicubic interpolation (`a = -0.75`, `align_corners = False`) of an `m x m` grid of
/// `d`-vectors to `gh x gw`, with OML's `scale_factor = (g + offset) / m`.
fn bicubic_resize_grid(
    grid: &[f32],
    m: usize,
    d: usize,
    gh: usize,
    gw: usize,
    offset: f64,
) -> Vec<f32> {
    let weights = |g: usize| -> Vec<([usize; 4], [f32; 4])> {
        let scale = m as f64 / (g as f64 + offset);
        (0..g)
            .map(|i| {
                let src = (i as f64 + 0.5) * scale - 0.5;
                let f = src.floor();
                let t = (src - f) as f32;
                let base = f as i64;
                let idx =
                    [base - 1, base, base + 1, base + 2].map(|j| j.clamp(0, m as i64 - 1) as usize);
                (idx, cubic_weights(t))
            })
            .collect()
    };
    let (wy, wx) = (weights(gh), weights(gw));
    let mut out = vec![0f32; gh * gw * d];
    for (oy, (iy, cy)) in wy.iter().enumerate() {
        for (ox, (ix, cx)) in wx.iter().enumerate() {
            let o = &mut out[(oy * gw + ox) * d..(oy * gw + ox + 1) * d];
            for a in 0..4 {
                for bb in 0..4 {
                    let w = cy[a] * cx[bb];
                    let s = &grid[(iy[a] * m + ix[bb]) * d..(iy[a] * m + ix[bb] + 1) * d];
                    for (o, s) in o.iter_mut().zip(s) {
                        *o += w * s;
                    }
                }
            }
        }
    }
    out
}

/// PyTorch's antialiased bicubic (the PIL filter, `a = -0.5`) of an `m x m` grid of `d`-vectors
/// to `gh x gw`: per output index a normalised window of taps, separable.
fn antialiased_resize_grid(grid: &[f32], m: usize, d: usize, gh: usize, gw: usize) -> Vec<f32> {
    let taps = |g: usize| -> Vec<Vec<(usize, f32)>> {
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
    };
    let (ty, tx) = (taps(gh), taps(gw));
    let mut out = vec![0f32; gh * gw * d];
    for (oy, wy) in ty.iter().enumerate() {
        for (ox, wx) in tx.iter().enumerate() {
            let o = &mut out[(oy * gw + ox) * d..(oy * gw + ox + 1) * d];
            for &(iy, a) in wy {
                for &(ix, bb) in wx {
                    let w = a * bb;
                    let s = &grid[(iy * m + ix) * d..(iy * m + ix + 1) * d];
                    for (o, s) in o.iter_mut().zip(s) {
                        *o += w * s;
                    }
                }
            }
        }
    }
    out
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
