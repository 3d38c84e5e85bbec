//! Converters from common layouts to OML CSVs: a folder per label, and Fashion-MNIST's idx files.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::GrayImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use super::csv::write_csv;
use crate::{Error, Result};

/// What a converter wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertSummary {
    /// The CSV written.
    pub csv: PathBuf,
    /// Rows (images).
    pub rows: usize,
    /// Labels in the train split.
    pub train_labels: usize,
    /// Labels in the validation split.
    pub validation_labels: usize,
    /// Train rows.
    pub train_rows: usize,
    /// Validation rows.
    pub validation_rows: usize,
}

const HEADER: [&str; 5] = ["label", "path", "split", "is_query", "is_gallery"];

/// One row: label, path, validation or not.
type Row = (usize, String, bool);

fn write_rows(
    csv: &Path,
    rows: &[Row],
    extra: Option<(&str, Vec<String>)>,
) -> Result<ConvertSummary> {
    let mut columns: Vec<(&str, Vec<String>)> = vec![
        (HEADER[0], rows.iter().map(|r| r.0.to_string()).collect()),
        (HEADER[1], rows.iter().map(|r| r.1.clone()).collect()),
        (
            HEADER[2],
            rows.iter()
                .map(|r| if r.2 { "validation" } else { "train" }.to_owned())
                .collect(),
        ),
    ];
    let flags: Vec<String> = rows
        .iter()
        .map(|r| if r.2 { "True" } else { "" }.to_owned())
        .collect();
    columns.push((HEADER[3], flags.clone()));
    columns.push((HEADER[4], flags));
    if let Some(extra) = extra {
        columns.push(extra);
    }
    write_csv(csv, columns)?;
    let labels = |val: bool| {
        rows.iter()
            .filter(|r| r.2 == val)
            .map(|r| r.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    Ok(ConvertSummary {
        csv: csv.to_path_buf(),
        rows: rows.len(),
        train_labels: labels(false),
        validation_labels: labels(true),
        train_rows: rows.iter().filter(|r| !r.2).count(),
        validation_rows: rows.iter().filter(|r| r.2).count(),
    })
}

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "PNG", "JPG"];

/// Converts a folder with one sub-folder per label (`ROOT/<label>/<image>`) into an OML CSV with a
/// class-disjoint split: a `val_labels_fraction` of the labels (chosen with `seed`) go to validation,
/// 1-vs-rest (every validation image is query and gallery). Paths are written relative to `root`;
/// labels are numbered in the sorted order of the folder names, which are kept in an extra
/// `label_name` column.
pub fn convert_image_folder(
    root: &Path,
    csv: &Path,
    val_labels_fraction: f64,
    seed: u64,
) -> Result<ConvertSummary> {
    if !(0.0..=1.0).contains(&val_labels_fraction) {
        return Err(Error::param(
            "val_labels_fraction",
            val_labels_fraction,
            "a fraction in [0, 1]",
        ));
    }
    let read = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io("cannot read folder", dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let folders: Vec<PathBuf> = read(root)?.into_iter().filter(|p| p.is_dir()).collect();
    let mut classes: Vec<(String, Vec<String>)> = Vec::new();
    for folder in &folders {
        let name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let images: Vec<String> = read(folder)?
            .into_iter()
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e))
            })
            .filter_map(|p| {
                p.strip_prefix(root)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned())
            })
            .collect();
        if !images.is_empty() {
            classes.push((name, images));
        }
    }
    if classes.len() < 2 {
        return Err(Error::Format {
            path: root.to_path_buf(),
            message: format!(
                "found {} label folder(s) with PNG/JPEG images; expected ROOT/<label>/<image> with at least 2 labels",
                classes.len()
            ),
        });
    }
    let is_val = super::glyphs::split_labels(
        classes.len(),
        val_labels_fraction,
        &mut ChaCha8Rng::seed_from_u64(seed),
    );
    let mut rows = Vec::new();
    let mut names = Vec::new();
    for (label, (name, images)) in classes.iter().enumerate() {
        for path in images {
            rows.push((label, path.clone(), is_val[label]));
            names.push(name.clone());
        }
    }
    write_rows(csv, &rows, Some(("label_name", names)))
}

/// The Fashion-MNIST class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Reads an idx file (optionally gzipped): returns the dimensions and the `u8` data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |message: String| Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let raw = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("not a readable gzip file: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(
            "not an idx file of unsigned bytes (magic 0x0000_08NN expected)".to_owned(),
        ));
    }
    let n_dims = bytes[3] as usize;
    let header = 4 + 4 * n_dims;
    if n_dims == 0 || bytes.len() < header {
        return Err(bad("truncated idx header".to_owned()));
    }
    let dims: Vec<usize> = (0..n_dims)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match expected {
        Some(n) if bytes.len() - header == n => Ok((dims, bytes[header..].to_vec())),
        _ => Err(bad(format!(
            "idx data has {} bytes but the header says {:?}",
            bytes.len() - header,
            dims
        ))),
    }
}

/// Converts Fashion-MNIST's idx files in `dir` (as the Debian package `dataset-fashion-mnist`
/// installs them in `/usr/share/datasets/fashion-mnist`) into PNGs and an OML CSV under `out`:
/// the train file's images of classes 0-4 are the train split, the test file's images of classes
/// 5-9 the validation split (1-vs-rest), so validation identities are unseen in training.
/// `category` holds the class name.
pub fn convert_fashion_mnist(dir: &Path, out: &Path) -> Result<ConvertSummary> {
    let find = |stem: &str| -> Result<PathBuf> {
        for name in [format!("{stem}.gz"), stem.to_owned()] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(Error::Format {
            path: dir.join(stem),
            message: "missing Fashion-MNIST file; install the Debian package dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist) or download the four idx files".to_owned(),
        })
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (part, keep_val) in [("train", false), ("t10k", true)] {
        let images_path = find(&format!("{part}-images-idx3-ubyte"))?;
        let labels_path = find(&format!("{part}-labels-idx1-ubyte"))?;
        let (dims, pixels) = read_idx(&images_path)?;
        let (ldims, labels) = read_idx(&labels_path)?;
        if dims.len() != 3 || ldims.len() != 1 || dims[0] != ldims[0] {
            return Err(Error::Format {
                path: images_path,
                message: format!("images {dims:?} and labels {ldims:?} do not match"),
            });
        }
        let (h, w) = (dims[1], dims[2]);
        let folder = out.join("images").join(part);
        std::fs::create_dir_all(&folder)
            .map_err(|e| Error::io("cannot create folder", &folder, e))?;
        let chosen: Vec<usize> = (0..dims[0])
            .filter(|&i| (labels[i] >= 5) == keep_val && labels[i] < 10)
            .collect();
        chosen
            .par_iter()
            .map(|&i| {
                let img = GrayImage::from_raw(
                    w as u32,
                    h as u32,
                    pixels[i * h * w..(i + 1) * h * w].to_vec(),
                )
                .ok_or_else(|| Error::Msg("bad image size".to_owned()))?;
                let file = folder.join(format!("{i:05}.png"));
                img.save(&file).map_err(|e| Error::Image {
                    path: file.clone(),
                    message: format!("cannot write: {e}"),
                })
            })
            .collect::<Result<()>>()?;
        for i in chosen {
            let label = labels[i] as usize;
            rows.push((label, format!("images/{part}/{i:05}.png"), keep_val));
            names.push(FASHION_MNIST_CLASSES[label].to_owned());
        }
    }
    write_rows(&out.join("df.csv"), &rows, Some(("category", names)))
}
