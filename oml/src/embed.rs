//! Embedding a dataset with an extractor: batches through the loader, the network on any device,
//! progress, and the result in file order as `.npy` or Parquet.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::data::check::BBox;
use crate::data::{ImageLoader, ImageSource, LoaderConfig, SampleTable, Transform};
use crate::models::Extractor;
use crate::progress::Progress;
use crate::{Error, Result};

/// Every row of a checked table, in file order (train and validation alike).
#[derive(Debug, Clone)]
pub struct TableImages(pub Arc<SampleTable>);

impl ImageSource for TableImages {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn image_path(&self, i: usize) -> std::path::PathBuf {
        self.0.resolved_path(i)
    }
    fn bbox(&self, i: usize) -> Option<BBox> {
        self.0.bboxes.as_ref().and_then(|b| b[i])
    }
}

/// Embeddings `[N, D]` (on the CPU, `f32`) of every item of `source` in order: images decoded and
/// transformed on the CPU (a background thread prepares the next batch), the network on `device`,
/// no gradients.
pub fn embed(
    net: &dyn Extractor,
    source: Arc<dyn ImageSource>,
    transform: Transform,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    if batch_size == 0 {
        return Err(Error::param("batch_size", 0, "at least 1"));
    }
    let n = source.len();
    if n == 0 {
        return Err(Error::Msg("nothing to embed: the dataset is empty".into()));
    }
    let loader = ImageLoader::new(
        source,
        transform,
        LoaderConfig {
            prefetch: 2,
            cache: false,
            seed: 0,
        },
    )?
    .with_device(device.clone());
    let batches: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(|c| c.to_vec())
        .collect();
    let mut progress = Progress::new("embedding", n as u64, "images");
    let mut parts = Vec::with_capacity(batches.len());
    for batch in loader.iter(batches, 0) {
        let batch = batch?;
        // Uploaded on the loader's thread; the embeddings come back batch by batch.
        let x = batch.images.to_device(device)?;
        let y = crate::host::to_cpu(&net.forward(&x)?.detach(), "embed: embeddings")?;
        parts.push(y);
        progress.inc(batch.indices.len() as u64);
    }
    progress.finish();
    Ok(Tensor::cat(&parts, 0)?)
}

/// Writes embeddings `[N, D]`: `.npy` (float32) or, for a name ending in `.parquet`, Parquet with
/// `paths` (and `labels`) beside each row.
pub fn write_embeddings(
    path: &Path,
    embeddings: &Tensor,
    paths: &[String],
    labels: Option<&[i64]>,
) -> Result<()> {
    let (n, d) = embeddings.dims2()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("cannot create folder", parent, e))?;
    }
    let e = embeddings.to_dtype(candle_core::DType::F32)?;
    if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
        if paths.len() != n {
            return Err(Error::Msg(format!(
                "{n} embeddings but {} paths for {}",
                paths.len(),
                path.display()
            )));
        }
        let values: Vec<f32> = crate::host::read(&e, "embed: parquet")?;
        return crate::data::csv::write_embeddings_parquet(path, paths, labels, &values, d);
    }
    e.write_npy(path).map_err(|err| Error::Format {
        path: path.to_path_buf(),
        message: format!("cannot write .npy: {err}"),
    })
}
