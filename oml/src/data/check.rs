//! Validation of OML's dataframe format, reporting every problem in one pass.
//!
//! Python OML (`check_retrieval_dataframe_format`) stops at its first failing assert; here every
//! problem is collected and named by the line of the file (the header is line 1, the first row
//! line 2) and the column, as `line N: column C: what is wrong and what is allowed`.
//!
//! Rules (all of OML's, plus two warnings that OML does not have):
//! - the columns `label, path, split, is_query, is_gallery` exist; the box columns
//!   `x_1, x_2, y_1, y_2` are all present or all absent;
//! - `label` is an integer, `path` is not empty and (optionally) the file exists, `split` is `train`
//!   or `validation`;
//! - on train rows `is_query` and `is_gallery` are empty; on validation rows they are booleans
//!   (`true/false`, `True/False`, `1/0`, `1.0/0.0`) and at least one of each is true;
//! - every validation row is a query, a gallery item, or both;
//! - warning: an empty `category` or `sequence` (OML does not check these columns);
//! - a box is all empty or four integers with `0 <= x_1 < x_2`, `0 <= y_1 < y_2`;
//! - the label of every validation query is among the gallery labels;
//! - warning: a validation query has no positive once itself and the gallery items of its own
//!   `sequence` are excluded (an error with `strict`);
//! - warning: a label appears with several categories.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::csv::{RawTable, read_csv_text};
use super::schema::*;
use crate::{Error, Result};

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used as it is.
    Error,
    /// The file can be used, but something is probably not what the user meant.
    Warning,
}

/// One problem found in a CSV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// Line of the file (1 = the header), when the problem belongs to one line.
    pub line: Option<usize>,
    /// Column name, when the problem belongs to one column.
    pub column: Option<String>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(column) = &self.column {
            write!(f, "column {column}: ")?;
        }
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Split of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// `train`
    Train,
    /// `validation`
    Validation,
}

/// A bounding box in pixels: columns `x_1..x_2` and rows `y_1..y_2` of the image (as OML crops
/// `image[y_1:y_2, x_1:x_2]`, the right and bottom edges are exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct BBox {
    /// Left edge (inclusive).
    pub x1: u32,
    /// Right edge (exclusive).
    pub x2: u32,
    /// Top edge (inclusive).
    pub y1: u32,
    /// Bottom edge (exclusive).
    pub y2: u32,
}

/// What to check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOptions {
    /// Folder that relative paths are relative to (default: the CSV's folder).
    pub dataset_root: Option<PathBuf>,
    /// Whether to check that every image file exists (it does not open them).
    pub check_files: bool,
    /// Whether to open every existing image (in parallel) and report the ones that cannot be
    /// decoded (`oml check-data --decode`); slower: every file is read.
    pub decode_images: bool,
    /// Whether warnings count as errors.
    pub strict: bool,
    /// Whether `label` and `split` are required (false for prediction CSVs without labels).
    pub require_labels: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            dataset_root: None,
            check_files: true,
            decode_images: false,
            strict: false,
            require_labels: true,
        }
    }
}

/// Counts that describe a checked CSV.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Data rows.
    pub rows: usize,
    /// Distinct labels.
    pub labels: usize,
    /// Rows with `split = train`.
    pub train_rows: usize,
    /// Distinct labels among train rows.
    pub train_labels: usize,
    /// Rows with `split = validation`.
    pub validation_rows: usize,
    /// Distinct labels among validation rows.
    pub validation_labels: usize,
    /// Validation rows with `is_query` true.
    pub queries: usize,
    /// Validation rows with `is_gallery` true.
    pub galleries: usize,
    /// Distinct categories (`None` without a `category` column).
    pub categories: Option<usize>,
    /// Distinct sequences (`None` without a `sequence` column).
    pub sequences: Option<usize>,
    /// Rows with a bounding box.
    pub rows_with_boxes: usize,
    /// Validation queries with no positive gallery item (see the module docs).
    pub queries_without_positives: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rows               {}", self.rows)?;
        writeln!(f, "labels             {}", self.labels)?;
        writeln!(
            f,
            "train              {} rows, {} labels",
            self.train_rows, self.train_labels
        )?;
        writeln!(
            f,
            "validation         {} rows, {} labels",
            self.validation_rows, self.validation_labels
        )?;
        writeln!(f, "queries            {}", self.queries)?;
        writeln!(f, "galleries          {}", self.galleries)?;
        let opt =
            |v: Option<usize>| v.map_or_else(|| "- (no column)".to_owned(), |v| v.to_string());
        writeln!(f, "categories         {}", opt(self.categories))?;
        writeln!(f, "sequences          {}", opt(self.sequences))?;
        writeln!(f, "rows with boxes    {}", self.rows_with_boxes)?;
        write!(f, "queries w/o pos.   {}", self.queries_without_positives)
    }
}

