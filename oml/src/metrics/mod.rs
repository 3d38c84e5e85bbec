//! Retrieval metrics with Python OML's definitions, vectorised over queries, and their aggregation
//! per category exactly as OML's `EmbeddingMetrics.compute_metrics()` nests them.
//!
//! - [`retrieval`]: cmc@k, precision@k, map@k (OML), plus ndcg@k, recall@k, map@r and r-precision;
//! - [`fnmr`]: fnmr@fmr over all query-gallery pairs, streamed, exact;
//! - [`pcf`]: principal components needed to explain a fraction of the variance.

pub mod fnmr;
pub mod pcf;
pub mod retrieval;

mod embedding;

pub use embedding::{
    Metrics, MetricsConfig, MetricsGroup, NoGtPolicy, compare, compute_metrics, evaluate,
};
pub use fnmr::{fnmr_at_fmr, fnmr_at_fmr_from_distances};
pub use pcf::pcf;
pub use retrieval::{QueryMetric, per_query};
