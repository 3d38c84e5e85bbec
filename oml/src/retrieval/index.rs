//! A persistent gallery index: embeddings of gallery items with their metadata, searched exactly
//! (`flat`, the blocked search of [`super::distances`]) or approximately (`hnsw`, USearch's HNSW
//! graph with f32, f16 or i8 storage), saved to and loaded from a folder, grown with `add`.
//!
//! Results are [`RetrievalResults`], so metrics, thresholding, re-ranking and retrieval grids work
//! on approximate results unchanged. OML's exclusions (a query never retrieves itself, nor an item
//! of its sequence) are applied after an over-fetch: a query gets `k` results whenever the gallery
//! has `k` items it may retrieve.
//!
//! The folder: `index.json` (settings, the model, and per file its name, size and sha256), the
//! engine's file (`engine-G.usearch`, or `vectors-G.npy` for `flat`) and `items-G.parquet` (id,
//! label, path, category, sequence). A save writes generation `G + 1` beside the current one and
//! then replaces `index.json` atomically, so a crash at any point leaves the previous index
//! readable; files of other generations are removed after the switch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::distances::{Distance, Exclusion, SearchConfig, check_embeddings, knn};
use super::results::{PairExclusion, RetrievalResults, sequence_codes};
use crate::data::{BBox, ImageSource, SampleTable, Split};
use crate::{Error, Model, Result};

const FORMAT: &str = "oml-gallery-index";
const VERSION: u32 = 1;

/// How the index searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Approximate: USearch's HNSW graph.
    #[default]
    Hnsw,
    /// Exact: every query scans the whole gallery (oml's blocked search).
    Flat,
}

/// How an `hnsw` index stores the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IndexDtype {
    /// 32-bit floats.
    F32,
    /// 16-bit floats (the default): half the memory, and 1.7-2x the queries/s of f32 at the same
    /// recall here (the search waits on memory); distances carry f16's ~1e-3 relative error.
    #[default]
    F16,
    /// 8-bit integers (directions only: cosine metric).
    I8,
}

fn parse_name<T: Copy>(kind: &'static str, s: &str, known: &[(&str, T)]) -> Result<T> {
    known
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::UnknownName {
            kind,
            name: s.to_owned(),
            known: known.iter().map(|(n, _)| (*n).to_owned()).collect(),
        })
}

impl std::str::FromStr for IndexKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_name(
            "index kind",
            s,
            &[("hnsw", IndexKind::Hnsw), ("flat", IndexKind::Flat)],
        )
    }
}

impl std::str::FromStr for IndexDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_name(
            "index dtype",
            s,
            &[
                ("f32", IndexDtype::F32),
                ("f16", IndexDtype::F16),
                ("i8", IndexDtype::I8),
            ],
        )
    }
}

/// The index's settings. The HNSW ones are USearch's defaults unless changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexConfig {
    /// `hnsw` (approximate) or `flat` (exact).
    pub kind: IndexKind,
    /// Distance: Euclidean (OML's) or cosine.
    pub metric: Distance,
    /// Storage of `hnsw` vectors (`flat` stores f32).
    pub dtype: IndexDtype,
    /// HNSW: links per node.
    pub connectivity: usize,
    /// HNSW: candidates kept while inserting (build quality).
    pub expansion_add: usize,
    /// HNSW: candidates kept while searching (recall against speed); raised to `k` when lower.
    pub expansion_search: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            kind: IndexKind::Hnsw,
            metric: Distance::Euclidean,
            dtype: IndexDtype::F16,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
        }
    }
}

impl IndexConfig {
    /// An exact index.
    pub fn flat() -> Self {
        IndexConfig {
            kind: IndexKind::Flat,
            dtype: IndexDtype::F32,
            ..IndexConfig::default()
        }
    }

    fn check(&self) -> Result<()> {
        if self.kind == IndexKind::Flat && self.dtype != IndexDtype::F32 {
            return Err(Error::Param {
                name: "dtype",
                value: format!("{:?}", self.dtype).to_lowercase(),
                allowed: "a flat index stores f32; use --kind hnsw for f16 or i8".into(),
            });
        }
        if self.dtype == IndexDtype::I8 && self.metric != Distance::Cosine {
            return Err(Error::Param {
                name: "dtype",
                value: "i8".into(),
                allowed: "i8 keeps directions only (unit vectors scaled by 127): use it with \
                          --metric cosine, or use f16 / f32"
                    .into(),
            });
        }
        for (name, v) in [
            ("connectivity", self.connectivity),
            ("expansion_add", self.expansion_add),
            ("expansion_search", self.expansion_search),
        ] {
            if self.kind == IndexKind::Hnsw && v < 2 {
                return Err(Error::Param {
                    name,
                    value: v.to_string(),
                    allowed: "at least 2".into(),
                });
            }
        }
        Ok(())
    }
}

/// What is known about each gallery item: its id (unique in the index) and, when known, its
/// label, image path, category and sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GalleryItems {
    /// Id per item (the CSV row, or any unique number).
    pub ids: Vec<usize>,
    /// Label per item.
    pub labels: Option<Vec<i64>>,
    /// Image path per item (resolved against the dataset root).
    pub paths: Option<Vec<String>>,
    /// Category per item.
    pub categories: Option<Vec<String>>,
    /// Sequence per item.
    pub sequences: Option<Vec<String>>,
}

impl GalleryItems {
    /// Items with ids only.
    pub fn ids(ids: Vec<usize>) -> Self {
        GalleryItems {
            ids,
            ..GalleryItems::default()
        }
    }

    /// Items `0..n` with ids only.
    pub fn range(n: usize) -> Self {
        GalleryItems::ids((0..n).collect())
    }

    /// Rows of a checked CSV, their ids the rows' positions in the file.
    pub fn from_table(table: &SampleTable, rows: &[usize]) -> Self {
        GalleryItems {
            ids: rows.to_vec(),
            labels: pick_rows(&table.labels, rows),
            paths: Some(
                rows.iter()
                    .map(|&r| table.resolved_path(r).to_string_lossy().into_owned())
                    .collect(),
            ),
            categories: pick_rows(&table.categories, rows),
            sequences: pick_rows(&table.sequences, rows),
        }
    }

