//! Choosing a compute device by name: `cpu`, `cuda` or `cuda:i`.

use candle_core::Device;

use crate::{Error, Result};

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
    Device::new_cuda(ordinal).map_err(|e| Error::Device {
        device: name.to_owned(),
        reason: format!("cannot open the GPU ({e}); check the NVIDIA driver and the index"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(device("cpu").is_ok());
        let e = device("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:<index>"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
