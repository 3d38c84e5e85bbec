//! [`Model`]: a network with its weights, its transform and its settings, the one object a
//! notebook, the command line and the demo pass around.
//!
//! A `Model` holds *data* only (the arch, the weights as tensors, the transform, the device name),
//! never a built network. Every method that runs the network builds it from that data in the code
//! that calls it. This is what lets a model built in one notebook cell be trained in a later one:
//! evcxr links each cell's code with its own copy of candle, and so its own tensor-id counter;
//! tensors made by two copies can carry the same id, and candle's backward pass tells tensors apart
//! by id. Training therefore starts from fresh variables made by the code of the cell that trains
//! (see [`Model::trainable`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Autocast, Extractor, ModelSpec};
use crate::data::{ImageSource, Transform};
use crate::device::Precision;
use crate::notebook::{Html, escape_html};
use crate::{Error, Result};

/// The weights of a network by name: f32 tensors on the CPU, never variables, never changed in
/// place (an update replaces the whole map).
type Weights = Arc<BTreeMap<String, Tensor>>;

struct Core {
    spec: ModelSpec,
    /// Where the weights came from, for display (`zoo vits14_dinov2 (...)`, a file, `random`).
    source: String,
    weights: RwLock<Weights>,
}

/// A network with its weights, its inference transform and its settings (device, precision,
/// batch size). Cheap to clone; clones share the weights, so a model trained through one clone is
/// trained for all (as a PyTorch module is); [`Model::snapshot`] gives an independent copy.
///
/// ```no_run
/// # fn main() -> oml::Result<()> {
/// use oml::prelude::*;
/// let model = Model::from_pretrained("vits14_dinov2")?;      // the zoo: cache, then the Hub
/// let val = ImageQueryGalleryLabeledDataset::from_csv("df.csv", None)?;
/// let rr = RetrievalResults::from_embeddings(&model.embed(&val)?, &val, 5)?;
/// println!("CMC@1 {:.3}", rr.metrics()?.cmc(1));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Model {
    core: Arc<Core>,
    transform: Transform,
    device_name: String,
    precision: Precision,
    batch_size: usize,
}

impl Model {
    fn from_weights(
        spec: ModelSpec,
        source: String,
        weights: BTreeMap<String, Tensor>,
        transform: Transform,
    ) -> Model {
        Model {
            core: Arc::new(Core {
                spec,
                source,
                weights: RwLock::new(Arc::new(weights)),
            }),
            transform,
            device_name: "cpu".to_owned(),
            precision: Precision::F32,
            batch_size: 32,
        }
    }

    /// A pretrained model of the zoo by OML's name (`vits14_dinov2`, `vits16_dino`,
    /// `resnet50_imagenet1k_v1`, ...; `oml zoo list` shows them), with OML's inference transform.
    /// The weights come from a local weights folder when one is configured (`OML_WEIGHTS_DIR`),
    /// else from the Hugging Face Hub cache, else they are downloaded with a progress line (see
    /// [`crate::zoo`] for the environment it reads).
    pub fn from_pretrained(name: &str) -> Result<Model> {
        let zoo_model = crate::zoo::find(name)?;
        let spec = zoo_model.spec()?;
        let hub = crate::zoo::Hub::from_env();
        let found = crate::zoo::locate(zoo_model, &hub)?;
        let transform = zoo_model.transform()?;
        let weights = load_weights(&spec, &found.path)?;
        Ok(Model::from_weights(
            spec,
            format!("zoo {name} ({})", found.origin),
            weights,
            transform,
        ))
    }

    /// `arch` with weights from a file (safetensors or a PyTorch checkpoint, OML's or the Hub's
    /// layout), with the transform OML pairs with the arch (or `norm_resize_torch` at 224 px).
    pub fn from_file(arch: &str, path: impl AsRef<Path>) -> Result<Model> {
        Model::from_spec(ModelSpec::new(arch), path)
    }

