//! Metrics of a retrieval, per category and `OVERALL`, nested as OML's
//! `EmbeddingMetrics.compute_metrics()`:
//! `{"OVERALL": {"cmc": {"1": v}, "precision": {..}, "map": {..}, "fnmr@fmr": {"0.1": v},
//! "pcf": {"0.5": v}}, "<category>": {..}}`.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::fnmr::fnmr_at_fmr;
use super::pcf::pcf;
use super::retrieval::QueryMetric;
use crate::notebook::{Show, escape_html};
use crate::retrieval::{QueryGalleryInfo, RetrievalResults, SearchConfig};
use crate::{Error, Result};

/// What to do with queries that have no ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoGtPolicy {
    /// As OML: they count (precision NaN when they retrieved something, cmc and map 0).
    #[default]
    Oml,
    /// Left out of the averages.
    Skip,
    /// An error naming how many there are.
    Error,
}

/// Which metrics to compute (OML's `EmbeddingMetrics` arguments, plus ours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `cmc@k` for these k.
    pub cmc_top_k: Vec<usize>,
    /// `precision@k`.
    pub precision_top_k: Vec<usize>,
    /// `map@k`.
    pub map_top_k: Vec<usize>,
    /// `fnmr@fmr` for these fractions (over all pairs, OVERALL only).
    pub fmr_vals: Vec<f64>,
    /// `pcf` for these fractions of the variance.
    pub pcf_variance: Vec<f64>,
    /// `ndcg@k` (beyond OML).
    pub ndcg_top_k: Vec<usize>,
    /// `recall@k` (beyond OML).
    pub recall_top_k: Vec<usize>,
    /// `map@r` (beyond OML; needs `top_n` at least the largest number of ground truths).
    pub map_at_r: bool,
    /// `r_precision` (beyond OML; same caveat).
    pub r_precision: bool,
    /// Queries without ground truth.
    pub no_gt_policy: NoGtPolicy,
}

impl Default for MetricsConfig {
    /// OML's defaults: cmc@5, precision@5, map@5, pcf@0.5, no fnmr.
    fn default() -> Self {
        MetricsConfig {
            cmc_top_k: vec![5],
            precision_top_k: vec![5],
            map_top_k: vec![5],
            fmr_vals: vec![],
            pcf_variance: vec![0.5],
            ndcg_top_k: vec![],
            recall_top_k: vec![],
            map_at_r: false,
            r_precision: false,
            no_gt_policy: NoGtPolicy::Oml,
        }
    }
}

impl MetricsConfig {
    /// The metrics shown first in notebooks, reports and validation: cmc@1, cmc@5,
    /// precision@5 and map@5 (no fnmr, no pcf).
    pub fn common() -> Self {
        MetricsConfig {
            cmc_top_k: vec![1, 5],
            precision_top_k: vec![5],
            map_top_k: vec![5],
            pcf_variance: vec![],
            ..MetricsConfig::default()
        }
    }

    fn query_metrics(&self) -> Vec<QueryMetric> {
        let mut v = Vec::new();
        v.extend(self.cmc_top_k.iter().map(|&k| QueryMetric::Cmc(k)));
        v.extend(
            self.precision_top_k
                .iter()
                .map(|&k| QueryMetric::Precision(k)),
        );
        v.extend(self.map_top_k.iter().map(|&k| QueryMetric::Map(k)));
        v.extend(self.ndcg_top_k.iter().map(|&k| QueryMetric::Ndcg(k)));
        v.extend(self.recall_top_k.iter().map(|&k| QueryMetric::Recall(k)));
        if self.map_at_r {
            v.push(QueryMetric::MapAtR);
        }
        if self.r_precision {
            v.push(QueryMetric::RPrecision);
        }
        v
    }

    /// Checks the values: every k > 0, fractions in [0, 1].
    pub fn validate(&self) -> Result<()> {
        for (name, ks) in [
            ("cmc_top_k", &self.cmc_top_k),
            ("precision_top_k", &self.precision_top_k),
            ("map_top_k", &self.map_top_k),
            ("ndcg_top_k", &self.ndcg_top_k),
            ("recall_top_k", &self.recall_top_k),
        ] {
            if ks.contains(&0) {
                return Err(Error::param(name, 0, "positive integers"));
            }
        }
        for (name, vs) in [
            ("fmr_vals", &self.fmr_vals),
            ("pcf_variance", &self.pcf_variance),
        ] {
            if let Some(v) = vs.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(Error::param(name, v, "fractions in [0, 1]"));
            }
        }
        Ok(())
    }

    /// The retrieval depth these metrics need: the largest k (at least 1).
    pub fn max_k(&self) -> usize {
        self.cmc_top_k
            .iter()
            .chain(&self.precision_top_k)
            .chain(&self.map_top_k)
            .chain(&self.ndcg_top_k)
            .chain(&self.recall_top_k)
            .copied()
            .max()
            .unwrap_or(1)
            .max(1)
    }
}