    /// The gallery rows of a CSV's validation split.
    pub fn gallery_of(table: &SampleTable) -> Self {
        let rows: Vec<usize> = table
            .rows_of(Split::Validation)
            .into_iter()
            .filter(|&r| table.is_gallery[r])
            .collect();
        GalleryItems::from_table(table, &rows)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn check_lengths(&self) -> Result<()> {
        let n = self.ids.len();
        for (name, len) in [
            ("labels", self.labels.as_ref().map(Vec::len)),
            ("paths", self.paths.as_ref().map(Vec::len)),
            ("categories", self.categories.as_ref().map(Vec::len)),
            ("sequences", self.sequences.as_ref().map(Vec::len)),
        ] {
            if let Some(l) = len.filter(|&l| l != n) {
                return Err(Error::Msg(format!("gallery items: {l} {name} for {n} ids")));
            }
        }
        Ok(())
    }

    /// Names of the columns it has besides the ids.
    fn columns(&self) -> Vec<&'static str> {
        [
            ("label", self.labels.is_some()),
            ("path", self.paths.is_some()),
            ("category", self.categories.is_some()),
            ("sequence", self.sequences.is_some()),
        ]
        .into_iter()
        .filter(|(_, has)| *has)
        .map(|(n, _)| n)
        .collect()
    }

    /// Appends `other`, which has the same columns (checked by the caller).
    fn extend(&mut self, other: GalleryItems) {
        fn join<T>(a: &mut Option<Vec<T>>, b: Option<Vec<T>>) {
            if let (Some(a), Some(b)) = (a.as_mut(), b) {
                a.extend(b);
            }
        }
        self.ids.extend(other.ids);
        join(&mut self.labels, other.labels);
        join(&mut self.paths, other.paths);
        join(&mut self.categories, other.categories);
        join(&mut self.sequences, other.sequences);
    }

    fn write_parquet(&self, path: &Path) -> Result<()> {
        use polars::prelude::Column;
        let ids: Vec<u64> = self.ids.iter().map(|&i| i as u64).collect();
        let mut columns = vec![Column::new("id".into(), ids)];
        if let Some(l) = &self.labels {
            columns.push(Column::new("label".into(), l));
        }
        for (name, v) in [
            ("path", &self.paths),
            ("category", &self.categories),
            ("sequence", &self.sequences),
        ] {
            if let Some(v) = v {
                columns.push(Column::new(name.into(), v));
            }
        }
        crate::data::csv::write_parquet(path, columns)
    }

    fn read_parquet(path: &Path) -> Result<GalleryItems> {
        use polars::prelude::{ParquetReader, SerReader};
        let bad = |e: String| Error::Format {
            path: path.to_path_buf(),
            message: format!("not a readable items table ({e}); the index folder is damaged"),
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let df = ParquetReader::new(file)
            .finish()
            .map_err(|e| bad(e.to_string()))?;
        let ids = df
            .column("id")
            .and_then(|c| c.u64().cloned())
            .map_err(|e| bad(e.to_string()))?;
        if ids.null_count() > 0 {
            return Err(bad("an id is missing".into()));
        }
        let labels = match df.column("label") {
            Ok(c) => {
                let c = c.i64().map_err(|e| bad(e.to_string()))?;
                if c.null_count() > 0 {
                    return Err(bad("a label is missing".into()));
                }
                Some(c.into_no_null_iter().collect())
            }
            Err(_) => None,
        };
        let strings = |name: &str| -> Result<Option<Vec<String>>> {
            match df.column(name) {
                Ok(c) => {
                    let c = c.str().map_err(|e| bad(e.to_string()))?;
                    Ok(Some(
                        c.iter().map(|v| v.unwrap_or_default().to_owned()).collect(),
                    ))
                }
                Err(_) => Ok(None),
            }
        };
        Ok(GalleryItems {
            ids: ids.into_no_null_iter().map(|i| i as usize).collect(),
            labels,
            paths: strings("path")?,
            categories: strings("category")?,
            sequences: strings("sequence")?,
        })
    }
}

/// The model an index's embeddings came from: how to load it again and a fingerprint of its
/// weights, so that a search with another model is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexModel {
    /// The arch.
    pub arch: String,
    /// The zoo name, when it came from the zoo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoo: Option<String>,
    /// The weights file, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// sha256 over the weights' names, shapes and values.
    pub fingerprint: String,
    /// Input side of its transform.
    #[serde(default)]
    pub image_size: Option<u32>,
}

impl IndexModel {
    /// The record of `model`, loaded from the zoo as `zoo` or from the file `weights`.
    pub fn of(model: &Model, zoo: Option<&str>, weights: Option<&Path>) -> Result<IndexModel> {
        Ok(IndexModel {
            arch: model.arch().to_owned(),
            zoo: zoo.map(str::to_owned),
            weights: weights.map(Path::to_path_buf),
            fingerprint: model.fingerprint()?,
            image_size: model.transform().output_size().map(|(h, _)| h),
        })
    }

    /// Loads the model again (the zoo's, or the arch with the weights file).
    pub fn load(&self) -> Result<Model> {
        let model = match (&self.zoo, &self.weights) {
            (Some(name), _) => Model::from_pretrained(name)?,
            (None, Some(w)) => Model::from_file(&self.arch, w)?,
            (None, None) => {
                return Err(Error::Msg(format!(
                    "the index records a {} model with neither a zoo name nor a weights file; \
                     give the model to search with",
                    self.arch
                )));
            }
        };
        match self.image_size {
            Some(side) if model.transform().output_size().map(|(h, _)| h) != Some(side) => {
                model.with_image_size(side)
            }
            _ => Ok(model),
        }
    }

    fn describe(&self) -> String {
        match (&self.zoo, &self.weights) {
            (Some(z), _) => format!("zoo model {z}"),
            (None, Some(w)) => format!("{} with {}", self.arch, w.display()),
            (None, None) => self.arch.clone(),
        }
    }
}

