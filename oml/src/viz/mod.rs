//! Pictures: grids of images (samples per label, retrieval results) as PNG and HTML.

pub mod grid;

pub use grid::{ImageGrid, Tile, batch_grid, sample_grid};
