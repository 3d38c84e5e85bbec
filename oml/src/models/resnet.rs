//! ResNet 18/34/50/101/152 as torchvision builds it (v1.5: a Bottleneck strides on its 3x3
//! convolution), with OML's extractor semantics: the classifier removed, average or GeM pooling,
//! optional L2 normalisation, and batch norm that trains (batch statistics and running averages
//! updated when `train` is true, running statistics otherwise).
//!
//! Weights in torchvision's (and timm's `*.tv_in1k`) names: `conv1`, `bn1`,
//! `layerS.B.{conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0, downsample.1}`, `fc`.

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The residual block of a ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResNetBlock {
    /// Two 3x3 convolutions (ResNet 18, 34); expansion 1.
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (ResNet 50, 101, 152); expansion 4.
    Bottleneck,
}

impl ResNetBlock {
    fn expansion(self) -> usize {
        match self {
            ResNetBlock::Basic => 1,
            ResNetBlock::Bottleneck => 4,
        }
    }
}

/// The classifier after pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResNetHead {
    /// `fc`: one linear layer to `n` classes (torchvision's).
    Linear(usize),
    /// `fc.0`, ReLU, `fc.2`: MoCo v2's projector (`resnet50_projector`, 2048 -> 2048 -> n).
    Projector(usize),
}

/// Architecture of a ResNet extractor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: ResNetBlock,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Channels of the first stage (64 in every torchvision ResNet); stages double it.
    pub width: usize,
    /// GeM pooling power (`None`: average pooling). OML's `resnet50_moco_v2` uses 5.
    pub gem_p: Option<f64>,
    /// The classifier; ignored (and its weights not required) when `remove_fc` is true.
    pub head: ResNetHead,
    /// Whether the output is the pooled features (OML's extractors: always) or the head's.
    pub remove_fc: bool,
    /// Whether to L2-normalise the output.
    pub normalise: bool,
}

impl ResNetConfig {
    /// OML's arch names: `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`,
    /// `resnet50_projector` (MoCo v2's, with the projector head when `remove_fc` is false).
    pub fn from_arch(arch: &str) -> Result<Self> {
        let (block, layers, head) = match arch {
            "resnet18" => (ResNetBlock::Basic, [2, 2, 2, 2], ResNetHead::Linear(1000)),
            "resnet34" => (ResNetBlock::Basic, [3, 4, 6, 3], ResNetHead::Linear(1000)),
            "resnet50" => (
                ResNetBlock::Bottleneck,
                [3, 4, 6, 3],
                ResNetHead::Linear(1000),
            ),
            "resnet101" => (
                ResNetBlock::Bottleneck,
                [3, 4, 23, 3],
                ResNetHead::Linear(1000),
            ),
            "resnet152" => (
                ResNetBlock::Bottleneck,
                [3, 8, 36, 3],
                ResNetHead::Linear(1000),
            ),
            "resnet50_projector" => (
                ResNetBlock::Bottleneck,
                [3, 4, 6, 3],
                ResNetHead::Projector(128),
            ),
            other => {
                return Err(Error::UnknownName {
                    kind: "ResNet arch",
                    name: other.to_owned(),
                    known: RESNET_ARCHS.iter().map(|s| s.to_string()).collect(),
                });
            }
        };
        Ok(ResNetConfig {
            block,
            layers,
            width: 64,
            gem_p: None,
            head,
            remove_fc: true,
            normalise: false,
        })
    }

    /// Channels after the last stage.
    pub fn pooled_dim(&self) -> usize {
        self.width * 8 * self.block.expansion()
    }

    /// Length of the output.
    pub fn feat_dim(&self) -> usize {
        if self.remove_fc {
            return self.pooled_dim();
        }
        match self.head {
            ResNetHead::Linear(n) | ResNetHead::Projector(n) => n,
        }
    }
}

/// Every arch [`ResNetConfig::from_arch`] knows.
pub const RESNET_ARCHS: [&str; 6] = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50_projector",
];

struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        vb: &VarBuilder,
        conv: &str,
        bn: &str,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        };
        Ok(ConvBn {
            conv: candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb.pp(conv))?,
            bn: candle_nn::batch_norm(cout, 1e-5, vb.pp(bn))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Mixed precision: batch norm in f32.
        super::in_f32(&super::conv2d(&self.conv, x)?, |y| {
            Ok(self.bn.forward_t(y, train)?)
        })
    }
}

struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        kind: ResNetBlock,
        cin: usize,
        planes: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cout = planes * kind.expansion();
        let convs = match kind {
            ResNetBlock::Basic => vec![
                ConvBn::new(cin, planes, 3, stride, &vb, "conv1", "bn1")?,
                ConvBn::new(planes, planes, 3, 1, &vb, "conv2", "bn2")?,
            ],
            ResNetBlock::Bottleneck => vec![
                ConvBn::new(cin, planes, 1, 1, &vb, "conv1", "bn1")?,
                ConvBn::new(planes, planes, 3, stride, &vb, "conv2", "bn2")?,
                ConvBn::new(planes, cout, 1, 1, &vb, "conv3", "bn3")?,
            ],
        };
        let downsample = if stride != 1 || cin != cout {
            Some(ConvBn::new(
                cin,
                cout,
                1,
                stride,
                &vb,
                "downsample.0",
                "downsample.1",
            )?)
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward_t(&h, train)?;
            if i < last {
                h = h.relu()?;
            }
        }
        let skip = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        Ok((h + skip)?.relu()?)
    }
}

