//! Post-processing of retrieval results (OML's `oml/retrieval/postprocessors`): thresholding, and
//! the interface of a pairwise re-ranker.

use super::results::RetrievalResults;
use crate::{Error, Result};

/// Something that turns retrieval results into new ones (fewer or re-ordered items per query; the
/// ground truths are kept).
pub trait RetrievalPostprocessor {
    /// New results from `rr`.
    fn process(&self, rr: &RetrievalResults) -> Result<RetrievalResults>;
}

/// OML's `ConstantThresholding`: keeps the results with distance strictly below `threshold`.
#[derive(Debug, Clone, Copy)]
pub struct ConstantThresholding {
    /// Largest distance (exclusive) kept.
    pub threshold: f32,
}

impl RetrievalPostprocessor for ConstantThresholding {
    fn process(&self, rr: &RetrievalResults) -> Result<RetrievalResults> {
        let mut distances = Vec::with_capacity(rr.n_queries());
        let mut retrieved = Vec::with_capacity(rr.n_queries());
        for q in 0..rr.n_queries() {
            let keep = rr
                .dists(q)
                .iter()
                .take_while(|&&d| d < self.threshold)
                .count();
            distances.push(rr.dists(q)[..keep].to_vec());
            retrieved.push(rr.ids(q)[..keep].to_vec());
        }
        rr.with_lists(distances, retrieved)
    }
}

/// OML's `AdaptiveThresholding`: cuts each query's list after its first gap between consecutive
/// distances larger than `n_std` times the mean gap (the mean over all consecutive gaps of all
/// queries; despite OML's name, not a standard deviation). Lists without such a gap are kept.
/// OML raises a division by zero when the first query has fewer than two results; here the mean is
/// over the gaps that exist.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveThresholding {
    /// Multiple of the mean gap.
    pub n_std: f32,
}

impl RetrievalPostprocessor for AdaptiveThresholding {
    fn process(&self, rr: &RetrievalResults) -> Result<RetrievalResults> {
        let (sum, count) = rr
            .all_distances()
            .iter()
            .flat_map(|d| d.windows(2).map(|w| (w[1] - w[0]) as f64))
            .fold((0.0, 0usize), |(s, n), g| (s + g, n + 1));
        if count == 0 {
            return rr.with_lists(rr.all_distances().to_vec(), rr.all_retrieved_ids().to_vec());
        }
        let limit = self.n_std as f64 * sum / count as f64;
        let mut distances = Vec::with_capacity(rr.n_queries());
        let mut retrieved = Vec::with_capacity(rr.n_queries());
        for q in 0..rr.n_queries() {
            let d = rr.dists(q);
            let keep = d
                .windows(2)
                .position(|w| (w[1] - w[0]) as f64 > limit)
                .map_or(d.len(), |i| i + 1);
            distances.push(d[..keep].to_vec());
            retrieved.push(rr.ids(q)[..keep].to_vec());
        }
        rr.with_lists(distances, retrieved)
    }
}

/// A model that scores `(query item, gallery item)` pairs; lower is closer (OML's pairwise model
/// returning a distance-like logit).
pub trait PairwiseScorer {
    /// One score per pair of item ids.
    fn score(&self, pairs: &[(usize, usize)]) -> Result<Vec<f32>>;
}

/// OML's `PairwiseReranker`: re-orders the first `top_n` results of every query by a pairwise
/// model's scores; the rest stay after them. When the new scores reach past the first remaining
/// distance they are rescaled (as OML) so that every list stays sorted.
pub struct PairwiseReranker<S: PairwiseScorer> {
    /// How many results per query are re-scored (> 1).
    pub top_n: usize,
    /// The model.
    pub scorer: S,
}

