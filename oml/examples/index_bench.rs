//! Gallery index benchmark: exact blocked search against the HNSW index (f32 and f16) on the same
//! gallery and queries: build time, size on disk, queries/s at k = 10 and recall@10 against the
//! exact search, over a sweep of the search depth. Writes the data it used (`gallery.npy`,
//! `queries.npy`, `exact_ids.npy`) so that `benches/index_faiss.py` measures FAISS on the same.
//!
//! ```text
//! cargo run --example index_bench -- --npy fmnist_pixels.npy --out /tmp/ib_fmnist
//! cargo run --example index_bench -- --synthetic 1000000 --dim 384 --out /tmp/ib_1m
//! python benches/index_faiss.py /tmp/ib_1m
//! ```

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use oml::retrieval::{
    Distance, GalleryIndex, GalleryItems, IndexConfig, IndexDtype, RetrievalResults, SearchConfig,
};
use rand::{Rng, SeedableRng};

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `n` L2-normalised points of low intrinsic dimension, as embeddings are: `n / 100` cluster
/// centres in a 24-d latent space, points around them, mapped to `dim` dimensions by a fixed
/// random linear map (fixed seed).
fn synthetic(n: usize, dim: usize, seed: u64) -> oml::Result<Tensor> {
    const LATENT: usize = 24;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres = (n / 100).max(1);
    let c: Vec<f32> = (0..centres * LATENT).map(|_| normal(&mut rng)).collect();
    let mut z = Vec::with_capacity(n * LATENT);
    for i in 0..n {
        let k = (i * 7919) % centres;
        z.extend((0..LATENT).map(|j| c[k * LATENT + j] + 0.5 * normal(&mut rng)));
    }
    let w: Vec<f32> = (0..LATENT * dim).map(|_| normal(&mut rng)).collect();
    let z = Tensor::from_vec(z, (n, LATENT), &Device::Cpu)?;
    let w = Tensor::from_vec(w, (LATENT, dim), &Device::Cpu)?;
    oml::models::l2_normalise(&z.matmul(&w)?)
}