enum Head {
    Linear(Linear),
    Projector(Linear, Linear),
}

/// A torchvision ResNet returning pooled features `[B, C]` (or its head's output).
pub struct ResNetExtractor {
    cfg: ResNetConfig,
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    head: Option<Head>,
}

impl ResNetExtractor {
    /// Builds the network from `vb` (torchvision names).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.width == 0 || cfg.layers.contains(&0) {
            return Err(Error::param(
                "resnet layers/width",
                format!("{:?}/{}", cfg.layers, cfg.width),
                "at least one block per stage and width > 0",
            ));
        }
        if let Some(p) = cfg.gem_p
            && !(p.is_finite() && p > 0.0)
        {
            return Err(Error::param("gem_p", p, "a finite power > 0"));
        }
        let stem = ConvBn::new(3, cfg.width, 7, 2, &vb, "conv1", "bn1")?;
        let mut cin = cfg.width;
        let mut stages = Vec::with_capacity(4);
        for (s, &n) in cfg.layers.iter().enumerate() {
            let planes = cfg.width << s;
            let stride = if s == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let vbb = vb.pp(format!("layer{}.{b}", s + 1));
                let block =
                    Block::new(cfg.block, cin, planes, if b == 0 { stride } else { 1 }, vbb)?;
                cin = planes * cfg.block.expansion();
                blocks.push(block);
            }
            stages.push(blocks);
        }
        let head = if cfg.remove_fc {
            None
        } else {
            Some(match cfg.head {
                ResNetHead::Linear(n) => Head::Linear(candle_nn::linear(cin, n, vb.pp("fc"))?),
                ResNetHead::Projector(n) => Head::Projector(
                    candle_nn::linear(cin, cin, vb.pp("fc.0"))?,
                    candle_nn::linear(cin, n, vb.pp("fc.2"))?,
                ),
            })
        };
        Ok(ResNetExtractor {
            cfg: cfg.clone(),
            stem,
            stages,
            head,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Length of the output.
    pub fn feat_dim(&self) -> usize {
        self.cfg.feat_dim()
    }

    /// The stem (conv, eval-mode BN, ReLU) pooled both ways: inference pooling and the training
    /// one. For tests of the pooling's equivalence.
    #[doc(hidden)]
    pub fn stem_pooled(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = self.stem.forward_t(images, false)?.relu()?;
        Ok((max_pool_3x3_s2(&x, false)?, max_pool_3x3_s2(&x, true)?))
    }

    /// Embeddings `[B, D]` of images `[B, 3, H, W]`; `train` selects batch statistics in batch norm
    /// (and updates the running ones).
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, h, w) = images.dims4()?;
        if c != 3 || h < 32 || w < 32 {
            return Err(Error::Msg(format!(
                "ResNet input must be [B, 3, H, W] with H, W >= 32; got {:?}",
                images.dims()
            )));
        }
        let x = self.stem.forward_t(images, train)?.relu()?;
        let mut x = max_pool_3x3_s2(&x, train)?;
        for stage in &self.stages {
            for block in stage {
                x = block.forward_t(&x, train)?;
            }
        }
        // Pooling and the head in f32 (GeM's powers overflow f16).
        let x = x.to_dtype(DType::F32)?;
        let pooled = match self.cfg.gem_p {
            None => x.mean((2, 3))?,
            Some(p) => x
                .clamp(1e-6f32, f32::MAX)?
                .powf(p)?
                .mean((2, 3))?
                .powf(1.0 / p)?,
        };
        let out = match &self.head {
            None => pooled,
            Some(Head::Linear(fc)) => super::linear(fc, &pooled, DType::F32)?,
            Some(Head::Projector(a, b)) => {
                let h = super::linear(a, &pooled, DType::F32)?.relu()?;
                super::linear(b, &h, DType::F32)?
            }
        };
        if self.cfg.normalise {
            return super::l2_normalise(&out);
        }
        Ok(out)
    }
}

/// Max pooling 3x3, stride 2, padding 1 (torchvision's stem). The input is non-negative after the
/// ReLU, so zero padding gives exactly PyTorch's (-inf padded) result. candle's pooling has no
/// gradient when the window and the stride differ, so training takes the maximum of the nine
/// strided views instead (the same values, differentiable).
fn max_pool_3x3_s2(x: &Tensor, train: bool) -> Result<Tensor> {
    if !train {
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        return Ok(x.max_pool2d_with_stride(3, 2)?);
    }
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Pad to 2 * out + 2 on each axis: one zero in front, the rest behind.
    let xp = x
        .pad_with_zeros(2, 1, 2 * oh + 1 - h)?
        .pad_with_zeros(3, 1, 2 * ow + 1 - w)?;
    let wp = 2 * ow + 2;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = xp
            .narrow(2, dy, 2 * oh)?
            .reshape((b, c, oh, 2, wp))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for dx in 0..3 {
            let v = rows
                .narrow(3, dx, 2 * ow)?
                .reshape((b, c, oh, ow, 2))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            out = Some(match out {
                None => v,
                Some(m) => m.maximum(&v)?,
            });
        }
    }
    out.ok_or_else(|| Error::Msg("empty pooling window".into()))
}