impl<S: PairwiseScorer> RetrievalPostprocessor for PairwiseReranker<S> {
    fn process(&self, rr: &RetrievalResults) -> Result<RetrievalResults> {
        if self.top_n < 2 {
            return Err(Error::param(
                "top_n",
                self.top_n,
                "at least 2 results to re-rank",
            ));
        }
        let (Some(query_items), Some(gallery_items)) = (rr.query_item_ids(), rr.gallery_item_ids())
        else {
            return Err(Error::Msg(
                "re-ranking needs results built from one set of items (item ids unknown)"
                    .to_owned(),
            ));
        };
        let mut pairs = Vec::new();
        for (q, &query_item) in query_items.iter().enumerate() {
            for &g in rr.ids(q).iter().take(self.top_n) {
                pairs.push((query_item, gallery_items[g]));
            }
        }
        let scores = self.scorer.score(&pairs)?;
        if scores.len() != pairs.len() {
            return Err(Error::Msg(format!(
                "the pairwise model gave {} scores for {} pairs",
                scores.len(),
                pairs.len()
            )));
        }
        let mut offset = 0;
        let mut distances = Vec::with_capacity(rr.n_queries());
        let mut retrieved = Vec::with_capacity(rr.n_queries());
        for q in 0..rr.n_queries() {
            let ids = rr.ids(q);
            let old = rr.dists(q);
            let n = ids.len().min(self.top_n);
            let mut order: Vec<usize> = (0..n).collect();
            let s = &scores[offset..offset + n];
            offset += n;
            order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
            let mut new_d: Vec<f32> = order.iter().map(|&i| s[i]).collect();
            let mut new_ids: Vec<usize> = order.iter().map(|&i| ids[i]).collect();
            if let (Some(&last), Some(&next)) = (new_d.last(), old.get(n))
                && last > next
            {
                // OML's rescaling; the clamp keeps the list sorted where rounding (or a
                // non-positive next distance) would not.
                let eps = 1000.0 * f32::EPSILON;
                let scale = if last > 0.0 { next / last } else { 1.0 };
                let below = next.next_down();
                let mut prev = f32::NEG_INFINITY;
                for d in &mut new_d {
                    *d = (*d * scale - eps).min(below).max(prev);
                    prev = *d;
                }
            }
            new_d.extend_from_slice(&old[n..]);
            new_ids.extend_from_slice(&ids[n..]);
            distances.push(new_d);
            retrieved.push(new_ids);
        }
        rr.with_lists(distances, retrieved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reverse;

    impl PairwiseScorer for Reverse {
        /// Scores that reverse the first results: larger gallery item ids are closer.
        fn score(&self, pairs: &[(usize, usize)]) -> Result<Vec<f32>> {
            Ok(pairs.iter().map(|&(_, g)| 100.0 - g as f32).collect())
        }
    }

    #[test]
    fn reranker_reorders_the_top_and_keeps_lists_sorted() {
        use candle_core::{Device, Tensor};
        let e = Tensor::from_vec(vec![0.0f32, 1.0, 2.0, 3.0, 4.0], (5, 1), &Device::Cpu)
            .expect("tensor");
        let info = crate::retrieval::QueryGalleryInfo {
            labels: Some(vec![0, 0, 1, 1, 1]),
            is_query: vec![true, false, false, false, false],
            is_gallery: vec![true; 5],
            categories: None,
            sequences: None,
        };
        let rr = RetrievalResults::from_embeddings_with(
            &e,
            &info,
            &crate::retrieval::SearchConfig::default(),
        )
        .expect("rr");
        assert_eq!(rr.retrieved_ids(0).expect("query"), &[1, 2, 3, 4]);
        let out = PairwiseReranker {
            top_n: 3,
            scorer: Reverse,
        }
        .process(&rr)
        .expect("rerank");
        // Items 1, 2, 3 (gallery indices) rescored 99, 98, 97: reversed; item 4 stays last.
        assert_eq!(out.retrieved_ids(0).expect("query"), &[3, 2, 1, 4]);
        let d = out.distances(0).expect("query");
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        assert!(d[2] < 4.0, "rescaled below the first kept distance: {d:?}");
        assert_eq!(out.gt_ids(0).expect("query"), vec![1], "ground truths kept");
        assert!(
            PairwiseReranker {
                top_n: 1,
                scorer: Reverse
            }
            .process(&rr)
            .is_err()
        );
    }

    #[test]
    fn thresholds_cut_lists() {
        let rr = RetrievalResults::new(
            vec![vec![0.1, 0.2, 0.9, 1.0], vec![0.5]],
            vec![vec![0, 1, 2, 3], vec![1]],
            Some(vec![vec![0], vec![1]]),
        )
        .expect("rr");
        let c = ConstantThresholding { threshold: 0.5 }
            .process(&rr)
            .expect("constant");
        assert_eq!(c.retrieved_ids(0).expect("query"), &[0, 1]);
        assert!(
            c.retrieved_ids(1).expect("query").is_empty(),
            "strictly below the threshold"
        );
        // Gaps 0.1, 0.7, 0.1: mean 0.3; 2 x mean = 0.6 < 0.7 cuts after the second item.
        let a = AdaptiveThresholding { n_std: 2.0 }
            .process(&rr)
            .expect("adaptive");
        assert_eq!(a.retrieved_ids(0).expect("query"), &[0, 1]);
        assert_eq!(a.retrieved_ids(1).expect("query"), &[1]);
    }
}
