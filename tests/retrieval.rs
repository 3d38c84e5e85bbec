//! Retrieval end to end: the retrieval grid's colours and layout, `oml evaluate`, bad inputs.

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use oml::data::ImageQueryGalleryLabeledDataset;
use oml::retrieval::{QueryGalleryInfo, RetrievalResults, SearchConfig};
use oml::viz::{GRID_BLUE, GRID_GRAY, GRID_GREEN, GRID_RED, retrieval_grid};

/// Six validation images (labels 0,0,0,1,1,1), one colour each, and a CSV.
fn dataset(dir: &Path) -> std::path::PathBuf {
    let mut csv = String::from("label,path,split,is_query,is_gallery,x_1,x_2,y_1,y_2\n");
    for i in 0..6u8 {
        let img = image::RgbImage::from_pixel(24, 20, image::Rgb([i * 40, 255 - i * 40, 128]));
        img.save(dir.join(format!("{i}.png"))).expect("png");
        let bbox = if i == 2 { "2,20,2,18" } else { ",,," };
        csv.push_str(&format!("{},{i}.png,validation,True,True,{bbox}\n", i / 3));
    }
    let path = dir.join("df.csv");
    std::fs::write(&path, csv).expect("csv");
    path
}

/// 1-d embeddings: item 0 is nearest to item 3 (another label), then to items 1 and 2.
fn embeddings() -> Tensor {
    Tensor::from_vec(vec![0.0f32, 0.5, 0.6, 0.2, 3.0, 3.1], (6, 1), &Device::Cpu).expect("tensor")
}

#[test]
fn grid_colours_follow_the_ground_truth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds = ImageQueryGalleryLabeledDataset::from_csv(dataset(dir.path()), None).expect("dataset");
    let info = QueryGalleryInfo::from_dataset(&ds);
    let rr = RetrievalResults::from_embeddings_with(&embeddings(), &info, &SearchConfig::default())
        .expect("rr");
    assert_eq!(
        rr.retrieved_ids(0).expect("query"),
        &[3, 1, 2, 4, 5],
        "nearest first, never itself"
    );
    assert_eq!(
        rr.hits(0).expect("query"),
        vec![false, true, true, false, false]
    );
    assert_eq!(rr.gt_ids(0).expect("query"), vec![1, 2]);
    let grid = retrieval_grid(&rr, &ds, &[0, 4], 3, 2, 16).expect("grid");
    assert_eq!(grid.rows.len(), 2);
    // Query, 3 results, 2 ground truths.
    assert_eq!(grid.rows[0].1.len(), 6);
    let img = grid.to_image();
    let expected = [
        GRID_BLUE, GRID_RED, GRID_GREEN, GRID_GREEN, GRID_GRAY, GRID_GRAY,
    ];
    for (col, colour) in expected.iter().enumerate() {
        let (x, y) = grid.tile_origin(0, col);
        assert_eq!(img.get_pixel(x + 1, y + 1).0, *colour, "row 0 tile {col}");
    }
    // Query 4 (label 1): nearest item 5 (hit), then 2 (miss, label 0).
    let (x, y) = grid.tile_origin(1, 1);
    assert_eq!(img.get_pixel(x + 1, y + 1).0, GRID_GREEN);
    let (x, y) = grid.tile_origin(1, 2);
    assert_eq!(img.get_pixel(x + 1, y + 1).0, GRID_RED);
    // Captions: the distance under each result, escaped HTML.
    let html = grid.to_html().expect("html");
    assert!(
        html.contains(">0.200<") && html.contains("data:image/png;base64,"),
        "distance caption"
    );
    assert!(
        grid.to_png()
            .expect("png")
            .starts_with(&[0x89, b'P', b'N', b'G'])
    );
    // Worst queries by cmc@1 come first.
    let worst = rr.worst_queries(oml::metrics::QueryMetric::Cmc(1), 6);
    assert_eq!(worst[0], 0, "query 0 misses at rank 1: {worst:?}");
}

fn oml(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oml"))
        .args(args)
        .output()
        .expect("run oml")
}

