//! Reading weights: safetensors and PyTorch checkpoints (`.pth`, `.pt`, `.ckpt`, `.bin`), OML's
//! cleaning rules, and a strict check of every tensor a network asks for.
//!
//! OML's rules (`oml.utils.misc_torch` / `oml.models.utils`), in this order:
//! 1. a checkpoint that wraps its tensors in `state_dict` (Lightning) is unwrapped;
//! 2. a loss head (`criterion.*`) is dropped;
//! 3. a key prefix (`model.`, `module.backbone.`, ...) is found from a key the network must have
//!    (the "trial key") and stripped from every key that carries it;
//! 4. every tensor the network asks for must be there with its shape. Anything else is listed as
//!    unexpected, except what a family ignores on purpose (a classifier `fc.*` that is removed,
//!    BatchNorm's `num_batches_tracked`, DINOv2's training-only `mask_token`, CLIP's text tower).
//!
//! The check builds the network through a [`VarBuilder`] whose backend records every request, so
//! all missing, misshapen and unexpected tensors are reported at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::{Error, Result};

/// Named tensors of a checkpoint, after unwrapping.
pub type StateDict = HashMap<String, Tensor>;

/// Reads every tensor of `path` onto `device`: safetensors (memory-mapped) or a PyTorch zip
/// checkpoint (a state dict, or a dict with one under `state_dict`, `model` or `teacher`).
pub fn read_state_dict(path: &Path, device: &Device) -> Result<StateDict> {
    let mut head = [0u8; 9];
    {
        use std::io::Read;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let n = file
            .read(&mut head)
            .map_err(|e| Error::io("read", path, e))?;
        if n < 9 {
            return Err(Error::Format {
                path: path.to_path_buf(),
                message: format!("{n} bytes: too short to be a safetensors file or a checkpoint"),
            });
        }
    }
    // safetensors: a little-endian u64 header length, then the JSON header.
    let safetensors = head[8] == b'{';
    if !safetensors && head.starts_with(b"PK") {
        return read_pytorch(path, device);
    }
    if !safetensors && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Err(Error::Format {
            path: path.to_path_buf(),
            message: "a legacy (pre-1.6, non-zip) PyTorch pickle; re-save it with torch >= 1.6 \
                      (`torch.save(torch.load(p), p)`) or convert it to safetensors"
                .into(),
        });
    }
    // SAFETY: the file is mapped read-only; a file modified while mapped is outside our control,
    // as for every memory-mapped loader.
    let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::Format {
        path: path.to_path_buf(),
        message: format!("neither a safetensors file nor a PyTorch zip checkpoint ({e})"),
    })?;
    let mut out = StateDict::new();
    for (name, _) in st.tensors() {
        let t = st.load(&name, device).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            message: format!("tensor {name}: {e}"),
        })?;
        out.insert(name, t);
    }
    Ok(out)
}

fn read_pytorch(path: &Path, device: &Device) -> Result<StateDict> {
    let bad = |e: candle_core::Error| Error::Format {
        path: path.to_path_buf(),
        message: format!("not a readable PyTorch checkpoint: {e}"),
    };
    let mut found = None;
    for key in ["state_dict", "model", "teacher"] {
        match candle_core::pickle::read_pth_tensor_info(path, false, Some(key)) {
            Ok(infos) if !infos.is_empty() => {
                found = Some(Some(key));
                break;
            }
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(bad(e)),
        }
    }
    let key = found.unwrap_or(None);
    let tensors = candle_core::pickle::read_all_with_key(path, key).map_err(bad)?;
    if tensors.is_empty() {
        return Err(Error::Format {
            path: path.to_path_buf(),
            message: "a PyTorch file without tensors at its top level or under state_dict / \
                      model / teacher"
                .into(),
        });
    }
    let mut out = StateDict::new();
    for (name, t) in tensors {
        out.insert(name, t.to_device(device)?);
    }
    Ok(out)
}

/// OML's prefix rule: finds `marker` (a key the network must have, or the start of one such as
/// `extractor.`) at the start of a key or right after a `.`, takes what precedes it in the key
/// with the shortest such prefix, and strips that prefix from every key that carries it. Returns
/// the prefix stripped, if any (`criterion.*` keys are dropped first, as OML does).
pub fn strip_prefix_before(tensors: &mut StateDict, marker: &str) -> Option<String> {
    tensors.retain(|k, _| !k.starts_with("criterion."));
    let mut best: Option<&str> = None;
    for k in tensors.keys() {
        let mut from = 0;
        while let Some(pos) = k[from..].find(marker).map(|p| p + from) {
            if pos == 0 || k.as_bytes()[pos - 1] == b'.' {
                let prefix = &k[..pos];
                // Shortest prefix; equal lengths by key order (deterministic).
                if best.is_none_or(|b| (prefix.len(), prefix) < (b.len(), b)) {
                    best = Some(prefix);
                }
                break;
            }
            from = pos + 1;
        }
    }
    let prefix = best.filter(|p| !p.is_empty())?.to_owned();
    let keys: Vec<String> = tensors
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    for k in keys {
        if let Some(t) = tensors.remove(&k) {
            tensors.insert(k[prefix.len()..].to_owned(), t);
        }
    }
    Some(prefix)
}

