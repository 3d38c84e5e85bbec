//! The gallery index: exact and approximate search against the exact blocked search, OML's
//! exclusions after an over-fetch, add / save / load, bad input, crashes during a save, and the
//! command line (`oml index build|add|query`, `oml search`, `oml evaluate --index`).

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use oml::retrieval::{
    Distance, GalleryIndex, GalleryItems, IndexConfig, IndexDtype, IndexKind, QueryGalleryInfo,
    QueryItems, RetrievalResults, SearchConfig,
};
use rand::{Rng, SeedableRng};

fn oml(args: &[&str]) -> Output {
    oml_env(args, &[])
}

fn oml_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oml"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run oml")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn p(x: &Path) -> String {
    x.to_str().expect("utf8").to_owned()
}

/// `n` points around `centres` cluster centres in `dim` dimensions (fixed seed).
fn clustered(n: usize, dim: usize, centres: usize, seed: u64) -> (Tensor, Vec<i64>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let c: Vec<Vec<f32>> = (0..centres)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut values = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % centres;
        labels.push(k as i64);
        values.extend(c[k].iter().map(|v| v + rng.random_range(-0.3f32..0.3)));
    }
    (
        Tensor::from_vec(values, (n, dim), &Device::Cpu).expect("tensor"),
        labels,
    )
}

fn lists(rr: &RetrievalResults) -> Vec<Vec<usize>> {
    (0..rr.n_queries())
        .map(|q| rr.retrieved_ids(q).expect("query").to_vec())
        .collect()
}

fn exact(queries: &Tensor, gallery: &Tensor, k: usize, d: Distance) -> RetrievalResults {
    let cfg = SearchConfig {
        top_n: k,
        distance: d,
        ..SearchConfig::default()
    };
    RetrievalResults::from_embeddings_qg(queries, gallery, None, None, None, None, None, &cfg)
        .expect("exact")
}

#[test]
fn flat_is_the_exact_search_and_hnsw_finds_nearly_all_of_it() {
    let (g, _) = clustered(4000, 48, 200, 1);
    let (q, _) = clustered(500, 48, 200, 2);
    for metric in [Distance::Euclidean, Distance::Cosine] {
        let truth = exact(&q, &g, 10, metric);
        let flat = GalleryIndex::build(
            &g,
            GalleryItems::range(4000),
            IndexConfig {
                metric,
                ..IndexConfig::flat()
            },
        )
        .expect("flat");
        let rr = flat.search(&q, 10).expect("search");
        assert_eq!(lists(&rr), lists(&truth), "{metric:?}");
        for qi in 0..5 {
            let (a, b) = (
                rr.distances(qi).expect("d"),
                truth.distances(qi).expect("d"),
            );
            assert_eq!(a, b);
        }
        for dtype in [IndexDtype::F32, IndexDtype::F16] {
            let cfg = IndexConfig {
                metric,
                dtype,
                ..IndexConfig::default()
            };
            let hnsw = GalleryIndex::build(&g, GalleryItems::range(4000), cfg).expect("hnsw");
            let rr = hnsw.search(&q, 10).expect("search");
            let recall = oml::retrieval::index::recall_at_k(&rr, &truth, 10);
            assert!(recall >= 0.95, "{metric:?} {dtype:?}: recall@10 {recall}");
            // Distances are the metric's (Euclidean, not squared), sorted.
            let d0 = rr.distances(0).expect("d");
            assert!(d0.windows(2).all(|w| w[0] <= w[1]));
            // Where the nearest item is the exact one, its distance is the exact one (f16: to
            // its precision).
            for qi in 0..50 {
                let (a, t) = (
                    rr.retrieved_ids(qi).expect("q"),
                    truth.retrieved_ids(qi).expect("q"),
                );
                if a[0] == t[0] {
                    let (da, dt) = (
                        rr.distances(qi).expect("d")[0],
                        truth.distances(qi).expect("d")[0],
                    );
                    assert!(
                        (da - dt).abs() < 1e-2 * dt.max(1.0),
                        "{metric:?} {dtype:?}: {da} vs {dt}"
                    );
                }
            }
        }
    }
    // i8 keeps directions: cosine only.
    let cos_i8 = IndexConfig {
        metric: Distance::Cosine,
        dtype: IndexDtype::I8,
        ..IndexConfig::default()
    };
    let rr = GalleryIndex::build(&g, GalleryItems::range(4000), cos_i8)
        .expect("i8")
        .search(&q, 10)
        .expect("search");
    let recall = oml::retrieval::index::recall_at_k(&rr, &exact(&q, &g, 10, Distance::Cosine), 10);
    assert!(recall >= 0.9, "i8 recall@10 {recall}");
    let err = GalleryIndex::build(
        &g,
        GalleryItems::range(4000),
        IndexConfig {
            dtype: IndexDtype::I8,
            ..IndexConfig::default()
        },
    )
    .expect_err("i8 euclidean");
    assert!(err.to_string().contains("--metric cosine"), "{err}");
}

