//! Benchmark: loading and checking a 100,000-row OML CSV, side by side with Python OML's
//! `check_retrieval_dataframe_format` (see `benches/compare_csv_check.sh`, which runs both on the
//! same files).
//!
//! `cargo bench --bench csv_check [-- DIR]`: uses `DIR/plain.csv` and `DIR/category.csv` (written by
//! `benches/python_csv_check.py`, images under `DIR/root`) when given, else writes the same files
//! itself in a temporary folder. Prints the median of 5 runs, with and without the image-exists
//! check (OML always does it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use oml::data::{CheckOptions, check_csv};

const ROWS: usize = 100_000;
const PER_LABEL: usize = 5;

/// The same file as `benches/python_csv_check.py`: label i / 5, half the labels train, the other
/// half validation 1-vs-rest, optional category `cat{label % 100}`.
fn write_csv(path: &Path, category: bool) {
    let mut out = String::from("label,path,split,is_query,is_gallery");
    out.push_str(if category { ",category\n" } else { "\n" });
    let half = ROWS / PER_LABEL / 2;
    for i in 0..ROWS {
        let label = i / PER_LABEL;
        if label < half {
            out.push_str(&format!("{label},images/{i}.jpg,train,,"));
        } else {
            out.push_str(&format!("{label},images/{i}.jpg,validation,True,True"));
        }
        if category {
            out.push_str(&format!(",cat{}", label % 100));
        }
        out.push('\n');
    }
    std::fs::write(path, out).expect("write csv");
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let arg: Option<PathBuf> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = arg.unwrap_or_else(|| {
        let dir = tmp.path().to_path_buf();
        write_csv(&dir.join("plain.csv"), false);
        write_csv(&dir.join("category.csv"), true);
        let images = dir.join("root/images");
        std::fs::create_dir_all(&images).expect("mkdir");
        for i in 0..ROWS {
            std::fs::write(images.join(format!("{i}.jpg")), b"").expect("touch");
        }
        dir
    });
    for name in ["plain.csv", "category.csv"] {
        let csv = dir.join(name);
        for check_files in [true, false] {
            let options = CheckOptions {
                dataset_root: Some(dir.join("root")),
                check_files,
                ..CheckOptions::default()
            };
            let ms = median_ms(5, || {
                let report = check_csv(&csv, &options).expect("readable");
                assert!(report.is_ok(), "{:?}", report.problems.first());
                assert_eq!(report.summary.rows, ROWS);
            });
            println!(
                "{{\"bench\": \"csv_check\", \"file\": \"{name}\", \"check_files\": {check_files}, \"median_ms\": {ms:.1}}}"
            );
        }
    }
}