/// One group of metrics (`OVERALL` or a category): `(metric name, [(key, value)])` in order.
pub type MetricGroup = Vec<(String, Vec<(String, f64)>)>;

/// Metrics per group, `OVERALL` first, then categories in order of first appearance among queries.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `(group, metrics)`.
    pub groups: Vec<(String, MetricGroup)>,
    /// Number of queries without ground truth.
    pub queries_without_gt: usize,
    /// Number of queries.
    pub queries: usize,
}

/// Name of the group over all queries.
pub const OVERALL: &str = "OVERALL";

fn push(group: &mut MetricGroup, name: &str, key: String, value: f64) {
    match group.iter_mut().find(|(n, _)| n == name) {
        Some((_, values)) => {
            if !values.iter().any(|(k, _)| *k == key) {
                values.push((key, value));
            }
        }
        None => group.push((name.to_owned(), vec![(key, value)])),
    }
}

fn fmt_fraction(v: f64) -> String {
    format!("{v}")
}

impl Metrics {
    /// A value by path, e.g. `get("OVERALL", "cmc", "1")`.
    pub fn get(&self, group: &str, metric: &str, key: &str) -> Option<f64> {
        let (_, g) = self.groups.iter().find(|(n, _)| n == group)?;
        let (_, values) = g.iter().find(|(n, _)| n == metric)?;
        values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A value by its `/`-separated path, e.g. `OVERALL/cmc/1`.
    pub fn get_path(&self, path: &str) -> Option<f64> {
        let mut parts = path.splitn(3, '/');
        let (g, m, k) = (parts.next()?, parts.next()?, parts.next()?);
        self.get(g, m, k)
    }

    /// The nested JSON object (NaN written as `null`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut top = serde_json::Map::new();
        for (group, metrics) in &self.groups {
            let mut g = serde_json::Map::new();
            for (name, values) in metrics {
                let mut m = serde_json::Map::new();
                for (k, v) in values {
                    let value = serde_json::Number::from_f64(*v)
                        .map_or(serde_json::Value::Null, serde_json::Value::Number);
                    m.insert(k.clone(), value);
                }
                g.insert(name.clone(), serde_json::Value::Object(m));
            }
            top.insert(group.clone(), serde_json::Value::Object(g));
        }
        serde_json::Value::Object(top)
    }

    /// Rows `metric@key` and one column per group, as text.
    pub fn to_table(&self) -> String {
        let rows = self.row_keys();
        let names: Vec<&str> = self.groups.iter().map(|(g, _)| g.as_str()).collect();
        let width = rows
            .iter()
            .map(|(m, k)| m.len() + k.len() + 1)
            .max()
            .unwrap_or(6)
            .max(6);
        let col = names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(7)
            .clamp(7, 24);
        let mut out = format!("{:width$}", "metric");
        for n in &names {
            out.push_str(&format!("  {n:>col$}"));
        }
        out.push('\n');
        for (m, k) in &rows {
            out.push_str(&format!("{:width$}", format!("{m}@{k}")));
            for g in &names {
                out.push_str(&format!("  {:>col$}", self.cell(g, m, k)));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "{} queries, {} without ground truth\n",
            self.queries, self.queries_without_gt
        ));
        out
    }

    /// A value as shown in the table: 4 decimals, `nan`, or `-` when absent.
    fn cell(&self, group: &str, metric: &str, key: &str) -> String {
        match self.get(group, metric, key) {
            Some(v) if v.is_nan() => "nan".to_owned(),
            Some(v) => format!("{v:.4}"),
            None => "-".to_owned(),
        }
    }

    fn row_keys(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = Vec::new();
        for (_, metrics) in &self.groups {
            for (m, values) in metrics {
                for (k, _) in values {
                    if !rows.iter().any(|(a, b)| a == m && b == k) {
                        rows.push((m.clone(), k.clone()));
                    }
                }
            }
        }
        rows
    }

