//! The zoo, offline: the list's consistency, a local Hub cache laid out as the Hub's, a fake Hub
//! served from this process (real downloads through hf-hub, sha256 checked), a closed port, a
//! silent server and offline mode.

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

/// A minimal Hub: answers hf-hub's `Range: bytes=0-0` metadata request and its ranged GET with
/// `body`, announcing `etag` (the sha256 the blob will be named by). Serves `requests` requests.
fn fake_hub(
    body: Vec<u8>,
    etag: String,
    requests: usize,
) -> (String, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.expect("stream");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
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
            let (start, end) = match range.as_deref() {
                Some("0-0") => (0, 1),
                Some(r) => (
                    r.trim_end_matches('-').parse::<usize>().unwrap_or(0),
                    body.len(),
                ),
                None => (0, body.len()),
            };
            let chunk = &body[start.min(body.len())..end.min(body.len())];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\n\
                 x-repo-commit: 89abcdef0123456789abcdef0123456789abcdef\r\nx-linked-etag: \"{}\"\r\n\
                 Connection: close\r\n\r\n",
                chunk.len(),
                start,
                end.saturating_sub(1),
                body.len(),
                etag
            );
            stream.write_all(head.as_bytes()).expect("head");
            stream.write_all(chunk).expect("body");
            served += 1;
        }
        served
    });
    (format!("http://{addr}"), handle)
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
    ] {
        assert!(names.contains(&expected), "{expected} missing from the zoo");
    }
    let mut supported = 0;
    for m in all {
        assert!(m.hub_repo.contains('/'), "{}: repo {}", m.name, m.hub_repo);
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
