//! Pictures: grids of images (samples per label, retrieval results, mined triplets) as PNG and
//! HTML, and plots of embeddings (a 2-D projection by label, distances of positive and negative
//! pairs).

pub mod embeddings;
pub mod grid;
pub mod retrieval_grid;
pub mod text;

pub use embeddings::{
    distance_histograms, embedding_scatter, pair_distances, pca_2d, triplets_grid,
};
pub use grid::{ImageGrid, Tile, augmentation_grid, batch_grid, sample_grid};
pub use retrieval_grid::{
    GRID_BLUE, GRID_GRAY, GRID_GREEN, GRID_RED, RetrievalGrid, retrieval_grid,
};
