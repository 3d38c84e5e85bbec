//! Choosing a compute device by name (`cpu`, `cuda` or `cuda:i`) and the precision of training.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The arithmetic of the forward and backward passes when fine-tuning.
///
/// `bf16` and `f16` are mixed precision, as PyTorch's autocast: the variables (the weights the
/// optimiser updates, its moments, the checkpoints) stay f32; each layer multiplies in the low
/// precision with its weights cast on the fly; norms, softmax, the loss and the gradient norm run in
/// f32. `f16` adds dynamic loss scaling ([`crate::train::optim::GradScaler`]). Meant for CUDA; the
/// CPU runs them too (correct, not faster: it has no bf16 matrix kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "PrecisionName")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 mixed precision (f32's range: no loss scaling needed).
    Bf16,
    /// float16 mixed precision with dynamic loss scaling.
    F16,
}

/// How a config may spell a precision: a name, or Lightning's `16` / `32`.
#[derive(Deserialize)]
#[serde(untagged)]
enum PrecisionName {
    Name(String),
    Bits(u32),
}

impl TryFrom<PrecisionName> for Precision {
    type Error = String;

    fn try_from(p: PrecisionName) -> std::result::Result<Self, String> {
        let name = match p {
            PrecisionName::Name(s) => s,
            PrecisionName::Bits(b) => b.to_string(),
        };
        Precision::parse(&name).map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl Precision {
    /// The element type the layers compute in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// `f32`, `bf16` or `f16` (also `fp32`, `32`, `fp16`, `16`, and Lightning's `bf16-mixed`,
    /// `16-mixed`, `32-true`); configs accept the same spellings.
    pub fn parse(name: &str) -> Result<Precision> {
        match name.trim() {
            "f32" | "fp32" | "32" | "32-true" => Ok(Precision::F32),
            "bf16" | "bf16-mixed" => Ok(Precision::Bf16),
            "f16" | "fp16" | "16" | "16-mixed" => Ok(Precision::F16),
            other => Err(Error::UnknownName {
                kind: "precision",
                name: other.to_owned(),
                known: vec!["f32".into(), "bf16".into(), "f16".into()],
            }),
        }
    }
}

/// The device named `name`: `cpu`, `cuda` (GPU 0) or `cuda:i`.
///
/// Every build accepts the CUDA names; a build without the `cuda` feature, or a machine without a
/// usable GPU, gets an error that says so instead of a panic.
pub fn device(name: &str) -> Result<Device> {
    let name = name.trim();
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" | "gpu" => 0,
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => {
                return Err(Error::UnknownName {
                    kind: "device",
                    name: name.to_owned(),
                    known: vec!["cpu".into(), "cuda".into(), "cuda:<index>".into()],
                });
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Device {
            device: name.to_owned(),
            reason: "this build of oml has no CUDA support; rebuild with `--features cuda` (needs the CUDA toolkit) or use `cpu`".to_owned(),
        });
    }
    open_cuda(name, ordinal)
}

/// Opens GPU `ordinal`, checking the driver and the index first (cudarc panics on some failures;
/// a panic is turned into an error too).
#[cfg(feature = "cuda")]
fn open_cuda(name: &str, ordinal: usize) -> Result<Device> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let fail = |reason: String| Error::Device {
        device: name.to_owned(),
        reason,
    };
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| {
            fail("the NVIDIA driver could not be loaded; install it, or use `cpu`".into())
        })?
        .map_err(|e| {
            fail(format!(
                "the NVIDIA driver answers {e}; check it with nvidia-smi, or use `cpu`"
            ))
        })?;
    let count = count.max(0) as usize;
    if count == 0 {
        return Err(fail(
            "the driver reports no GPU on this machine; use `cpu`".into(),
        ));
    }
    if ordinal >= count {
        return Err(fail(format!(
            "this machine has {count} GPU(s), cuda:0 to cuda:{}; choose one of them or `cpu`",
            count - 1
        )));
    }
    std::panic::catch_unwind(|| Device::new_cuda(ordinal))
        .map_err(|_| fail("opening the GPU panicked in the CUDA libraries; use `cpu`".into()))?
        .map_err(|e| {
            fail(format!(
                "cannot open the GPU ({e}); check the NVIDIA driver"
            ))
        })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(name: &str, _ordinal: usize) -> Result<Device> {
    Err(Error::Device {
        device: name.to_owned(),
        reason: "this build of oml has no CUDA support".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(device("cpu").is_ok());
        assert_eq!(Precision::parse("bf16-mixed").ok(), Some(Precision::Bf16));
        assert_eq!(Precision::parse("16").ok(), Some(Precision::F16));
        let e = Precision::parse("int8").unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("bf16"), "{e}");
        let e = device("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:<index>"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
