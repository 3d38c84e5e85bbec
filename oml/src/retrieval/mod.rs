//! Retrieval: for each query, its nearest gallery items, by exact search in bounded memory.
//!
//! Semantics as Python OML's `RetrievalResults.from_embeddings` (`oml/functional/knn.py`):
//! Euclidean distance (not squared), an item that is both query and gallery never retrieves itself,
//! gallery items of the query's `sequence` are excluded from the results and from the ground
//! truths, ground truths are every remaining gallery item of the query's label. Deliberate
//! differences: equal distances are ordered by gallery index (OML leaves them to `torch.topk`), and
//! separate query/gallery sets compare sequence ids by value (OML compares codes factorised on each
//! side separately, which can exclude unrelated items).

pub mod distances;
pub mod postprocess;
pub mod results;

pub use distances::{Distance, SearchConfig};
pub use postprocess::{
    AdaptiveThresholding, ConstantThresholding, PairwiseReranker, PairwiseScorer,
    RetrievalPostprocessor,
};
pub use results::{QueryGalleryInfo, RetrievalResults};

/// Reads embeddings from a `.npy` file as an `f32` `[N, D]` tensor on the CPU (other float types
/// are converted), with a clear error for anything else.
pub fn read_embeddings(path: &std::path::Path) -> crate::Result<candle_core::Tensor> {
    use candle_core::DType;
    let bad = |message: String| crate::Error::Format {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(bad(
            "no such file; give a float32 [N, D] .npy of embeddings".to_owned(),
        ));
    }
    let t = candle_core::Tensor::read_npy(path)
        .map_err(|e| bad(format!("not a readable .npy file ({e})")))?;
    if t.dims().len() != 2 {
        return Err(bad(format!(
            "expected a [N, D] matrix, got shape {:?}",
            t.dims()
        )));
    }
    match t.dtype() {
        DType::F32 => Ok(t),
        DType::F64 | DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?),
        other => Err(bad(format!("expected float32 embeddings, got {other:?}"))),
    }
}
