//! pcf@v: the number of principal components needed to explain a fraction `v` of the variance of
//! the embeddings, divided by the dimension (OML's `calc_pcf`). Small values mean the embeddings
//! use few directions of their space.
//!
//! As OML: the `min(N, D)` largest eigenvalues of the covariance, their cumulative share `cs`, and
//! `n = 1 + #{cs <= v}` (so `v = 1` gives `(min(N, D) + 1) / D` when the shares sum to 1 exactly);
//! degenerate inputs (no variance) give `(min(N, D) + 1) / D`, as OML's arithmetic does.

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// The scatter matrix `X^T X` (`dim x dim`, row-major, f64) of the rows of `embeddings` centred
/// by their mean: one f64 matrix product (candle's, optimised in every profile).
pub(crate) fn scatter(embeddings: &[f32], dim: usize) -> Result<Vec<f64>> {
    let n = embeddings.len() / dim;
    let x = Tensor::from_slice(embeddings, (n, dim), &Device::Cpu)?.to_dtype(DType::F64)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    crate::host::read::<f64>(
        &centred.t()?.contiguous()?.matmul(&centred)?,
        "metrics: covariance",
    )
}

/// pcf for every fraction in `variances`; `embeddings` is `N` rows of `dim` values, row-major.
pub fn pcf(embeddings: &[f32], dim: usize, variances: &[f64]) -> Result<Vec<f64>> {
    if let Some(v) = variances.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(Error::param(
            "pcf_variance",
            v,
            "fractions of the variance in [0, 1]",
        ));
    }
    if dim == 0 || embeddings.is_empty() || !embeddings.len().is_multiple_of(dim) {
        return Err(Error::Msg(format!(
            "pcf: {} values are not rows of dimension {dim}",
            embeddings.len()
        )));
    }
    let n = embeddings.len() / dim;
    let (values, _) = oml_kernels::linalg::symmetric_eigen(&scatter(embeddings, dim)?, dim);
    let mut eig: Vec<f64> = values.iter().map(|&v| v.max(0.0)).collect();
    eig.sort_by(|a, b| b.total_cmp(a));
    eig.truncate(n.min(dim));
    let total: f64 = eig.iter().sum();
    let k = eig.len();
    if total <= 0.0 {
        return Ok(variances
            .iter()
            .map(|_| (k + 1) as f64 / dim as f64)
            .collect());
    }
    let mut cs = Vec::with_capacity(k);
    let mut acc = 0.0;
    for v in &eig {
        acc += v / total;
        cs.push(acc);
    }
    // Shares that sum to one up to rounding count as one (OML's float32 result varies there).
    const TOL: f64 = 1e-9;
    Ok(variances
        .iter()
        .map(|&v| {
            let count = cs.iter().filter(|&&c| c <= v + TOL).count();
            (count + 1) as f64 / dim as f64
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oml_docstring_eye_4_10() {
        let mut e = vec![0f32; 40];
        for i in 0..4 {
            e[i * 10 + i] = 1.0;
        }
        let v = pcf(&e, 10, &[0.5, 1.0]).expect("pcf");
        assert!(
            (v[0] - 0.2).abs() < 1e-12 && (v[1] - 0.5).abs() < 1e-12,
            "{v:?}"
        );
    }

    #[test]
    fn oml_test_two_stacked_identities() {
        // cat(eye(300, 10), eye(300, 10), dim=1): 300 x 20.
        let mut e = vec![0f32; 300 * 20];
        for i in 0..10 {
            e[i * 20 + i] = 1.0;
            e[i * 20 + 10 + i] = 1.0;
        }
        let v = pcf(&e, 20, &[0.5, 0.9]).expect("pcf");
        assert!(
            (v[0] - 0.25).abs() < 1e-12 && (v[1] - 0.45).abs() < 1e-12,
            "{v:?}"
        );
    }
}
