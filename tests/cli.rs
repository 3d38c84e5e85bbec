//! The `oml` binary: exit codes and outputs of check-data, convert and datasets.

use std::path::Path;
use std::process::{Command, Output};

fn oml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oml"))
        .args(args)
        .output()
        .expect("run oml")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn folder_dataset(root: &Path, labels: usize, per_label: usize) {
    for l in 0..labels {
        let dir = root.join(format!("class_{l}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for k in 0..per_label {
            let img =
                image::RgbImage::from_pixel(8, 8, image::Rgb([(l * 30) as u8, (k * 40) as u8, 0]));
            img.save(dir.join(format!("{k}.jpg"))).expect("jpg");
        }
    }
}

#[test]
fn convert_image_folder_then_check_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("photos");
    folder_dataset(&root, 6, 3);
    let csv = dir.path().join("df.csv");
    let out = oml(&[
        "convert",
        "image-folder",
        root.to_str().expect("utf8"),
        "--out",
        csv.to_str().expect("utf8"),
        "--val-labels-fraction",
        "0.5",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("18 rows"), "{stdout}");

    // Relative paths resolve against --dataset-root; without it against the CSV's folder (wrong here).
    let ok = oml(&[
        "check-data",
        csv.to_str().expect("utf8"),
        "--dataset-root",
        root.to_str().expect("utf8"),
    ]);
    let (stdout, stderr) = text(&ok);
    assert!(ok.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("validation         9 rows, 3 labels"),
        "{stdout}"
    );

    let bad = oml(&["check-data", csv.to_str().expect("utf8")]);
    let (_, stderr) = text(&bad);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr.contains("18 error(s)") && stderr.contains("line 2: column path"),
        "{stderr}"
    );

    let json = oml(&[
        "check-data",
        csv.to_str().expect("utf8"),
        "--json",
        "--no-files",
    ]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["ok"], true);
    assert_eq!(value["summary"]["rows"], 18);
    assert_eq!(value["summary"]["queries"], 9);
}

#[test]
fn check_data_reports_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("bad.csv");
    std::fs::write(
        &csv,
        "label,path,split,is_query\nx,a.png,train,\n1,b.png,nope,\n",
    )
    .expect("write");
    let out = oml(&["check-data", csv.to_str().expect("utf8"), "--no-files"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    for expected in [
        "line 1: column is_gallery: required column is missing",
        "line 2: column label: 'x' is not an integer label",
        "line 3: column split: 'nope' is not a split",
    ] {
        assert!(
            stderr.contains(expected),
            "missing '{expected}' in:\n{stderr}"
        );
    }
    let json = oml(&[
        "check-data",
        csv.to_str().expect("utf8"),
        "--no-files",
        "--json",
    ]);
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["errors"].as_array().map(Vec::len), Some(3));
    assert_eq!(value["errors"][1]["line"], 2);
    assert_eq!(value["errors"][1]["column"], "label");

    let missing = oml(&["check-data", "/nonexistent/df.csv"]);
    let (_, stderr) = text(&missing);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr.starts_with("error: ") && stderr.contains("/nonexistent/df.csv"),
        "{stderr}"
    );
}

#[test]
fn glyphs_command_writes_a_checked_dataset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("glyphs");
    let run = oml(&[
        "datasets",
        "glyphs",
        "--out",
        out.to_str().expect("utf8"),
        "--max-labels",
        "10",
        "--size",
        "24",
    ]);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("of 10 labels (5 train, 5 validation"),
        "{stdout}"
    );
    let check = oml(&[
        "check-data",
        out.join("df.csv").to_str().expect("utf8"),
        "--strict",
    ]);
    assert!(check.status.success(), "{:?}", text(&check));

    let no_fonts = oml(&[
        "datasets",
        "glyphs",
        "--out",
        out.to_str().expect("utf8"),
        "--fonts",
        "/nonexistent",
    ]);
    let (_, stderr) = text(&no_fonts);
    assert_eq!(no_fonts.status.code(), Some(1));
    assert!(
        stderr.contains("/nonexistent") && stderr.contains("embedded"),
        "{stderr}"
    );
}