/// What the network asked for, shared between the backend and [`build_checked`].
struct Records {
    tensors: StateDict,
    used: Mutex<HashSet<String>>,
    missing: Mutex<Vec<String>>,
    misshapen: Mutex<Vec<String>>,
}

/// A [`SimpleBackend`] that serves tensors from a map and records what the network asked for.
struct Recording(Arc<Records>);

impl Recording {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Self::lock(&self.0.used).insert(name.to_owned());
        match self.0.tensors.get(name) {
            Some(t) if t.shape() == &s => {
                let t = if t.dtype() == dtype {
                    t.clone()
                } else {
                    t.to_dtype(dtype)?
                };
                if t.device().same_device(dev) {
                    Ok(t)
                } else {
                    t.to_device(dev)
                }
            }
            Some(t) => {
                Self::lock(&self.0.misshapen).push(format!(
                    "{name}: {:?} in the file, {:?} expected",
                    t.dims(),
                    s.dims()
                ));
                Tensor::zeros(s, dtype, &Device::Cpu)
            }
            None => {
                Self::lock(&self.0.missing).push(format!("{name} {:?}", s.dims()));
                Tensor::zeros(s, dtype, &Device::Cpu)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        Self::lock(&self.0.used).insert(name.to_owned());
        match self.0.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => {
                Self::lock(&self.0.missing).push(name.to_owned());
                candle_core::bail!("missing tensor {name}")
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

/// Builds a network from `tensors` with `build`, checking that every tensor it asks for is there
/// with its shape and that nothing else is (except keys for which `ignorable` is true).
///
/// With `varmap`, every tensor becomes a variable of it first (fine-tuning: gradients flow and the
/// optimiser sees them); without, tensors stay constants (inference). `what` names the network and
/// `source` the file in error messages.
pub fn build_checked<T>(
    tensors: StateDict,
    device: &Device,
    varmap: Option<&VarMap>,
    ignorable: &dyn Fn(&str) -> bool,
    what: &str,
    source: &Path,
    build: impl FnOnce(VarBuilder) -> Result<T>,
) -> Result<T> {
    let mut tensors = tensors;
    if let Some(vm) = varmap {
        let mut data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
        for (name, t) in tensors.iter_mut() {
            if !t.dtype().is_float() {
                continue;
            }
            let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
            *t = var.as_tensor().clone();
            data.insert(name.clone(), var);
        }
    }
    let rec = Arc::new(Records {
        tensors,
        used: Mutex::new(HashSet::new()),
        missing: Mutex::new(Vec::new()),
        misshapen: Mutex::new(Vec::new()),
    });
    let vb = VarBuilder::from_backend(Box::new(Recording(rec.clone())), DType::F32, device.clone());
    let built = build(vb);
    let missing = Recording::lock(&rec.missing).clone();
    let misshapen = Recording::lock(&rec.misshapen).clone();
    let used = Recording::lock(&rec.used).clone();
    let mut unexpected: Vec<&String> = rec
        .tensors
        .keys()
        .filter(|k| !used.contains(*k) && !ignorable(k))
        .collect();
    unexpected.sort();
    if missing.is_empty() && misshapen.is_empty() && unexpected.is_empty() {
        if let Some(vm) = varmap {
            let mut data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
            data.retain(|k, _| used.contains(k));
        }
        return built;
    }
    let list = |title: &str, items: Vec<String>| -> String {
        if items.is_empty() {
            return String::new();
        }
        let n = items.len();
        let shown: Vec<String> = items.into_iter().take(12).collect();
        let more = if n > 12 {
            format!(" ... and {} more", n - 12)
        } else {
            String::new()
        };
        format!("\n  {n} {title}: {}{more}", shown.join(", "))
    };
    let mut msg = format!("these weights do not fit the {what}:");
    msg += &list("missing", missing);
    msg += &list("with another shape", misshapen);
    msg += &list(
        "unexpected",
        unexpected.into_iter().map(|s| s.to_owned()).collect(),
    );
    msg += "\n  check --arch (and the checkpoint it came from); `oml zoo list` shows each arch";
    Err(Error::Format {
        path: source.to_path_buf(),
        message: msg,
    })
}

/// Sorted `name -> shape` of a state dict, for messages and `oml zoo import`.
pub fn describe(tensors: &StateDict) -> BTreeMap<String, Vec<usize>> {
    tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}