/// The vectors and how they are searched.
enum Engine {
    Flat(Tensor),
    Hnsw(usearch::Index),
}

/// A gallery's embeddings with their items, searched exactly or approximately, kept in a folder.
pub struct GalleryIndex {
    config: IndexConfig,
    dim: usize,
    items: GalleryItems,
    model: Option<IndexModel>,
    engine: Engine,
    /// Where it was loaded from or last saved to, with the bytes of its files there.
    saved: Option<(PathBuf, u64)>,
}

impl std::fmt::Debug for GalleryIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GalleryIndex")
            .field("config", &self.config)
            .field("dim", &self.dim)
            .field("len", &self.len())
            .field("model", &self.model)
            .finish()
    }
}

/// Names the first repeated id.
fn check_unique(ids: &[usize], known: Option<&HashSet<usize>>) -> Result<()> {
    let mut seen = HashSet::with_capacity(ids.len());
    for &id in ids {
        if known.is_some_and(|k| k.contains(&id)) {
            return Err(Error::Msg(format!(
                "gallery id {id} is already in the index; ids must be unique"
            )));
        }
        if !seen.insert(id) {
            return Err(Error::Msg(format!(
                "gallery id {id} is given twice; ids must be unique"
            )));
        }
    }
    Ok(())
}

fn engine_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("index engine (USearch): {what}: {e}"))
}

fn new_hnsw(config: &IndexConfig, dim: usize) -> Result<usearch::Index> {
    use usearch::{MetricKind, ScalarKind};
    let options = usearch::IndexOptions {
        dimensions: dim,
        metric: match config.metric {
            Distance::Euclidean => MetricKind::L2sq,
            Distance::Cosine => MetricKind::Cos,
        },
        quantization: match config.dtype {
            IndexDtype::F32 => ScalarKind::F32,
            IndexDtype::F16 => ScalarKind::F16,
            IndexDtype::I8 => ScalarKind::I8,
        },
        connectivity: config.connectivity,
        expansion_add: config.expansion_add,
        expansion_search: config.expansion_search,
        multi: false,
    };
    usearch::Index::new(&options).map_err(|e| engine_error("cannot create the index", e))
}

/// Rows of a `[N, D]` f32 tensor as one host vector.
fn host_rows(t: &Tensor) -> Result<Vec<f32>> {
    crate::host::read(&t.to_dtype(DType::F32)?, "index: rows")
}

/// Room for `capacity` vectors and a search or insert context per rayon thread (and two more
/// callers outside the pool).
fn reserve(index: &usearch::Index, capacity: usize) -> Result<()> {
    let threads = rayon::current_num_threads().max(1) + 2;
    index
        .reserve_capacity_and_threads(capacity, threads)
        .map_err(|e| engine_error("cannot reserve memory", e))
}

/// Inserts rows `values` (row-major, `dim` wide) under keys `first..`, in parallel.
fn hnsw_insert(index: &usearch::Index, values: &[f32], dim: usize, first: u64) -> Result<()> {
    if index.scalar_kind() == usearch::ScalarKind::F16
        && let Some(pos) = values.iter().position(|v| v.abs() > 60_000.0)
    {
        return Err(Error::Msg(format!(
            "embedding {} has a value ({}) beyond f16's range: build with --dtype f32, or \
             L2-normalise the embeddings",
            pos / dim,
            values[pos]
        )));
    }
    let n = values.len() / dim;
    reserve(index, index.size() + n)?;
    let add = |(i, row): (usize, &[f32])| {
        index
            .add(first + i as u64, row)
            .map_err(|e| engine_error("cannot add a vector", e))
    };
    // Inserted in order, the graph is the same on every run (and so are the results); in
    // parallel it depends on the threads' timing. Small batches (seconds) go in order.
    if n < SERIAL_BELOW {
        values.chunks(dim).enumerate().try_for_each(add)
    } else {
        values.par_chunks(dim).enumerate().try_for_each(add)
    }
}

/// Batches smaller than this are inserted in order (reproducible graphs).
pub const SERIAL_BELOW: usize = 20_000;

impl GalleryIndex {
    /// An index over `embeddings` (`[N, D]`, row `i` the item `i` of `items`).
    pub fn build(embeddings: &Tensor, items: GalleryItems, config: IndexConfig) -> Result<Self> {
        config.check()?;
        let e = check_rows("gallery embeddings", embeddings, items.len())?;
        items.check_lengths()?;
        check_unique(&items.ids, None)?;
        let dim = e.dims()[1];
        let engine = match config.kind {
            IndexKind::Flat => Engine::Flat(e.to_device(&Device::Cpu)?),
            IndexKind::Hnsw => {
                let index = new_hnsw(&config, dim)?;
                hnsw_insert(&index, &host_rows(&e)?, dim, 0)?;
                Engine::Hnsw(index)
            }
        };
        Ok(GalleryIndex {
            config,
            dim,
            items,
            model: None,
            engine,
            saved: None,
        })
    }

    /// The index of a validation dataset's gallery, embedded with `model` (which is recorded, so
    /// that image searches embed with it).
    pub fn from_dataset(
        model: &Model,
        dataset: &crate::data::ImageQueryGalleryLabeledDataset,
        config: IndexConfig,
    ) -> Result<Self> {
        let table = dataset.table();
        let items = GalleryItems::gallery_of(table);
        let rows: Vec<usize> = items.ids.clone();
        let images = crate::embed::TableImages(table.clone());
        let embeddings = model.embed(&RowsOf(images, Arc::new(rows)))?;
        let mut index = GalleryIndex::build(&embeddings, items, config)?;
        index.model = Some(IndexModel::of(model, zoo_name(model).as_deref(), None)?);
        Ok(index)
    }

