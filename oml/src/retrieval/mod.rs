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
pub mod index;
pub mod postprocess;
pub mod results;
pub mod siamese;

pub use distances::{Distance, SearchConfig};
pub use index::{
    GalleryIndex, GalleryItems, ImageSearch, IndexConfig, IndexDtype, IndexKind, IndexModel,
    QueryItems,
};
pub use postprocess::{
    AdaptiveThresholding, ConstantThresholding, PairwiseReranker, PairwiseScorer,
    RetrievalPostprocessor,
};
pub use results::{QueryGalleryInfo, RetrievalResults};
pub use siamese::{
    ConcatSiamese, MinedPairs, PairsMiner, PairwiseFitConfig, PairwiseFitReport, SiameseScorer,
    fit_siamese, rerank_metrics,
};

/// Reads embeddings as an `f32` `[N, D]` tensor on the CPU: a `.npy` (other float types are
/// converted) or a `.parquet` with an `embedding` list column (as `oml embed` writes), with a clear
/// error for anything else.
pub fn read_embeddings(path: &std::path::Path) -> crate::Result<candle_core::Tensor> {
    use candle_core::DType;
    let bad = |message: String| crate::Error::Format {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(bad(
            "no such file; give a float32 [N, D] .npy (or .parquet) of embeddings".to_owned(),
        ));
    }
    if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
        return read_parquet_embeddings(path);
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

fn read_parquet_embeddings(path: &std::path::Path) -> crate::Result<candle_core::Tensor> {
    use polars::prelude::{DataType, ParquetReader, SerReader};
    let bad = |message: String| crate::Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| crate::Error::io("cannot open", path, e))?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| bad(format!("not a readable Parquet file ({e})")))?;
    let column = df.column("embedding").map_err(|_| {
        bad("no `embedding` column (a list of floats per row, as `oml embed` writes)".into())
    })?;
    let list = column
        .cast(&DataType::List(Box::new(DataType::Float32)))
        .map_err(|e| bad(format!("`embedding` is not a list of floats ({e})")))?;
    let list = list.list().map_err(|e| bad(e.to_string()))?;
    let mut values = Vec::new();
    let mut dim = None;
    for (row, v) in list.amortized_iter().enumerate() {
        let v = v.ok_or_else(|| bad(format!("row {row}: no embedding")))?;
        let v = v.as_ref().f32().map_err(|e| bad(e.to_string()))?;
        if v.null_count() > 0 {
            return Err(bad(format!("row {row}: a missing value in the embedding")));
        }
        match dim {
            None => dim = Some(v.len()),
            Some(d) if d != v.len() => {
                return Err(bad(format!(
                    "row {row}: {} values where earlier rows have {d}",
                    v.len()
                )));
            }
            _ => {}
        }
        values.extend(v.into_no_null_iter());
    }
    let d = dim.unwrap_or(0);
    let n = values.len().checked_div(d).unwrap_or(0);
    Ok(candle_core::Tensor::from_vec(
        values,
        (n, d),
        &candle_core::Device::Cpu,
    )?)
}