#[test]
fn exclusions_apply_after_an_over_fetch_and_metrics_match_the_exact_path() {
    // 600 items in sequences of 12 (same label per sequence pair): every item is a query and in
    // the gallery, so each query must skip itself and 11 items of its sequence.
    let (e, _) = clustered(600, 16, 25, 3);
    let n = 600;
    let labels: Vec<i64> = (0..n).map(|i| (i / 24) as i64).collect();
    let sequences: Vec<String> = (0..n).map(|i| format!("s{}", i / 12)).collect();
    let info = QueryGalleryInfo {
        labels: Some(labels.clone()),
        is_query: vec![true; n],
        is_gallery: vec![true; n],
        categories: None,
        sequences: Some(sequences.clone()),
    };
    let cfg = SearchConfig {
        top_n: 20,
        ..SearchConfig::default()
    };
    let truth = RetrievalResults::from_embeddings_with(&e, &info, &cfg).expect("exact");
    let items = GalleryItems {
        ids: (0..n).collect(),
        labels: Some(labels.clone()),
        paths: None,
        categories: None,
        sequences: Some(sequences.clone()),
    };
    let queries = QueryItems {
        ids: Some((0..n).collect()),
        labels: Some(labels),
        sequences: Some(sequences.clone()),
        categories: None,
    };
    let metrics = oml::metrics::MetricsConfig::common();
    let want = oml::metrics::compute_metrics(&truth, &metrics).expect("metrics");
    for config in [IndexConfig::flat(), IndexConfig::default()] {
        let kind = config.kind;
        let index = GalleryIndex::build(&e, items.clone(), config).expect("build");
        let rr = index.search_items(&e, &queries, 20).expect("search");
        for q in 0..n {
            let got = rr.retrieved_ids(q).expect("q");
            assert_eq!(
                got.len(),
                20,
                "{kind:?}: query {q} got {} results",
                got.len()
            );
            assert!(
                got.iter().all(|&g| sequences[g] != sequences[q]),
                "{kind:?}: query {q} retrieved its own sequence"
            );
            assert_eq!(rr.n_gt(q), truth.n_gt(q), "{kind:?}: ground truths of {q}");
        }
        let m = oml::metrics::compute_metrics(&rr, &metrics).expect("metrics");
        if kind == IndexKind::Flat {
            assert_eq!(lists(&rr), lists(&truth));
            assert_eq!(m.to_json(), want.to_json());
        } else {
            let (a, b) = (m.cmc(1), want.cmc(1));
            assert!((a - b).abs() < 0.02, "hnsw cmc@1 {a} vs exact {b}");
        }
    }
    // With fewer items left than k, a query gets all of them.
    let index = GalleryIndex::build(
        &e.narrow(0, 0, 24).expect("rows"),
        GalleryItems {
            ids: (0..24).collect(),
            sequences: Some(sequences[..24].to_vec()),
            ..GalleryItems::default()
        },
        IndexConfig::default(),
    )
    .expect("small");
    let rr = index
        .search_items(
            &e.narrow(0, 0, 1).expect("row"),
            &QueryItems {
                ids: Some(vec![0]),
                sequences: Some(vec![sequences[0].clone()]),
                ..QueryItems::default()
            },
            20,
        )
        .expect("search");
    assert_eq!(rr.retrieved_ids(0).expect("q").len(), 12);
}

