//! The zoo, offline: the list's consistency, a local Hub cache laid out as the Hub's, a fake Hub
//! served from this process (real downloads through hf-hub, sha256 checked), a closed port, a
//! silent server and offline mode.

// Tests read tensors directly; the library reads through `oml::host` (oml/clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oml::zoo::{self, Hub};
use sha2::{Digest, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn hub(cache: &Path, endpoint: &str) -> Hub {
    Hub {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.to_owned(),
        offline: false,
        timeout: Duration::from_secs(2),
        token: None,
        local_dir: None,
        oml_checkpoints: cache.join("oml-checkpoints"),
        checkpoints_url: format!("{endpoint}/download/checkpoints"),
    }
}

/// Lays `data` out as the Hub's cache does: `blobs/<sha256>`, `snapshots/<commit>/<file>` (a
/// relative symlink to the blob) and `refs/<revision>`.
fn put_in_cache(cache: &Path, repo: &str, revision: &str, file: &str, data: &[u8]) -> PathBuf {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let blob = root.join("blobs").join(sha256(data));
    std::fs::create_dir_all(blob.parent().expect("parent")).expect("blobs");
    std::fs::write(&blob, data).expect("blob");
    let snapshot = root.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(snapshot.parent().expect("parent")).expect("snapshots");
    std::os::unix::fs::symlink(Path::new("../../blobs").join(sha256(data)), &snapshot)
        .expect("symlink");
    std::fs::create_dir_all(root.join("refs")).expect("refs");
    std::fs::write(root.join("refs").join(revision), commit).expect("ref");
    snapshot
}

/// A local HTTP server for `requests` requests: `respond(path, range)` gives each whole response
/// (`range`: the value of a `Range: bytes=` header, lower-cased). Returns its address and a handle
/// that counts the requests served.
fn serve(
    requests: usize,
    respond: impl Fn(&str, Option<&str>) -> Vec<u8> + Send + 'static,
) -> (String, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.expect("stream");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut first = String::new();
            reader.read_line(&mut first).expect("request line");
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().to_owned());
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or_default();
            stream
                .write_all(&respond(path, range.as_deref()))
                .expect("response");
            served += 1;
        }
        served
    });
    (format!("http://{addr}"), handle)
}

/// A minimal Hub: answers hf-hub's `Range: bytes=0-0` metadata request and its ranged GET with
/// `body`, announcing `etag` (the sha256 the blob will be named by). Serves `requests` requests.
fn fake_hub(
    body: Vec<u8>,
    etag: String,
    requests: usize,
) -> (String, std::thread::JoinHandle<usize>) {
    serve(requests, move |_, range| {
        let (start, end) = match range {
            Some("0-0") => (0, 1),
            Some(r) => (
                r.trim_end_matches('-').parse::<usize>().unwrap_or(0),
                body.len(),
            ),
            None => (0, body.len()),
        };
        let chunk = &body[start.min(body.len())..end.min(body.len())];
        let mut out = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\n\
             x-repo-commit: 89abcdef0123456789abcdef0123456789abcdef\r\nx-linked-etag: \"{}\"\r\n\
             Connection: close\r\n\r\n",
            chunk.len(),
            start,
            end.saturating_sub(1),
            body.len(),
            etag
        )
        .into_bytes();
        out.extend_from_slice(chunk);
        out
    })
}

#[test]
fn the_list_is_consistent_with_the_networks_and_transforms() {
    let all = zoo::models().expect("zoo/models.toml parses");
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    for expected in [
        "vits16_dino",
        "vits8_dino",
        "vitb16_dino",
        "vitb8_dino",
        "vits14_dinov2",
        "vitb14_dinov2",
        "vitl14_dinov2",
        "vits14_reg_dinov2",
        "vitb14_reg_dinov2",
        "vitl14_reg_dinov2",
        "resnet18_imagenet1k_v1",
        "resnet50_imagenet1k_v1",
        "resnet152_imagenet1k_v1",
        "openai_vitb32_224",
        "openai_vitb16_224",
        "openai_vitl14_224",
        "vits16_inshop",
        "vits16_sop",
        "vits16_cub",
        "vits16_cars",
        "vits16_224_mlp_384_inshop",
        "resnet50_moco_v2",
    ] {
        assert!(names.contains(&expected), "{expected} missing from the zoo");
    }
    let mut supported = 0;
    for m in all {
        if m.is_oml_checkpoint() {
            let hash = m.oml_hash.as_deref().unwrap_or_default();
            assert!(hash.len() >= 6, "{}: OML's md5 prefix", m.name);
            assert!(m.oml_fname.is_some(), "{}", m.name);
        } else {
            assert!(m.hub_repo.contains('/'), "{}: repo {}", m.name, m.hub_repo);
        }
        if !m.in_oml {
            assert!(!m.supported() || m.transform.is_some(), "{}", m.name);
            continue;
        }
        let spec = m.spec().unwrap_or_else(|e| panic!("{}: {e}", m.name));
        assert_eq!(spec.feat_dim().expect("dim"), m.feat_dim, "{}", m.name);
        m.transform().unwrap_or_else(|e| panic!("{}: {e}", m.name));
        supported += 1;
    }
    assert!(supported >= 19, "{supported}");
    let e = zoo::find("vits16_imagenet").unwrap_err().to_string();
    assert!(
        e.contains("unknown zoo model") && e.contains("vits14_dinov2"),
        "{e}"
    );
}