    /// A spec (arch and options: MLP head, GeM, normalisation) with weights from a file. A head
    /// the file does not have starts at random (to be fine-tuned).
    pub fn from_spec(spec: ModelSpec, path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let weights = load_weights(&spec, path)?;
        let transform = default_transform(&spec)?;
        Ok(Model::from_weights(
            spec,
            format!("file {}", path.display()),
            weights,
            transform,
        ))
    }

    /// `arch` initialised at random (seed 0), to train from scratch.
    pub fn random(arch: &str) -> Result<Model> {
        Model::init(ModelSpec::new(arch), 0)
    }

    /// A spec initialised at random with `seed`: the same seed gives the same weights on every
    /// machine (each tensor drawn from its own stream, as candle's layer constructors would).
    pub fn init(spec: ModelSpec, seed: u64) -> Result<Model> {
        let drawn = seeded_tensors(seed, |vb| spec.build(vb).map(|_| ()))?;
        let transform = default_transform(&spec)?;
        Ok(Model::from_weights(
            spec,
            format!("random (seed {seed})"),
            drawn,
            transform,
        ))
    }

    /// The same model (shared weights) on another device: `cpu`, `cuda` or `cuda:i`.
    pub fn with_device(&self, name: &str) -> Result<Model> {
        crate::device(name)?;
        Ok(Model {
            device_name: name.trim().to_owned(),
            ..self.clone()
        })
    }

    /// The same model computing in `precision` (mixed precision for bf16 / f16).
    pub fn with_precision(&self, precision: Precision) -> Model {
        Model {
            precision,
            ..self.clone()
        }
    }

    /// The same model with another inference transform.
    pub fn with_transform(&self, transform: Transform) -> Model {
        Model {
            transform,
            ..self.clone()
        }
    }

    /// The same model with its transform scaled to give `size`-pixel inputs (every resize and crop
    /// scaled alike: OML's 256 -> 224 becomes 64 -> 56 for `size` 56).
    pub fn with_image_size(&self, size: u32) -> Result<Model> {
        Ok(self.with_transform(self.transform.resized(size)?))
    }

    /// The same model embedding `batch_size` images at a time.
    pub fn with_batch_size(&self, batch_size: usize) -> Result<Model> {
        if batch_size == 0 {
            return Err(Error::param("batch_size", 0, "at least 1"));
        }
        Ok(Model {
            batch_size,
            ..self.clone()
        })
    }

    /// An independent copy of the current weights (training one does not change the other).
    pub fn snapshot(&self) -> Model {
        Model {
            core: Arc::new(Core {
                spec: self.core.spec.clone(),
                source: self.core.source.clone(),
                weights: RwLock::new(self.weights()),
            }),
            ..self.clone()
        }
    }

    /// The arch and its options.
    pub fn spec(&self) -> &ModelSpec {
        &self.core.spec
    }

    /// The arch's name.
    pub fn arch(&self) -> &str {
        &self.core.spec.arch
    }

    /// Where the weights came from.
    pub fn source(&self) -> &str {
        &self.core.source
    }

    /// The inference transform.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The device's name (`cpu`, `cuda:0`, ...).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The device.
    pub fn device(&self) -> Result<Device> {
        crate::device(&self.device_name)
    }

    /// The arithmetic of the forward pass.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Images per batch when embedding.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Length of the embeddings.
    pub fn feat_dim(&self) -> Result<usize> {
        self.core.spec.feat_dim()
    }

