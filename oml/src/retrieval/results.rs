//! `RetrievalResults`: per query, its top-n gallery items (distances ascending) and its ground
//! truths.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use serde::Serialize;

use super::distances::{Exclusion, SearchConfig, check_embeddings, knn};
use crate::data::{ImageQueryGalleryLabeledDataset, SampleTable, Split};
use crate::{Error, Result};

/// What retrieval needs to know about the items (no images): per item its label, whether it is a
/// query and/or a gallery item, its category and sequence.
#[derive(Debug, Clone, Default)]
pub struct QueryGalleryInfo {
    /// Label per item (`None`: unlabelled, no ground truths).
    pub labels: Option<Vec<i64>>,
    /// Whether each item is a query.
    pub is_query: Vec<bool>,
    /// Whether each item is in the gallery.
    pub is_gallery: Vec<bool>,
    /// Category per item, if any.
    pub categories: Option<Vec<String>>,
    /// Sequence id per item, if any.
    pub sequences: Option<Vec<String>>,
}

impl QueryGalleryInfo {
    /// From a labelled validation dataset.
    pub fn from_dataset(dataset: &ImageQueryGalleryLabeledDataset) -> Self {
        Self::from_table(dataset.table())
    }

    /// The validation rows of a checked table, in file order.
    pub fn from_table(table: &SampleTable) -> Self {
        let rows = table.rows_of(Split::Validation);
        let pick = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|v| rows.iter().map(|&r| v[r].clone()).collect())
        };
        QueryGalleryInfo {
            labels: table
                .labels
                .as_ref()
                .map(|l| rows.iter().map(|&r| l[r]).collect()),
            is_query: rows.iter().map(|&r| table.is_query[r]).collect(),
            is_gallery: rows.iter().map(|&r| table.is_gallery[r]).collect(),
            categories: pick(&table.categories),
            sequences: pick(&table.sequences),
        }
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.is_query.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.is_query.is_empty()
    }

    /// Item indices of the queries.
    pub fn query_ids(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_query[i]).collect()
    }

    /// Item indices of the gallery.
    pub fn gallery_ids(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_gallery[i]).collect()
    }

    fn validate(&self) -> Result<()> {
        let n = self.len();
        let bad = |name: &str, len: usize| {
            Err(Error::Msg(format!(
                "query/gallery info: {name} has {len} values for {n} items"
            )))
        };
        if self.is_gallery.len() != n {
            return bad("is_gallery", self.is_gallery.len());
        }
        for (name, len) in [
            ("labels", self.labels.as_ref().map(Vec::len)),
            ("categories", self.categories.as_ref().map(Vec::len)),
            ("sequences", self.sequences.as_ref().map(Vec::len)),
        ] {
            if let Some(len) = len.filter(|&l| l != n) {
                return bad(name, len);
            }
        }
        Ok(())
    }
}

/// Which pairs are never retrieved: the query's own item, and gallery items of its sequence.
#[derive(Debug, Clone, Default)]
pub(crate) struct PairExclusion {
    /// Item id per query / gallery index, when query and gallery come from one set of items.
    pub items: Option<(Vec<usize>, Vec<usize>)>,
    /// Sequence codes per query / gallery index (equal codes = equal sequence values).
    pub sequences: Option<(Vec<u32>, Vec<u32>)>,
}

impl Exclusion for PairExclusion {
    fn excluded(&self, q: usize, g: usize) -> bool {
        if let Some((qi, gi)) = &self.items
            && qi[q] == gi[g]
        {
            return true;
        }
        if let Some((qs, gs)) = &self.sequences
            && qs[q] == gs[g]
        {
            return true;
        }
        false
    }
}

/// Query and gallery embeddings of one set of items, with what excludes pairs and the labels.
pub(crate) struct Prepared {
    pub queries: Tensor,
    pub gallery: Tensor,
    pub query_ids: Vec<usize>,
    pub gallery_ids: Vec<usize>,
    pub exclusion: PairExclusion,
    pub labels: Option<(Vec<i64>, Vec<i64>)>,
}

