//! Benchmark: decode + resize + normalise of 224 px batches from JPEGs, side by side with torch's
//! DataLoader (2 workers) over OML's dataset and `norm_resize_torch` (`benches/python_loader.py`,
//! run both with `benches/compare_loader.sh`).
//!
//! `cargo bench --bench loader -- DIR`: every `*.jpg` of DIR in batches of 32, one warm-up epoch,
//! then the median of 3 epochs, reported as images per second (no decode cache: every epoch
//! decodes every file, as torch does).

use std::sync::Arc;
use std::time::Instant;

use oml::data::{ImageLoader, ImageQueryGalleryDataset, LoaderConfig, Transform};

fn main() {
    let dir = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .expect("usage: cargo bench --bench loader -- DIR_WITH_JPEGS");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .jpg files in {dir}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = tmp.path().join("predict.csv");
    let mut text = String::from("path,is_query,is_gallery\n");
    for f in &files {
        text.push_str(&format!("{f},True,True\n"));
    }
    std::fs::write(&csv, text).expect("write csv");
    let dataset = ImageQueryGalleryDataset::from_csv(&csv, None).expect("dataset");
    let transform = Transform::preset("norm_resize_torch", 224).expect("preset");
    let loader =
        ImageLoader::new(Arc::new(dataset), transform, LoaderConfig::default()).expect("loader");
    let batches: Vec<Vec<usize>> = (0..files.len())
        .collect::<Vec<_>>()
        .chunks(32)
        .map(<[usize]>::to_vec)
        .collect();
    let mut rates = Vec::new();
    for epoch in 0..4 {
        let t = Instant::now();
        let mut n = 0;
        for batch in loader.iter(batches.clone(), epoch) {
            let batch = batch.expect("batch");
            assert_eq!(batch.images.dims()[1..], [3, 224, 224]);
            n += batch.indices.len();
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        if epoch > 0 {
            rates.push(rate);
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"loader\", \"images\": {}, \"threads\": {}, \"images_per_s\": {:.1}}}",
        files.len(),
        rayon::current_num_threads(),
        rates[1]
    );
}