/// A CSV in OML's format, parsed into one vector per column (row `i` is line `i + 2`).
#[derive(Debug, Clone, Default)]
pub struct SampleTable {
    /// The CSV it was read from.
    pub csv_path: PathBuf,
    /// Folder that relative paths are relative to.
    pub dataset_root: Option<PathBuf>,
    /// `label` per row (`None` for a prediction CSV without labels).
    pub labels: Option<Vec<i64>>,
    /// `path` per row, as written in the file.
    pub paths: Vec<String>,
    /// `split` per row (all validation in a CSV without a split column).
    pub splits: Vec<Split>,
    /// `is_query` per row (false on train rows).
    pub is_query: Vec<bool>,
    /// `is_gallery` per row (false on train rows).
    pub is_gallery: Vec<bool>,
    /// `category` per row, when the column exists.
    pub categories: Option<Vec<String>>,
    /// `sequence` per row, when the column exists.
    pub sequences: Option<Vec<String>>,
    /// Bounding box per row, when the box columns exist.
    pub bboxes: Option<Vec<Option<BBox>>>,
}

impl SampleTable {
    /// Reads and checks an OML CSV; fails with every problem when it breaks the format.
    /// Warnings are logged, and are errors when `options.strict` is set.
    pub fn from_csv(path: impl AsRef<Path>, options: &CheckOptions) -> Result<SampleTable> {
        let report = check_csv(path.as_ref(), options)?;
        report.into_table()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether the table has no rows (never true for a table read from a checked CSV).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The image path of row `i`, joined to the dataset root when relative.
    pub fn resolved_path(&self, i: usize) -> PathBuf {
        resolve(self.dataset_root.as_deref(), &self.paths[i])
    }

    /// Indices of the rows of one split, in file order.
    pub fn rows_of(&self, split: Split) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.splits[i] == split)
            .collect()
    }
}

/// Rows whose image file does not exist (one `stat` per row, in parallel; measured faster here
/// than one listing per folder).
fn missing_files(paths: &[String], root: &Path) -> Vec<usize> {
    paths
        .par_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty() && !resolve(Some(root), p).is_file())
        .map(|(i, _)| i)
        .collect()
}

/// Rows (among those not `missing`) whose image cannot be decoded, with the decoder's reason;
/// every file is opened, in parallel.
fn undecodable(paths: &[String], root: &Path, missing: &[usize]) -> Vec<(usize, String)> {
    let skip: std::collections::HashSet<usize> = missing.iter().copied().collect();
    let mut bad: Vec<(usize, String)> = paths
        .par_iter()
        .enumerate()
        .filter(|(i, p)| !p.is_empty() && !skip.contains(i))
        .filter_map(|(i, p)| {
            super::images::load_rgb(&resolve(Some(root), p))
                .err()
                .map(|e| match e {
                    crate::Error::Image { message, .. } => (i, message),
                    other => (i, other.to_string()),
                })
        })
        .collect();
    bad.sort_by_key(|(i, _)| *i);
    bad
}

/// The folder relative paths are read from: the one given, else the CSV's own folder.
///
/// Python OML reads relative paths from the current folder when no root is given; reading them
/// from the CSV's folder makes a dataset folder work from anywhere (a deliberate difference).
pub fn dataset_root_for(csv: &Path, given: Option<&Path>) -> PathBuf {
    match given {
        Some(root) => root.to_path_buf(),
        None => match csv.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    }
}

