//! Data: OML's CSV format (read with polars, checked with line-numbered errors), images and
//! transforms, datasets, the batch loader, converters and the built-in glyph dataset.

pub mod check;
pub mod convert;
pub mod csv;
pub mod dataset;
pub mod glyphs;
pub mod images;
pub mod loader;
pub mod schema;
pub mod transforms;

pub use check::{
    BBox, CheckOptions, CheckReport, Problem, SampleTable, Severity, Split, Summary, check_csv,
};
pub use convert::{ConvertSummary, convert_fashion_mnist, convert_image_folder};
pub use dataset::{
    ImageLabeledDataset, ImageQueryGalleryDataset, ImageQueryGalleryLabeledDataset, ImageSource,
};
pub use glyphs::{GlyphsConfig, GlyphsSummary, generate_glyphs};
pub use images::{load_rgb, load_rgb_cropped, pixel_embeddings};
pub use loader::{Batch, BatchIter, ImageLoader, LoaderConfig};
pub use transforms::{Interpolation, Op, PRESETS, Transform};
