//! Reading CSV files. Every polars call of the crate lives in this file, so that a polars upgrade
//! touches nothing else.
//!
//! The CSV is read with every column as text (no type inference): the checks in
//! [`crate::data::check`] parse the values themselves, so that they can name the line and the column
//! of each bad value instead of failing on the first one.

use std::path::Path;

use polars::prelude::{
    Column, CsvReadOptions, CsvWriter, DataFrame, PolarsError, SerReader, SerWriter,
};

use crate::{Error, Result};

/// A CSV read as text: column names in file order and, per column, one optional value per row
/// (`None` for an empty field).
#[derive(Debug, Clone, Default)]
pub struct RawTable {
    /// Column names in the order of the header.
    pub names: Vec<String>,
    /// `columns[c][r]`: the value of column `c` in row `r` (row 0 is line 2 of the file).
    pub columns: Vec<Vec<Option<String>>>,
    /// Number of data rows.
    pub n_rows: usize,
}

impl RawTable {
    /// The values of a column by name, if the file has it.
    pub fn column(&self, name: &str) -> Option<&[Option<String>]> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.columns[i])
    }

    /// Whether the file has a column of that name.
    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// Reads a CSV file with a header into a [`RawTable`] of text values.
///
/// Errors (never panics) when the file is missing or unreadable, empty, has only a header, or is
/// not a CSV that polars can parse.
pub fn read_csv_text(path: &Path) -> Result<RawTable> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read CSV", path, e))?;
    if meta.is_dir() {
        return Err(csv_error(path, "is a folder, not a CSV file"));
    }
    if meta.len() == 0 {
        return Err(csv_error(
            path,
            "the file is empty; an OML CSV needs a header line (label,path,split,is_query,is_gallery) and rows",
        ));
    }
    let owned = path.to_path_buf();
    // polars reports malformed input as errors, but a defensive catch keeps a notebook kernel alive
    // should some input reach an internal assertion.
    let read = std::panic::catch_unwind(move || -> std::result::Result<DataFrame, PolarsError> {
        CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .with_raise_if_empty(true)
            .try_into_reader_with_file_path(Some(owned))?
            .finish()
    });
    let df = match read {
        Ok(Ok(df)) => df,
        Ok(Err(e)) => return Err(csv_error(path, &format!("not a readable CSV: {e}"))),
        Err(_) => {
            return Err(csv_error(
                path,
                "not a readable CSV (the CSV parser failed on it); check that it is a comma-separated text file with a header",
            ));
        }
    };
    let n_rows = df.height();
    let mut table = RawTable {
        n_rows,
        ..RawTable::default()
    };
    for name in df.get_column_names() {
        let name = name.to_string();
        let column = df
            .column(&name)
            .and_then(|c| c.str().cloned())
            .map_err(|e| csv_error(path, &format!("column '{name}': {e}")))?;
        let values: Vec<Option<String>> = column
            .iter()
            .map(|v| {
                v.map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            })
            .collect();
        table.names.push(name.trim().to_owned());
        table.columns.push(values);
    }
    if n_rows == 0 {
        return Err(csv_error(
            path,
            "the file has a header but no rows; add one row per image",
        ));
    }
    Ok(table)
}

fn csv_error(path: &Path, message: &str) -> Error {
    Error::Csv {
        path: path.to_path_buf(),
        message: message.to_owned(),
    }
}

/// Writes columns of text as a CSV file with a header (used by the converters and the dataset
/// generators). Empty strings are written as empty fields. Creates the parent folder.
pub fn write_csv(path: &Path, columns: Vec<(&str, Vec<String>)>) -> Result<()> {
    let columns: Vec<Column> = columns
        .into_iter()
        .map(|(name, values)| Column::new(name.into(), values))
        .collect();
    let mut df = DataFrame::new_infer_height(columns)
        .map_err(|e| csv_error(path, &format!("cannot build the table: {e}")))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("cannot create folder", parent, e))?;
    }
    let mut file =
        std::fs::File::create(path).map_err(|e| Error::io("cannot write CSV", path, e))?;
    CsvWriter::new(&mut file)
        .include_header(true)
        .finish(&mut df)
        .map_err(|e| csv_error(path, &format!("cannot write CSV: {e}")))
}

/// Writes embeddings as Parquet: a `path` column (the CSV's `path`), `label` when given, and
/// `embedding`, a list of `dim` float32 per row. Readable by polars, pandas and pyarrow.
pub fn write_embeddings_parquet(
    path: &Path,
    paths: &[String],
    labels: Option<&[i64]>,
    values: &[f32],
    dim: usize,
) -> Result<()> {
    use polars::prelude::{NamedFrom, Series};
    let bad = |e: String| Error::Format {
        path: path.to_path_buf(),
        message: format!("cannot write Parquet: {e}"),
    };
    if dim == 0 || values.len() != paths.len() * dim {
        return Err(bad(format!(
            "{} values for {} rows of {dim}",
            values.len(),
            paths.len()
        )));
    }
    let rows: Vec<Series> = values
        .chunks(dim)
        .map(|c| Series::new("".into(), c))
        .collect();
    let mut columns = vec![Column::new("path".into(), paths)];
    if let Some(l) = labels {
        columns.push(Column::new("label".into(), l));
    }
    columns.push(Column::new("embedding".into(), rows));
    write_parquet(path, columns)
}

/// Columns as a Parquet file at `path` (not atomic: wrap in `fsio::write_atomic` for that).
pub(crate) fn write_parquet(path: &Path, columns: Vec<Column>) -> Result<()> {
    use polars::prelude::ParquetWriter;
    let bad = |e: String| Error::Format {
        path: path.to_path_buf(),
        message: format!("cannot write Parquet: {e}"),
    };
    let mut df = DataFrame::new_infer_height(columns).map_err(|e| bad(e.to_string()))?;
    let file = std::fs::File::create(path).map_err(|e| Error::io("cannot write", path, e))?;
    ParquetWriter::new(file)
        .finish(&mut df)
        .map(|_| ())
        .map_err(|e| bad(e.to_string()))
}