fn resolve(root: Option<&Path>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match root {
        Some(root) if p.is_relative() => root.join(p),
        _ => p.to_path_buf(),
    }
}

impl crate::notebook::Show for CheckReport {
    fn html(&self) -> Result<String> {
        Ok(self.to_html())
    }
    fn plain(&self) -> String {
        let head = if self.is_ok() {
            format!("{}: OK", self.table.csv_path.display())
        } else {
            format!(
                "{}: {} error(s)",
                self.table.csv_path.display(),
                self.errors().count()
            )
        };
        format!("{head}\n{}", self.summary)
    }
}

/// The outcome of [`check_csv`]: every problem, the summary, and the parsed table.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Every problem found, errors and warnings, in the order of the file.
    pub problems: Vec<Problem>,
    /// Counts over the rows that could be parsed.
    pub summary: Summary,
    /// Whether warnings count as errors.
    pub strict: bool,
    table: SampleTable,
}

impl CheckReport {
    /// Problems that are errors (warnings too when strict).
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| self.strict || p.severity == Severity::Error)
    }

    /// Problems that are warnings (none when strict: they are errors then).
    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| !self.strict && p.severity == Severity::Warning)
    }

    /// Whether the CSV can be used.
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }

    /// The parsed table, or an [`Error::InvalidData`] listing every error.
    pub fn into_table(self) -> Result<SampleTable> {
        if self.is_ok() {
            for w in self.warnings() {
                log::warn!("{}: {w}", self.table.csv_path.display());
            }
            Ok(self.table)
        } else {
            Err(Error::InvalidData {
                path: self.table.csv_path.clone(),
                problems: self.errors().map(ToString::to_string).collect(),
            })
        }
    }

    /// The parsed table even when there are errors (rows that failed hold defaults).
    pub fn table(&self) -> &SampleTable {
        &self.table
    }

    /// The summary and the problems as an HTML fragment (all text escaped).
    pub fn to_html(&self) -> String {
        use crate::notebook::escape_html;
        let s = &self.summary;
        let opt = |v: Option<usize>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let rows = [
            ("rows", s.rows.to_string()),
            ("labels", s.labels.to_string()),
            (
                "train rows / labels",
                format!("{} / {}", s.train_rows, s.train_labels),
            ),
            (
                "validation rows / labels",
                format!("{} / {}", s.validation_rows, s.validation_labels),
            ),
            ("queries", s.queries.to_string()),
            ("galleries", s.galleries.to_string()),
            ("categories", opt(s.categories)),
            ("sequences", opt(s.sequences)),
            ("rows with boxes", s.rows_with_boxes.to_string()),
            (
                "queries without positives",
                s.queries_without_positives.to_string(),
            ),
        ];
        let mut html = format!(
            "<div class=\"oml-check\"><b>{}</b>: {}<table>",
            escape_html(&self.table.csv_path.display().to_string()),
            if self.is_ok() { "OK" } else { "INVALID" }
        );
        for (k, v) in rows {
            html.push_str(&format!(
                "<tr><td>{k}</td><td style=\"text-align:right\">{v}</td></tr>"
            ));
        }
        html.push_str("</table>");
        let problems: Vec<&Problem> = self.problems.iter().take(50).collect();
        if !problems.is_empty() {
            html.push_str(&format!("<p>{} problem(s)", self.problems.len()));
            if self.problems.len() > problems.len() {
                html.push_str(&format!(", the first {}", problems.len()));
            }
            html.push_str(":</p><pre>");
            for p in problems {
                html.push_str(&escape_html(&p.to_string()));
                html.push('\n');
            }
            html.push_str("</pre>");
        }
        html.push_str("</div>");
        html
    }

    /// Shows the report inline in an evcxr notebook.
    pub fn evcxr_display(&self) {
        crate::notebook::show(self);
    }

    /// A JSON object `{ok, summary, errors, warnings}` for `oml check-data --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.table.csv_path,
            "ok": self.is_ok(),
            "summary": self.summary,
            "errors": self.errors().collect::<Vec<_>>(),
            "warnings": self.warnings().collect::<Vec<_>>(),
        })
    }
}

