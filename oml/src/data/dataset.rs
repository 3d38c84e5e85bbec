//! Datasets over an OML CSV: the train set with labels, the labelled query/gallery set for
//! validation, and the unlabelled query/gallery set for prediction.
//!
//! Each reads the CSV once, keeps its columns as vectors behind an `Arc`, and is cheap to clone:
//! notebook cells can hold them for the whole session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;

use super::check::{BBox, CheckOptions, SampleTable, Split};
use super::images::load_rgb_cropped;
use crate::{Error, Result};

/// Anything that yields images by index: what the [`crate::data::ImageLoader`] reads from.
pub trait ImageSource: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The resolved image path of item `i`.
    fn image_path(&self, i: usize) -> PathBuf;
    /// The bounding box of item `i`, if it has one.
    fn bbox(&self, i: usize) -> Option<BBox>;
    /// Decodes item `i` as RGB, cropped to its box.
    fn load_image(&self, i: usize) -> Result<RgbImage> {
        load_rgb_cropped(&self.image_path(i), self.bbox(i).as_ref())
    }
}

/// Rows of a table seen through a list of row indices.
#[derive(Debug, Clone)]
struct View {
    table: Arc<SampleTable>,
    rows: Arc<Vec<usize>>,
}

impl View {
    fn path(&self, i: usize) -> PathBuf {
        self.table.resolved_path(self.rows[i])
    }
    fn bbox(&self, i: usize) -> Option<BBox> {
        self.table.bboxes.as_ref().and_then(|b| b[self.rows[i]])
    }
    fn column<T: Clone>(&self, col: &Option<Vec<T>>) -> Option<Vec<T>> {
        col.as_ref()
            .map(|c| self.rows.iter().map(|&r| c[r].clone()).collect())
    }
}

fn read_table(
    csv: &Path,
    dataset_root: Option<&Path>,
    require_labels: bool,
) -> Result<Arc<SampleTable>> {
    let options = CheckOptions {
        dataset_root: dataset_root.map(Path::to_path_buf),
        require_labels,
        ..CheckOptions::default()
    };
    Ok(Arc::new(SampleTable::from_csv(csv, &options)?))
}

/// Labelled images for training (OML's `ImageLabeledDataset`): the train rows of a CSV, labels
/// remapped to `0..L-1` in order of first appearance, the map kept.
#[derive(Debug, Clone)]
pub struct ImageLabeledDataset {
    view: View,
    labels: Arc<Vec<usize>>,
    label_values: Arc<Vec<i64>>,
}

impl ImageLabeledDataset {
    /// The train rows of an OML CSV (checked first; paths relative to `dataset_root`).
    pub fn from_csv(csv: impl AsRef<Path>, dataset_root: Option<&Path>) -> Result<Self> {
        let table = read_table(csv.as_ref(), dataset_root, true)?;
        Self::from_table(table, Some(Split::Train))
    }

