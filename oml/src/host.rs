//! Every copy of a tensor between the host and a device, named by the code that makes it.
//!
//! The library reads tensors' values on the host only through [`read`], [`scalar`] and
//! [`scalars`]; clippy enforces it (`oml/clippy.toml` forbids candle's `to_vec*` and `to_scalar`
//! elsewhere in the library). The trainer also copies whole tensors to the CPU through [`to_cpu`]
//! (weights and optimiser state at checkpoints and at the end of a fit), and the loader uploads
//! batches through [`upload`]. Each call names its site, so a [`Profile`] shows what a training
//! step copies off the device, and where. On a GPU each read is a copy and a wait for the device;
//! on the CPU the same calls are counted, so the CPU build shows what a GPU run would copy.
//! (Outside training, a few whole-tensor copies for the index, the re-ranker's snapshots and
//! `doctor` call candle's `to_device` directly and are not counted.)
//!
//! ```
//! # fn main() -> oml::Result<()> {
//! use oml::candle::{Device, Tensor};
//! let profile = oml::host::Profile::start();
//! let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
//! let v: Vec<f32> = oml::host::read(&t, "example")?;
//! let copies = profile.finish();
//! assert_eq!(copies.len(), 1);
//! assert_eq!((copies[0].site, copies[0].bytes), ("example", 12));
//! # assert_eq!(v, [1.0, 2.0, 3.0]);
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor, WithDType};
use serde::Serialize;

use crate::Result;

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From a device to the host: on a GPU the host waits for the device.
    ToHost,
    /// From the host to a device.
    ToDevice,
}

/// One copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// The code that copied (`"train: step scalars"`, `"miner: distances (n-hard)"`, ...).
    pub site: &'static str,
    /// Which way.
    pub direction: Direction,
    /// Bytes copied.
    pub bytes: usize,
    /// The training step it happened in (the run's step count when the step began), or `None`
    /// outside the steps (set-up, validation, saving).
    pub step: Option<u64>,
}

#[derive(Default)]
struct Data {
    step: Option<u64>,
    transfers: Vec<Transfer>,
}

type Shared = Arc<Mutex<Data>>;

thread_local! {
    static CURRENT: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

fn current() -> Option<Shared> {
    CURRENT.with(|c| c.borrow().clone())
}

fn record(site: &'static str, direction: Direction, bytes: usize) {
    if let Some(shared) = current() {
        let mut d = shared.lock().unwrap_or_else(|p| p.into_inner());
        let step = d.step;
        d.transfers.push(Transfer {
            site,
            direction,
            bytes,
            step,
        });
    }
}

/// Records the copies made on this thread, and on the threads oml starts for the work (the
/// loader's prefetch thread, the thread of [`crate::Trainer::spawn`]), from [`Profile::start`] to
/// [`Profile::finish`] (or the drop).
pub struct Profile {
    shared: Shared,
    previous: Option<Shared>,
}

impl Profile {
    /// Starts recording on this thread (a profile started inside another one takes over until it
    /// ends: finish the inner one first).
    pub fn start() -> Profile {
        let shared: Shared = Arc::default();
        let previous = CURRENT.with(|c| c.borrow_mut().replace(shared.clone()));
        Profile { shared, previous }
    }

    /// The copies so far, in order.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transfers
            .clone()
    }

    /// Stops recording; the copies, in order.
    pub fn finish(self) -> Vec<Transfer> {
        self.transfers()
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// The recorder of this thread, to install on a thread started for the same work.
#[derive(Clone, Default)]
pub(crate) struct Inherited(Option<Shared>);

impl Inherited {
    /// This thread's recorder.
    pub(crate) fn here() -> Self {
        Inherited(current())
    }

    /// Makes it the recorder of the calling thread (for the rest of the thread's life).
    pub(crate) fn install(self) {
        if self.0.is_some() {
            CURRENT.with(|c| *c.borrow_mut() = self.0);
        }
    }
}

/// Marks the copies that follow as those of training step `step` (`None`: outside the steps).
pub(crate) fn set_step(step: Option<u64>) {
    if let Some(shared) = current() {
        shared.lock().unwrap_or_else(|p| p.into_inner()).step = step;
    }
}

/// The elements of `t` (any shape, row-major) on the host.
pub fn read<T: WithDType>(t: &Tensor, site: &'static str) -> Result<Vec<T>> {
    record(
        site,
        Direction::ToHost,
        t.elem_count() * t.dtype().size_in_bytes(),
    );
    #[allow(clippy::disallowed_methods)]
    Ok(t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<T>()?)
}

/// The one element of `t` (of any rank) on the host.
pub fn scalar<T: WithDType>(t: &Tensor, site: &'static str) -> Result<T> {
    let n = t.elem_count();
    if n != 1 {
        return Err(crate::Error::Msg(format!(
            "{site}: a scalar was expected, got a tensor of shape {:?}",
            t.dims()
        )));
    }
    record(site, Direction::ToHost, t.dtype().size_in_bytes());
    #[allow(clippy::disallowed_methods)]
    Ok(t.flatten_all()?
        .to_device(&Device::Cpu)?
        .reshape(())?
        .to_scalar::<T>()?)
}

/// `t` as a CPU tensor (a copy when it is on a device; counted either way).
pub fn to_cpu(t: &Tensor, site: &'static str) -> Result<Tensor> {
    record(
        site,
        Direction::ToHost,
        t.elem_count() * t.dtype().size_in_bytes(),
    );
    Ok(t.to_device(&Device::Cpu)?)
}

/// `t` on `device` (a copy when it is elsewhere; counted either way).
pub fn upload(t: &Tensor, device: &Device, site: &'static str) -> Result<Tensor> {
    record(
        site,
        Direction::ToDevice,
        t.elem_count() * t.dtype().size_in_bytes(),
    );
    Ok(t.to_device(device)?)
}

/// Copies by site and direction, `(site, direction) -> (copies, bytes)`, summed over the
/// training steps `steps` of `transfers`.
pub fn per_step(
    transfers: &[Transfer],
    steps: std::ops::Range<u64>,
) -> BTreeMap<(&'static str, Direction), (usize, usize)> {
    let mut out: BTreeMap<_, (usize, usize)> = BTreeMap::new();
    for t in transfers {
        if t.step.is_some_and(|s| steps.contains(&s)) {
            let e = out.entry((t.site, t.direction)).or_default();
            e.0 += 1;
            e.1 += t.bytes;
        }
    }
    out
}

/// Scalars (one element each, of any dtype, all on one device) as `f64`, in one copy.
pub fn scalars(ts: &[Tensor], site: &'static str) -> Result<Vec<f64>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let parts = ts
        .iter()
        .map(|t| {
            let t = t.flatten_all()?;
            Ok(match t.dtype() {
                candle_core::DType::F64 => t,
                candle_core::DType::F32 => t.to_dtype(candle_core::DType::F64)?,
                _ => t
                    .to_dtype(candle_core::DType::F32)?
                    .to_dtype(candle_core::DType::F64)?,
            })
        })
        .collect::<Result<Vec<Tensor>>>()?;
    if parts.iter().any(|t| t.elem_count() != 1) {
        return Err(crate::Error::Msg(format!(
            "{site}: scalars were expected, got tensors of {:?} elements",
            parts.iter().map(Tensor::elem_count).collect::<Vec<_>>()
        )));
    }
    let all = if parts.len() == 1 {
        parts[0].clone()
    } else {
        Tensor::cat(&parts, 0)?
    };
    read::<f64>(&all, site)
}
