//! Backbones that turn images `[B, 3, H, W]` into embeddings `[B, D]`, with OML's extractor
//! semantics, and the loading of their weights.
//!
//! - [`ViTExtractor`]: DINO (`vits16`, `vits8`, `vitb16`, `vitb8`) and DINOv2 (`vits14`, `vitb14`,
//!   `vitl14`, `*_reg`);
//! - [`ResNetExtractor`]: torchvision ResNet 18-152 and MoCo v2's `resnet50_projector`;
//! - [`ClipVisual`]: CLIP's visual tower (`vitb32_224`, `vitb16_224`, `vitl14_224`, `vitl14_336`);
//! - [`ExtractorWithMLP`]: any of them plus an MLP head.
//!
//! [`ModelSpec`] names an arch and its options; [`load`] builds it from a weights file
//! (safetensors or a PyTorch checkpoint, OML's or the Hub's layouts), as constants for inference or
//! as variables of a [`VarMap`] for fine-tuning.

pub mod clip;
pub mod layouts;
pub mod model;
pub mod resnet;
pub mod vit;
pub mod weights;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

pub use clip::{ClipConfig, ClipVisual};
pub use model::Model;
pub use resnet::{ResNetBlock, ResNetConfig, ResNetExtractor, ResNetHead};
pub use vit::{ViTConfig, ViTExtractor};

use crate::{Error, Result};

/// A network that embeds a batch of images.
pub trait Extractor: Send + Sync {
    /// Length of an embedding.
    fn feat_dim(&self) -> usize;

    /// Embeddings `[B, D]` of images `[B, 3, H, W]`; `train` switches batch norm to batch
    /// statistics (networks without batch norm ignore it).
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor>;

    /// Embeddings in inference mode.
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_t(images, false)
    }
}

/// OML's `normalise`: rows divided by their L2 norm, the norm treated as a constant (detached) in
/// the backward pass, as OML does. In f32 (under mixed precision the squares would overflow f16).
/// A row of zeros stays zeros (the norm is taken as at least 1e-12, as torch's
/// `F.normalize`); OML divides 0 by 0 there, and a NaN embedding stops training.
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let x = &x.to_dtype(DType::F32)?;
    let norms = x
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?
        .detach();
    Ok(x.broadcast_div(&norms)?)
}

impl Extractor for ViTExtractor {
    fn feat_dim(&self) -> usize {
        ViTExtractor::feat_dim(self)
    }
    fn forward_t(&self, images: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward(images)
    }
}

impl Extractor for ResNetExtractor {
    fn feat_dim(&self) -> usize {
        ResNetExtractor::feat_dim(self)
    }
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        ResNetExtractor::forward_t(self, images, train)
    }
}

impl Extractor for ClipVisual {
    fn feat_dim(&self) -> usize {
        ClipVisual::feat_dim(self)
    }
    fn forward_t(&self, images: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward(images)
    }
}

/// OML's `ExtractorWithMLP`: a backbone followed by torchvision's `MLP(feat_dim, features)`
/// (linear layers with ReLU between them, none after the last). With the backbone frozen its
/// features are detached, so no gradient reaches it.
pub struct ExtractorWithMLP {
    backbone: Box<dyn Extractor>,
    layers: Vec<Linear>,
    train_backbone: AtomicBool,
}

impl ExtractorWithMLP {
    /// Builds the head from `vb` (`{3i}.weight`, `{3i}.bias` as torchvision's MLP names them).
    pub fn new(
        backbone: Box<dyn Extractor>,
        features: &[usize],
        train_backbone: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if features.is_empty() || features.contains(&0) {
            return Err(Error::param(
                "mlp_features",
                format!("{features:?}"),
                "at least one layer, every size > 0",
            ));
        }
        let mut cin = backbone.feat_dim();
        let mut layers = Vec::with_capacity(features.len());
        for (i, &n) in features.iter().enumerate() {
            layers.push(candle_nn::linear(cin, n, vb.pp((3 * i).to_string()))?);
            cin = n;
        }
        Ok(ExtractorWithMLP {
            backbone,
            layers,
            train_backbone: AtomicBool::new(train_backbone),
        })
    }

    /// Stops gradients at the backbone (OML's `freeze`).
    pub fn freeze(&self) {
        self.train_backbone.store(false, Ordering::Relaxed);
    }