/// Reads and checks an OML CSV. Fails (`Err`) only when the file cannot be read as a table at all;
/// problems in the rows are in the report.
pub fn check_csv(path: &Path, options: &CheckOptions) -> Result<CheckReport> {
    let raw = read_csv_text(path)?;
    Ok(check_table(&raw, path, options))
}

/// Checks a CSV already read as text. See the module docs for the rules.
pub fn check_table(raw: &RawTable, path: &Path, options: &CheckOptions) -> CheckReport {
    let mut c = Checker {
        problems: Vec::new(),
    };
    let n = raw.n_rows;
    let root = dataset_root_for(path, options.dataset_root.as_deref());
    let mut table = SampleTable {
        csv_path: path.to_path_buf(),
        dataset_root: Some(root.clone()),
        paths: vec![String::new(); n],
        splits: vec![Split::Validation; n],
        is_query: vec![false; n],
        is_gallery: vec![false; n],
        ..SampleTable::default()
    };

    // Columns.
    let required: &[&str] = if options.require_labels {
        &REQUIRED_COLUMNS
    } else {
        &[PATHS_COLUMN, IS_QUERY_COLUMN, IS_GALLERY_COLUMN]
    };
    for name in required {
        if !raw.has(name) {
            c.error(
                Some(1),
                Some(name),
                format!(
                    "required column is missing; an OML CSV has the columns {}",
                    required.join(", ")
                ),
            );
        }
    }
    let n_box = BBOX_COLUMNS.iter().filter(|b| raw.has(b)).count();
    if n_box != 0 && n_box != 4 {
        for b in BBOX_COLUMNS.iter().filter(|b| !raw.has(b)) {
            c.error(
                Some(1),
                Some(b),
                "bounding-box column is missing; give all four of x_1, x_2, y_1, y_2 or none"
                    .to_owned(),
            );
        }
    }
    // polars renames a repeated header `label` to `label_duplicated_0`, ...
    for name in &raw.names {
        if let Some((stem, n)) = name.rsplit_once("_duplicated_")
            && n.parse::<usize>().is_ok()
            && raw.has(stem)
        {
            c.error(
                Some(1),
                Some(stem),
                "column appears more than once; column names must be unique".to_owned(),
            );
        }
    }

    // Per-row values.
    let line = |i: usize| i + 2;
    let mut split_ok = vec![true; n];
    if let Some(col) = raw.column(SPLIT_COLUMN) {
        for (i, v) in col.iter().enumerate() {
            match v.as_deref() {
                Some(SPLIT_TRAIN) => table.splits[i] = Split::Train,
                Some(SPLIT_VALIDATION) => table.splits[i] = Split::Validation,
                other => {
                    // The flags of a row with an unknown split cannot be judged: not reported.
                    split_ok[i] = false;
                    c.error(
                        Some(line(i)),
                        Some(SPLIT_COLUMN),
                        format!(
                            "{} is not a split; allowed: train, validation",
                            shown(other)
                        ),
                    )
                }
            }
        }
    }
    let mut label_ok = vec![true; n];
    if let Some(col) = raw.column(LABELS_COLUMN) {
        let mut labels = vec![0i64; n];
        for (i, v) in col.iter().enumerate() {
            match v.as_deref().map(parse_integer) {
                Some(Some(l)) => labels[i] = l,
                other => {
                    label_ok[i] = false;
                    c.error(
                    Some(line(i)),
                    Some(LABELS_COLUMN),
                    format!(
                        "{} is not an integer label; labels are integers (ids of the identities)",
                        shown(other.and(v.as_deref()))
                    ),
                    )
                }
            }
        }
        table.labels = Some(labels);
    }
    if let Some(col) = raw.column(PATHS_COLUMN) {
        for (i, v) in col.iter().enumerate() {
            match v {
                Some(p) => table.paths[i] = p.clone(),
                None => c.error(
                    Some(line(i)),
                    Some(PATHS_COLUMN),
                    "empty path; give the image path, relative to the dataset root or absolute"
                        .to_owned(),
                ),
            }
        }
        if options.check_files || options.decode_images {
            let missing = missing_files(&table.paths, &root);
            if options.decode_images {
                for (i, why) in undecodable(&table.paths, &root, &missing) {
                    c.error(
                        Some(line(i)),
                        Some(PATHS_COLUMN),
                        format!(
                            "image file {} cannot be decoded: {why}; replace or remove it (or train \
                             with on_bad_image: skip)",
                            table.paths[i]
                        ),
                    );
                }
            }
            for i in missing {
                c.error(
                    Some(line(i)),
                    Some(PATHS_COLUMN),
                    format!(
                        "image file {} does not exist (relative paths are read from the dataset root {}; give another root with --dataset-root)",
                        table.paths[i],
                        root.display()
                    ),
                );
            }
        }
    }
    // Rows whose is_query or is_gallery could not be read.
    let mut flags_bad = vec![false; n];
    for (name, target) in [
        (IS_QUERY_COLUMN, &mut table.is_query),
        (IS_GALLERY_COLUMN, &mut table.is_gallery),
    ] {
        let Some(col) = raw.column(name) else {
            continue;
        };
        for (i, v) in col.iter().enumerate() {
            if !split_ok[i] {
                continue;
            }
            match (table.splits[i], v.as_deref()) {
                (Split::Train, None) => {}
                (Split::Train, Some(v)) => c.error(
                    Some(line(i)),
                    Some(name),
                    format!(
                        "'{v}' on a train row; leave is_query and is_gallery empty on train rows"
                    ),
                ),
                (Split::Validation, v) => match v.and_then(parse_bool) {
                    Some(b) => target[i] = b,
                    None => {
                        flags_bad[i] = true;
                        c.error(
                            Some(line(i)),
                            Some(name),
                            format!(
                                "{} on a validation row; allowed: true/false or 1/0",
                                shown(v)
                            ),
                        )
                    }
                },
            }
        }
    }
    for name in [CATEGORIES_COLUMN, SEQUENCE_COLUMN] {
        let Some(col) = raw.column(name) else {
            continue;
        };
        let mut values = vec![String::new(); n];
        for (i, v) in col.iter().enumerate() {
            match v {
                Some(v) => values[i] = v.clone(),
                // OML does not check these columns; an empty value is most likely a mistake.
                None => c.warning(
                    Some(line(i)),
                    Some(name),
                    format!("empty {name}; give a value on every row or drop the column"),
                ),
            }
        }
        if name == CATEGORIES_COLUMN {
            table.categories = Some(values);
        } else {
            table.sequences = Some(values);
        }
    }
    if n_box == 4 {
        table.bboxes = Some(check_boxes(raw, &mut c));
    }

    // Rules across rows.
    let validation: Vec<usize> = table
        .rows_of(Split::Validation)
        .into_iter()
        .filter(|&i| split_ok[i])
        .collect();
    if raw.has(IS_QUERY_COLUMN) && raw.has(IS_GALLERY_COLUMN) {
        for &i in &validation {
            if !flags_bad[i] && !table.is_query[i] && !table.is_gallery[i] {
                c.error(
                    Some(line(i)),
                    Some(IS_QUERY_COLUMN),
                    "validation row is neither a query nor a gallery item; set is_query or is_gallery (or both) to true".to_owned(),
                );
            }
        }
    }
    let has_validation = !validation.is_empty();
    if has_validation && raw.has(IS_QUERY_COLUMN) && raw.has(IS_GALLERY_COLUMN) {
        for (name, flags) in [
            (IS_QUERY_COLUMN, &table.is_query),
            (IS_GALLERY_COLUMN, &table.is_gallery),
        ] {
            if !validation.iter().any(|&i| flags[i]) {
                c.error(
                    None,
                    Some(name),
                    "no validation row has it true; validation needs at least one query and one gallery item".to_owned(),
                );
            }
        }
    }
    let mut queries_without_positives = 0;
    if let Some(labels) = &table.labels {
        // Rows whose label or split could not be read are left out of the rules across rows.
        let usable: Vec<bool> = (0..n).map(|i| label_ok[i] && split_ok[i]).collect();
        queries_without_positives = check_positives(&table, labels, &usable, &mut c);
        if let Some(categories) = &table.categories {
            let mut first: HashMap<i64, usize> = HashMap::new();
            let mut reported = HashSet::new();
            for i in 0..n {
                let j = *first.entry(labels[i]).or_insert(i);
                if categories[j] != categories[i] && reported.insert(labels[i]) {
                    c.warning(
                        Some(line(i)),
                        Some(CATEGORIES_COLUMN),
                        format!(
                            "label {} has category '{}' here but '{}' on line {}; a label usually belongs to one category",
                            labels[i],
                            categories[i],
                            categories[j],
                            line(j)
                        ),
                    );
                }
            }
        }
    }

    let summary = summarise(&table, queries_without_positives);
    let mut problems = c.problems;
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    CheckReport {
        problems,
        summary,
        strict: options.strict,
        table,
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn error(&mut self, line: Option<usize>, column: Option<&str>, message: String) {
        self.push(Severity::Error, line, column, message);
    }
    fn warning(&mut self, line: Option<usize>, column: Option<&str>, message: String) {
        self.push(Severity::Warning, line, column, message);
    }
    fn push(
        &mut self,
        severity: Severity,
        line: Option<usize>,
        column: Option<&str>,
        message: String,
    ) {
        self.problems.push(Problem {
            severity,
            line,
            column: column.map(str::to_owned),
            message,
        });
    }
}

fn shown(v: Option<&str>) -> String {
    match v {
        None => "empty value".to_owned(),
        Some(v) => format!("'{v}'"),
    }
}

/// Parses an integer, also as pandas writes integer columns that have gaps (`12.0`).
fn parse_integer(v: &str) -> Option<i64> {
    if let Ok(i) = v.parse::<i64>() {
        return Some(i);
    }
    let f: f64 = v.parse().ok()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "1.0" | "true" | "True" | "TRUE" => Some(true),
        "0" | "0.0" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn check_boxes(raw: &RawTable, c: &mut Checker) -> Vec<Option<BBox>> {
    let cols: Vec<&[Option<String>]> = BBOX_COLUMNS
        .iter()
        .filter_map(|name| raw.column(name))
        .collect();
    let mut out = vec![None; raw.n_rows];
    for (i, slot) in out.iter_mut().enumerate() {
        let line = i + 2;
        let values: Vec<Option<&str>> = cols.iter().map(|col| col[i].as_deref()).collect();
        let filled = values.iter().filter(|v| v.is_some()).count();
        if filled == 0 {
            continue;
        }
        if filled < 4 {
            for (k, v) in values.iter().enumerate() {
                if v.is_none() {
                    c.error(
                        Some(line),
                        Some(BBOX_COLUMNS[k]),
                        "empty while other box columns are filled; give all four of x_1, x_2, y_1, y_2 or none".to_owned(),
                    );
                }
            }
            continue;
        }
        let mut parsed = [0u32; 4];
        let mut ok = true;
        for (k, v) in values.iter().enumerate() {
            match v.and_then(parse_integer) {
                Some(x) if (0..=i64::from(u32::MAX)).contains(&x) => parsed[k] = x as u32,
                _ => {
                    ok = false;
                    c.error(
                        Some(line),
                        Some(BBOX_COLUMNS[k]),
                        format!(
                            "{} is not a box coordinate; allowed: an integer >= 0 (pixels)",
                            shown(*v)
                        ),
                    );
                }
            }
        }
        if !ok {
            continue;
        }
        let [x1, x2, y1, y2] = parsed;
        if x1 >= x2 {
            ok = false;
            c.error(
                Some(line),
                Some(X2_COLUMN),
                format!("x_2 = {x2} is not greater than x_1 = {x1}; a box needs x_1 < x_2"),
            );
        }
        if y1 >= y2 {
            ok = false;
            c.error(
                Some(line),
                Some(Y2_COLUMN),
                format!("y_2 = {y2} is not greater than y_1 = {y1}; a box needs y_1 < y_2"),
            );
        }
        if ok {
            *slot = Some(BBox { x1, x2, y1, y2 });
        }
    }
    out
}

/// Errors for queries whose label has no gallery item; warnings for queries left without a
/// positive once themselves and their sequence mates are excluded. Returns that count.
fn check_positives(table: &SampleTable, labels: &[i64], usable: &[bool], c: &mut Checker) -> usize {
    let mut galleries_per_label: HashMap<i64, usize> = HashMap::new();
    let mut galleries_per_label_seq: HashMap<(i64, &str), usize> = HashMap::new();
    for i in 0..table.len() {
        if usable[i] && table.splits[i] == Split::Validation && table.is_gallery[i] {
            *galleries_per_label.entry(labels[i]).or_default() += 1;
            if let Some(seq) = &table.sequences {
                *galleries_per_label_seq
                    .entry((labels[i], seq[i].as_str()))
                    .or_default() += 1;
            }
        }
    }
    let mut without = 0;
    for i in 0..table.len() {
        if !usable[i] || table.splits[i] != Split::Validation || !table.is_query[i] {
            continue;
        }
        let all = galleries_per_label.get(&labels[i]).copied().unwrap_or(0);
        if all == 0 {
            without += 1;
            c.error(
                Some(i + 2),
                Some(LABELS_COLUMN),
                format!(
                    "query label {} is not among the gallery labels; every query needs a gallery item of its label",
                    labels[i]
                ),
            );
            continue;
        }
        let excluded = match &table.sequences {
            Some(seq) => galleries_per_label_seq
                .get(&(labels[i], seq[i].as_str()))
                .copied()
                .unwrap_or(0),
            None => usize::from(table.is_gallery[i]),
        };
        if all <= excluded {
            without += 1;
            let why = if table.sequences.is_some() {
                "once itself and the gallery items of its sequence are excluded"
            } else {
                "once itself is excluded"
            };
            c.warning(
                Some(i + 2),
                Some(LABELS_COLUMN),
                format!(
                    "query of label {} has no positive gallery item {why}; its metrics will be NaN or zero",
                    labels[i]
                ),
            );
        }
    }
    without
}

fn summarise(table: &SampleTable, queries_without_positives: usize) -> Summary {
    let n = table.len();
    let count = |f: &dyn Fn(usize) -> bool| (0..n).filter(|&i| f(i)).count();
    let distinct = |f: &dyn Fn(usize) -> bool| -> usize {
        match &table.labels {
            Some(labels) => (0..n)
                .filter(|&i| f(i))
                .map(|i| labels[i])
                .collect::<HashSet<_>>()
                .len(),
            None => 0,
        }
    };
    let is_val = |i: usize| table.splits[i] == Split::Validation;
    Summary {
        rows: n,
        labels: distinct(&|_| true),
        train_rows: count(&|i| !is_val(i)),
        train_labels: distinct(&|i| !is_val(i)),
        validation_rows: count(&is_val),
        validation_labels: distinct(&is_val),
        queries: count(&|i| is_val(i) && table.is_query[i]),
        galleries: count(&|i| is_val(i) && table.is_gallery[i]),
        categories: table
            .categories
            .as_ref()
            .map(|c| c.iter().collect::<HashSet<_>>().len()),
        sequences: table
            .sequences
            .as_ref()
            .map(|s| s.iter().collect::<HashSet<_>>().len()),
        rows_with_boxes: table
            .bboxes
            .as_ref()
            .map_or(0, |b| b.iter().filter(|b| b.is_some()).count()),
        queries_without_positives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_accept_pandas_floats_only_when_whole() {
        assert_eq!(parse_integer("12"), Some(12));
        assert_eq!(parse_integer("-3"), Some(-3));
        assert_eq!(parse_integer("12.0"), Some(12));
        assert_eq!(parse_integer("12.5"), None);
        assert_eq!(parse_integer("nan"), None);
        assert_eq!(parse_integer("abc"), None);
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