impl Prepared {
    pub fn new(embeddings: &Tensor, info: &QueryGalleryInfo) -> Result<Self> {
        info.validate()?;
        let e = check_embeddings("embeddings", embeddings)?;
        let n = e.dims()[0];
        if n != info.len() {
            return Err(Error::Msg(format!(
                "{n} embeddings for {} items; row i of the embeddings must be item i",
                info.len()
            )));
        }
        let query_ids = info.query_ids();
        let gallery_ids = info.gallery_ids();
        if query_ids.is_empty() || gallery_ids.is_empty() {
            return Err(Error::Msg(format!(
                "{} queries and {} gallery items; retrieval needs at least one of each",
                query_ids.len(),
                gallery_ids.len()
            )));
        }
        let index = |ids: &[usize]| -> Result<Tensor> {
            if ids.len() == n {
                // Every item: no copy.
                return Ok(e.clone());
            }
            let idx = Tensor::from_vec(
                ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                ids.len(),
                e.device(),
            )?;
            Ok(e.index_select(&idx, 0)?)
        };
        let exclusion = PairExclusion {
            items: Some((query_ids.clone(), gallery_ids.clone())),
            sequences: info.sequences.as_ref().map(|s| {
                let pick = |ids: &[usize]| ids.iter().map(|&i| s[i].clone()).collect::<Vec<_>>();
                sequence_codes(&pick(&query_ids), &pick(&gallery_ids))
            }),
        };
        let labels = info.labels.as_ref().map(|l| {
            (
                query_ids.iter().map(|&i| l[i]).collect::<Vec<_>>(),
                gallery_ids.iter().map(|&i| l[i]).collect::<Vec<_>>(),
            )
        });
        Ok(Prepared {
            queries: index(&query_ids)?,
            gallery: index(&gallery_ids)?,
            query_ids,
            gallery_ids,
            exclusion,
            labels,
        })
    }
}

/// Codes of sequence values shared by the two sides (equal values, equal codes).
pub(crate) fn sequence_codes(query: &[String], gallery: &[String]) -> (Vec<u32>, Vec<u32>) {
    let mut codes: HashMap<&str, u32> = HashMap::new();
    for s in query.iter().chain(gallery) {
        let next = codes.len() as u32;
        codes.entry(s.as_str()).or_insert(next);
    }
    let code = |s: &String| codes.get(s.as_str()).copied().unwrap_or(u32::MAX);
    (
        query.iter().map(code).collect(),
        gallery.iter().map(code).collect(),
    )
}

/// Per query: as many distances as ids, distances ascending and not NaN, no id twice.
fn validate_lists(distances: &[Vec<f32>], retrieved: &[Vec<usize>]) -> Result<()> {
    if distances.len() != retrieved.len() {
        return Err(Error::Msg(format!(
            "{} distance lists but {} retrieved lists",
            distances.len(),
            retrieved.len()
        )));
    }
    for (q, (d, r)) in distances.iter().zip(retrieved).enumerate() {
        if d.len() != r.len() {
            return Err(Error::Msg(format!(
                "query {q}: {} distances but {} retrieved ids",
                d.len(),
                r.len()
            )));
        }
        if d.iter().any(|x| x.is_nan()) || d.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::Msg(format!(
                "query {q}: distances are not sorted ascending"
            )));
        }
        let mut seen = r.clone();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Msg(format!(
                "query {q}: a gallery item is retrieved twice"
            )));
        }
    }
    Ok(())
}

/// Ground truths of every query: explicit lists, or derived from labels (so that memory stays
/// `O(gallery)` however many positives there are).
#[derive(Debug, Clone)]
pub(crate) enum GroundTruth {
    /// Sorted gallery indices per query.
    Explicit(Vec<Vec<usize>>),
    /// Every non-excluded gallery item with the query's label.
    Labels {
        query_labels: Vec<i64>,
        gallery_labels: Vec<i64>,
        by_label: HashMap<i64, Vec<usize>>,
        n_gt: Vec<usize>,
        exclusion: PairExclusion,
    },
}