    /// Lets gradients reach the backbone again (OML's `unfreeze`).
    pub fn unfreeze(&self) {
        self.train_backbone.store(true, Ordering::Relaxed);
    }
}

impl Extractor for ExtractorWithMLP {
    fn feat_dim(&self) -> usize {
        self.layers
            .last()
            .map(|l| l.weight().dim(0).unwrap_or(0))
            .unwrap_or(0)
    }

    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let trainable = self.train_backbone.load(Ordering::Relaxed);
        let mut x = self.backbone.forward_t(images, train && trainable)?;
        if !trainable {
            x = x.detach();
        }
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = linear(layer, &x, images.dtype())?;
            if i < last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// The three backbone families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// DINO / DINOv2 ViT.
    Vit,
    /// torchvision ResNet.
    Resnet,
    /// CLIP's visual tower.
    Clip,
}

impl Family {
    /// The family of an arch name, or an error listing every known arch.
    pub fn of(arch: &str) -> Result<Family> {
        if vit::VIT_ARCHS.contains(&arch) {
            Ok(Family::Vit)
        } else if resnet::RESNET_ARCHS.contains(&arch) {
            Ok(Family::Resnet)
        } else if clip::CLIP_ARCHS.contains(&arch) {
            Ok(Family::Clip)
        } else {
            Err(Error::UnknownName {
                kind: "arch",
                name: arch.to_owned(),
                known: all_archs().iter().map(|s| s.to_string()).collect(),
            })
        }
    }

    /// The attribute under which OML's extractor keeps the network (`model` or `visual`), which is
    /// the key prefix inside an `ExtractorWithMLP` checkpoint.
    fn oml_attribute(self) -> &'static str {
        match self {
            Family::Vit | Family::Resnet => "model",
            Family::Clip => "visual",
        }
    }

    /// Keys a checkpoint may carry that the extractor does not use: DINOv2's training-only
    /// `mask_token`, DINO's projection heads, BatchNorm's counters, the removed classifier.
    fn ignorable(self, key: &str) -> bool {
        match self {
            Family::Vit => key == "mask_token" || key.starts_with("head."),
            Family::Resnet => key.ends_with("num_batches_tracked") || key.starts_with("fc."),
            Family::Clip => false,
        }
    }

    /// A key every checkpoint of the family has, from which a prefix is found (OML's trial keys,
    /// spelled as whole keys).
    fn trial_key(self) -> &'static str {
        match self {
            Family::Vit => "norm.bias",
            Family::Resnet => "conv1.weight",
            Family::Clip => "class_embedding",
        }
    }
}

/// Every arch name this crate can build.
pub fn all_archs() -> Vec<&'static str> {
    let mut v: Vec<&str> = vit::VIT_ARCHS.to_vec();
    v.extend(resnet::RESNET_ARCHS);
    v.extend(clip::CLIP_ARCHS);
    v
}

/// A network given by its whole configuration instead of an arch name: small networks for tests
/// and for glyph-sized images, other widths and depths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum NetworkConfig {
    /// A ViT.
    Vit(ViTConfig),
    /// A ResNet.
    Resnet(ResNetConfig),
    /// A CLIP visual tower.
    Clip(ClipConfig),
}

impl NetworkConfig {
    fn family(&self) -> Family {
        match self {
            NetworkConfig::Vit(_) => Family::Vit,
            NetworkConfig::Resnet(_) => Family::Resnet,
            NetworkConfig::Clip(_) => Family::Clip,
        }
    }
}

/// An arch and its options: what to build before weights are loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// OML's arch name (`vits14`, `resnet50`, `vitb32_224`, ...), or a name of one's own for a
    /// [`ModelSpec::network`] given in full.
    pub arch: String,
    /// The network's whole configuration, when it is not one of the named archs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// L2-normalise the output.
    #[serde(default)]
    pub normalise: bool,
    /// ResNet only: GeM pooling power.
    #[serde(default)]
    pub gem_p: Option<f64>,
    /// DINO ViT only: average over three scales (OML's `use_multi_scale`).
    #[serde(default)]
    pub multi_scale: bool,
    /// Sizes of an MLP head (OML's `ExtractorWithMLP`); empty for none.
    #[serde(default)]
    pub mlp: Vec<usize>,
    /// With an MLP head: whether gradients reach the backbone.
    #[serde(default = "yes")]
    pub train_backbone: bool,
}

