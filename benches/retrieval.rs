//! Benchmark: exact retrieval + metrics, side by side with numpy brute force and Python OML
//! (`benches/python_retrieval.py`; both run by `benches/compare_retrieval.sh`).
//!
//! `cargo bench --bench retrieval -- [10k] [1m]`:
//! - `10k`: 10,000 items, all query and gallery, 1,000 labels x 10, dim 384, top 5, then cmc@1,5,
//!   precision@5, map@5 (the case of the Python script);
//! - `1m`: 1,000 queries against a 1,000,000-item gallery, dim 384, top 10: time and peak memory
//!   (the embeddings alone are 1.5 GB; the search adds `O(block x block)`).
//!
//! Prints one JSON line per case with seconds and the peak resident memory (VmHWM).

use std::time::Instant;

use candle_core::{Device, Tensor};
use oml::metrics::{MetricsConfig, compute_metrics};
use oml::retrieval::{QueryGalleryInfo, RetrievalResults, SearchConfig};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn case_10k() {
    let n = 10_000;
    let e = Tensor::randn(0f32, 1.0, (n, 384), &Device::Cpu).expect("randn");
    let info = QueryGalleryInfo {
        labels: Some((0..n as i64).map(|i| i / 10).collect()),
        is_query: vec![true; n],
        is_gallery: vec![true; n],
        categories: None,
        sequences: None,
    };
    let config = MetricsConfig {
        cmc_top_k: vec![1, 5],
        precision_top_k: vec![5],
        map_top_k: vec![5],
        pcf_variance: vec![],
        ..MetricsConfig::default()
    };
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let defaults = SearchConfig::default();
    let search = SearchConfig {
        top_n: 5,
        query_block: env("OML_BENCH_QUERY_BLOCK", defaults.query_block),
        gallery_block: env("OML_BENCH_GALLERY_BLOCK", defaults.gallery_block),
        ..defaults
    };
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let rr = RetrievalResults::from_embeddings_with(&e, &info, &search).expect("retrieval");
        let knn = t.elapsed().as_secs_f64();
        let metrics = compute_metrics(&rr, &config).expect("metrics");
        let total = t.elapsed().as_secs_f64();
        assert!(metrics.get("OVERALL", "cmc", "1").is_some());
        times.push((knn, total));
    }
    times.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (knn, total) = times[1];
    println!(
        "{{\"bench\": \"retrieval_10k\", \"threads\": {}, \"knn_s\": {knn:.3}, \"metrics_s\": {:.3}, \"total_s\": {total:.3}, \"peak_rss_mib\": {:.0}}}",
        rayon::current_num_threads(),
        total - knn,
        peak_rss_mib()
    );
}

fn case_1m() {
    let q = Tensor::randn(0f32, 1.0, (1_000, 384), &Device::Cpu).expect("randn");
    let g = Tensor::randn(0f32, 1.0, (1_000_000, 384), &Device::Cpu).expect("randn");
    let before = peak_rss_mib();
    let search = SearchConfig {
        top_n: 10,
        ..SearchConfig::default()
    };
    let t = Instant::now();
    let rr = RetrievalResults::from_embeddings_qg(&q, &g, None, None, None, None, None, &search)
        .expect("retrieval");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(rr.n_queries(), 1_000);
    assert!(rr.all_retrieved_ids().iter().all(|r| r.len() == 10));
    println!(
        "{{\"bench\": \"retrieval_1k_x_1m\", \"threads\": {}, \"knn_s\": {secs:.2}, \"peak_rss_mib_before_search\": {before:.0}, \"peak_rss_mib\": {:.0}}}",
        rayon::current_num_threads(),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = args.is_empty();
    if all || args.iter().any(|a| a == "10k") {
        case_10k();
    }
    if all || args.iter().any(|a| a == "1m") {
        case_1m();
    }
}