    /// The index of a validation dataset's gallery items, from its embeddings (`[N, D]`, row `i`
    /// the item `i` of `dataset`, as [`Model::embed`] gives them). Ids are the items' CSV rows.
    pub fn from_embeddings(
        embeddings: &Tensor,
        dataset: &crate::data::ImageQueryGalleryLabeledDataset,
        config: IndexConfig,
    ) -> Result<Self> {
        let (picked, rows) = pick_items(embeddings, dataset, |t, r| t.is_gallery[r])?;
        GalleryIndex::build(
            &picked,
            GalleryItems::from_table(dataset.table(), &rows),
            config,
        )
    }

    /// Searches for the queries of a validation dataset (row `i` of `embeddings` the item `i`),
    /// with OML's exclusions and ground truths, as [`RetrievalResults::from_embeddings`] does
    /// with exact search. When the index holds items of this dataset, the results' item ids
    /// are the dataset's, so that `rr.visualize(&dataset)` draws them.
    pub fn search_dataset(
        &self,
        embeddings: &Tensor,
        dataset: &crate::data::ImageQueryGalleryLabeledDataset,
        k: usize,
    ) -> Result<RetrievalResults> {
        let (queries, rows) = pick_items(embeddings, dataset, |t, r| t.is_query[r])?;
        let info = QueryItems::of_rows(dataset.table(), &rows);
        let rr = self.search_items(&queries, &info, k)?;
        let item_of: std::collections::HashMap<usize, usize> = (0..dataset.len())
            .filter_map(|i| dataset.row(i).map(|r| (r, i)))
            .collect();
        let query_items: Option<Vec<usize>> =
            rows.iter().map(|r| item_of.get(r).copied()).collect();
        let gallery_items: Option<Vec<usize>> = self
            .items
            .ids
            .iter()
            .map(|r| item_of.get(r).copied())
            .collect();
        match (query_items, gallery_items) {
            (Some(q), Some(g)) => rr.with_item_ids(q, g),
            _ => Ok(rr),
        }
    }

    /// Records the model the embeddings came from.
    pub fn with_model(mut self, model: IndexModel) -> Self {
        self.model = Some(model);
        self
    }