#[test]
fn evaluate_command_writes_metrics_results_and_grid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dataset(dir.path());
    let npy = dir.path().join("e.npy");
    embeddings().write_npy(&npy).expect("npy");
    let out = dir.path().join("metrics.json");
    let retrieved = dir.path().join("retrieved.json");
    let grid = dir.path().join("grid.png");
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let run = oml(&[
        "evaluate",
        "--embeddings",
        &p(&npy),
        "--data",
        &p(&csv),
        "--cmc",
        "1,2",
        "--precision",
        "2",
        "--map",
        "2",
        "--fmr",
        "0.5",
        "--out",
        &p(&out),
        "--top-n",
        "3",
        "--retrieved",
        &p(&retrieved),
        "--grid",
        &p(&grid),
        "--grid-queries",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("cmc@1") && stdout.contains("OVERALL"),
        "{stdout}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("metrics")).expect("json");
    // Queries 1, 2, 4, 5 find a same-label item first; 0 and 3 (nearest each other) do not.
    let cmc1 = metrics["OVERALL"]["cmc"]["1"].as_f64().expect("cmc@1");
    assert!((cmc1 - 4.0 / 6.0).abs() < 1e-9, "{metrics}");
    assert!(metrics["OVERALL"]["fnmr@fmr"]["0.5"].is_number());
    assert!(metrics["OVERALL"]["pcf"]["0.5"].is_number());
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&retrieved).expect("retrieved"))
            .expect("json");
    assert_eq!(rows[0]["query"], "0.png");
    assert_eq!(rows[0]["retrieved"][0], "3.png");
    assert_eq!(rows[0]["is_gt"][0], false);
    assert_eq!(rows[0]["n_gt"], 2);
    let png = image::open(&grid).expect("grid png");
    assert!(png.width() > 100 && png.height() > 40);
}

#[test]
fn evaluate_rejects_bad_embeddings_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dataset(dir.path());
    let p = |x: &Path| x.to_str().expect("utf8").to_owned();
    let cases: Vec<(Tensor, &str)> = vec![
        (
            Tensor::zeros((5, 1), candle_core::DType::F32, &Device::Cpu).expect("t"),
            "5 embeddings for 6 items",
        ),
        (
            Tensor::from_vec(
                vec![0.0f32, f32::NAN, 1.0, 2.0, 3.0, 4.0],
                (6, 1),
                &Device::Cpu,
            )
            .expect("t"),
            "NaN",
        ),
        (
            Tensor::zeros(6, candle_core::DType::F32, &Device::Cpu).expect("t"),
            "[N, D]",
        ),
    ];
    for (t, expected) in cases {
        let npy = dir.path().join("bad.npy");
        t.write_npy(&npy).expect("npy");
        let run = oml(&["evaluate", "--embeddings", &p(&npy), "--data", &p(&csv)]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected '{expected}' in {stderr}"
        );
    }
    let garbage = dir.path().join("garbage.npy");
    std::fs::write(&garbage, b"not a numpy file").expect("write");
    let run = oml(&["evaluate", "--embeddings", &p(&garbage), "--data", &p(&csv)]);
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("garbage.npy"));
}

#[test]
fn cosine_distance_is_one_minus_cosine_and_scale_free() {
    // Rows at angles 0, 30, 90 and 180 degrees, with different lengths.
    let rows = [
        [2.0f32, 0.0],
        [0.866 * 5.0, 0.5 * 5.0],
        [0.0, 0.3],
        [-1.0, 0.0],
    ];
    let e = Tensor::from_vec(rows.concat(), (4, 2), &Device::Cpu).expect("tensor");
    let info = QueryGalleryInfo {
        labels: Some(vec![0, 0, 1, 1]),
        is_query: vec![true, false, false, false],
        is_gallery: vec![false, true, true, true],
        categories: None,
        sequences: None,
    };
    let config = SearchConfig {
        distance: "cosine".parse().expect("distance"),
        ..SearchConfig::default()
    };
    let rr = RetrievalResults::from_embeddings_with(&e, &info, &config).expect("rr");
    assert_eq!(rr.retrieved_ids(0).expect("query"), &[0, 1, 2]);
    let expected = [1.0 - 0.866_f32, 1.0, 2.0];
    for (d, x) in rr.distances(0).expect("query").iter().zip(expected) {
        assert!(
            (d - x).abs() < 1e-3,
            "{:?}",
            rr.distances(0).expect("query")
        );
    }
    let fnmr = oml::metrics::fnmr::fnmr_at_fmr(&e, &info, &config, &[0.5]).expect("fnmr");
    assert_eq!((fnmr.positives, fnmr.negatives), (1, 2));
    assert!(fnmr.thresholds[0] >= 1.0 - 1e-6 && fnmr.thresholds[0] <= 1.5 + 1e-6);
}