fn yes() -> bool {
    true
}

impl ModelSpec {
    /// A spec with OML's defaults for `arch`.
    pub fn new(arch: &str) -> Self {
        ModelSpec {
            arch: arch.to_owned(),
            network: None,
            normalise: false,
            gem_p: None,
            multi_scale: false,
            mlp: Vec::new(),
            train_backbone: true,
        }
    }

    /// A spec for a network given in full (`name` is how messages and files call it).
    pub fn custom(name: &str, network: NetworkConfig) -> Self {
        ModelSpec {
            network: Some(network),
            ..ModelSpec::new(name)
        }
    }

    /// The family, or an error listing the known archs.
    pub fn family(&self) -> Result<Family> {
        match &self.network {
            Some(n) => Ok(n.family()),
            None => Family::of(&self.arch),
        }
    }

    fn vit_config(&self) -> Result<ViTConfig> {
        match &self.network {
            Some(NetworkConfig::Vit(c)) => Ok(c.clone()),
            _ => ViTConfig::from_arch(&self.arch),
        }
    }

    fn resnet_config(&self) -> Result<ResNetConfig> {
        match &self.network {
            Some(NetworkConfig::Resnet(c)) => Ok(c.clone()),
            _ => ResNetConfig::from_arch(&self.arch),
        }
    }

    fn clip_config(&self) -> Result<ClipConfig> {
        match &self.network {
            Some(NetworkConfig::Clip(c)) => Ok(c.clone()),
            _ => ClipConfig::from_arch(&self.arch),
        }
    }

    fn check(&self) -> Result<Family> {
        let family = self.family()?;
        if self.gem_p.is_some() && family != Family::Resnet {
            return Err(Error::param(
                "gem_p",
                format!("{:?}", self.gem_p),
                "GeM pooling applies to ResNet archs only",
            ));
        }
        if self.multi_scale && family != Family::Vit {
            return Err(Error::param(
                "multi_scale",
                true,
                "multi-scale averaging applies to ViT archs only",
            ));
        }
        Ok(family)
    }

    /// Length of the embeddings this spec produces.
    pub fn feat_dim(&self) -> Result<usize> {
        if let Some(&n) = self.mlp.last() {
            return Ok(n);
        }
        Ok(match self.check()? {
            Family::Vit => self.vit_config()?.embed_dim,
            Family::Resnet => self.resnet_config()?.feat_dim(),
            Family::Clip => self.clip_config()?.output_dim,
        })
    }

    /// Builds the backbone (and head) from `vb` with this spec.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn Extractor>> {
        let family = self.check()?;
        let normalise = self.normalise && self.mlp.is_empty();
        let backbone: Box<dyn Extractor> = match family {
            Family::Vit => {
                let mut cfg = self.vit_config()?;
                cfg.normalise = normalise;
                cfg.multi_scale |= self.multi_scale;
                Box::new(ViTExtractor::new(&cfg, vb.clone())?)
            }
            Family::Resnet => {
                let mut cfg = self.resnet_config()?;
                cfg.normalise = normalise;
                cfg.gem_p = self.gem_p.or(cfg.gem_p);
                Box::new(ResNetExtractor::new(&cfg, vb.clone())?)
            }
            Family::Clip => {
                let mut cfg = self.clip_config()?;
                cfg.normalise = normalise;
                Box::new(ClipVisual::new(&cfg, vb.clone())?)
            }
        };
        if self.mlp.is_empty() {
            return Ok(backbone);
        }
        self.with_head(backbone, vb)
    }

    /// `backbone` followed by this spec's MLP head (built from `vb` under `projection`), the
    /// output L2-normalised when asked.
    fn with_head(
        &self,
        backbone: Box<dyn Extractor>,
        vb: VarBuilder,
    ) -> Result<Box<dyn Extractor>> {
        let head = ExtractorWithMLP::new(
            backbone,
            &self.mlp,
            self.train_backbone,
            vb.pp("projection"),
        )?;
        if self.normalise {
            return Ok(Box::new(Normalised(head)));
        }
        Ok(Box::new(head))
    }
}