    /// Adds items (their ids new to the index).
    pub fn add(&mut self, embeddings: &Tensor, items: GalleryItems) -> Result<()> {
        let e = check_rows("embeddings to add", embeddings, items.len())?;
        if e.dims()[1] != self.dim {
            return Err(Error::Msg(format!(
                "embeddings to add have dimension {}, the index {}; embed with the index's model",
                e.dims()[1],
                self.dim
            )));
        }
        items.check_lengths()?;
        let (have, given) = (self.items.columns(), items.columns());
        if have != given {
            return Err(Error::Msg(format!(
                "the index's items have the columns [{}], the new ones [{}]: give the new items \
                 the same (a CSV like the one the index was built from), so that nothing is lost",
                have.join(", "),
                given.join(", ")
            )));
        }
        let known: HashSet<usize> = self.items.ids.iter().copied().collect();
        check_unique(&items.ids, Some(&known))?;
        match &mut self.engine {
            Engine::Flat(t) => *t = Tensor::cat(&[&*t, &e.to_device(&Device::Cpu)?], 0)?,
            Engine::Hnsw(index) => {
                let first = self.items.len() as u64;
                hnsw_insert(index, &host_rows(&e)?, self.dim, first)?;
            }
        }
        self.items.extend(items);
        Ok(())
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Settings.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// The items, in index order (results' gallery indices point into these).
    pub fn items(&self) -> &GalleryItems {
        &self.items
    }

    /// The model its embeddings came from, when recorded.
    pub fn model(&self) -> Option<&IndexModel> {
        self.model.as_ref()
    }

    /// The SIMD kernels the HNSW engine's distance uses (`None` for `flat`).
    pub fn acceleration(&self) -> Option<String> {
        match &self.engine {
            Engine::Hnsw(index) => Some(index.hardware_acceleration()),
            Engine::Flat(_) => None,
        }
    }

    /// Sets the HNSW search depth (recall against speed); no effect on `flat`.
    pub fn set_expansion_search(&mut self, n: usize) {
        self.config.expansion_search = n.max(2);
        if let Engine::Hnsw(index) = &self.engine {
            index.change_expansion_search(self.config.expansion_search);
        }
    }

    /// The `k` nearest items of each query (`[Q, D]`), nothing excluded. Results' gallery
    /// indices point into [`GalleryIndex::items`]; gallery item ids are the items' ids.
    pub fn search(&self, queries: &Tensor, k: usize) -> Result<RetrievalResults> {
        self.search_items(queries, &QueryItems::default(), k)
    }

    /// The `k` nearest items of each query, with OML's exclusions and ground truths: a query
    /// with an id never retrieves the item of that id, nor (with sequences) items of its
    /// sequence; with labels, ground truths are the index's items of the query's label.
    pub fn search_items(
        &self,
        queries: &Tensor,
        info: &QueryItems,
        k: usize,
    ) -> Result<RetrievalResults> {
        let q = check_embeddings("query embeddings", queries)?;
        let (nq, d) = q.dims2()?;
        if d != self.dim {
            return Err(Error::Msg(format!(
                "query embeddings have dimension {d}, the index {}; embed the queries with the \
                 model the index was built with{}",
                self.dim,
                self.model
                    .as_ref()
                    .map(|m| format!(" ({})", m.describe()))
                    .unwrap_or_default()
            )));
        }
        if self.is_empty() {
            return Err(Error::Msg(
                "the index is empty: build it from at least one gallery embedding".into(),
            ));
        }
        info.check(nq)?;
        let exclusion = self.exclusion(info);
        let found = match &self.engine {
            Engine::Flat(g) => {
                let config = SearchConfig {
                    top_n: k,
                    distance: self.config.metric,
                    ..SearchConfig::default()
                };
                knn(&q.to_device(&Device::Cpu)?, g, &config, &exclusion)?
            }
            Engine::Hnsw(index) => {
                // USearch searches at least `k` deep whatever its expansion setting; threads
                // were reserved when the index was built or loaded.
                let values = host_rows(&q)?;
                values
                    .par_chunks(d)
                    .enumerate()
                    .map(|(qi, row)| self.hnsw_query(index, qi, row, k, &exclusion))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let (distances, retrieved): (Vec<Vec<f32>>, Vec<Vec<usize>>) = found.into_iter().unzip();
        let labels = match (&info.labels, &self.items.labels) {
            (Some(q), Some(g)) => Some((q.clone(), g.clone())),
            _ => None,
        };
        RetrievalResults::from_search(
            distances,
            retrieved,
            labels,
            exclusion,
            info.categories.clone(),
            info.ids.clone(),
            Some(self.items.ids.clone()),
        )
    }

    /// One query on the graph: fetch more than `k` until `k` survive the exclusions (or the
    /// gallery is exhausted: then an exact scan, so that no query is left short).
    fn hnsw_query(
        &self,
        index: &usearch::Index,
        qi: usize,
        row: &[f32],
        k: usize,
        exclusion: &PairExclusion,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let n = self.len();
        let k = k.min(n);
        let mut fetch = (k + 1).min(n);
        loop {
            let exhaustive = fetch >= n;
            let m = if exhaustive {
                index.exact_search(row, n)
            } else {
                index.search(row, fetch)
            }
            .map_err(|e| engine_error("search failed", e))?;
            let mut kept: Vec<(f32, usize)> = m
                .keys
                .iter()
                .zip(&m.distances)
                .map(|(&key, &dist)| (self.to_distance(dist), key as usize))
                .filter(|&(_, g)| !exclusion.excluded(qi, g))
                .collect();
            if kept.len() >= k || exhaustive {
                kept.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                kept.truncate(k);
                return Ok(kept.into_iter().unzip());
            }
            fetch = (fetch * 2).min(n);
        }
    }

    fn to_distance(&self, engine_distance: f32) -> f32 {
        match self.config.metric {
            Distance::Euclidean => engine_distance.max(0.0).sqrt(),
            Distance::Cosine => engine_distance,
        }
    }

    fn exclusion(&self, info: &QueryItems) -> PairExclusion {
        PairExclusion {
            items: info
                .ids
                .as_ref()
                .map(|q| (q.clone(), self.items.ids.clone())),
            sequences: match (&info.sequences, &self.items.sequences) {
                (Some(q), Some(g)) => Some(sequence_codes(q, g)),
                _ => None,
            },
        }
    }

    /// Embeds images with the index's model (or `model`, which must be the same) and searches.
    pub fn search_images(
        &self,
        model: Option<&Model>,
        images: &[PathBuf],
        k: usize,
    ) -> Result<ImageSearch> {
        let model = self.check_model(model)?;
        self.search_images_with(images, k, |files| model.embed(files))
    }

    /// Embeds images with `embed` (the function the index's embeddings came from, e.g. the
    /// raw-pixel baseline) and searches.
    pub fn search_images_with(
        &self,
        images: &[PathBuf],
        k: usize,
        embed: impl FnOnce(&ImageFiles) -> Result<Tensor>,
    ) -> Result<ImageSearch> {
        for image in images {
            if !image.is_file() {
                return Err(Error::Image {
                    path: image.clone(),
                    message: "no such file".into(),
                });
            }
        }
        let e = embed(&ImageFiles::new(images.to_vec()))?;
        let results = self.search(&e, k)?;
        Ok(ImageSearch {
            results,
            queries: images.to_vec(),
            items: self.items.clone(),
        })
    }

    /// The model to embed queries with: `given` when it matches the recorded one (or when none is
    /// recorded), else the recorded one loaded again.
    pub fn check_model(&self, given: Option<&Model>) -> Result<Model> {
        match (given, &self.model) {
            (Some(m), Some(rec)) => {
                if m.fingerprint()? != rec.fingerprint {
                    return Err(Error::Msg(format!(
                        "the index was built with {} ({}, weights {}); this model ({}, {}) is a \
                         different one: search with the index's model, or build a new index",
                        rec.describe(),
                        rec.arch,
                        &rec.fingerprint[..12.min(rec.fingerprint.len())],
                        m.arch(),
                        m.source()
                    )));
                }
                Ok(m.clone())
            }
            (Some(m), None) => {
                let dim = m.feat_dim()?;
                if dim != self.dim {
                    return Err(Error::Msg(format!(
                        "model {} gives {dim}-d embeddings, the index holds {}-d ones",
                        m.arch(),
                        self.dim
                    )));
                }
                Ok(m.clone())
            }
            (None, Some(rec)) => rec.load(),
            (None, None) => Err(Error::Msg(
                "the index records no model: give the one its embeddings came from \
                 (--model NAME, or --arch A --weights W)"
                    .into(),
            )),
        }
    }

    /// Saves to `dir` (created when missing). The previous index in `dir` stays readable until
    /// the new one is complete.
    pub fn save(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create folder", dir, e))?;
        let previous = read_manifest(dir).ok();
        let generation = previous.as_ref().map_or(0, |m| m.generation) + 1;
        let engine_name = match self.engine {
            Engine::Flat(_) => format!("vectors-{generation}.npy"),
            Engine::Hnsw(_) => format!("engine-{generation}.usearch"),
        };
        let items_name = format!("items-{generation}.parquet");
        let engine_path = dir.join(&engine_name);
        match &self.engine {
            Engine::Flat(t) => t.write_npy(&engine_path).map_err(|e| Error::Format {
                path: engine_path.clone(),
                message: format!("cannot write: {e}"),
            })?,
            Engine::Hnsw(index) => {
                let p = utf8(&engine_path)?;
                index
                    .save(p)
                    .map_err(|e| engine_error(&format!("cannot write {p}"), e))?;
            }
        }
        crate::fsio::sync(&engine_path)?;
        crate::fsio::crash_point("index-engine");
        let items_path = dir.join(&items_name);
        self.items.write_parquet(&items_path)?;
        crate::fsio::sync(&items_path)?;
        crate::fsio::crash_point("index-items");
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            generation,
            config: self.config.clone(),
            dim: self.dim,
            count: self.len(),
            model: self.model.clone(),
            engine: FileRecord::of(dir, &engine_name)?,
            items: FileRecord::of(dir, &items_name)?,
        };
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::Msg(format!("cannot encode the index manifest: {e}")))?;
        crate::fsio::write_bytes_atomic(&dir.join("index.json"), text.as_bytes())?;
        crate::fsio::crash_point("index-manifest");
        // The switch is done: other generations' files go.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = name == engine_name || name == items_name;
                if !ours && is_generated(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        self.saved = Some((
            dir.to_path_buf(),
            manifest.engine.bytes + manifest.items.bytes,
        ));
        Ok(())
    }

    /// Loads an index saved by [`GalleryIndex::save`], checking every file against its record.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.join("index.json").is_file() {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                message: "not an index folder (no index.json); build one with `oml index build`"
                    .into(),
            });
        }
        let m = read_manifest(dir)?;
        m.config.check()?;
        let engine_path = m.engine.verify(dir)?;
        let items_path = m.items.verify(dir)?;
        let items = GalleryItems::read_parquet(&items_path)?;
        let damaged = |message: String| Error::Format {
            path: dir.to_path_buf(),
            message: format!("{message}; the index folder is damaged: build it again"),
        };
        if items.len() != m.count {
            return Err(damaged(format!(
                "the items table has {} rows, the manifest says {}",
                items.len(),
                m.count
            )));
        }
        items.check_lengths()?;
        let engine = match m.config.kind {
            IndexKind::Flat => {
                let t = Tensor::read_npy(&engine_path).map_err(|e| Error::Format {
                    path: engine_path.clone(),
                    message: format!("not a readable .npy ({e}); the index folder is damaged"),
                })?;
                if t.dims() != [m.count, m.dim] {
                    return Err(damaged(format!(
                        "vectors of shape {:?}, the manifest says [{}, {}]",
                        t.dims(),
                        m.count,
                        m.dim
                    )));
                }
                Engine::Flat(t.to_dtype(DType::F32)?)
            }
            IndexKind::Hnsw => {
                let p = utf8(&engine_path)?;
                let index = new_hnsw(&m.config, m.dim)?;
                index
                    .load(p)
                    .map_err(|e| engine_error(&format!("cannot read {p}"), e))?;
                if index.size() != m.count || index.dimensions() != m.dim {
                    return Err(damaged(format!(
                        "the engine holds {} vectors of dimension {}, the manifest says {} of {}",
                        index.size(),
                        index.dimensions(),
                        m.count,
                        m.dim
                    )));
                }
                index.change_expansion_search(m.config.expansion_search);
                reserve(&index, m.count)?;
                Engine::Hnsw(index)
            }
        };
        Ok(GalleryIndex {
            config: m.config,
            dim: m.dim,
            items,
            model: m.model,
            engine,
            saved: Some((dir.to_path_buf(), m.engine.bytes + m.items.bytes)),
        })
    }

    /// Bytes of the index's files on disk (after a save or load).
    pub fn disk_bytes(&self) -> Option<u64> {
        self.saved.as_ref().map(|(_, bytes)| *bytes)
    }

    /// A one-line description.
    pub fn summary(&self) -> String {
        format!(
            "{} index of {} items, dim {}, {} distance{}{}",
            match self.config.kind {
                IndexKind::Hnsw => format!("hnsw ({:?})", self.config.dtype).to_lowercase(),
                IndexKind::Flat => "flat".into(),
            },
            self.len(),
            self.dim,
            match self.config.metric {
                Distance::Euclidean => "euclidean",
                Distance::Cosine => "cosine",
            },
            self.model
                .as_ref()
                .map(|m| format!(", model {}", m.describe()))
                .unwrap_or_default(),
            self.saved
                .as_ref()
                .map(|(d, _)| format!(", in {}", d.display()))
                .unwrap_or_default()
        )
    }
}