#[derive(Debug)]
struct Inner {
    distances: Vec<Vec<f32>>,
    retrieved: Vec<Vec<usize>>,
    gt: Option<GroundTruth>,
    query_ids: Option<Vec<usize>>,
    gallery_ids: Option<Vec<usize>>,
    query_categories: Option<Vec<String>>,
    /// The embeddings and items the results were searched from (metrics that need every pair or
    /// every embedding, and a deeper search, use them).
    source: Option<Source>,
}

#[derive(Debug)]
struct Source {
    embeddings: Tensor,
    info: QueryGalleryInfo,
    search: SearchConfig,
}

/// What items of a query/gallery set are (labels, query and gallery flags, categories,
/// sequences): the validation datasets, or a [`QueryGalleryInfo`] itself.
pub trait QueryGallerySet {
    /// The items' retrieval information, in the dataset's order.
    fn query_gallery_info(&self) -> QueryGalleryInfo;
}

impl QueryGallerySet for QueryGalleryInfo {
    fn query_gallery_info(&self) -> QueryGalleryInfo {
        self.clone()
    }
}

impl QueryGallerySet for ImageQueryGalleryLabeledDataset {
    fn query_gallery_info(&self) -> QueryGalleryInfo {
        QueryGalleryInfo::from_dataset(self)
    }
}

impl QueryGallerySet for crate::data::ImageQueryGalleryDataset {
    fn query_gallery_info(&self) -> QueryGalleryInfo {
        QueryGalleryInfo::from_table(self.table())
    }
}

/// Per query, its retrieved gallery items (indices into the gallery, distances ascending, ties by
/// gallery index) and its ground truths. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RetrievalResults {
    inner: Arc<Inner>,
}

impl RetrievalResults {
    /// From explicit lists (as OML's `RetrievalResults(distances, retrieved_ids, gt_ids)`): per query
    /// its distances (ascending), retrieved gallery indices (distinct) and, optionally, its ground
    /// truth gallery indices.
    pub fn new(
        distances: Vec<Vec<f32>>,
        retrieved_ids: Vec<Vec<usize>>,
        gt_ids: Option<Vec<Vec<usize>>>,
    ) -> Result<Self> {
        validate_lists(&distances, &retrieved_ids)?;
        let gt = match gt_ids {
            Some(gt) => {
                if gt.len() != distances.len() {
                    return Err(Error::Msg(format!(
                        "{} ground-truth lists for {} queries",
                        gt.len(),
                        distances.len()
                    )));
                }
                Some(GroundTruth::Explicit(
                    gt.into_iter()
                        .map(|mut g| {
                            g.sort_unstable();
                            g.dedup();
                            g
                        })
                        .collect(),
                ))
            }
            None => None,
        };
        Ok(RetrievalResults {
            inner: Arc::new(Inner {
                distances,
                retrieved: retrieved_ids,
                gt,
                query_ids: None,
                gallery_ids: None,
                query_categories: None,
                source: None,
            }),
        })
    }

    /// OML's `RetrievalResults.from_embeddings(embeddings, dataset, n_items)`: the `n_items`
    /// nearest gallery items of every query of `items` (a validation dataset), by Euclidean
    /// distance. `embeddings` is `[N, D]`, row `i` the item `i` of the dataset (as
    /// [`crate::Model::embed`] gives them). An item never retrieves itself; items of the query's
    /// sequence are excluded from results and ground truths.
    pub fn from_embeddings(
        embeddings: &Tensor,
        items: &dyn QueryGallerySet,
        n_items: usize,
    ) -> Result<Self> {
        let config = SearchConfig {
            top_n: n_items,
            ..SearchConfig::default()
        };
        Self::from_embeddings_with(embeddings, &items.query_gallery_info(), &config)
    }

