//! Integration tests of the data layer: CSV checks (every malformed case of OML's dataframe tests
//! plus ours), datasets, samplers, the loader, transforms against Pillow, and the glyph dataset.

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oml::data::{
    CheckOptions, GlyphsConfig, ImageLabeledDataset, ImageLoader, ImageQueryGalleryDataset,
    ImageQueryGalleryLabeledDataset, ImageSource, LoaderConfig, SampleTable, Severity, Transform,
    check_csv, generate_glyphs,
};
use oml::samplers::{BalanceSampler, BatchSampler, CategoryBalanceSampler, label_to_category};

/// A temp folder with small PNGs `img/0.png .. img/9.png` and a CSV written from `text`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("img")).expect("mkdir");
        for i in 0..10u8 {
            let img = image::RgbImage::from_pixel(20, 16, image::Rgb([i * 20, 100, 200]));
            img.save(dir.path().join(format!("img/{i}.png")))
                .expect("png");
        }
        Fixture { dir }
    }

    fn csv(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("df.csv");
        std::fs::write(&p, text).expect("write csv");
        p
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

const GOOD: &str = "label,path,split,is_query,is_gallery
0,img/0.png,train,,
0,img/1.png,train,,
1,img/2.png,train,,
1,img/3.png,train,,
2,img/4.png,validation,True,True
2,img/5.png,validation,True,True
3,img/6.png,validation,1,1
3,img/7.png,validation,0,1
";

/// Errors of a CSV as `line N: column C: ...` strings.
fn errors(fx: &Fixture, text: &str) -> Vec<String> {
    let path = fx.csv(text);
    let report = check_csv(&path, &CheckOptions::default()).expect("readable CSV");
    report.errors().map(|p| p.to_string()).collect()
}

fn assert_error(fx: &Fixture, text: &str, expected: &[&str]) {
    let errs = errors(fx, text);
    assert!(!errs.is_empty(), "no error for:\n{text}");
    for e in expected {
        assert!(
            errs.iter().any(|x| x.contains(e)),
            "expected '{e}' in {errs:#?}"
        );
    }
}

#[test]
fn a_good_csv_passes_with_its_summary() {
    let fx = Fixture::new();
    let report = check_csv(&fx.csv(GOOD), &CheckOptions::default()).expect("read");
    assert!(report.is_ok(), "{:?}", report.problems);
    let s = &report.summary;
    assert_eq!(
        (s.rows, s.labels, s.train_rows, s.validation_rows),
        (8, 4, 4, 4)
    );
    assert_eq!(
        (s.queries, s.galleries, s.train_labels, s.validation_labels),
        (3, 4, 2, 2)
    );
    assert_eq!((s.categories, s.rows_with_boxes), (None, 0));
}

#[test]
fn required_columns_are_named_on_line_1() {
    let fx = Fixture::new();
    for col in ["label", "path", "split", "is_query", "is_gallery"] {
        let keep: Vec<usize> = GOOD
            .lines()
            .next()
            .expect("header")
            .split(',')
            .enumerate()
            .filter(|(_, c)| *c != col)
            .map(|(i, _)| i)
            .collect();
        let text: String = GOOD
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                keep.iter().map(|&i| f[i]).collect::<Vec<_>>().join(",") + "\n"
            })
            .collect();
        assert_error(
            &fx,
            &text,
            &[&format!("line 1: column {col}: required column is missing")],
        );
    }
}

#[test]
fn every_malformed_row_is_reported_in_one_pass() {
    let fx = Fixture::new();
    let text = "label,path,split,is_query,is_gallery
a,img/0.png,train,,
0,img/1.png,test,,
1,img/2.png,train,True,
1,,train,,
2,img/4.png,validation,maybe,True
2,img/5.png,validation,True,
2.5,img/6.png,validation,True,True
3,img/missing.png,validation,False,True
";
    assert_error(
        &fx,
        text,
        &[
            "line 2: column label: 'a' is not an integer label",
            "line 3: column split: 'test' is not a split",
            "line 4: column is_query: 'True' on a train row",
            "line 5: column path: empty path",
            "line 6: column is_query: 'maybe' on a validation row",
            "line 7: column is_gallery: empty value on a validation row",
            "line 8: column label: '2.5' is not an integer label",
            "line 9: column path: image file img/missing.png does not exist",
        ],
    );
}