    /// The table as HTML (escaped).
    pub fn to_html(&self) -> String {
        let names: Vec<&str> = self.groups.iter().map(|(g, _)| g.as_str()).collect();
        let mut html = String::from("<table class=\"oml-metrics\"><tr><th>metric</th>");
        for n in &names {
            html.push_str(&format!("<th>{}</th>", escape_html(n)));
        }
        html.push_str("</tr>");
        for (m, k) in self.row_keys() {
            html.push_str(&format!(
                "<tr><td>{}</td>",
                escape_html(&format!("{m}@{k}"))
            ));
            for g in &names {
                html.push_str(&format!(
                    "<td style=\"text-align:right\">{}</td>",
                    self.cell(g, &m, &k)
                ));
            }
            html.push_str("</tr>");
        }
        html.push_str(&format!(
            "</table><p>{} queries, {} without ground truth</p>",
            self.queries, self.queries_without_gt
        ));
        html
    }

    /// Shows the table inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }

    /// `cmc@k` over all queries (NaN when it was not computed).
    pub fn cmc(&self, k: usize) -> f64 {
        self.overall().cmc(k)
    }

    /// `precision@k` over all queries (NaN when it was not computed).
    pub fn precision(&self, k: usize) -> f64 {
        self.overall().precision(k)
    }

    /// `map@k` over all queries (NaN when it was not computed).
    pub fn map(&self, k: usize) -> f64 {
        self.overall().map(k)
    }

    /// The metrics over all queries.
    pub fn overall(&self) -> MetricsGroup<'_> {
        MetricsGroup {
            metrics: self,
            group: OVERALL.to_owned(),
        }
    }

    /// The metrics of the queries of one category (`None` for a category with no query).
    pub fn category(&self, name: &str) -> Option<MetricsGroup<'_>> {
        self.groups
            .iter()
            .any(|(g, _)| g == name)
            .then(|| MetricsGroup {
                metrics: self,
                group: name.to_owned(),
            })
    }

    /// The categories, in order of first appearance among the queries.
    pub fn categories(&self) -> Vec<&str> {
        self.groups
            .iter()
            .skip(1)
            .map(|(g, _)| g.as_str())
            .collect()
    }

    /// Every value as `(GROUP/metric/k, value)`, the keys a trainer's history uses.
    pub fn flat(&self) -> std::collections::BTreeMap<String, f64> {
        let mut out = std::collections::BTreeMap::new();
        for (group, g) in &self.groups {
            for (metric, values) in g {
                for (k, v) in values {
                    out.insert(format!("{group}/{metric}/{k}"), *v);
                }
            }
        }
        out
    }
}

/// Several runs' metrics side by side (OVERALL): one row per run, one column per metric of the
/// first. `compare(&[("raw pixels", &m0), ("after", &m1)])`.
pub fn compare(runs: &[(&str, &Metrics)]) -> crate::notebook::Table {
    let keys: Vec<(String, String)> = runs.first().map(|(_, m)| m.row_keys()).unwrap_or_default();
    let mut header = vec![String::new()];
    header.extend(keys.iter().map(|(m, k)| format!("{m}@{k}")));
    let mut table = crate::notebook::Table::new(&header);
    for (name, m) in runs {
        let mut row = vec![(*name).to_owned()];
        row.extend(keys.iter().map(|(metric, k)| m.cell(OVERALL, metric, k)));
        table = table.row(&row);
    }
    table
}

/// The metrics of one group of queries (all, or one category): typed accessors.
#[derive(Debug, Clone)]
pub struct MetricsGroup<'a> {
    metrics: &'a Metrics,
    group: String,
}

impl MetricsGroup<'_> {
    /// A metric by name and key (`"fnmr@fmr"`, `"0.1"`), NaN when absent.
    pub fn value(&self, metric: &str, key: &str) -> f64 {
        self.metrics
            .get(&self.group, metric, key)
            .unwrap_or(f64::NAN)
    }

    /// `cmc@k` (NaN when it was not computed).
    pub fn cmc(&self, k: usize) -> f64 {
        self.value("cmc", &k.to_string())
    }

    /// `precision@k`.
    pub fn precision(&self, k: usize) -> f64 {
        self.value("precision", &k.to_string())
    }

    /// `map@k`.
    pub fn map(&self, k: usize) -> f64 {
        self.value("map", &k.to_string())
    }

    /// `fnmr@fmr` for the fraction `fmr` (OVERALL only).
    pub fn fnmr_at_fmr(&self, fmr: f64) -> f64 {
        self.value("fnmr@fmr", &fmt_fraction(fmr))
    }

    /// `pcf` for the fraction `variance`.
    pub fn pcf(&self, variance: f64) -> f64 {
        self.value("pcf", &fmt_fraction(variance))
    }
}

impl Show for Metrics {
    fn html(&self) -> Result<String> {
        Ok(self.to_html())
    }
    fn plain(&self) -> String {
        self.to_table()
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_table())
    }
}

