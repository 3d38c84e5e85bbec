//! Tests on real data that a fresh machine may not have; `.ci/run` installs it and runs them with
//! `--include-ignored`.
//!
//! - Fashion-MNIST: Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`),
//!   or the folder in `OML_FASHION_MNIST_DIR`.

use std::path::PathBuf;

use oml::data::{CheckOptions, check_csv, convert_fashion_mnist};

fn fashion_dir() -> PathBuf {
    std::env::var_os("OML_FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"))
}

#[test]
#[ignore = "needs Fashion-MNIST (apt-get install dataset-fashion-mnist)"]
fn fashion_mnist_converts_to_a_valid_class_disjoint_csv() {
    let out = tempfile::tempdir().expect("tempdir");
    let s = convert_fashion_mnist(&fashion_dir(), out.path()).expect("convert");
    // Train file: 6,000 images per class, classes 0-4; test file: 1,000 per class, classes 5-9.
    assert_eq!((s.train_rows, s.train_labels), (30_000, 5));
    assert_eq!((s.validation_rows, s.validation_labels), (5_000, 5));
    let report = check_csv(&s.csv, &CheckOptions::default()).expect("read");
    assert!(report.is_ok(), "{:?}", report.problems.first());
    assert_eq!(report.summary.queries, 5_000);
    assert_eq!(report.summary.categories, Some(5 + 5));
    let img = oml::data::load_rgb(&report.table().resolved_path(0)).expect("png");
    assert_eq!(img.dimensions(), (28, 28));
    assert!(
        img.pixels().any(|p| p.0[0] > 128),
        "a real image has bright pixels"
    );
}