#[test]
fn validation_needs_a_query_and_a_gallery_and_query_labels_in_the_gallery() {
    let fx = Fixture::new();
    let no_query = "label,path,split,is_query,is_gallery
0,img/0.png,validation,False,True
0,img/1.png,validation,False,True
";
    assert_error(
        &fx,
        no_query,
        &["column is_query: no validation row has it true"],
    );
    let no_gallery = "label,path,split,is_query,is_gallery
0,img/0.png,validation,True,False
0,img/1.png,validation,True,False
";
    assert_error(
        &fx,
        no_gallery,
        &["column is_gallery: no validation row has it true"],
    );
    let missing_label = "label,path,split,is_query,is_gallery
0,img/0.png,validation,True,True
0,img/1.png,validation,True,True
5,img/2.png,validation,True,False
";
    assert_error(
        &fx,
        missing_label,
        &["line 4: column label: query label 5 is not among the gallery labels"],
    );
}

#[test]
fn bounding_boxes_all_or_nothing_and_ordered() {
    let fx = Fixture::new();
    let three = "label,path,split,is_query,is_gallery,x_1,x_2,y_1
0,img/0.png,train,,,1,2,3
0,img/1.png,train,,,1,2,3
";
    assert_error(
        &fx,
        three,
        &["line 1: column y_2: bounding-box column is missing"],
    );
    let text = "label,path,split,is_query,is_gallery,x_1,x_2,y_1,y_2
0,img/0.png,train,,,,,,
0,img/1.png,train,,,1,5,2,
1,img/2.png,train,,,5,5,0,3
1,img/3.png,train,,,-1,5,0,3
2,img/4.png,validation,True,True,0,4,6,2
2,img/5.png,validation,True,True,0.0,4.0,1.0,2.0
2,img/6.png,validation,True,True,a,4,1,2
";
    assert_error(
        &fx,
        text,
        &[
            "line 3: column y_2: empty while other box columns are filled",
            "line 4: column x_2: x_2 = 5 is not greater than x_1 = 5",
            "line 5: column x_1: '-1' is not a box coordinate",
            "line 6: column y_2: y_2 = 2 is not greater than y_1 = 6",
            "line 8: column x_1: 'a' is not a box coordinate",
        ],
    );
    let errs = errors(&fx, text);
    assert!(
        !errs.iter().any(|e| e.starts_with("line 7")),
        "pandas floats are fine: {errs:?}"
    );
    assert!(
        !errs.iter().any(|e| e.starts_with("line 2")),
        "an empty box is fine: {errs:?}"
    );
}

#[test]
fn empty_optional_values_are_warnings_and_rows_need_a_role() {
    let fx = Fixture::new();
    let text = "label,path,split,is_query,is_gallery,category,sequence
0,img/0.png,validation,True,True,shoes,s1
0,img/1.png,validation,True,True,,s2
1,img/2.png,validation,True,True,bags,
1,img/3.png,validation,True,True,bags,s3
";
    let report = check_csv(&fx.csv(text), &CheckOptions::default()).expect("read");
    assert!(report.is_ok(), "{:?}", report.problems);
    let warnings: Vec<String> = report.warnings().map(|p| p.to_string()).collect();
    for w in [
        "line 3: column category: warning: empty category",
        "line 4: column sequence: warning: empty sequence",
    ] {
        assert!(
            warnings.iter().any(|x| x.starts_with(w)),
            "expected '{w}' in {warnings:#?}"
        );
    }
    let neither = "label,path,split,is_query,is_gallery
0,img/0.png,validation,True,True
0,img/1.png,validation,0,False
";
    assert_error(
        &fx,
        neither,
        &["line 3: column is_query: validation row is neither a query nor a gallery item"],
    );
}