impl GalleryIndex {
    /// Shows the summary in a notebook.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl crate::notebook::Show for GalleryIndex {
    fn html(&self) -> Result<String> {
        Ok(format!(
            "<pre>{}</pre>",
            crate::notebook::escape_html(&self.summary())
        ))
    }
    fn plain(&self) -> String {
        self.summary()
    }
}

/// The rows of `embeddings` (one per dataset item) whose table row passes `keep`, with those
/// table rows.
fn pick_items(
    embeddings: &Tensor,
    dataset: &crate::data::ImageQueryGalleryLabeledDataset,
    keep: impl Fn(&SampleTable, usize) -> bool,
) -> Result<(Tensor, Vec<usize>)> {
    let e = check_rows("embeddings", embeddings, dataset.len())?;
    let table = dataset.table();
    let (mut picked, mut rows) = (Vec::new(), Vec::new());
    for i in 0..dataset.len() {
        if let Some(r) = dataset.row(i)
            && keep(table, r)
        {
            picked.push(i as u32);
            rows.push(r);
        }
    }
    if picked.is_empty() {
        return Err(Error::Msg(
            "the dataset has no such items (no gallery or no query rows)".into(),
        ));
    }
    let idx = Tensor::new(picked.as_slice(), e.device())?;
    Ok((e.index_select(&idx, 0)?, rows))
}

/// Whether a file name is one a save writes (`engine-G.usearch`, `vectors-G.npy`,
/// `items-G.parquet`, the manifest's temporary name): only those are removed after a save, so a
/// folder shared with other files keeps them.
fn is_generated(name: &str) -> bool {
    let numbered = |prefix: &str, suffix: &str| {
        name.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
            .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
    };
    numbered("engine-", ".usearch")
        || numbered("vectors-", ".npy")
        || numbered("items-", ".parquet")
        || (name.starts_with(".index.json.") && name.ends_with(".tmp"))
}

/// The values of a table column (when it has one) at `rows`.
fn pick_rows<T: Clone>(column: &Option<Vec<T>>, rows: &[usize]) -> Option<Vec<T>> {
    column
        .as_ref()
        .map(|v| rows.iter().map(|&r| v[r].clone()).collect())
}