/// An extractor whose output is L2-normalised.
struct Normalised<E>(E);

impl<E: Extractor> Extractor for Normalised<E> {
    fn feat_dim(&self) -> usize {
        self.0.feat_dim()
    }
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        l2_normalise(&self.0.forward_t(images, train)?)
    }
}

/// Builds `spec` from a weights file onto `device`: constants for inference when `varmap` is
/// `None`, variables of `varmap` (which then holds exactly the network's tensors) for fine-tuning.
///
/// Accepts safetensors and PyTorch checkpoints; OML's rules (unwrap `state_dict`, drop
/// `criterion.*`, strip a key prefix) and the Hub's layouts (timm, Hugging Face transformers) are
/// applied, then every tensor must be present with its shape, or the error lists what is missing,
/// misshapen and unexpected.
pub fn load(
    spec: &ModelSpec,
    path: &Path,
    device: &Device,
    varmap: Option<&VarMap>,
) -> Result<Box<dyn Extractor>> {
    let family = spec.check()?;
    let raw = weights::read_state_dict(path, device)?;
    let tensors = prepare(spec, family, raw)?;
    // A backbone file (a zoo model, a plain checkpoint) with a head asked for: fine-tuning starts a
    // fresh head on it (OML's ExtractorWithMLP on a pretrained extractor).
    let fresh_head = !spec.mlp.is_empty() && !tensors.keys().any(|k| k.starts_with("projection."));
    if fresh_head && varmap.is_none() {
        return Err(Error::Format {
            path: path.to_path_buf(),
            message: format!(
                "no MLP head (projection.*) for mlp {:?}: fine-tune one first (oml train \
                 starts a fresh head on this backbone), or leave mlp out",
                spec.mlp
            ),
        });
    }
    let plain = ModelSpec {
        mlp: Vec::new(),
        normalise: false,
        ..spec.clone()
    };
    let what = format!("{} network", spec.arch);
    let net = weights::build_checked(
        tensors,
        device,
        varmap,
        &|k| family.ignorable(k),
        &what,
        path,
        |vb| {
            if fresh_head {
                plain.build(vb)
            } else {
                spec.build(vb)
            }
        },
    )?;
    match varmap {
        Some(vm) if fresh_head => {
            spec.with_head(net, VarBuilder::from_varmap(vm, DType::F32, device))
        }
        _ => Ok(net),
    }
}

/// Builds any network of `family` from a weights file with the same rules as [`load`], for
/// configurations that are not a named arch (small test networks, custom widths).
pub fn load_with<T>(
    family: Family,
    path: &Path,
    device: &Device,
    varmap: Option<&VarMap>,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let raw = weights::read_state_dict(path, device)?;
    let tensors = prepare(&ModelSpec::new(""), family, raw)?;
    let what = format!("{family:?} network");
    weights::build_checked(
        tensors,
        device,
        varmap,
        &|k| family.ignorable(k),
        &what,
        path,
        build,
    )
}

/// Applies OML's cleaning and the layout conversions: backbone keys at the root, an MLP head under
/// `projection.`.
fn prepare(
    spec: &ModelSpec,
    family: Family,
    mut raw: weights::StateDict,
) -> Result<weights::StateDict> {
    raw.retain(|k, _| !k.starts_with("criterion."));
    let (backbone, head) = if spec.mlp.is_empty() {
        (raw, weights::StateDict::new())
    } else if !raw.keys().any(|k| k.contains("extractor.")) {
        // Our own checkpoints (the backbone's keys at the root, the head under `projection.`),
        // or a backbone alone.
        raw.into_iter()
            .partition(|(k, _)| !k.starts_with("projection."))
    } else {
        weights::strip_prefix_before(&mut raw, "extractor.");
        let inner = format!("extractor.{}.", family.oml_attribute());
        let mut backbone = weights::StateDict::new();
        let mut head = weights::StateDict::new();
        for (k, t) in raw {
            if let Some(rest) = k.strip_prefix(&inner) {
                backbone.insert(rest.to_owned(), t);
            } else {
                head.insert(k, t);
            }
        }
        (backbone, head)
    };
    let mut backbone = layouts::to_oml(family, backbone)?;
    weights::strip_prefix_before(&mut backbone, family.trial_key());
    backbone.extend(head);
    Ok(backbone)
}