#[test]
fn add_save_load_round_trip_and_bad_input_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (e, labels) = clustered(300, 24, 30, 4);
    let items = |range: std::ops::Range<usize>| GalleryItems {
        ids: range.clone().collect(),
        labels: Some(labels[range.clone()].to_vec()),
        paths: Some(range.map(|i| format!("img/{i}.png")).collect()),
        categories: None,
        sequences: None,
    };
    for config in [IndexConfig::flat(), IndexConfig::default()] {
        let kind = config.kind;
        let folder = dir.path().join(format!("{kind:?}"));
        let config_again = config.clone();
        let mut index =
            GalleryIndex::build(&e.narrow(0, 0, 200).expect("rows"), items(0..200), config)
                .expect("build");
        index.save(&folder).expect("save");
        index
            .add(&e.narrow(0, 200, 100).expect("rows"), items(200..300))
            .expect("add");
        let before = index.search(&e, 5).expect("search");
        // Files of one's own in the folder stay.
        std::fs::write(folder.join("items-notes.txt"), "mine").expect("write");
        index.save(&folder).expect("save again");
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let engine = if kind == IndexKind::Flat {
            "vectors-2.npy"
        } else {
            "engine-2.usearch"
        };
        let mut want = vec![engine, "index.json", "items-2.parquet", "items-notes.txt"];
        want.sort();
        assert_eq!(names, want, "old generations removed, nothing else");
        std::fs::remove_file(folder.join("items-notes.txt")).expect("rm");
        let loaded = GalleryIndex::load(&folder).expect("load");
        assert_eq!(loaded.len(), 300);
        assert_eq!(loaded.items(), index.items());
        let after = loaded.search(&e, 5).expect("search");
        assert_eq!(lists(&after), lists(&before), "{kind:?}");
        // The added items find themselves first (all of them exactly; nearly all on the graph,
        // whose clusters here are far apart).
        let found = (200..300)
            .filter(|&q| after.retrieved_ids(q).expect("q")[0] == q)
            .count();
        let want = if kind == IndexKind::Flat { 100 } else { 95 };
        assert!(
            found >= want,
            "{kind:?}: {found} of 100 added items find themselves first"
        );
        // Built in order, the same items give the same graph.
        let again = GalleryIndex::build(&e, items(0..300), config_again.clone()).expect("build");
        let twice = GalleryIndex::build(&e, items(0..300), config_again.clone()).expect("build");
        assert_eq!(
            lists(&again.search(&e, 5).expect("search")),
            lists(&twice.search(&e, 5).expect("search")),
            "{kind:?}: a rebuild gives other results"
        );

        // Bad input, each named.
        let mut ix = GalleryIndex::load(&folder).expect("load");
        let err = ix
            .add(&e.narrow(0, 0, 2).expect("rows"), items(0..2))
            .expect_err("repeated id");
        assert!(err.to_string().contains("gallery id 0 is already"), "{err}");
        let err = ix
            .add(
                &e.narrow(0, 0, 2).expect("rows"),
                GalleryItems::ids(vec![900, 901]),
            )
            .expect_err("columns");
        assert!(err.to_string().contains("[label, path]"), "{err}");
        let wrong = Tensor::zeros((3, 7), candle_core::DType::F32, &Device::Cpu).expect("t");
        let err = ix.search(&wrong, 5).expect_err("dim");
        assert!(
            err.to_string().contains("dimension 7, the index 24"),
            "{err}"
        );
    }
    let err = GalleryIndex::build(
        &Tensor::zeros((0, 8), candle_core::DType::F32, &Device::Cpu).expect("t"),
        GalleryItems::range(0),
        IndexConfig::default(),
    )
    .expect_err("empty");
    assert!(err.to_string().contains("at least one"), "{err}");
    let mut nan = e
        .narrow(0, 0, 4)
        .expect("rows")
        .to_vec2::<f32>()
        .expect("v");
    nan[2][5] = f32::NAN;
    let nan = Tensor::new(nan, &Device::Cpu).expect("t");
    let err =
        GalleryIndex::build(&nan, GalleryItems::range(4), IndexConfig::default()).expect_err("nan");
    assert!(err.to_string().contains("embedding 2 has a NaN"), "{err}");
    let big = (e.narrow(0, 0, 3).expect("rows") * 1e5).expect("scale");
    let err = GalleryIndex::build(&big, GalleryItems::range(3), IndexConfig::default())
        .expect_err("beyond f16");
    assert!(err.to_string().contains("--dtype f32"), "{err}");
    let err = GalleryIndex::build(
        &e.narrow(0, 0, 3).expect("rows"),
        GalleryItems::ids(vec![5, 6, 5]),
        IndexConfig::default(),
    )
    .expect_err("twice");
    assert!(
        err.to_string().contains("gallery id 5 is given twice"),
        "{err}"
    );

    // Damaged folders: each file truncated, flipped, missing; the manifest garbled.
    let folder = dir.path().join("Hnsw");
    let manifest = std::fs::read_to_string(folder.join("index.json")).expect("manifest");
    let engine = std::fs::read_dir(&folder)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "usearch"))
        .expect("engine file");
    let original = std::fs::read(&engine).expect("read");
    std::fs::write(&engine, &original[..original.len() / 2]).expect("truncate");
    let err = GalleryIndex::load(&folder).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&engine, &flipped).expect("flip");
    let err = GalleryIndex::load(&folder).expect_err("flipped");
    assert!(err.to_string().contains("checksum"), "{err}");
    std::fs::remove_file(&engine).expect("rm");
    let err = GalleryIndex::load(&folder).expect_err("missing");
    assert!(err.to_string().contains("missing"), "{err}");
    std::fs::write(&engine, &original).expect("restore");
    std::fs::write(folder.join("index.json"), &manifest[..manifest.len() / 3]).expect("garble");
    let err = GalleryIndex::load(&folder).expect_err("garbled");
    assert!(err.to_string().contains("not an index manifest"), "{err}");
    let err = GalleryIndex::load(dir.path()).expect_err("no index");
    assert!(err.to_string().contains("no index.json"), "{err}");
}