    /// Retrieval over one set of items with every search setting (distance, depth, block sizes):
    /// `embeddings` is `[N, D]`, row `i` the item `i` of `info`; queries and galleries are the
    /// items flagged so.
    pub fn from_embeddings_with(
        embeddings: &Tensor,
        info: &QueryGalleryInfo,
        config: &SearchConfig,
    ) -> Result<Self> {
        let p = Prepared::new(embeddings, info)?;
        let categories = info
            .categories
            .as_ref()
            .map(|c| p.query_ids.iter().map(|&i| c[i].clone()).collect());
        let mut rr = Self::search(
            &p.queries,
            &p.gallery,
            p.labels,
            p.exclusion,
            categories,
            Some((p.query_ids, p.gallery_ids)),
            config,
        )?;
        if let Some(inner) = Arc::get_mut(&mut rr.inner) {
            inner.source = Some(Source {
                embeddings: embeddings.clone(),
                info: info.clone(),
                search: config.clone(),
            });
        }
        Ok(rr)
    }

    /// The metrics a notebook shows first: cmc@1, cmc@5, precision@5 and map@5 (OML's
    /// `calc_retrieval_metrics_rr` with those k), over all queries and per category.
    pub fn metrics(&self) -> Result<crate::metrics::Metrics> {
        self.metrics_with(&crate::metrics::MetricsConfig::common())
    }

    /// The metrics of `config`. Metrics over every pair or every embedding (fnmr@fmr, pcf), and a
    /// k deeper than the search went, search again from the embeddings these results were built
    /// from; results without them (explicit lists, post-processed ones) get those refused.
    pub fn metrics_with(
        &self,
        config: &crate::metrics::MetricsConfig,
    ) -> Result<crate::metrics::Metrics> {
        let deep_enough = match &self.inner.source {
            Some(src) => src.search.top_n >= config.max_k(),
            None => true,
        };
        if deep_enough && config.fmr_vals.is_empty() && config.pcf_variance.is_empty() {
            return crate::metrics::compute_metrics(self, config);
        }
        match &self.inner.source {
            Some(src) => {
                Ok(crate::metrics::evaluate(&src.embeddings, &src.info, config, &src.search)?.1)
            }
            None => Err(Error::Msg(
                "fnmr@fmr and pcf need the embeddings: build the results with \
                 RetrievalResults::from_embeddings, or use oml::metrics::evaluate"
                    .into(),
            )),
        }
    }