/// `[N, D]` finite embeddings with `n` rows.
fn check_rows(name: &str, embeddings: &Tensor, n: usize) -> Result<Tensor> {
    let e = check_embeddings(name, embeddings)?;
    let rows = e.dims()[0];
    if rows == 0 {
        return Err(Error::Msg(format!(
            "{name}: no rows; an index needs at least one gallery embedding"
        )));
    }
    if rows != n {
        return Err(Error::Msg(format!(
            "{name}: {rows} rows for {n} items; row i must be item i"
        )));
    }
    Ok(e)
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        message: "the index engine needs a UTF-8 path".into(),
    })
}

fn zoo_name(model: &Model) -> Option<String> {
    // "zoo NAME (origin)", as `Model::from_pretrained` writes it.
    let rest = model.source().strip_prefix("zoo ")?;
    Some(rest.split(' ').next()?.to_owned())
}

/// What is known about the queries of a search: ids (to exclude themselves), labels (for ground
/// truths), sequences, categories. All optional.
#[derive(Debug, Clone, Default)]
pub struct QueryItems {
    /// Id per query, in the index's id space (the CSV row).
    pub ids: Option<Vec<usize>>,
    /// Label per query.
    pub labels: Option<Vec<i64>>,
    /// Sequence per query.
    pub sequences: Option<Vec<String>>,
    /// Category per query (metrics per category).
    pub categories: Option<Vec<String>>,
}

impl QueryItems {
    /// The query rows of a CSV's validation split, in file order.
    pub fn queries_of(table: &SampleTable) -> (Vec<usize>, QueryItems) {
        let rows: Vec<usize> = table
            .rows_of(Split::Validation)
            .into_iter()
            .filter(|&r| table.is_query[r])
            .collect();
        let info = QueryItems::of_rows(table, &rows);
        (rows, info)
    }

    /// Rows of a CSV as queries: their ids are the rows.
    pub fn of_rows(table: &SampleTable, rows: &[usize]) -> QueryItems {
        QueryItems {
            ids: Some(rows.to_vec()),
            labels: pick_rows(&table.labels, rows),
            sequences: pick_rows(&table.sequences, rows),
            categories: pick_rows(&table.categories, rows),
        }
    }

    fn check(&self, n: usize) -> Result<()> {
        for (name, len) in [
            ("ids", self.ids.as_ref().map(Vec::len)),
            ("labels", self.labels.as_ref().map(Vec::len)),
            ("sequences", self.sequences.as_ref().map(Vec::len)),
            ("categories", self.categories.as_ref().map(Vec::len)),
        ] {
            if let Some(l) = len.filter(|&l| l != n) {
                return Err(Error::Msg(format!(
                    "queries: {l} {name} for {n} embeddings"
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct FileRecord {
    file: String,
    bytes: u64,
    sha256: String,
}

impl FileRecord {
    fn of(dir: &Path, name: &str) -> Result<FileRecord> {
        let path = dir.join(name);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io("cannot read", &path, e))?
            .len();
        Ok(FileRecord {
            file: name.to_owned(),
            bytes,
            sha256: crate::fsio::sha256_of(&path)?,
        })
    }

    fn verify(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(&self.file);
        let damaged = |message: String| Error::Format {
            path: path.clone(),
            message: format!("{message}; the index folder is damaged: build it again"),
        };
        if self.file.contains('/') || self.file.contains("..") {
            return Err(damaged(
                "the manifest names a file outside the folder".into(),
            ));
        }
        let bytes = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return Err(damaged("missing".into())),
        };
        if bytes != self.bytes {
            return Err(damaged(format!(
                "{bytes} bytes where {} were written (truncated?)",
                self.bytes
            )));
        }
        if crate::fsio::sha256_of(&path)? != self.sha256 {
            return Err(damaged("its checksum differs from the one written".into()));
        }
        Ok(path)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    generation: u64,
    config: IndexConfig,
    dim: usize,
    count: usize,
    model: Option<IndexModel>,
    engine: FileRecord,
    items: FileRecord,
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("index.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.clone(),
        message: format!("not an index manifest ({e}); the index folder is damaged"),
    })?;
    if m.format != FORMAT || m.version != VERSION {
        return Err(Error::Format {
            path,
            message: format!(
                "format {} version {}, this oml reads {FORMAT} version {VERSION}",
                m.format, m.version
            ),
        });
    }
    Ok(m)
}

/// Image files as an image source.
#[derive(Debug, Clone)]
pub struct ImageFiles {
    paths: Arc<Vec<PathBuf>>,
}

impl ImageFiles {
    /// These files.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        ImageFiles {
            paths: Arc::new(paths),
        }
    }
}

impl ImageSource for ImageFiles {
    fn len(&self) -> usize {
        self.paths.len()
    }
    fn image_path(&self, i: usize) -> PathBuf {
        self.paths.get(i).cloned().unwrap_or_default()
    }
    fn bbox(&self, _i: usize) -> Option<BBox> {
        None
    }
}

/// Some rows of a table's images.
#[derive(Clone)]
struct RowsOf(crate::embed::TableImages, Arc<Vec<usize>>);

impl ImageSource for RowsOf {
    fn len(&self) -> usize {
        self.1.len()
    }
    fn image_path(&self, i: usize) -> PathBuf {
        self.0.image_path(self.1[i])
    }
    fn bbox(&self, i: usize) -> Option<BBox> {
        self.0.bbox(self.1[i])
    }
}

/// Hits of an image search: per query image its nearest items.
#[derive(Debug, Clone)]
pub struct ImageSearch {
    results: RetrievalResults,
    queries: Vec<PathBuf>,
    items: GalleryItems,
}

/// One retrieved item.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// The item's id.
    pub id: usize,
    /// Its distance to the query.
    pub distance: f32,
    /// Its image path, when known.
    pub path: Option<String>,
    /// Its label, when known.
    pub label: Option<i64>,
}

impl ImageSearch {
    /// The results (gallery indices into the index's items).
    pub fn results(&self) -> &RetrievalResults {
        &self.results
    }

    /// The hits of query `q`, nearest first.
    pub fn hits(&self, q: usize) -> Vec<Hit> {
        let (Some(d), Some(r)) = (self.results.distances(q), self.results.retrieved_ids(q)) else {
            return Vec::new();
        };
        d.iter()
            .zip(r)
            .map(|(&distance, &g)| Hit {
                id: self.items.ids[g],
                distance,
                path: self.items.paths.as_ref().map(|p| p[g].clone()),
                label: self.items.labels.as_ref().map(|l| l[g]),
            })
            .collect()
    }

    /// Every query with its hits, as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.queries
                .iter()
                .enumerate()
                .map(|(q, path)| {
                    serde_json::json!({
                        "query": path.to_string_lossy(),
                        "hits": self.hits(q),
                    })
                })
                .collect(),
        )
    }

