//! Pictures: grids of images (samples per label, retrieval results) as PNG and HTML.

pub mod grid;
pub mod retrieval_grid;
pub mod text;

pub use grid::{ImageGrid, Tile, batch_grid, sample_grid};
pub use retrieval_grid::{
    GRID_BLUE, GRID_GRAY, GRID_GREEN, GRID_RED, RetrievalGrid, retrieval_grid,
};