    /// The retrieval grid of these results over the images of `dataset` (the one the embeddings
    /// were computed on): six varied queries by default; `.queries(..)`, `.worst(n)`,
    /// `.results(n)`, `.gt(n)`, `.size(px)` change it. Displays itself in a notebook.
    pub fn visualize<D: crate::data::ImageSource + Clone + 'static>(
        &self,
        dataset: &D,
    ) -> crate::viz::RetrievalGrid {
        crate::viz::RetrievalGrid::new(self.clone(), Arc::new(dataset.clone()))
    }

    /// Retrieval of separate query and gallery sets (OML's `from_embeddings_qg`): nothing is
    /// excluded as "itself"; sequence ids, when both sides have them, are compared by value.
    #[allow(clippy::too_many_arguments)]
    pub fn from_embeddings_qg(
        queries: &Tensor,
        gallery: &Tensor,
        query_labels: Option<&[i64]>,
        gallery_labels: Option<&[i64]>,
        query_sequences: Option<&[String]>,
        gallery_sequences: Option<&[String]>,
        query_categories: Option<&[String]>,
        config: &SearchConfig,
    ) -> Result<Self> {
        let q = check_embeddings("query embeddings", queries)?;
        let g = check_embeddings("gallery embeddings", gallery)?;
        let (nq, ng) = (q.dims()[0], g.dims()[0]);
        let check_len = |name: &str, len: Option<usize>, n: usize| match len {
            Some(l) if l != n => Err(Error::Msg(format!(
                "{name} has {l} values for {n} embeddings"
            ))),
            _ => Ok(()),
        };
        check_len("query_labels", query_labels.map(<[i64]>::len), nq)?;
        check_len("gallery_labels", gallery_labels.map(<[i64]>::len), ng)?;
        check_len("query_sequences", query_sequences.map(<[String]>::len), nq)?;
        check_len(
            "gallery_sequences",
            gallery_sequences.map(<[String]>::len),
            ng,
        )?;
        check_len(
            "query_categories",
            query_categories.map(<[String]>::len),
            nq,
        )?;
        let both = |name: &str, a: bool, b: bool| {
            if a != b {
                Err(Error::Msg(format!(
                    "{name} given for one side only; give them for both queries and gallery, or for neither"
                )))
            } else {
                Ok(())
            }
        };
        both("labels", query_labels.is_some(), gallery_labels.is_some())?;
        both(
            "sequences",
            query_sequences.is_some(),
            gallery_sequences.is_some(),
        )?;
        let exclusion = PairExclusion {
            items: None,
            sequences: match (query_sequences, gallery_sequences) {
                (Some(a), Some(b)) => Some(sequence_codes(a, b)),
                _ => None,
            },
        };
        let labels = match (query_labels, gallery_labels) {
            (Some(a), Some(b)) => Some((a.to_vec(), b.to_vec())),
            _ => None,
        };
        Self::search(
            &q,
            &g,
            labels,
            exclusion,
            query_categories.map(<[String]>::to_vec),
            None,
            config,
        )
    }

    fn search(
        q: &Tensor,
        g: &Tensor,
        labels: Option<(Vec<i64>, Vec<i64>)>,
        exclusion: PairExclusion,
        query_categories: Option<Vec<String>>,
        ids: Option<(Vec<usize>, Vec<usize>)>,
        config: &SearchConfig,
    ) -> Result<Self> {
        let found = knn(q, g, config, &exclusion)?;
        let (distances, retrieved) = found.into_iter().unzip();
        let (query_ids, gallery_ids) = match ids {
            Some((q, g)) => (Some(q), Some(g)),
            None => (None, None),
        };
        Self::from_search(
            distances,
            retrieved,
            labels,
            exclusion,
            query_categories,
            query_ids,
            gallery_ids,
        )
    }

    /// Results of a search done elsewhere (an index): the lists, with ground truths derived
    /// from the labels minus the excluded pairs.
    pub(crate) fn from_search(
        distances: Vec<Vec<f32>>,
        retrieved: Vec<Vec<usize>>,
        labels: Option<(Vec<i64>, Vec<i64>)>,
        exclusion: PairExclusion,
        query_categories: Option<Vec<String>>,
        query_ids: Option<Vec<usize>>,
        gallery_ids: Option<Vec<usize>>,
    ) -> Result<Self> {
        let gt = labels.map(|(query_labels, gallery_labels)| {
            let mut by_label: HashMap<i64, Vec<usize>> = HashMap::new();
            for (j, &l) in gallery_labels.iter().enumerate() {
                by_label.entry(l).or_default().push(j);
            }
            let n_gt = query_labels
                .iter()
                .enumerate()
                .map(|(qi, l)| {
                    by_label.get(l).map_or(0, |gs| {
                        gs.iter().filter(|&&gj| !exclusion.excluded(qi, gj)).count()
                    })
                })
                .collect();
            GroundTruth::Labels {
                query_labels,
                gallery_labels,
                by_label,
                n_gt,
                exclusion,
            }
        });
        Ok(RetrievalResults {
            inner: Arc::new(Inner {
                distances,
                retrieved,
                gt,
                query_ids,
                gallery_ids,
                query_categories,
                source: None,
            }),
        })
    }

    /// A copy of the lists, ground truths, ids and categories (not the source embeddings, which
    /// the derived results no longer match).
    fn derived(&self) -> Inner {
        Inner {
            distances: self.inner.distances.clone(),
            retrieved: self.inner.retrieved.clone(),
            gt: self.inner.gt.clone(),
            query_ids: self.inner.query_ids.clone(),
            gallery_ids: self.inner.gallery_ids.clone(),
            query_categories: self.inner.query_categories.clone(),
            source: None,
        }
    }

    /// The same results with other item ids for queries and gallery (what a retrieval grid
    /// draws: item `query_ids[q]` and `gallery_ids[g]` of its image source).
    pub fn with_item_ids(&self, query_ids: Vec<usize>, gallery_ids: Vec<usize>) -> Result<Self> {
        if query_ids.len() != self.n_queries() {
            return Err(Error::Msg(format!(
                "{} query ids for {} queries",
                query_ids.len(),
                self.n_queries()
            )));
        }
        Ok(RetrievalResults {
            inner: Arc::new(Inner {
                query_ids: Some(query_ids),
                gallery_ids: Some(gallery_ids),
                ..self.derived()
            }),
        })
    }

    /// A copy with other retrieved lists (postprocessing), same ground truths and ids.
    pub(crate) fn with_lists(
        &self,
        distances: Vec<Vec<f32>>,
        retrieved: Vec<Vec<usize>>,
    ) -> Result<Self> {
        let check = RetrievalResults::new(distances, retrieved, None)?;
        let inner = Arc::try_unwrap(check.inner)
            .map_err(|_| Error::Msg("internal: shared results".into()))?;
        Ok(RetrievalResults {
            inner: Arc::new(Inner {
                distances: inner.distances,
                retrieved: inner.retrieved,
                ..self.derived()
            }),
        })
    }

    /// The same results with a category per query (for metrics per category).
    pub fn with_query_categories(&self, categories: Vec<String>) -> Result<Self> {
        if categories.len() != self.n_queries() {
            return Err(Error::Msg(format!(
                "{} categories for {} queries",
                categories.len(),
                self.n_queries()
            )));
        }
        Ok(RetrievalResults {
            inner: Arc::new(Inner {
                query_categories: Some(categories),
                ..self.derived()
            }),
        })
    }

    /// Number of queries.
    pub fn n_queries(&self) -> usize {
        self.inner.distances.len()
    }

    /// Distances of query `q`'s results, ascending (`None` past the last query).
    pub fn distances(&self, q: usize) -> Option<&[f32]> {
        self.inner.distances.get(q).map(Vec::as_slice)
    }

    /// Gallery indices retrieved for query `q`, nearest first (`None` past the last query).
    pub fn retrieved_ids(&self, q: usize) -> Option<&[usize]> {
        self.inner.retrieved.get(q).map(Vec::as_slice)
    }

    pub(crate) fn dists(&self, q: usize) -> &[f32] {
        &self.inner.distances[q]
    }

    pub(crate) fn ids(&self, q: usize) -> &[usize] {
        &self.inner.retrieved[q]
    }

    /// All distance lists.
    pub fn all_distances(&self) -> &[Vec<f32>] {
        &self.inner.distances
    }

    /// All retrieved lists.
    pub fn all_retrieved_ids(&self) -> &[Vec<usize>] {
        &self.inner.retrieved
    }

    /// Whether ground truths are known (labels were given).
    pub fn has_ground_truth(&self) -> bool {
        self.inner.gt.is_some()
    }

    /// Number of ground truths of query `q` (0 without labels; `None` past the last query).
    pub fn n_gt(&self, q: usize) -> Option<usize> {
        (q < self.n_queries()).then(|| self.n_gt_of(q))
    }

    pub(crate) fn n_gt_of(&self, q: usize) -> usize {
        match &self.inner.gt {
            None => 0,
            Some(GroundTruth::Explicit(gt)) => gt[q].len(),
            Some(GroundTruth::Labels { n_gt, .. }) => n_gt[q],
        }
    }

    /// Ground-truth gallery indices of query `q`, ascending (empty without labels; `None` past
    /// the last query).
    pub fn gt_ids(&self, q: usize) -> Option<Vec<usize>> {
        (q < self.n_queries()).then(|| self.gt_of(q))
    }

    pub(crate) fn gt_of(&self, q: usize) -> Vec<usize> {
        match &self.inner.gt {
            None => Vec::new(),
            Some(GroundTruth::Explicit(gt)) => gt[q].clone(),
            Some(GroundTruth::Labels {
                query_labels,
                by_label,
                exclusion,
                ..
            }) => by_label
                .get(&query_labels[q])
                .map(|gs| {
                    gs.iter()
                        .copied()
                        .filter(|&g| !exclusion.excluded(q, g))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether gallery item `g` is a ground truth of query `q` (false for indices out of range).
    pub fn is_gt(&self, q: usize, g: usize) -> bool {
        if q >= self.n_queries() {
            return false;
        }
        match &self.inner.gt {
            None => false,
            Some(GroundTruth::Explicit(gt)) => gt[q].binary_search(&g).is_ok(),
            Some(GroundTruth::Labels {
                query_labels,
                gallery_labels,
                exclusion,
                ..
            }) => gallery_labels.get(g) == Some(&query_labels[q]) && !exclusion.excluded(q, g),
        }
    }

    /// Per retrieved position of query `q`: whether it is a ground truth (`None` past the last
    /// query).
    pub fn hits(&self, q: usize) -> Option<Vec<bool>> {
        (q < self.n_queries()).then(|| self.hits_of(q))
    }

    pub(crate) fn hits_of(&self, q: usize) -> Vec<bool> {
        self.inner.retrieved[q]
            .iter()
            .map(|&g| self.is_gt(q, g))
            .collect()
    }

    /// The label of every query, when results were built from labelled items.
    pub fn query_labels(&self) -> Option<&[i64]> {
        match &self.inner.gt {
            Some(GroundTruth::Labels { query_labels, .. }) => Some(query_labels),
            _ => None,
        }
    }

    /// Category of every query, when known.
    pub fn query_categories(&self) -> Option<&[String]> {
        self.inner.query_categories.as_deref()
    }

    /// Item ids (rows of the embeddings) of the queries, when built by [`Self::from_embeddings`].
    pub fn query_item_ids(&self) -> Option<&[usize]> {
        self.inner.query_ids.as_deref()
    }

    /// Item ids of the gallery, when built by [`Self::from_embeddings`].
    pub fn gallery_item_ids(&self) -> Option<&[usize]> {
        self.inner.gallery_ids.as_deref()
    }

    /// Whether no query retrieved anything.
    pub fn is_empty(&self) -> bool {
        self.inner.retrieved.iter().all(Vec::is_empty)
    }

    /// The per-query results as JSON: `[{query, retrieved, distances, is_gt, n_gt, gt}]`. Items are
    /// named by `names[item id]` when given, else by item id (gallery index when item ids are
    /// unknown); `gt` lists at most `max_gt` ground truths.
    pub fn to_json(&self, names: Option<&[String]>, max_gt: usize) -> serde_json::Value {
        #[derive(Serialize)]
        struct Row {
            query: serde_json::Value,
            retrieved: Vec<serde_json::Value>,
            distances: Vec<f32>,
            is_gt: Vec<bool>,
            n_gt: usize,
            gt: Vec<serde_json::Value>,
        }
        let name = |item: usize| -> serde_json::Value {
            match names.and_then(|n| n.get(item)) {
                Some(s) => serde_json::Value::String(s.clone()),
                None => serde_json::Value::from(item),
            }
        };
        let gallery_item = |g: usize| self.inner.gallery_ids.as_ref().map_or(g, |ids| ids[g]);
        let rows: Vec<Row> = (0..self.n_queries())
            .map(|q| Row {
                query: name(self.inner.query_ids.as_ref().map_or(q, |ids| ids[q])),
                retrieved: self.inner.retrieved[q]
                    .iter()
                    .map(|&g| name(gallery_item(g)))
                    .collect(),
                distances: self.inner.distances[q].clone(),
                is_gt: self.hits_of(q),
                n_gt: self.n_gt_of(q),
                gt: self
                    .gt_of(q)
                    .into_iter()
                    .take(max_gt)
                    .map(|g| name(gallery_item(g)))
                    .collect(),
            })
            .collect();
        serde_json::to_value(rows).unwrap_or(serde_json::Value::Null)
    }
}