/// Random initialisation of `spec` into `varmap` (training from scratch): weights drawn as
/// candle's layer constructors do, LayerNorm/BatchNorm at identity.
pub fn init(spec: &ModelSpec, varmap: &VarMap, device: &Device) -> Result<Box<dyn Extractor>> {
    let vb = VarBuilder::from_varmap(varmap, candle_core::DType::F32, device);
    spec.build(vb)
}

/// Mixed precision, as PyTorch's autocast: a network whose input is cast to `dtype` (bf16, f16)
/// and whose embeddings come back as f32.
///
/// The variables stay f32. The networks take the images' dtype as the one to multiply in: linear
/// layers and convolutions cast their input and weights to it ([`linear`], [`conv2d`]); the casts
/// are differentiable, so the variables get f32 gradients. As under autocast, the transformers'
/// residual stream stays f32 (a branch's output is widened before it is added), and layer norms,
/// the attention's softmax, batch norm, pooling, L2 normalisation and everything after the network
/// (the loss) run in f32. With `dtype` f32 the network runs as it is.
pub struct Autocast<'a> {
    net: &'a dyn Extractor,
    dtype: DType,
}

impl<'a> Autocast<'a> {
    /// `net` computing in `dtype`.
    pub fn new(net: &'a dyn Extractor, dtype: DType) -> Self {
        Autocast { net, dtype }
    }
}

impl Extractor for Autocast<'_> {
    fn feat_dim(&self) -> usize {
        self.net.feat_dim()
    }

    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        if self.dtype == images.dtype() && self.dtype == DType::F32 {
            return self.net.forward_t(images, train);
        }
        let out = self.net.forward_t(&images.to_dtype(self.dtype)?, train)?;
        Ok(out.to_dtype(DType::F32)?)
    }
}

/// `t` in `dtype`: a no-op when it is already, a differentiable cast under mixed precision.
pub(crate) fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    Ok(t.to_dtype(dtype)?)
}