    /// sha256 over the spec and every weight (name, shape, values), in hex: two models embed
    /// alike exactly when their fingerprints match (an index refuses queries from another).
    pub fn fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&self.core.spec).unwrap_or_default());
        for (name, t) in self.weights().iter() {
            h.update(name.as_bytes());
            for d in t.dims() {
                h.update((*d as u64).to_le_bytes());
            }
            let values: Vec<f32> =
                crate::host::read(&t.to_dtype(candle_core::DType::F32)?, "model: fingerprint")?;
            for v in values {
                h.update(v.to_le_bytes());
            }
        }
        Ok(format!("{:x}", h.finalize()))
    }

    /// Number of weights (scalars).
    pub fn n_parameters(&self) -> usize {
        self.weights().values().map(Tensor::elem_count).sum()
    }

    fn weights(&self) -> Weights {
        self.core
            .weights
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The weights by name (f32, on the CPU), as they would be saved.
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        self.weights()
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect()
    }

    /// Replaces the weights (for every clone) with `tensors`, which must name exactly the
    /// network's tensors with their shapes. The tensors are copied: later changes to them (a
    /// trainer's variables) do not reach the model.
    pub fn set_state_dict(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let current = self.weights();
        let mut next = BTreeMap::new();
        for (name, old) in current.iter() {
            let t = tensors.get(name).ok_or_else(|| {
                Error::Msg(format!(
                    "new weights for {} lack the tensor {name}",
                    self.core.spec.arch
                ))
            })?;
            if t.shape() != old.shape() {
                return Err(Error::Msg(format!(
                    "new weights for {}: {name} is {:?}, the network's is {:?}",
                    self.core.spec.arch,
                    t.dims(),
                    old.dims()
                )));
            }
            // A copy made by this code: a fresh tensor, detached from any graph.
            let copy = t
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .copy()?
                .detach();
            next.insert(name.clone(), copy);
        }
        *self.core.weights.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// Writes the weights as safetensors (the names OML's checkpoints use, a head under
    /// `projection.`); [`Model::from_spec`] reads them back.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("cannot create folder", parent, e))?;
        }
        candle_core::safetensors::save(&self.state_dict(), path).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            message: format!("cannot write safetensors: {e}"),
        })
    }

    /// The network with these weights as constants, on the model's device, in its precision: for
    /// inference.
    pub fn network(&self) -> Result<Box<dyn Extractor>> {
        let device = self.device()?;
        let mut tensors = HashMap::new();
        for (k, t) in self.weights().iter() {
            tensors.insert(k.clone(), t.to_device(&device)?);
        }
        let net = self
            .core
            .spec
            .build(VarBuilder::from_tensors(tensors, DType::F32, &device))?;
        Ok(match self.precision {
            Precision::F32 => net,
            p => Box::new(Owned(net, p.dtype())),
        })
    }

    /// The network built on fresh variables (copies of the weights, made by the calling code) on
    /// `device`, and the `VarMap` that holds them: what a trainer updates. Nothing the model holds
    /// enters the graph, so the backward pass only ever sees tensors of the calling code.
    pub fn trainable(&self, device: &Device) -> Result<(Box<dyn Extractor>, VarMap)> {
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
            for (k, t) in self.weights().iter() {
                data.insert(k.clone(), Var::from_tensor(&t.to_device(device)?)?);
            }
        }
        let net = self
            .core
            .spec
            .build(VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        Ok((net, varmap))
    }

    /// Embeddings `[N, D]` (f32, on the CPU) of every item of `dataset` in order, with the model's
    /// transform, batch size, device and precision; a progress line every few seconds.
    pub fn embed<D: ImageSource + Clone + 'static>(&self, dataset: &D) -> Result<Tensor> {
        let net = self.network()?;
        crate::embed::embed(
            net.as_ref(),
            Arc::new(dataset.clone()),
            self.transform.clone(),
            self.batch_size,
            &self.device()?,
        )
    }

    /// One line: arch, dimension, parameters, weights' origin, transform, device.
    pub fn summary(&self) -> String {
        format!(
            "{} ({} dims, {:.1}M parameters) from {}; transform {} -> {} px; {} {}",
            self.core.spec.arch,
            self.feat_dim().unwrap_or(0),
            self.n_parameters() as f64 / 1e6,
            self.core.source,
            self.transform.name,
            self.transform
                .output_size()
                .map_or_else(|| "?".to_owned(), |(h, _)| h.to_string()),
            self.device_name,
            self.precision
        )
    }

    /// The summary as an HTML table.
    pub fn to_html(&self) -> String {
        let rows = [
            ("arch", self.core.spec.arch.clone()),
            (
                "embedding",
                format!("{} dims", self.feat_dim().unwrap_or(0)),
            ),
            (
                "parameters",
                format!("{:.2}M", self.n_parameters() as f64 / 1e6),
            ),
            ("weights", self.core.source.clone()),
            (
                "transform",
                format!(
                    "{} ({} px)",
                    self.transform.name,
                    self.transform
                        .output_size()
                        .map_or_else(|| "?".to_owned(), |(h, _)| h.to_string())
                ),
            ),
            ("device", format!("{} {}", self.device_name, self.precision)),
        ];
        let mut html = String::from("<table class=\"oml-model\">");
        for (k, v) in rows {
            html += &format!(
                "<tr><th style=\"text-align:left\">{k}</th><td>{}</td></tr>",
                escape_html(&v)
            );
        }
        html + "</table>"
    }

    /// Shows the summary inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        Html::new(self.to_html(), self.summary()).emit();
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// An extractor that owns its network and computes in a low precision.
struct Owned(Box<dyn Extractor>, DType);