#[test]
fn warnings_for_queries_without_positives_and_labels_in_several_categories() {
    let fx = Fixture::new();
    let text = "label,path,split,is_query,is_gallery,category,sequence
0,img/0.png,validation,True,True,a,s1
0,img/1.png,validation,True,True,a,s1
1,img/2.png,validation,True,True,b,s2
1,img/3.png,validation,True,True,c,s3
2,img/4.png,validation,True,True,c,s4
2,img/5.png,validation,False,True,c,s5
";
    let path = fx.csv(text);
    let report = check_csv(&path, &CheckOptions::default()).expect("read");
    assert!(report.is_ok(), "warnings only: {:?}", report.problems);
    let warnings: Vec<String> = report.warnings().map(|p| p.to_string()).collect();
    // Lines 2 and 3 share sequence s1: each has no positive left.
    for w in [
        "line 2: column label: warning: query of label 0 has no positive",
        "line 3: column label: warning: query of label 0 has no positive",
        "line 5: column category: warning: label 1 has category 'c' here but 'b' on line 4",
    ] {
        assert!(
            warnings.iter().any(|x| x.starts_with(w)),
            "expected '{w}' in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert_eq!(report.summary.queries_without_positives, 2);
    let strict = CheckOptions {
        strict: true,
        ..CheckOptions::default()
    };
    let report = check_csv(&path, &strict).expect("read");
    assert!(!report.is_ok());
    assert_eq!(report.errors().count(), 3);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.severity == Severity::Warning)
    );
}

#[test]
fn unreadable_files_are_clear_errors() {
    let fx = Fixture::new();
    let opts = CheckOptions::default();
    let missing = check_csv(&fx.root().join("nope.csv"), &opts)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.csv"), "{missing}");
    let empty = check_csv(&fx.csv(""), &opts).unwrap_err().to_string();
    assert!(empty.contains("empty"), "{empty}");
    let header = check_csv(&fx.csv("label,path,split,is_query,is_gallery\n"), &opts)
        .unwrap_err()
        .to_string();
    assert!(header.contains("no rows"), "{header}");
    let dir = check_csv(fx.root(), &opts).unwrap_err().to_string();
    assert!(dir.contains("folder"), "{dir}");
    // A PNG is not a CSV: either unreadable or missing every column, never a panic.
    let png = fx.root().join("img/0.png");
    match check_csv(&png, &opts) {
        Err(e) => assert!(e.to_string().contains("0.png"), "{e}"),
        Ok(report) => assert!(!report.is_ok()),
    }
    // Ragged lines and stray quotes.
    for text in [
        "label,path,split,is_query,is_gallery\n0,img/0.png,train,,,,,,\n",
        "label,path,split,is_query,is_gallery\n0,\"img/0.png,train,,\n",
        "label,path\n\u{0}\u{1}\u{2},\n",
    ] {
        match check_csv(&fx.csv(text), &opts) {
            Err(e) => assert!(e.to_string().contains("df.csv"), "{e}"),
            Ok(report) => assert!(!report.is_ok(), "{text}"),
        }
    }
}

#[test]
fn from_csv_fails_with_every_problem() {
    let fx = Fixture::new();
    let text = "label,path,split,is_query,is_gallery
x,img/0.png,train,,
0,img/1.png,nope,,
";
    let e = SampleTable::from_csv(fx.csv(text), &CheckOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2 problem(s)") && e.contains("line 2") && e.contains("line 3"),
        "{e}"
    );
}

