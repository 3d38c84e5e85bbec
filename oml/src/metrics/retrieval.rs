//! Per-query retrieval metrics over ranked hits.
//!
//! For a query with `L` retrieved items, `hits[i]` whether the i-th is relevant and `n_gt` ground
//! truths (OML's `oml/functional/metrics.py`):
//! - an empty list scores 1 when `n_gt = 0`, else 0 (cmc, precision, map);
//! - `cmc@k = any(hits[..k])`;
//! - `precision@k = hits in the first k' / min(n_gt, k')` with `k' = min(k, L)` (NaN when
//!   `n_gt = 0` and `L > 0`, as OML);
//! - `map@k = sum_{i < k'} precision@(i+1) * hits[i] / (hits in the first k')` (0 when none).
//!
//! Beyond OML (clearly named, PyTorch Metric Learning's definitions where it has them; NaN when
//! `n_gt = 0`):
//! - `ndcg@k`: binary-relevance DCG of the first k over the ideal DCG of `min(n_gt, k)` hits;
//! - `recall@k`: ground truths found in the first k over `n_gt`;
//! - `map@r` (PML's `mean_average_precision_at_r`): with `R = n_gt`,
//!   `sum_{i < R} precision@(i+1) * hits[i] / R` (positions past the list count as misses);
//! - `r_precision`: hits in the first `R` over `R`.

use serde::{Deserialize, Serialize};

use crate::retrieval::RetrievalResults;

/// A per-query metric and its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueryMetric {
    /// OML's `cmc@k`.
    Cmc(usize),
    /// OML's `precision@k`.
    Precision(usize),
    /// OML's `map@k`.
    Map(usize),
    /// `ndcg@k` (binary relevance).
    Ndcg(usize),
    /// `recall@k`.
    Recall(usize),
    /// PML's `map@r`.
    MapAtR,
    /// `r_precision`.
    RPrecision,
}

impl QueryMetric {
    /// The metric's name in the nested output (`cmc`, `precision`, `map`, `ndcg`, `recall`,
    /// `map@r`, `r_precision`).
    pub fn name(&self) -> &'static str {
        match self {
            QueryMetric::Cmc(_) => "cmc",
            QueryMetric::Precision(_) => "precision",
            QueryMetric::Map(_) => "map",
            QueryMetric::Ndcg(_) => "ndcg",
            QueryMetric::Recall(_) => "recall",
            QueryMetric::MapAtR => "map@r",
            QueryMetric::RPrecision => "r_precision",
        }
    }

    /// The key under the name (`k`, or empty for the metrics without one).
    pub fn key(&self) -> Option<usize> {
        match *self {
            QueryMetric::Cmc(k)
            | QueryMetric::Precision(k)
            | QueryMetric::Map(k)
            | QueryMetric::Ndcg(k)
            | QueryMetric::Recall(k) => Some(k),
            QueryMetric::MapAtR | QueryMetric::RPrecision => None,
        }
    }

    /// The value for one query.
    pub fn value(&self, hits: &[bool], n_gt: usize) -> f64 {
        let l = hits.len();
        let empty = if n_gt == 0 { 1.0 } else { 0.0 };
        let count = |k: usize| hits.iter().take(k).filter(|&&h| h).count() as f64;
        match *self {
            QueryMetric::Cmc(k) => {
                if l == 0 {
                    empty
                } else if hits.iter().take(k).any(|&h| h) {
                    1.0
                } else {
                    0.0
                }
            }
            QueryMetric::Precision(k) => {
                if l == 0 {
                    return empty;
                }
                let kk = k.min(l);
                count(kk) / (n_gt.min(kk) as f64)
            }
            QueryMetric::Map(k) => {
                if l == 0 {
                    return empty;
                }
                let kk = k.min(l);
                let found = count(kk);
                if found < 1.0 {
                    return 0.0;
                }
                average_precision(hits, kk) / found
            }
            QueryMetric::Ndcg(k) => {
                if n_gt == 0 {
                    return f64::NAN;
                }
                let gain = |i: usize| 1.0 / ((i + 2) as f64).log2();
                let dcg: f64 = hits
                    .iter()
                    .take(k)
                    .enumerate()
                    .filter(|(_, h)| **h)
                    .map(|(i, _)| gain(i))
                    .sum();
                let idcg: f64 = (0..n_gt.min(k)).map(gain).sum();
                dcg / idcg
            }
            QueryMetric::Recall(k) => {
                if n_gt == 0 {
                    return f64::NAN;
                }
                count(k) / n_gt as f64
            }
            QueryMetric::MapAtR => {
                if n_gt == 0 {
                    return f64::NAN;
                }
                average_precision(hits, n_gt) / n_gt as f64
            }
            QueryMetric::RPrecision => {
                if n_gt == 0 {
                    return f64::NAN;
                }
                count(n_gt) / n_gt as f64
            }
        }
    }
}