/// A small glyph dataset, its pixel embeddings (every CSV row) and a random ResNet-18.
fn setup(dir: &Path) -> (String, String, String) {
    let glyphs = dir.join("glyphs");
    let out = oml(&[
        "datasets",
        "glyphs",
        "--out",
        &p(&glyphs),
        "--max-labels",
        "40",
        "--size",
        "32",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = p(&glyphs.join("df.csv"));
    let e = p(&dir.join("e.npy"));
    let out = oml(&["embed", "--pixels", "12", "--data", &csv, "--out", &e]);
    assert!(out.status.success(), "{}", text(&out));
    let weights = dir.join("rn18.safetensors");
    let vm = candle_nn::VarMap::new();
    oml::models::init(&oml::models::ModelSpec::new("resnet18"), &vm, &Device::Cpu).expect("init");
    vm.save(&weights).expect("save");
    (csv, e, p(&weights))
}

#[test]
fn the_command_line_builds_adds_queries_searches_and_evaluates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (csv, e, weights) = setup(d);

    // evaluate --index with a flat index gives the exact metrics; hnsw nearly.
    let exact = d.join("exact.json");
    let out = oml(&[
        "evaluate",
        "--embeddings",
        &e,
        "--data",
        &csv,
        "--pcf",
        "",
        "--out",
        &p(&exact),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exact).expect("read")).expect("json");
    for kind in ["flat", "hnsw"] {
        let ix = p(&d.join(format!("ix_{kind}")));
        let out = oml(&[
            "index",
            "build",
            "--embeddings",
            &e,
            "--data",
            &csv,
            "--out",
            &ix,
            "--kind",
            kind,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let m = d.join(format!("m_{kind}.json"));
        let grid = d.join(format!("grid_{kind}.png"));
        let out = oml(&[
            "evaluate",
            "--embeddings",
            &e,
            "--data",
            &csv,
            "--index",
            &ix,
            "--pcf",
            "",
            "--out",
            &p(&m),
            "--grid",
            &p(&grid),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(image::open(&grid).is_ok(), "grid of {kind}");
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&m).expect("read")).expect("json");
        let cmc = |v: &serde_json::Value| v["OVERALL"]["cmc"]["1"].as_f64().expect("cmc@1");
        if kind == "flat" {
            assert_eq!(m, exact);
        } else {
            assert!((cmc(&m) - cmc(&exact)).abs() < 0.02, "{m} vs {exact}");
        }
    }

    // query: JSON and Parquet, with paths and labels from the CSV.
    let ix = p(&d.join("ix_hnsw"));
    let r = d.join("r.json");
    let out = oml(&[
        "index",
        "query",
        "--index",
        &ix,
        "--embeddings",
        &e,
        "--top-n",
        "3",
        "--out",
        &p(&r),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).expect("read")).expect("json");
    let rows = std::fs::read_to_string(&csv).expect("csv").lines().count() - 1;
    assert_eq!(r.as_array().expect("list").len(), rows);
    assert_eq!(r[0]["ids"].as_array().expect("ids").len(), 3);
    assert!(r[0]["paths"][0].as_str().expect("path").ends_with(".png"));
    assert!(r[0]["labels"][0].is_i64());
    let rp = d.join("r.parquet");
    let out = oml(&[
        "index",
        "query",
        "--index",
        &ix,
        "--embeddings",
        &e,
        "--top-n",
        "3",
        "--out",
        &p(&rp),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::metadata(&rp).expect("parquet").len() > 100);

    // add: the CSV's gallery rows again, under new ids; a crash while saving leaves the old
    // index whole.
    let count = |dir: &str| GalleryIndex::load(dir).expect("load").len();
    let n0 = count(&ix);
    for point in ["index-engine", "index-items", "index-manifest"] {
        let out = oml_env(
            &[
                "index",
                "add",
                "--index",
                &ix,
                "--embeddings",
                &e,
                "--data",
                &csv,
            ],
            &[("OML_CRASH_AT", point)],
        );
        assert!(
            !out.status.success(),
            "{point}: the crash hook did not fire"
        );
        let n = count(&ix);
        let expected = if point == "index-manifest" {
            2 * n0
        } else {
            n0
        };
        assert_eq!(n, expected, "after a crash at {point}");
        if point == "index-manifest" {
            break;
        }
    }
    let out = oml(&["index", "add", "--index", &ix, "--embeddings", &e]);
    assert!(!out.status.success());
    assert!(text(&out).contains("same"), "{}", text(&out));

    // search: images embedded with the model the index records; another model is refused.
    let emb = d.join("rn.npy");
    let out = oml(&[
        "embed",
        "--arch",
        "resnet18",
        "--weights",
        &weights,
        "--image-size",
        "32",
        "--data",
        &csv,
        "--out",
        &p(&emb),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let ixm = p(&d.join("ix_model"));
    let out = oml(&[
        "index",
        "build",
        "--embeddings",
        &p(&emb),
        "--data",
        &csv,
        "--out",
        &ixm,
        "--arch",
        "resnet18",
        "--weights",
        &weights,
        "--image-size",
        "32",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // A gallery image: it finds itself.
    let image = std::path::PathBuf::from(
        &GalleryIndex::load(&ixm)
            .expect("load")
            .items()
            .paths
            .as_ref()
            .expect("paths")[7],
    );
    let grid = d.join("search.png");
    let hits = d.join("hits.json");
    let out = oml(&[
        "search",
        "--index",
        &ixm,
        &p(&image),
        "--top-n",
        "4",
        "--grid",
        &p(&grid),
        "--out",
        &p(&hits),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let hits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&hits).expect("read")).expect("json");
    let first = &hits[0]["hits"][0];
    // It finds itself, at distance ~0 (to f16's precision, on a random network's large values).
    let (d0, d1) = (
        first["distance"].as_f64().expect("distance"),
        hits[0]["hits"][1]["distance"].as_f64().expect("distance"),
    );
    assert!(d0 < 1e-2 * d1, "{hits}");
    assert_eq!(
        Path::new(first["path"].as_str().expect("path")).file_name(),
        image.file_name()
    );
    assert!(image::open(&grid).is_ok());
    let other = d.join("other.safetensors");
    let vm = candle_nn::VarMap::new();
    oml::models::init(&oml::models::ModelSpec::new("resnet18"), &vm, &Device::Cpu).expect("init");
    vm.save(&other).expect("save");
    let out = oml(&[
        "search",
        "--index",
        &ixm,
        "--arch",
        "resnet18",
        "--weights",
        &p(&other),
        "--image-size",
        "32",
        &p(&image),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("different one"), "{}", text(&out));
    let out = oml(&["search", "--index", &ix, &p(&image)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("records no model"), "{}", text(&out));
}