#[test]
fn datasets_read_the_csv_once_and_remap_labels() {
    let fx = Fixture::new();
    let text = "label,path,split,is_query,is_gallery,category,x_1,x_2,y_1,y_2
10,img/0.png,train,,,a,,,,
10,img/1.png,train,,,a,2,10,4,12
7,img/2.png,train,,,b,,,,
7,img/3.png,train,,,b,,,,
2,img/4.png,validation,True,True,a,,,,
2,img/5.png,validation,False,True,a,,,,
3,img/6.png,validation,True,True,b,,,,
3,img/7.png,validation,True,True,b,,,,
";
    let csv = fx.csv(text);
    let train = ImageLabeledDataset::from_csv(&csv, None).expect("train");
    assert_eq!(train.len(), 4);
    assert_eq!(train.labels(), &[0, 0, 1, 1]);
    assert_eq!(
        (train.original_label(0), train.original_label(1)),
        (Some(10), Some(7))
    );
    assert_eq!(
        train.categories().expect("categories"),
        vec!["a", "a", "b", "b"]
    );
    let cropped = train.load_image(1).expect("image");
    assert_eq!(cropped.dimensions(), (8, 8));
    assert_eq!(train.load_image(0).expect("image").dimensions(), (20, 16));
    let clone = train.clone();
    assert!(
        Arc::ptr_eq(clone.table(), train.table()),
        "clones share the table"
    );

    let val = ImageQueryGalleryLabeledDataset::from_csv(&csv, None).expect("val");
    assert_eq!(val.labels(), vec![2, 2, 3, 3]);
    assert_eq!(val.query_ids(), vec![0, 2, 3]);
    assert_eq!(val.gallery_ids(), vec![0, 1, 2, 3]);
    assert_eq!(val.row(0), Some(4));
    assert_eq!(val.row(val.len()), None);
    assert!(val.image_path(0).ends_with("img/4.png"));

    let predict = fx.root().join("predict.csv");
    std::fs::write(
        &predict,
        "path,is_query,is_gallery\nimg/0.png,True,False\nimg/1.png,False,True\n",
    )
    .expect("write");
    let unlabeled = ImageQueryGalleryDataset::from_csv(&predict, None).expect("predict");
    assert_eq!(unlabeled.is_query(), vec![true, false]);
    assert_eq!(unlabeled.len(), 2);
}

fn glyphs(max_labels: usize, size: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GlyphsConfig {
        size,
        max_labels: Some(max_labels),
        ..GlyphsConfig::default()
    };
    let summary = generate_glyphs(dir.path(), &config).expect("glyphs (needs the DejaVu fonts)");
    assert_eq!(summary.labels, max_labels);
    let csv = summary.csv.clone();
    (dir, csv)
}

#[test]
fn glyph_subset_is_valid_class_disjoint_and_deterministic() {
    let (dir, csv) = glyphs(60, 32);
    let report = check_csv(&csv, &CheckOptions::default()).expect("read");
    assert!(report.is_ok(), "{:?}", report.problems);
    let s = &report.summary;
    assert_eq!(s.labels, 60);
    assert_eq!((s.train_labels, s.validation_labels), (30, 30));
    assert!(
        s.categories.expect("category column") >= 3,
        "several scripts: {s:?}"
    );
    assert_eq!(s.queries_without_positives, 0);
    let table = report.table();
    let labels = table.labels.as_ref().expect("labels");
    let train: std::collections::HashSet<i64> = table
        .rows_of(oml::data::Split::Train)
        .iter()
        .map(|&i| labels[i])
        .collect();
    let val: std::collections::HashSet<i64> = table
        .rows_of(oml::data::Split::Validation)
        .iter()
        .map(|&i| labels[i])
        .collect();
    assert!(train.is_disjoint(&val));
    let per_label = (0..60).map(|l| labels.iter().filter(|&&x| x == l).count());
    assert!(per_label.clone().all(|n| (4..=21).contains(&n)));
    let img = oml::data::load_rgb(&table.resolved_path(0)).expect("png");
    assert_eq!(img.dimensions(), (32, 32));
    // Black ink on white: both present.
    assert!(img.pixels().any(|p| p.0[0] < 64) && img.pixels().any(|p| p.0[0] == 255));

    let (_dir2, csv2) = glyphs(60, 32);
    let a = std::fs::read_to_string(&csv).expect("csv");
    let b = std::fs::read_to_string(&csv2).expect("csv");
    assert_eq!(a, b, "same seed, same dataset");
    drop(dir);
}

