//! # oml: Open Metric Learning in Rust
//!
//! Models that turn images into embeddings so that the same entity lands close together, for
//! retrieval of entities never seen in training. The workflow of the Python project
//! [Open Metric Learning](https://github.com/OML-Team/open-metric-learning) (OML): a CSV of samples,
//! a sampler that forms batches, a miner and a loss, a backbone, retrieval metrics and grids.
//!
//! ```no_run
//! use oml::prelude::*;
//!
//! # fn main() -> oml::Result<()> {
//! let summary = oml::data::generate_glyphs("data/glyphs".as_ref(), &GlyphsConfig::default())?;
//! let train = ImageLabeledDataset::from_csv(&summary.csv, Some("data/glyphs".as_ref()))?;
//! let sampler = BalanceSampler::new(train.labels(), 8, 4)?.with_seed(0);
//! let transform = Transform::preset("augs_hypvit_torch", 64)?;
//! let loader = ImageLoader::new(std::sync::Arc::new(train.clone()), transform, LoaderConfig::default())?;
//! for batch in loader.iter(sampler.batches(0), 0) {
//!     let batch = batch?;
//!     println!("{:?}", batch.images.shape()); // [32, 3, 64, 64]
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Features
//! - `cuda`: candle's CUDA backend (cudarc); `oml::device("cuda:0")`.
//! - `cudnn`: cuDNN kernels (implies `cuda`).
//! - `mkl`: Intel MKL for CPU matrix products.
//!
//! A build without `cuda` compiles every call site; asking it for a CUDA device is a run-time error
//! that says how to get one.

pub mod data;
pub mod demo;
pub mod device;
pub mod doctor;
pub mod embed;
pub mod error;
mod fsio;
pub mod host;
pub mod kernel;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod notebook;
pub mod pipeline;
pub mod progress;
pub mod retrieval;
pub mod samplers;
pub mod train;
pub mod viz;
pub mod zoo;

pub use candle_core as candle;
pub use candle_nn;
pub use device::{Precision, device};
pub use error::{Error, Result};
pub use models::Model;
pub use notebook::{Figure, Report, Table};
pub use retrieval::{GalleryIndex, RetrievalResults};
pub use train::Trainer;

/// A loss by OML's names, as the trainer takes it: `Loss::triplet_hard(0.1)`, `Loss::arcface()`.
pub type Loss = losses::CriterionConfig;
/// A triplet miner by OML's names.
pub type Miner = losses::MinerConfig;

/// The vocabulary types of a notebook session: `use oml::prelude::*;`.
pub mod prelude {
    pub use crate::data::{
        CheckOptions, GlyphsConfig, ImageLabeledDataset, ImageLoader, ImageQueryGalleryDataset,
        ImageQueryGalleryLabeledDataset, ImageSource, LoaderConfig, SampleTable, Transform,
    };
    pub use crate::metrics::{Metrics, MetricsConfig, compute_metrics, evaluate};
    pub use crate::retrieval::{
        Distance, GalleryIndex, IndexConfig, QueryGalleryInfo, RetrievalResults, SearchConfig,
    };
    pub use crate::samplers::SamplerConfig;
    pub use crate::samplers::{
        BalanceSampler, BatchSampler, CategoryBalanceSampler, DistinctCategoryBalanceSampler,
    };
    pub use crate::train::{FitConfig, FitReport, OptimizerKind, Run, Schedule, Trainer};
    pub use crate::viz::{ImageGrid, RetrievalGrid, batch_grid, sample_grid};
    pub use crate::{Error, Figure, Loss, Miner, Model, Precision, Report, Result, Table};
}