fn main() -> oml::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(arg(&args, "--out").unwrap_or_else(|| "/tmp/index_bench".into()));
    std::fs::create_dir_all(&out).map_err(|e| oml::Error::io("mkdir", &out, e))?;
    let n_queries: usize = arg(&args, "--queries")
        .map_or(Ok(1000), |s| s.parse())
        .map_err(|_| oml::Error::Msg("--queries N".into()))?;
    let k = 10;
    let all = match (arg(&args, "--npy"), arg(&args, "--synthetic")) {
        _ if arg(&args, "--fmnist").is_some() => {
            // Raw pixels of all 70,000 images (train + t10k), 784-d, L2-normalised.
            let dir = PathBuf::from(arg(&args, "--fmnist").unwrap_or_default());
            let mut v = Vec::new();
            for f in ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"] {
                let (_, bytes) = oml::data::convert::read_idx(&dir.join(f))?;
                v.extend(bytes.iter().map(|&b| b as f32 / 255.0));
            }
            let n = v.len() / 784;
            let t = Tensor::from_vec(v, (n, 784), &Device::Cpu)?;
            oml::models::l2_normalise(&t)?
        }
        (Some(p), _) => oml::retrieval::read_embeddings(std::path::Path::new(&p))?,
        (None, Some(n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| oml::Error::Msg("--synthetic N".into()))?;
            let dim: usize = arg(&args, "--dim").map_or(384, |s| s.parse().unwrap_or(384));
            synthetic(n + n_queries, dim, 0)?
        }
        _ => return Err(oml::Error::Msg("give --npy E.npy or --synthetic N".into())),
    };
    let (n_all, dim) = all.dims2()?;
    // Queries: every (n_all / n_queries)-th row; the gallery: the rest.
    let step = n_all / n_queries;
    let q_rows: Vec<u32> = (0..n_queries).map(|i| (i * step) as u32).collect();
    let g_rows: Vec<u32> = (0..n_all as u32)
        .filter(|r| r % step as u32 != 0 || *r as usize >= n_queries * step)
        .collect();
    let queries = all.index_select(&Tensor::new(q_rows.as_slice(), &Device::Cpu)?, 0)?;
    let gallery = all.index_select(&Tensor::new(g_rows.as_slice(), &Device::Cpu)?, 0)?;
    drop(all);
    let n = gallery.dims()[0];
    println!(
        "gallery {n} x {dim}, {n_queries} queries, k = {k}, {} threads",
        rayon::current_num_threads()
    );
    queries.write_npy(out.join("queries.npy"))?;
    gallery.write_npy(out.join("gallery.npy"))?;

    let mut rows = Vec::new();
    // Exact blocked search.
    let cfg = SearchConfig {
        top_n: k,
        distance: Distance::Euclidean,
        ..SearchConfig::default()
    };
    let t = Instant::now();
    let exact = RetrievalResults::from_embeddings_qg(
        &queries, &gallery, None, None, None, None, None, &cfg,
    )?;
    let exact_s = t.elapsed().as_secs_f64();
    let ids: Vec<i64> = (0..n_queries)
        .flat_map(|q| {
            exact
                .retrieved_ids(q)
                .unwrap_or(&[])
                .iter()
                .map(|&g| g as i64)
                .collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_vec(ids, (n_queries, k), &Device::Cpu)?.write_npy(out.join("exact_ids.npy"))?;
    let bytes = (n * dim * 4) as u64;
    println!(
        "exact      build {:>7.1} s  size {:>7.1} MB  {:>9.0} q/s  recall@10 1.000",
        0.0,
        bytes as f64 / 1e6,
        n_queries as f64 / exact_s
    );
    rows.push(serde_json::json!({"method": "oml exact (blocked)", "build_s": 0.0, "bytes": bytes, "qps": n_queries as f64 / exact_s, "recall": 1.0}));

    for dtype in [IndexDtype::F32, IndexDtype::F16] {
        let config = IndexConfig {
            dtype,
            ..IndexConfig::default()
        };
        let t = Instant::now();
        let mut index = GalleryIndex::build(&gallery, GalleryItems::range(n), config)?;
        let build_s = t.elapsed().as_secs_f64();
        println!(
            "{dtype:?} kernels: {:?}; available: {}",
            index.acceleration(),
            usearch::hardware_acceleration_available()
        );
        let dir = out.join(format!("index_{dtype:?}"));
        index.save(&dir)?;
        let bytes = index.disk_bytes().unwrap_or(0);
        let t = Instant::now();
        let _ = GalleryIndex::load(&dir)?;
        let load_s = t.elapsed().as_secs_f64();
        for ef in [16, 32, 64, 128, 256] {
            index.set_expansion_search(ef);
            // Best of two runs (the first warms the caches).
            let mut best = f64::MAX;
            let mut rr = None;
            for _ in 0..2 {
                let t = Instant::now();
                rr = Some(index.search(&queries, k)?);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let recall = rr.map_or(0.0, |rr| oml::retrieval::index::recall_at_k(&rr, &exact, k));
            let qps = n_queries as f64 / best;
            println!(
                "hnsw {dtype:?} ef {ef:>3} build {build_s:>7.1} s  size {:>7.1} MB  {qps:>9.0} q/s  recall@10 {recall:.4}  (load {load_s:.1} s)",
                bytes as f64 / 1e6
            );
            rows.push(serde_json::json!({
                "method": format!("oml hnsw {dtype:?}").to_lowercase(), "ef_search": ef,
                "build_s": build_s, "load_s": load_s, "bytes": bytes, "qps": qps, "recall": recall,
            }));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    let path = out.join("oml.json");
    let text = serde_json::to_string_pretty(&rows).map_err(|e| oml::Error::Msg(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| oml::Error::io("write", &path, e))?;
    println!("wrote {}", path.display());
    Ok(())
}