    /// The grid of query images and their hits (needs the items' paths).
    pub fn visualize(&self) -> Result<crate::viz::RetrievalGrid> {
        let n = self.results.n_queries();
        Ok(
            grid_of(&self.results, &self.queries, &self.items)?
                .queries(&(0..n).collect::<Vec<_>>()),
        )
    }
}

impl ImageSearch {
    /// Shows the grid in a notebook (the hits as text beside it).
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }
}

impl crate::notebook::Show for ImageSearch {
    fn html(&self) -> Result<String> {
        self.visualize()?.render()?.to_html()
    }
    fn plain(&self) -> String {
        let mut out = String::new();
        for (q, path) in self.queries.iter().enumerate() {
            out.push_str(&format!("{}\n", path.display()));
            for h in self.hits(q) {
                out.push_str(&format!(
                    "  {:>8}  {:.4}  {}{}\n",
                    h.id,
                    h.distance,
                    h.path.as_deref().unwrap_or(""),
                    h.label.map(|l| format!("  label {l}")).unwrap_or_default()
                ));
            }
        }
        out
    }
}

/// A retrieval grid of index results: query `q` is the image `query_paths[q]`, gallery item `g`
/// the index item `g` (its path).
pub(crate) fn grid_of(
    rr: &RetrievalResults,
    query_paths: &[PathBuf],
    items: &GalleryItems,
) -> Result<crate::viz::RetrievalGrid> {
    let Some(paths) = &items.paths else {
        return Err(Error::Msg(
            "the index has no image paths: build it with --data to draw its hits".into(),
        ));
    };
    let nq = query_paths.len();
    let mut all = query_paths.to_vec();
    all.extend(paths.iter().map(PathBuf::from));
    let rr = rr.with_item_ids(
        (0..nq).collect(),
        (0..items.len()).map(|g| nq + g).collect(),
    )?;
    Ok(crate::viz::RetrievalGrid::new(
        rr,
        Arc::new(ImageFiles::new(all)),
    ))
}

/// Per query its hits: JSON (`[{query, ids, distances, paths?, labels?}]`) or, for a name ending
/// in `.parquet`, one row per hit (`query, rank, id, distance, path?, label?`).
pub(crate) fn write_hits(path: &Path, rr: &RetrievalResults, items: &GalleryItems) -> Result<()> {
    let nq = rr.n_queries();
    let lists = |q: usize| {
        (
            rr.distances(q).unwrap_or(&[]).to_vec(),
            rr.retrieved_ids(q).unwrap_or(&[]).to_vec(),
        )
    };
    if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
        use polars::prelude::Column;
        let (mut query, mut rank, mut id, mut dist) = (vec![], vec![], vec![], vec![]);
        let (mut paths, mut labels) = (vec![], vec![]);
        for q in 0..nq {
            let (d, r) = lists(q);
            for (i, (dv, g)) in d.iter().zip(&r).enumerate() {
                query.push(q as u64);
                rank.push(i as u32);
                id.push(items.ids[*g] as u64);
                dist.push(*dv);
                if let Some(p) = &items.paths {
                    paths.push(p[*g].clone());
                }
                if let Some(l) = &items.labels {
                    labels.push(l[*g]);
                }
            }
        }
        let mut columns = vec![
            Column::new("query".into(), query),
            Column::new("rank".into(), rank),
            Column::new("id".into(), id),
            Column::new("distance".into(), dist),
        ];
        if items.paths.is_some() {
            columns.push(Column::new("path".into(), paths));
        }
        if items.labels.is_some() {
            columns.push(Column::new("label".into(), labels));
        }
        return crate::fsio::write_atomic(path, |tmp| {
            crate::data::csv::write_parquet(tmp, columns)
        });
    }
    let json: Vec<serde_json::Value> = (0..nq)
        .map(|q| {
            let (d, r) = lists(q);
            let mut v = serde_json::json!({
                "query": q,
                "ids": r.iter().map(|&g| items.ids[g]).collect::<Vec<_>>(),
                "distances": d,
            });
            if let Some(p) = &items.paths {
                v["paths"] = serde_json::json!(r.iter().map(|&g| &p[g]).collect::<Vec<_>>());
            }
            if let Some(l) = &items.labels {
                v["labels"] = serde_json::json!(r.iter().map(|&g| l[g]).collect::<Vec<_>>());
            }
            v
        })
        .collect();
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Msg(e.to_string()))?;
    crate::fsio::write_bytes_atomic(path, text.as_bytes())
}

/// Exact-search recall of approximate results: per query, the share of the exact top-k found.
pub fn recall_at_k(approx: &RetrievalResults, exact: &RetrievalResults, k: usize) -> f64 {
    let n = approx.n_queries().min(exact.n_queries());
    if n == 0 {
        return 0.0;
    }
    let mut sum = 0.0;
    for q in 0..n {
        let (Some(a), Some(e)) = (approx.retrieved_ids(q), exact.retrieved_ids(q)) else {
            continue;
        };
        let truth: HashSet<usize> = e.iter().take(k).copied().collect();
        if truth.is_empty() {
            sum += 1.0;
            continue;
        }
        let found = a.iter().take(k).filter(|g| truth.contains(g)).count();
        sum += found as f64 / truth.len() as f64;
    }
    sum / n as f64
}