/// `f(x)` computed in f32 and handed back in `x`'s dtype: the ops mixed precision keeps in f32.
pub(crate) fn in_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() == DType::F32 {
        return f(x);
    }
    Ok(f(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
}

/// `x + branch`, the branch widened to the residual stream's dtype (f32 under mixed precision, as
/// autocast's type promotion keeps it).
pub(crate) fn residual_add(x: &Tensor, branch: &Tensor) -> Result<Tensor> {
    Ok((x + cast(branch, x.dtype())?)?)
}

/// A linear layer computed in `dtype` (the input and weights cast to it): the fused kernel for f32
/// on the CPU, candle's product otherwise.
pub(crate) fn linear(layer: &Linear, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let x = cast(x, dtype)?;
    if layer.weight().dtype() == dtype {
        return Ok(oml_kernels::linear(layer, &x)?);
    }
    let bias = layer.bias().map(|b| cast(b, dtype)).transpose()?;
    Ok(Linear::new(cast(layer.weight(), dtype)?, bias).forward(&x)?)
}

/// `gelu_erf(linear(x))` in `dtype`: one fused op (f32 on the CPU), the two ops otherwise.
pub(crate) fn linear_gelu(layer: &Linear, x: &Tensor, dtype: DType) -> Result<Tensor> {
    if layer.weight().dtype() == dtype {
        return Ok(oml_kernels::linear_gelu(layer, &cast(x, dtype)?)?);
    }
    Ok(oml_kernels::gelu_erf(&linear(layer, x, dtype)?)?)
}

/// A convolution in the dtype of its input (the weights cast under mixed precision).
pub(crate) fn conv2d(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    if conv.weight().dtype() == x.dtype() {
        return Ok(conv.forward(x)?);
    }
    if x.dtype() == DType::BF16 && x.device().is_cpu() {
        // candle's CPU convolution has no bf16 product: widen, as its matmul does.
        return in_f32(x, |x| Ok(conv.forward(x)?));
    }
    let bias = conv.bias().map(|b| cast(b, x.dtype())).transpose()?;
    Ok(Conv2d::new(cast(conv.weight(), x.dtype())?, bias, *conv.config()).forward(x)?)
}

/// A patch embedding, a convolution whose stride is its kernel (`p`, no padding), as one matrix
/// product: images `[B, C, H, W]` to tokens `[B, gh * gw, D]` in raster order, the pixels past the
/// last whole patch dropped (as the convolution drops them). The same sums as the convolution; its
/// backward pass is a product too, where candle's convolution backward computes the weight's
/// gradient as a direct convolution with the whole gradient map as kernel (slow).
pub(crate) fn patch_embed(conv: &Conv2d, images: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = images.dims4()?;
    let cfg = conv.config();
    let (d, wc, kh, kw) = conv.weight().dims4()?;
    if cfg.stride != p
        || cfg.padding != 0
        || cfg.dilation != 1
        || cfg.groups != 1
        || wc != c
        || kh != p
        || kw != p
    {
        let x = conv2d(conv, images)?;
        return Ok(x.flatten_from(2)?.transpose(1, 2)?);
    }
    let (gh, gw) = (h / p, w / p);
    let patches = images
        .narrow(2, 0, gh * p)?
        .narrow(3, 0, gw * p)?
        .reshape((b, c, gh, p, gw, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b * gh * gw, c * p * p))?;
    let layer = Linear::new(conv.weight().reshape((d, c * p * p))?, conv.bias().cloned());
    Ok(linear(&layer, &patches, images.dtype())?.reshape((b, gh * gw, d))?)
}

/// LayerNorm that trains. On the CPU (f32) a fused kernel with a backward pass
/// ([`oml_kernels::layer_norm`]); elsewhere candle's fused kernel (without a backward pass) when the
/// weights are constants and the composed formula (differentiable) when they are variables.
pub(crate) struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    pub(crate) fn new(d: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Norm {
            weight: vb.get_with_hints(d, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?,
            eps,
        })
    }

    /// Whether the weights are variables (the network is being fine-tuned).
    pub(crate) fn trainable(&self) -> bool {
        self.weight.is_variable()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            // Mixed precision: normalised in f32, handed on in the input's dtype.
            return in_f32(x, |x| self.forward(x));
        }
        if oml_kernels::fused(x) {
            return Ok(oml_kernels::layer_norm(
                x,
                &self.weight,
                &self.bias,
                self.eps,
            )?);
        }
        if !self.trainable() && x.is_contiguous() {
            return Ok(candle_nn::ops::layer_norm(
                x,
                &self.weight,
                &self.bias,
                self.eps as f32,
            )?);
        }
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// `softmax(scale * x)` over the last dimension. On the CPU one fused, multi-threaded kernel
/// with a backward pass; elsewhere candle's fused kernel for inference and the composed
/// (differentiable) one when `train`.
pub(crate) fn softmax_last(x: &Tensor, scale: f64, train: bool) -> Result<Tensor> {
    if train || oml_kernels::fused(x) {
        return Ok(oml_kernels::softmax_last(x, scale)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(&(x * scale)?)?)
}

/// Multi-head self-attention of a `[batch, tokens, 3 * dim]` q/k/v projection (`[3][heads]
/// [head_dim]` in the last dimension, as timm's `qkv` and CLIP's `in_proj`), scores scaled by
/// `head_dim^-1/2`: `[batch, tokens, dim]`. One fused kernel on the CPU; tensor ops elsewhere.
pub(crate) fn self_attention(qkv: &Tensor, heads: usize, train: bool) -> Result<Tensor> {
    let (b, n, d3) = qkv.dims3()?;
    let (d, hd) = (d3 / 3, d3 / 3 / heads);
    let scale = (hd as f64).powf(-0.5);
    if let Some(out) = oml_kernels::attention(qkv, heads, scale)? {
        return Ok(out);
    }
    let qkv = qkv
        .reshape((b, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    // Mixed precision: the softmax in f32, as autocast runs it.
    let att = in_f32(&q.matmul(&k.t()?)?, |s| softmax_last(s, scale, train))?;
    Ok(att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?)
}

/// OML's or DINO's checkpoint (or any supported file) for `spec` as clean tensors in the original
/// names, exactly those the network uses, checked like [`load`]: ready to save as safetensors
/// (`oml zoo import`).
pub fn import(spec: &ModelSpec, path: &Path) -> Result<VarMap> {
    let varmap = VarMap::new();
    load(spec, path, &Device::Cpu, Some(&varmap))?;
    Ok(varmap)
}