#[test]
fn sampler_and_loader_make_deterministic_batches() {
    let (dir, csv) = glyphs(24, 32);
    let train = ImageLabeledDataset::from_csv(&csv, None).expect("train");
    let sampler = BalanceSampler::new(train.labels(), 4, 3)
        .expect("sampler")
        .with_seed(5);
    assert_eq!(sampler.len(), 12 / 4);
    let batches = sampler.batches(0);
    let transform = Transform::preset("augs_hypvit_torch", 24).expect("preset");
    let config = LoaderConfig {
        cache: true,
        ..LoaderConfig::default()
    };
    let loader = ImageLoader::new(Arc::new(train.clone()), transform.clone(), config.clone())
        .expect("loader");
    let first: Vec<_> = loader
        .iter(batches.clone(), 0)
        .collect::<oml::Result<_>>()
        .expect("batches");
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].images.dims(), &[12, 3, 24, 24]);
    assert_eq!(first[0].indices, batches[0]);
    assert!(loader.cached() > 0);
    let loader2 = ImageLoader::new(
        Arc::new(train.clone()),
        transform,
        LoaderConfig {
            prefetch: 0,
            ..config
        },
    )
    .expect("loader");
    let second: Vec<_> = loader2
        .iter(batches, 0)
        .collect::<oml::Result<_>>()
        .expect("batches");
    for (a, b) in first.iter().zip(&second) {
        let a: Vec<f32> = a
            .images
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("vec");
        let b: Vec<f32> = b
            .images
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("vec");
        assert_eq!(
            a, b,
            "same seed, same augmented batch, with or without prefetch"
        );
    }
    let cats = train.categories().expect("categories");
    let l2c = label_to_category(train.labels(), &cats);
    let n_cat = l2c.values().collect::<std::collections::HashSet<_>>().len();
    assert!(n_cat >= 1);
    let s =
        CategoryBalanceSampler::new(train.labels(), &l2c, 1, 2, 2, true, true).expect("sampler");
    assert!(s.batches(0).iter().all(|b| b.len() == 4));
    drop(dir);
}

#[test]
fn missing_image_in_a_batch_is_an_error_naming_it() {
    let fx = Fixture::new();
    let csv = fx.csv(GOOD);
    let train = ImageLabeledDataset::from_csv(&csv, None).expect("train");
    std::fs::remove_file(fx.root().join("img/1.png")).expect("rm");
    let loader = ImageLoader::new(
        Arc::new(train),
        Transform::preset("norm_resize_torch", 16).expect("preset"),
        LoaderConfig::default(),
    )
    .expect("loader");
    let results: Vec<_> = loader.iter(vec![vec![0, 1], vec![2, 3]], 0).collect();
    let err = results[0].as_ref().map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("img/1.png"), "{err}");
}

/// Bicubic resizing against Pillow's `Image.resize(..., BICUBIC)` (what torchvision uses on PIL
/// images): fixture made by `tests/golden/make_resize_fixture.py`. Mean absolute difference at most
/// one intensity level, and no pixel off by more than a few levels.
#[test]
fn bicubic_resize_matches_pillow_within_one_level_on_average() {
    use base64::Engine;
    use oml::data::{Interpolation, Op};
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text =
        std::fs::read_to_string(repo.join("tests/golden/resize_pillow.json")).expect("fixture");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("json");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 9);
    for case in cases {
        let input =
            oml::data::load_rgb(&repo.join(case["input"].as_str().expect("input"))).expect("png");
        let (w, h) = (
            case["width"].as_u64().expect("w") as u32,
            case["height"].as_u64().expect("h") as u32,
        );
        let expected = base64::engine::general_purpose::STANDARD
            .decode(case["pixels_b64"].as_str().expect("b64"))
            .expect("base64");
        let t = Transform {
            name: "resize".into(),
            ops: vec![Op::Resize {
                height: h,
                width: w,
                interpolation: Interpolation::Bicubic,
            }],
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let ours = t.apply_image(&input, &mut rng);
        assert_eq!(ours.dimensions(), (w, h));
        let diffs: Vec<i32> = ours
            .as_raw()
            .iter()
            .zip(&expected)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let max = diffs.iter().copied().max().unwrap_or(0);
        eprintln!(
            "{} -> {w}x{h}: mean |diff| {mean:.3}, max {max}",
            case["input"]
        );
        assert!(
            mean <= 1.0,
            "{} -> {w}x{h}: mean |diff| {mean}",
            case["input"]
        );
        assert!(max <= 32, "{} -> {w}x{h}: max |diff| {max}", case["input"]);
    }
}