#[test]
fn a_cached_file_is_used_without_any_network() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = b"cached weights".to_vec();
    let placed = put_in_cache(
        dir.path(),
        "timm/some_model",
        "main",
        "model.safetensors",
        &data,
    );
    // A closed port: any network use would fail.
    let h = hub(dir.path(), "http://127.0.0.1:9");
    let got = h
        .fetch("timm/some_model", "main", "model.safetensors")
        .expect("from cache");
    assert_eq!(std::fs::read(&got).expect("read"), data);
    assert_eq!(got, placed);
    assert!(
        zoo::verify_blob(&got).expect("verified"),
        "an LFS blob is checked"
    );
    let mut offline = h.clone();
    offline.offline = true;
    assert!(
        offline
            .fetch("timm/some_model", "main", "model.safetensors")
            .is_ok()
    );
}

#[test]
fn offline_and_unreachable_hubs_fail_fast_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut h = hub(dir.path(), "http://127.0.0.1:9");
    h.offline = true;
    let t = Instant::now();
    let e = h
        .fetch("timm/missing", "main", "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("network is off") && e.contains("timm/missing"),
        "{e}"
    );
    h.offline = false;
    let e = h
        .fetch("timm/missing", "main", "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot download timm/missing/model.safetensors") && e.contains("127.0.0.1:9"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A server that accepts and never answers: the watchdog gives up after the timeout.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let keep = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(8));
        drop(conns);
    });
    let mut silent = hub(dir.path(), &format!("http://{addr}"));
    silent.timeout = Duration::from_millis(700);
    let t = Instant::now();
    let e = silent
        .fetch("timm/slow", "main", "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no answer"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    drop(keep);
}

#[test]
fn a_download_lands_in_the_hub_cache_verified_and_a_corrupt_one_is_removed() {
    let dir = tempfile::tempdir().expect("tmp");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (endpoint, server) = fake_hub(body.clone(), sha256(&body), 2);
    let h = hub(dir.path(), &endpoint);
    let path = h
        .fetch("org/net", "main", "model.safetensors")
        .expect("download");
    assert_eq!(std::fs::read(&path).expect("read"), body);
    assert_eq!(
        server.join().expect("server"),
        2,
        "metadata + one ranged GET"
    );
    let root = dir.path().join("models--org--net");
    assert!(
        root.join("blobs").join(sha256(&body)).is_file(),
        "blob named by its sha256"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).expect("ref"),
        "89abcdef0123456789abcdef0123456789abcdef"
    );
    // The server is gone: the second fetch is the cache's.
    let again = h
        .fetch("org/net", "main", "model.safetensors")
        .expect("cached");
    assert_eq!(again, path);

    // A blob whose content does not match its announced sha256.
    let (endpoint, server) = fake_hub(b"truncated".to_vec(), sha256(b"the real content"), 2);
    let h = hub(dir.path(), &endpoint);
    let e = h
        .fetch("org/broken", "main", "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sha256") && e.contains("download again"), "{e}");
    server.join().expect("server");
    assert!(
        h.cached("org/broken", "main", "model.safetensors")
            .is_none(),
        "nothing corrupt stays"
    );
}

#[test]
fn from_pretrained_names_unknown_models_and_unsupported_ones() {
    // Both are refused before any file or network is looked at.
    let e = oml::Model::from_pretrained("resnet51")
        .expect_err("unknown")
        .to_string();
    assert!(e.contains("resnet50_imagenet1k_v1"), "{e}");
    let dinov3 = zoo::models()
        .expect("zoo")
        .iter()
        .find(|m| !m.supported())
        .expect("an extra without a network");
    let e = oml::Model::from_pretrained(&dinov3.name)
        .expect_err("unsupported")
        .to_string();
    assert!(e.contains("no network in this version"), "{e}");
}