fn mean(values: &[f64], keep: &[bool]) -> f64 {
    let (sum, n) = values
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .fold((0.0, 0usize), |(s, n), (v, _)| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// The retrieval metrics of `rr` (cmc, precision, map and the extra per-query ones) per category
/// of its queries and `OVERALL`.
pub fn compute_metrics(rr: &RetrievalResults, config: &MetricsConfig) -> Result<Metrics> {
    config.validate()?;
    if !rr.has_ground_truth() {
        return Err(Error::Msg(
            "retrieval metrics need ground truths: give labels".to_owned(),
        ));
    }
    let nq = rr.n_queries();
    let n_gt: Vec<usize> = (0..nq).map(|q| rr.n_gt_of(q)).collect();
    let without = n_gt.iter().filter(|&&n| n == 0).count();
    if without > 0 && config.no_gt_policy == NoGtPolicy::Error {
        return Err(Error::Msg(format!(
            "{without} of {nq} queries have no ground truth (no gallery item of their label once excluded items are removed); use the policy `oml` or `skip`"
        )));
    }
    let counted: Vec<bool> = n_gt
        .iter()
        .map(|&n| n > 0 || config.no_gt_policy == NoGtPolicy::Oml)
        .collect();
    let hits: Vec<Vec<bool>> = (0..nq).map(|q| rr.hits_of(q)).collect();
    let metrics = config.query_metrics();
    let values: Vec<Vec<f64>> = metrics
        .iter()
        .map(|m| (0..nq).map(|q| m.value(&hits[q], n_gt[q])).collect())
        .collect();
    let mut groups: Vec<(String, Vec<bool>)> = vec![(OVERALL.to_owned(), vec![true; nq])];
    if let Some(categories) = rr.query_categories() {
        for c in categories {
            if !groups.iter().skip(1).any(|(g, _)| g == c) {
                let mask = categories.iter().map(|x| x == c).collect();
                groups.push((c.clone(), mask));
            }
        }
    }
    let mut out = Metrics {
        groups: Vec::new(),
        queries_without_gt: without,
        queries: nq,
    };
    for (name, mask) in groups {
        let keep: Vec<bool> = mask.iter().zip(&counted).map(|(a, b)| *a && *b).collect();
        let mut group = MetricGroup::new();
        for (m, vals) in metrics.iter().zip(&values) {
            let key = m.key().map_or_else(|| "all".to_owned(), |k| k.to_string());
            push(&mut group, m.name(), key, mean(vals, &keep));
        }
        out.groups.push((name, group));
    }
    Ok(out)
}

/// Everything OML's `EmbeddingMetrics` computes, from embeddings `[N, D]` (row `i` = item `i` of
/// `info`): retrieval with `search` (its `top_n` raised to the largest k), the retrieval metrics per
/// category, fnmr@fmr over all pairs (OVERALL), pcf over all items of each group.
pub fn evaluate(
    embeddings: &Tensor,
    info: &QueryGalleryInfo,
    config: &MetricsConfig,
    search: &SearchConfig,
) -> Result<(RetrievalResults, Metrics)> {
    config.validate()?;
    let search = SearchConfig {
        top_n: search.top_n.max(config.max_k()),
        ..search.clone()
    };
    let rr = RetrievalResults::from_embeddings_with(embeddings, info, &search)?;
    let mut metrics = compute_metrics(&rr, config)?;
    if !config.fmr_vals.is_empty() {
        let f = fnmr_at_fmr(embeddings, info, &search, &config.fmr_vals)?;
        if let Some((_, overall)) = metrics.groups.first_mut() {
            for (fmr, v) in f.fmr.iter().zip(&f.fnmr) {
                push(overall, "fnmr@fmr", fmt_fraction(*fmr), *v);
            }
        }
    }
    if !config.pcf_variance.is_empty() {
        let dim = embeddings.dims().get(1).copied().unwrap_or(0);
        let flat: Vec<f32> = crate::host::read(&embeddings.to_dtype(DType::F32)?, "metrics: pcf")?;
        for (name, group) in &mut metrics.groups {
            let rows: Vec<usize> = if name == OVERALL {
                (0..info.len()).collect()
            } else {
                match &info.categories {
                    Some(c) => (0..info.len()).filter(|&i| c[i] == *name).collect(),
                    None => continue,
                }
            };
            let mut data = Vec::with_capacity(rows.len() * dim);
            for &r in &rows {
                data.extend_from_slice(&flat[r * dim..(r + 1) * dim]);
            }
            let values = pcf(&data, dim, &config.pcf_variance)?;
            for (v, p) in config.pcf_variance.iter().zip(values) {
                push(group, "pcf", fmt_fraction(*v), p);
            }
        }
    }
    Ok((rr, metrics))
}