impl Extractor for Owned {
    fn feat_dim(&self) -> usize {
        self.0.feat_dim()
    }
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        Autocast::new(self.0.as_ref(), self.1).forward_t(images, train)
    }
}

/// The network's tensors of `spec` from a file, checked and in OML's names (a fresh head when
/// the file has none).
fn load_weights(spec: &ModelSpec, path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let varmap = VarMap::new();
    super::load(spec, path, &Device::Cpu, Some(&varmap))?;
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}

/// The inference transform OML pairs with `spec`'s arch in the zoo, else `norm_resize_torch` at
/// 224 px.
fn default_transform(spec: &ModelSpec) -> Result<Transform> {
    if spec.network.is_none() {
        let zoo = crate::zoo::models()?;
        if let Some(t) = zoo
            .iter()
            .find(|m| m.arch.as_deref() == Some(spec.arch.as_str()))
            .and_then(|m| m.transform.as_ref())
        {
            return t.build();
        }
    }
    Transform::preset("norm_resize_torch", 224)
}

/// Every tensor `build` asks its `VarBuilder` for, drawn from its own stream of `seed` (the
/// tensor's name picks the stream) with the distribution the layer asks for.
pub(crate) fn seeded_tensors(
    seed: u64,
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<BTreeMap<String, Tensor>> {
    let backend = SeededInit {
        seed,
        drawn: std::sync::Mutex::new(BTreeMap::new()),
    };
    build(VarBuilder::from_backend(
        Box::new(&backend),
        DType::F32,
        Device::Cpu,
    ))?;
    Ok(std::mem::take(
        &mut *backend.drawn.lock().unwrap_or_else(|p| p.into_inner()),
    ))
}

/// A variable source that draws every tensor a network asks for from its own seeded stream (the
/// seed and the tensor's name), with the distribution candle's constructors ask for.
struct SeededInit {
    seed: u64,
    drawn: std::sync::Mutex<BTreeMap<String, Tensor>>,
}

impl candle_nn::var_builder::SimpleBackend for &SeededInit {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = drawn.get(name) {
            if t.shape() != &shape {
                candle_core::bail!("{name} asked with shapes {:?} and {shape:?}", t.dims());
            }
            return t.to_dtype(dtype)?.to_device(dev);
        }
        // One stream per tensor: FNV-1a of the name mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ h);
        let n = shape.elem_count();
        let values: Vec<f32> = match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * normal(&mut rng)) as f32)
                .collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(&shape) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n)
                            .map(|_| rng.random_range(-bound..bound) as f32)
                            .collect()
                    }
                    candle_nn::init::NormalOrUniform::Normal => {
                        (0..n).map(|_| (std * normal(&mut rng)) as f32).collect()
                    }
                }
            }
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        drawn.insert(name.to_owned(), t.clone());
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a random initialisation needs the tensor's shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}