/// A file server: `GET path` answers 200 with the file, anything else 404. Serves `requests`
/// requests.
fn file_server(
    files: Vec<(String, Vec<u8>)>,
    requests: usize,
) -> (String, std::thread::JoinHandle<usize>) {
    serve(requests, move |path, _| {
        match files.iter().find(|(p, _)| p == path) {
            Some((_, body)) => {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(body);
                out
            }
            None => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    })
}

/// A safetensors file of `tensors` (any order) whose md5 starts with `prefix`: an ignorable
/// `head.nonce` tensor is written last and varied until the hash fits (the hasher's state after the
/// rest is computed once, so each try hashes one block).
fn safetensors_with_md5_prefix(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    prefix: &str,
) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for name in names {
        let t = &tensors[name];
        let values: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("f32");
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    let start = data.len();
    header.insert(
        "head.nonce".into(),
        serde_json::json!({"dtype": "F32", "shape": [4], "data_offsets": [start, start + 16]}),
    );
    let mut text = serde_json::Value::Object(header).to_string();
    while !(text.len() + 8).is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&data);
    let mut state = Md5::new();
    state.update(&file);
    let want: Vec<u8> = (0..prefix.len() / 2)
        .map(|i| u8::from_str_radix(&prefix[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    for nonce in 0u64.. {
        let bytes = [nonce.to_le_bytes(), 0x3f80_0000_3f80_0000u64.to_le_bytes()].concat();
        let mut h = state.clone();
        h.update(&bytes);
        if h.finalize().starts_with(&want) {
            file.extend_from_slice(&bytes);
            break;
        }
    }
    file
}

/// OML's own checkpoints: downloaded from OML's storage (a stand-in here) into OML's checkpoint
/// folder, md5-checked as OML checks them, converted once into safetensors, then used from there
/// without any network. A download with another hash is refused and removed.
#[test]
fn oml_checkpoints_download_check_convert_and_cache() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = zoo::find("vits16_cars").expect("entry");
    let weights = oml::Model::init(model.spec().expect("spec"), 5).expect("init");
    let ckpt = safetensors_with_md5_prefix(
        &weights.state_dict(),
        model.oml_hash.as_deref().expect("hash"),
    );
    let (endpoint, server) = file_server(
        vec![
            ("/download/checkpoints/cars/vits16_cars.ckpt".into(), ckpt),
            (
                "/download/checkpoints/sop/vits16_sop_21e743.ckpt".into(),
                b"not it".to_vec(),
            ),
        ],
        2,
    );
    let h = hub(dir.path(), &endpoint);
    let found = zoo::locate(model, &h).expect("download, check, convert");
    assert!(found.origin.contains("downloaded from"), "{}", found.origin);
    assert_eq!(
        found.path,
        h.oml_checkpoints.join("vits16_cars.safetensors")
    );
    assert!(
        h.oml_checkpoints.join("vits16_cars.ckpt").is_file(),
        "OML's file kept"
    );
    let back = oml::Model::from_spec(model.spec().expect("spec"), &found.path).expect("load");
    for (k, t) in weights.state_dict() {
        let diff = (&t - &back.state_dict()[&k])
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        assert_eq!(diff, 0.0, "{k}");
    }
    let e = zoo::locate(zoo::find("vits16_sop").expect("entry"), &h)
        .expect_err("another hash")
        .to_string();
    assert!(e.contains("md5") && e.contains("21e743"), "{e}");
    assert!(
        std::fs::read_dir(&h.oml_checkpoints)
            .expect("dir")
            .filter_map(|e| e.ok())
            .all(|e| !e.file_name().to_string_lossy().contains("sop")),
        "nothing of the refused download stays"
    );
    assert_eq!(server.join().expect("server"), 2);
    // Offline now: the converted file is used.
    let mut off = hub(dir.path(), "http://127.0.0.1:9");
    off.offline = true;
    let again = zoo::locate(model, &off).expect("cached");
    assert!(again.origin.contains("converted"), "{}", again.origin);
    assert!(zoo::is_cached(model, &off));
    let e = zoo::locate(zoo::find("vits16_cub").expect("entry"), &off)
        .expect_err("offline")
        .to_string();
    assert!(e.contains("network is off"), "{e}");
}

/// The README's first command with a reachable Hub (a stand-in serving a ViT-S/14) and an empty
/// cache: the demo downloads the zoo's model, says so, and fine-tunes it.
#[test]
fn the_demo_downloads_the_zoo_model_from_an_empty_cache_and_fine_tunes_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("vits14.safetensors");
    oml::Model::init(oml::models::ModelSpec::new("vits14"), 1)
        .expect("init")
        .save(&file)
        .expect("save");
    let body = std::fs::read(&file).expect("read");
    let (endpoint, server) = fake_hub(body.clone(), sha256(&body), 2);
    let home = dir.path().join("hf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oml"))
        .args(["demo", "--budget", "4", "--labels", "24", "--out"])
        .arg(dir.path().join("demo"))
        .env("HF_ENDPOINT", &endpoint)
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("OML_OFFLINE")
        .env_remove("OML_WEIGHTS_DIR")
        .env("OML_PROGRESS", "lines")
        .output()
        .expect("run oml");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("downloaded from {endpoint}")),
        "{stdout}"
    );
    assert!(stdout.contains("DINOv2 ViT-S/14"), "{stdout}");
    assert!(stderr.contains("downloading"), "a progress line: {stderr}");
    assert_eq!(server.join().expect("server"), 2);
    let cached = Hub {
        offline: true,
        ..hub(&home.join("hub"), "http://127.0.0.1:9")
    };
    let m = zoo::find("vits14_dinov2").expect("entry");
    assert!(
        zoo::is_cached(m, &cached),
        "the download stays in the Hub cache"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("demo/demo.json")).expect("demo.json"),
    )
    .expect("json");
    assert!(report["steps"].as_u64().expect("steps") >= 1);
    assert!(
        report["path"]
            .as_str()
            .expect("path")
            .contains("pretrained")
    );
}