/// OML's `tests/test_oml/test_utils/test_dataframe_format.py`, case by case, on a mock frame like
/// OML's mock dataset (train rows, validation rows, boxes on every row). Each mutation must give at
/// least one error with a line and a column; the valid frames must pass.
#[test]
fn oml_dataframe_format_test_cases() {
    let fx = Fixture::new();
    let header = [
        "label",
        "path",
        "split",
        "is_query",
        "is_gallery",
        "x_1",
        "x_2",
        "y_1",
        "y_2",
    ];
    let mock: Vec<Vec<String>> = (0..10)
        .map(|i| {
            let val = i >= 4;
            let flag = |v: bool| {
                if val {
                    if v { "True" } else { "False" }
                } else {
                    ""
                }
                .to_owned()
            };
            vec![
                (i / 2).to_string(),
                format!("img/{i}.png"),
                if val { "validation" } else { "train" }.to_owned(),
                flag(true),
                flag(i != 5),
                "1".into(),
                "15".into(),
                "2".into(),
                "12".into(),
            ]
        })
        .collect();
    let render = |cols: &[&str], rows: &[Vec<String>]| -> String {
        let keep: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| cols.contains(h))
            .map(|(i, _)| i)
            .collect();
        let mut text = keep
            .iter()
            .map(|&i| header[i])
            .collect::<Vec<_>>()
            .join(",")
            + "\n";
        for r in rows {
            text.push_str(
                &(keep
                    .iter()
                    .map(|&i| r[i].clone())
                    .collect::<Vec<_>>()
                    .join(",")
                    + "\n"),
            );
        }
        text
    };
    let all: Vec<&str> = header.to_vec();
    let no_box: Vec<&str> = header[..5].to_vec();
    let ok = |text: String, what: &str| {
        let report = check_csv(&fx.csv(&text), &CheckOptions::default()).expect("read");
        assert!(report.is_ok(), "{what}: {:?}", report.problems);
    };
    let bad = |text: String, what: &str| {
        let errs = errors(&fx, &text);
        assert!(!errs.is_empty(), "{what}: no error");
        assert!(
            errs.iter().all(|e| e.contains("column ")),
            "{what}: {errs:?}"
        );
    };
    // test_mock_df_is_valid, test_independent_splits
    ok(render(&all, &mock), "mock");
    ok(render(&no_box, &mock), "mock without boxes");
    ok(render(&all, &mock[..4]), "train only");
    ok(render(&all, &mock[4..]), "validation only");
    // test_no_obligatory_cols
    for col in ["label", "split", "is_query", "is_gallery"] {
        let cols: Vec<&str> = no_box.iter().copied().filter(|c| *c != col).collect();
        bad(render(&cols, &mock), &format!("without {col}"));
    }
    let set = |row: usize, col: usize, v: &str| {
        let mut rows = mock.clone();
        rows[row][col] = v.to_owned();
        rows
    };
    // test_wrong_splits
    bad(render(&all, &set(0, 2, "8c0e6a4e-uuid")), "wrong split");
    // test_train_qg_not_none
    bad(render(&all, &set(0, 3, "1")), "train is_query = 1");
    bad(render(&all, &set(0, 4, "2")), "train is_gallery = 2");
    // test_val_qg_only_bool
    bad(render(&all, &set(4, 3, "asd")), "val is_query = asd");
    bad(render(&all, &set(4, 4, "123")), "val is_gallery = 123");
    bad(render(&all, &set(4, 4, "")), "val is_gallery = None");
    // test_q_without_g: a query-only row (row 5) gets a label no gallery has.
    bad(render(&all, &set(5, 0, "99")), "query without gallery");
    // test_images_not_found
    let report = check_csv(
        &fx.csv(&render(&all, &mock)),
        &CheckOptions {
            dataset_root: Some(fx.root().join("0b7c-uuid")),
            ..CheckOptions::default()
        },
    )
    .expect("read");
    assert_eq!(
        report.errors().count(),
        10,
        "every image missing under another root"
    );
    // test_not_enough_bbox_columns
    for col in ["x_1", "x_2", "y_1", "y_2"] {
        let cols: Vec<&str> = all.iter().copied().filter(|c| *c != col).collect();
        bad(render(&cols, &mock), &format!("without {col}"));
    }
    // test_all_coords_none
    let mut rows = mock.clone();
    rows.iter_mut()
        .for_each(|r| r[5..].iter_mut().for_each(|v| v.clear()));
    ok(render(&all, &rows), "all boxes empty");
    // test_all_coords_not_none
    for (col, name) in header.iter().enumerate().skip(5) {
        let mut rows = mock.clone();
        rows.iter_mut().for_each(|r| r[col].clear());
        bad(render(&all, &rows), &format!("{name} empty on every row"));
    }
    // test_not_empty_bbox
    bad(render(&all, &set(0, 6, "1")), "x_1 = x_2");
    bad(render(&all, &set(1, 7, "13")), "y_1 = y_2 + 1");
    // test_not_negative_coords
    for (col, name) in header.iter().enumerate().skip(5) {
        bad(
            render(&all, &set(col - 5, col, "-1")),
            &format!("{name} = -1"),
        );
    }
}