    /// The rows of one split of a checked table (all rows for `None`).
    pub fn from_table(table: Arc<SampleTable>, split: Option<Split>) -> Result<Self> {
        let rows: Vec<usize> = match split {
            Some(s) => table.rows_of(s),
            None => (0..table.len()).collect(),
        };
        let Some(all_labels) = table.labels.as_ref() else {
            return Err(Error::Msg(format!(
                "{}: a labelled dataset needs the column 'label'",
                table.csv_path.display()
            )));
        };
        if rows.is_empty() {
            return Err(Error::Msg(format!(
                "{}: no rows with split = {}; a training set needs train rows",
                table.csv_path.display(),
                match split {
                    Some(Split::Validation) => "validation",
                    _ => "train",
                }
            )));
        }
        let mut map: HashMap<i64, usize> = HashMap::new();
        let mut label_values = Vec::new();
        let labels = rows
            .iter()
            .map(|&r| {
                let l = all_labels[r];
                *map.entry(l).or_insert_with(|| {
                    label_values.push(l);
                    label_values.len() - 1
                })
            })
            .collect();
        Ok(ImageLabeledDataset {
            view: View {
                table,
                rows: Arc::new(rows),
            },
            labels: Arc::new(labels),
            label_values: Arc::new(label_values),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.view.rows.len()
    }

    /// Whether there are no images (never, for a dataset that was built).
    pub fn is_empty(&self) -> bool {
        self.view.rows.is_empty()
    }

    /// Label of every item, remapped to `0..n_labels()`.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Number of distinct labels.
    pub fn n_labels(&self) -> usize {
        self.label_values.len()
    }

    /// The label as written in the CSV for a remapped label.
    pub fn original_label(&self, label: usize) -> Option<i64> {
        self.label_values.get(label).copied()
    }

    /// Category of every item, when the CSV has the column.
    pub fn categories(&self) -> Option<Vec<String>> {
        self.view.column(&self.view.table.categories)
    }

    /// Row of item `i` in the CSV (0-based; the file line is `row + 2`), `None` past the end.
    pub fn row(&self, i: usize) -> Option<usize> {
        self.view.rows.get(i).copied()
    }

    /// The whole checked table.
    pub fn table(&self) -> &Arc<SampleTable> {
        &self.view.table
    }
}

impl ImageSource for ImageLabeledDataset {
    fn len(&self) -> usize {
        self.view.rows.len()
    }
    fn image_path(&self, i: usize) -> PathBuf {
        self.view.path(i)
    }
    fn bbox(&self, i: usize) -> Option<BBox> {
        self.view.bbox(i)
    }
}

/// Labelled queries and galleries for validation (OML's `ImageQueryGalleryLabeledDataset`): the
/// validation rows of a CSV, in file order.
#[derive(Debug, Clone)]
pub struct ImageQueryGalleryLabeledDataset {
    view: View,
}

impl ImageQueryGalleryLabeledDataset {
    /// The validation rows of an OML CSV (all rows when it has no train rows).
    pub fn from_csv(csv: impl AsRef<Path>, dataset_root: Option<&Path>) -> Result<Self> {
        Self::from_table(read_table(csv.as_ref(), dataset_root, true)?)
    }

    /// The validation rows of a checked table.
    pub fn from_table(table: Arc<SampleTable>) -> Result<Self> {
        if table.labels.is_none() {
            return Err(Error::Msg(format!(
                "{}: a labelled query/gallery dataset needs the column 'label'",
                table.csv_path.display()
            )));
        }
        let rows = table.rows_of(Split::Validation);
        if rows.is_empty() {
            return Err(Error::Msg(format!(
                "{}: no rows with split = validation; validation needs query and gallery rows",
                table.csv_path.display()
            )));
        }
        Ok(ImageQueryGalleryLabeledDataset {
            view: View {
                table,
                rows: Arc::new(rows),
            },
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.view.rows.len()
    }

    /// Whether there are no images (never, for a dataset that was built).
    pub fn is_empty(&self) -> bool {
        self.view.rows.is_empty()
    }

    /// Labels as written in the CSV.
    pub fn labels(&self) -> Vec<i64> {
        self.view
            .column(&self.view.table.labels)
            .unwrap_or_default()
    }

    /// `is_query` of every item.
    pub fn is_query(&self) -> Vec<bool> {
        self.view
            .rows
            .iter()
            .map(|&r| self.view.table.is_query[r])
            .collect()
    }

    /// `is_gallery` of every item.
    pub fn is_gallery(&self) -> Vec<bool> {
        self.view
            .rows
            .iter()
            .map(|&r| self.view.table.is_gallery[r])
            .collect()
    }

    /// Indices (into this dataset) of the queries.
    pub fn query_ids(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.view.table.is_query[self.view.rows[i]])
            .collect()
    }

    /// Indices (into this dataset) of the gallery items.
    pub fn gallery_ids(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.view.table.is_gallery[self.view.rows[i]])
            .collect()
    }

    /// Category of every item, when the CSV has the column.
    pub fn categories(&self) -> Option<Vec<String>> {
        self.view.column(&self.view.table.categories)
    }

    /// Sequence id of every item, when the CSV has the column.
    pub fn sequences(&self) -> Option<Vec<String>> {
        self.view.column(&self.view.table.sequences)
    }

    /// Row of item `i` in the CSV (0-based; the file line is `row + 2`), `None` past the end.
    pub fn row(&self, i: usize) -> Option<usize> {
        self.view.rows.get(i).copied()
    }

    /// The whole checked table.
    pub fn table(&self) -> &Arc<SampleTable> {
        &self.view.table
    }
}

impl ImageSource for ImageQueryGalleryLabeledDataset {
    fn len(&self) -> usize {
        self.view.rows.len()
    }
    fn image_path(&self, i: usize) -> PathBuf {
        self.view.path(i)
    }
    fn bbox(&self, i: usize) -> Option<BBox> {
        self.view.bbox(i)
    }
}

/// Queries and galleries without labels, for prediction (OML's `ImageQueryGalleryDataset`): every
/// row of a CSV with at least `path, is_query, is_gallery`.
#[derive(Debug, Clone)]
pub struct ImageQueryGalleryDataset {
    view: View,
}

impl ImageQueryGalleryDataset {
    /// Every row of a CSV with the columns `path, is_query, is_gallery` (labels not needed).
    pub fn from_csv(csv: impl AsRef<Path>, dataset_root: Option<&Path>) -> Result<Self> {
        let table = read_table(csv.as_ref(), dataset_root, false)?;
        let rows = (0..table.len()).collect();
        Ok(ImageQueryGalleryDataset {
            view: View {
                table,
                rows: Arc::new(rows),
            },
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.view.rows.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.view.rows.is_empty()
    }

    /// `is_query` of every item.
    pub fn is_query(&self) -> Vec<bool> {
        self.view.table.is_query.clone()
    }

    /// `is_gallery` of every item.
    pub fn is_gallery(&self) -> Vec<bool> {
        self.view.table.is_gallery.clone()
    }

    /// The whole checked table.
    pub fn table(&self) -> &Arc<SampleTable> {
        &self.view.table
    }
}

impl ImageSource for ImageQueryGalleryDataset {
    fn len(&self) -> usize {
        self.view.rows.len()
    }
    fn image_path(&self, i: usize) -> PathBuf {
        self.view.path(i)
    }
    fn bbox(&self, i: usize) -> Option<BBox> {
        self.view.bbox(i)
    }
}