/// `sum_{i < k} precision@(i+1) * hits[i]` over the first `k` positions of the list.
fn average_precision(hits: &[bool], k: usize) -> f64 {
    let mut found = 0.0;
    let mut sum = 0.0;
    for (i, &h) in hits.iter().take(k).enumerate() {
        if h {
            found += 1.0;
            sum += found / (i + 1) as f64;
        }
    }
    sum
}

/// The value of `metric` for every query of `rr` (in query order).
pub fn per_query(rr: &RetrievalResults, metric: QueryMetric) -> Vec<f64> {
    (0..rr.n_queries())
        .map(|q| metric.value(&rr.hits_of(q), rr.n_gt_of(q)))
        .collect()
}

impl RetrievalResults {
    /// The `n` queries with the lowest value of `metric` (worst first; NaN counts as worst; ties by
    /// query index), e.g. `rr.worst_queries(QueryMetric::Cmc(1), 10)` for a retrieval grid.
    pub fn worst_queries(&self, metric: QueryMetric, n: usize) -> Vec<usize> {
        let values = per_query(self, metric);
        let mut order: Vec<usize> = (0..values.len()).collect();
        let key = |q: usize| {
            if values[q].is_nan() {
                f64::NEG_INFINITY
            } else {
                values[q]
            }
        };
        order.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
        order.truncate(n);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<bool> {
        s.chars().map(|c| c == 'V').collect()
    }

    #[test]
    fn oml_six_item_case_map() {
        // From OML's tests: per-query map@k for the patterns below, n_gt = 3 (labels 0) or 1.
        let patterns = ["VVXVX", "VXXVV", "XVVXV", "XXVVV", "VXXXX", "XXXVX"];
        let n_gt = [3, 3, 3, 3, 1, 1];
        let expect_k4 = [11.0 / 12.0, 0.75, 7.0 / 12.0, 5.0 / 12.0, 1.0, 0.25];
        let expect_k5 = [
            11.0 / 12.0,
            21.0 / 30.0,
            53.0 / 90.0,
            43.0 / 90.0,
            1.0,
            0.25,
        ];
        for i in 0..6 {
            let v4 = QueryMetric::Map(4).value(&h(patterns[i]), n_gt[i]);
            let v5 = QueryMetric::Map(5).value(&h(patterns[i]), n_gt[i]);
            assert!((v4 - expect_k4[i]).abs() < 1e-12, "{i}: {v4}");
            assert!((v5 - expect_k5[i]).abs() < 1e-12, "{i}: {v5}");
        }
    }

    #[test]
    fn edge_cases_as_oml() {
        for m in [
            QueryMetric::Cmc(5),
            QueryMetric::Precision(5),
            QueryMetric::Map(5),
        ] {
            assert_eq!(m.value(&[], 0), 1.0);
            assert_eq!(m.value(&[], 3), 0.0);
        }
        assert!(QueryMetric::Precision(5).value(&h("XX"), 0).is_nan());
        assert_eq!(QueryMetric::Map(5).value(&h("XX"), 0), 0.0);
        // A short list is not penalised by precision.
        assert_eq!(QueryMetric::Precision(5).value(&h("VV"), 5), 1.0);
    }

    #[test]
    fn beyond_oml_metrics() {
        let hits = h("VXVX");
        assert!((QueryMetric::Recall(3).value(&hits, 4) - 0.5).abs() < 1e-12);
        assert!((QueryMetric::RPrecision.value(&hits, 2) - 0.5).abs() < 1e-12);
        // map@r with R = 2: precision@1 * 1 / 2.
        assert!((QueryMetric::MapAtR.value(&hits, 2) - 0.5).abs() < 1e-12);
        let ideal = h("VVXX");
        assert!((QueryMetric::Ndcg(4).value(&ideal, 2) - 1.0).abs() < 1e-12);
        let ndcg = QueryMetric::Ndcg(4).value(&hits, 2);
        let expect = (1.0 + 1.0 / 4f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg - expect).abs() < 1e-12);
        assert!(QueryMetric::Ndcg(4).value(&hits, 0).is_nan());
    }
}
