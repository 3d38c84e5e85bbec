//! Dense linear algebra of the metrics and plots (nalgebra's generic code, instantiated here so
//! that it runs optimised in every profile).

use nalgebra::{DMatrix, SymmetricEigen};

/// Eigenvalues and eigenvectors of the symmetric `n x n` matrix `m` (row-major): the values, and
/// the vectors as the columns of a column-major `n x n` matrix, in the same order.
pub fn symmetric_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let e = SymmetricEigen::new(DMatrix::from_row_slice(n, n, m));
    (
        e.eigenvalues.iter().copied().collect(),
        e.eigenvectors.as_slice().to_vec(),
    )
}