#[test]
fn invalid_transform_parameters_are_errors_not_panics() {
    use oml::data::{Interpolation, Op};
    let fx = Fixture::new();
    let train = ImageLabeledDataset::from_csv(fx.csv(GOOD), None).expect("train");
    let bad_ops = [
        Op::LongestSidePad {
            size: 0,
            fill: [255; 3],
            interpolation: Interpolation::Bilinear,
        },
        Op::RandomResizedCrop {
            height: 8,
            width: 8,
            scale: (0.9, 0.1),
            ratio: (0.75, 1.33),
            interpolation: Interpolation::Bicubic,
        },
        Op::RandomResizedCrop {
            height: 8,
            width: 8,
            scale: (0.2, 1.0),
            ratio: (0.0, 1.33),
            interpolation: Interpolation::Bicubic,
        },
        Op::ColorJitter {
            brightness: f32::NAN,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            p: 1.0,
        },
        Op::HorizontalFlip { p: 2.0 },
    ];
    for op in bad_ops {
        let t = Transform {
            name: "bad".into(),
            ops: vec![op.clone()],
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let err = ImageLoader::new(Arc::new(train.clone()), t.clone(), LoaderConfig::default());
        assert!(err.is_err(), "{op:?}");
        // Applied directly (never validated) it must not panic either.
        let img = image::RgbImage::from_pixel(20, 16, image::Rgb([10, 20, 30]));
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let _ = t.apply(&img, &mut rng);
    }
}

#[test]
fn repeated_columns_and_unreadable_labels_give_one_error_each() {
    let fx = Fixture::new();
    let text = "label,path,split,is_query,is_gallery,label
0,img/0.png,validation,True,True,1
0,img/1.png,validation,True,True,1
";
    assert_error(
        &fx,
        text,
        &["line 1: column label: column appears more than once"],
    );
    let text = "label,path,split,is_query,is_gallery
x,img/0.png,validation,True,True
0,img/1.png,validation,True,True
0,img/2.png,validation,True,True
";
    let errs = errors(&fx, text);
    assert_eq!(
        errs.len(),
        1,
        "no follow-on error for the unreadable label: {errs:?}"
    );
}
