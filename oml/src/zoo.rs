//! The model zoo: OML's pretrained names, where their weights live on the Hugging Face Hub, and
//! how to get them into the standard Hub cache (shared with Python's `huggingface_hub`).
//!
//! The list is `zoo/models.toml` (compiled in). Weights are looked up in the cache first (no
//! network at all when a file is there), downloaded with `hf-hub` otherwise, and checked: a Hub LFS
//! blob is named by its sha256, which is verified after every download.
//!
//! Environment, as Python's `huggingface_hub` reads it:
//! - `HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`: the cache;
//! - `HF_ENDPOINT`: the Hub's address (default `https://huggingface.co`);
//! - `HF_HUB_OFFLINE=1` or `OML_OFFLINE=1`: never touch the network;
//! - `HF_TOKEN` (or the `token` file under `HF_HOME`): for gated repositories;
//! - `OML_HUB_TIMEOUT`: seconds to wait for the Hub's first answer and between chunks (default 20);
//! - `OML_WEIGHTS_DIR`: a local weights folder looked at before the Hub: `<name>.safetensors` (or
//!   `.pth`, `.ckpt`, `.bin`) there stands for the zoo model `<name>` (weights copied from another
//!   machine, or one's own file under a zoo name); it is used as it is, without a hash check.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::data::Transform;
use crate::models::{Family, ModelSpec};
use crate::progress::Progress;
use crate::{Error, Result};

/// Where OML 4.0 keeps its own checkpoints (`oml.const.STORAGE_CKPTS`).
pub const OML_STORAGE: &str = "https://oml.daloroserver.com/download/checkpoints";

/// The zoo's list, as shipped in the repository.
pub const MODELS_TOML: &str = include_str!("../../zoo/models.toml");

/// The inference transform OML pairs with a pretrained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooTransform {
    /// A [`Transform::preset`] name.
    pub preset: String,
    /// OML's `im_size`.
    pub im_size: u32,
    /// OML's `crop_size`, where it differs from `im_size`.
    #[serde(default)]
    pub crop_size: Option<u32>,
}

impl ZooTransform {
    /// The transform itself.
    pub fn build(&self) -> Result<Transform> {
        match (self.preset.as_str(), self.crop_size) {
            ("norm_resize_hypvit" | "norm_resize_hypvit_torch", Some(crop)) => {
                Ok(Transform::hypvit(self.im_size, crop))
            }
            (name, _) => Transform::preset(name, self.im_size),
        }
    }
}

/// One pretrained model of the zoo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZooModel {
    /// OML's name (`vits14_dinov2`, `resnet50_imagenet1k_v1`, ...).
    pub name: String,
    /// OML's arch (absent for models this crate cannot build yet, such as DINOv3).
    #[serde(default)]
    pub arch: Option<String>,
    /// The code path in OML's terms (`dino_vit`, `dinov2_vit`, `resnet`, `clip_vit`, ...).
    pub family: String,
    /// Length of the embeddings.
    pub feat_dim: usize,
    /// Whether OML L2-normalises this model's output.
    #[serde(default)]
    pub normalise_features: bool,
    /// ResNet's GeM power, where OML uses one.
    #[serde(default)]
    pub gem_p: Option<f64>,
    /// OML's inference transform (absent for models OML does not have).
    #[serde(default)]
    pub transform: Option<ZooTransform>,
    /// The Hub repository holding the weights (empty for OML's own checkpoints).
    #[serde(default)]
    pub hub_repo: String,
    /// The file to take from it.
    #[serde(default)]
    pub hub_file: String,
    /// Another file of the same repository with the same weights.
    #[serde(default)]
    pub fallback_file: Option<String>,
    /// The key layout of that file.
    #[serde(default)]
    pub hub_layout: String,
    /// Git revision on the Hub.
    #[serde(default = "main")]
    pub revision: String,
    /// The file's sha256, where it is known: a download that differs is refused.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Whether the repository name was confirmed in public documentation.
    #[serde(default)]
    pub confirmed: bool,
    /// OML's own checkpoint (not on the Hub): where OML downloads it, relative to OML's storage
    /// (`OML_CHECKPOINTS_URL`) or absolute, tried in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The file name OML gives the download in its checkpoint folder.
    #[serde(default)]
    pub oml_fname: Option<String>,
    /// The md5 prefix OML checks the download against.
    #[serde(default)]
    pub oml_hash: Option<String>,
    /// MLP head sizes (OML's `ExtractorWithMLP`).
    #[serde(default)]
    pub mlp: Vec<usize>,
    /// Whether OML 4.0 has this model.
    #[serde(default = "yes")]
    pub in_oml: bool,
}

fn yes() -> bool {
    true
}
fn main() -> String {
    "main".into()
}

impl ZooModel {
    /// Whether the weights are OML's own checkpoint (downloaded from OML's URLs, converted once).
    pub fn is_oml_checkpoint(&self) -> bool {
        self.hub_repo.is_empty() && !self.urls.is_empty()
    }

    /// Where the weights come from, for listings.
    pub fn source(&self) -> String {
        if self.is_oml_checkpoint() {
            self.urls.first().cloned().unwrap_or_default()
        } else {
            self.hub_repo.clone()
        }
    }

    /// Whether this crate can build the network.
    pub fn supported(&self) -> bool {
        self.arch.as_deref().is_some_and(|a| Family::of(a).is_ok())
    }

    /// The arch and options to build, as OML's pretrained `init_args` set them.
    pub fn spec(&self) -> Result<ModelSpec> {
        let arch = self
            .arch
            .as_deref()
            .filter(|_| self.supported())
            .ok_or_else(|| {
                Error::Msg(format!(
                    "zoo model '{}' ({}) has no network in this version of oml; its weights can be \
                 downloaded (`oml zoo download {}`) but not run",
                    self.name, self.family, self.name
                ))
            })?;
        let mut spec = ModelSpec::new(arch);
        spec.normalise = self.normalise_features;
        spec.gem_p = self.gem_p;
        spec.mlp = self.mlp.clone();
        Ok(spec)
    }

    /// OML's inference transform for this model.
    pub fn transform(&self) -> Result<Transform> {
        match &self.transform {
            Some(t) => t.build(),
            None => Err(Error::Msg(format!(
                "zoo model '{}' has no OML transform; pass one explicitly",
                self.name
            ))),
        }
    }
}

#[derive(Deserialize)]
struct ZooFile {
    model: Vec<ZooModel>,
    #[serde(default)]
    extra: Vec<ZooModel>,
}

/// Every model of the zoo: OML's first, then the extras.
pub fn models() -> Result<&'static [ZooModel]> {
    static MODELS: OnceLock<std::result::Result<Vec<ZooModel>, String>> = OnceLock::new();
    let parsed = MODELS.get_or_init(|| {
        let file: ZooFile = toml::from_str(MODELS_TOML).map_err(|e| e.to_string())?;
        let mut all = file.model;
        all.extend(file.extra);
        Ok(all)
    });
    match parsed {
        Ok(v) => Ok(v.as_slice()),
        Err(e) => Err(Error::Msg(format!("zoo/models.toml: {e}"))),
    }
}

/// The zoo model called `name`, or an error listing every name.
pub fn find(name: &str) -> Result<&'static ZooModel> {
    let all = models()?;
    all.iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::UnknownName {
            kind: "zoo model",
            name: name.to_owned(),
            known: all.iter().map(|m| m.name.clone()).collect(),
        })
}

/// Where and how to reach the Hub.
#[derive(Debug, Clone)]
pub struct Hub {
    /// The Hub cache (`models--org--name/{blobs,snapshots,refs}`).
    pub cache_dir: PathBuf,
    /// The Hub's address.
    pub endpoint: String,
    /// Never touch the network.
    pub offline: bool,
    /// Longest wait for the first answer, and between two chunks of a download.
    pub timeout: Duration,
    /// Access token for gated repositories.
    pub token: Option<String>,
    /// A local weights folder looked at first (`OML_WEIGHTS_DIR`).
    pub local_dir: Option<PathBuf>,
    /// Python OML's checkpoint folder (`$XDG_CACHE_HOME/oml/torch/checkpoints`): OML's own
    /// checkpoints are downloaded there, as OML does, and converted beside.
    pub oml_checkpoints: PathBuf,
    /// OML's checkpoint storage (`OML_CHECKPOINTS_URL`), against which relative URLs resolve.
    pub checkpoints_url: String,
}

fn truthy(var: &str) -> bool {
    std::env::var(var)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

impl Hub {
    /// The settings Python's `huggingface_hub` would use, from the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let base = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            base.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        let timeout = var("OML_HUB_TIMEOUT")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(20));
        Hub {
            cache_dir,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".to_owned())
                .trim_end_matches('/')
                .to_owned(),
            offline: truthy("HF_HUB_OFFLINE") || truthy("OML_OFFLINE"),
            timeout,
            token,
            local_dir: var("OML_WEIGHTS_DIR").map(PathBuf::from),
            oml_checkpoints: var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("oml")
                .join("torch")
                .join("checkpoints"),
            checkpoints_url: var("OML_CHECKPOINTS_URL")
                .unwrap_or_else(|| OML_STORAGE.to_owned())
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    fn repo(repo: &str, revision: &str) -> hf_hub::Repo {
        hf_hub::Repo::with_revision(
            repo.to_owned(),
            hf_hub::RepoType::Model,
            revision.to_owned(),
        )
    }

    /// The cached file, if there is one (a pure file lookup).
    pub fn cached(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        hf_hub::Cache::new(self.cache_dir.clone())
            .repo(Self::repo(repo, revision))
            .get(file)
            .filter(|p| p.is_file())
    }

    /// The file from the cache, or downloaded into it (then verified).
    pub fn fetch(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
        if let Some(path) = self.cached(repo, revision, file) {
            return Ok(path);
        }
        if self.offline {
            return Err(Error::Msg(format!(
                "{repo}/{file} is not in the Hub cache {} and the network is off \
                 (HF_HUB_OFFLINE or OML_OFFLINE is set): download it where there is network \
                 (`oml zoo download`, or Python's `huggingface-cli download {repo} {file}`) and \
                 copy the cache, or pass a weights file",
                self.cache_dir.display()
            )));
        }
        let path = self.download(repo, revision, file)?;
        if let Err(e) = verify_blob(&path) {
            // A partial or corrupt blob must not stay in the cache looking complete.
            if let Ok(blob) = std::fs::canonicalize(&path) {
                let _ = std::fs::remove_file(blob);
            }
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    fn download(&self, repo: &str, revision: &str, file: &str) -> Result<PathBuf> {
        enum Msg {
            Init(usize),
            Update(usize),
            Done(std::result::Result<PathBuf, String>),
        }
        #[derive(Clone)]
        struct Channel(mpsc::Sender<Msg>);
        impl hf_hub::api::Progress for Channel {
            fn init(&mut self, size: usize, _filename: &str) {
                let _ = self.0.send(Msg::Init(size));
            }
            fn update(&mut self, size: usize) {
                let _ = self.0.send(Msg::Update(size));
            }
            fn finish(&mut self) {}
        }
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(self.cache_dir.clone())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| Error::Msg(format!("cannot set up the Hub client: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let hub_repo = Self::repo(repo, revision);
        let name = file.to_owned();
        // hf-hub (ureq) has no read timeout: the download runs in its own thread and this one
        // gives up when the Hub stays silent, so a dead connection never hangs the caller.
        std::thread::Builder::new()
            .name("oml-hub-download".into())
            .spawn(move || {
                let result = api
                    .repo(hub_repo)
                    .download_with_progress(&name, Channel(tx.clone()))
                    .map_err(|e| e.to_string());
                let _ = tx.send(Msg::Done(result));
            })
            .map_err(|e| Error::Msg(format!("cannot start the download thread: {e}")))?;
        let mut progress = Progress::new(format!("downloading {repo}/{file}"), 0, "B");
        let mut total = 0;
        let fail = |why: String| {
            Error::Msg(format!(
                "cannot download {repo}/{file} (revision {revision}) from {}: {why}. Check the \
                 network (or HF_ENDPOINT), set HF_TOKEN for gated repositories, or work offline \
                 with a filled Hub cache (HF_HUB_OFFLINE=1) or a weights file",
                self.endpoint
            ))
        };
        loop {
            match rx.recv_timeout(self.timeout) {
                Ok(Msg::Init(size)) => {
                    if size != total {
                        total = size;
                        progress.set_total(size as u64);
                    }
                }
                Ok(Msg::Update(n)) => progress.inc(n as u64),
                Ok(Msg::Done(Ok(path))) => {
                    progress.finish();
                    return Ok(path);
                }
                Ok(Msg::Done(Err(e))) => return Err(fail(e)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(fail(format!(
                        "no answer for {:.0} s after {} bytes (OML_HUB_TIMEOUT sets the limit)",
                        self.timeout.as_secs_f64(),
                        progress.done()
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(fail("the download thread stopped without a result".into()));
                }
            }
        }
    }
}

/// Checks a cached Hub file against its blob name when that is a sha256 (LFS files); other files
/// (git blobs, named by sha1) are accepted as they are. Returns whether a hash was checked.
pub fn verify_blob(path: &Path) -> Result<bool> {
    use sha2::{Digest, Sha256};
    let blob = std::fs::canonicalize(path).map_err(|e| Error::io("resolve", path, e))?;
    let expected = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    let mut file = std::fs::File::open(&blob).map_err(|e| Error::io("open", &blob, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read", &blob, e))?;
    let actual = format!("{:x}", hasher.finalize());
    if actual != expected {
        return Err(Error::Format {
            path: path.to_path_buf(),
            message: format!(
                "sha256 {actual} differs from the blob's name {expected}: the file is incomplete \
                 or corrupt; delete it and download again"
            ),
        });
    }
    Ok(true)
}

/// A zoo model's weights file and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The file.
    pub path: PathBuf,
    /// `local weights folder DIR`, `Hub cache DIR` or `downloaded from ENDPOINT`.
    pub origin: String,
}

/// The weights file of a zoo model: in the local weights folder, else in the Hub cache, else
/// downloaded (its fallback file when the main one cannot be had).
pub fn locate(model: &ZooModel, hub: &Hub) -> Result<Located> {
    if let Some(dir) = &hub.local_dir {
        for ext in ["safetensors", "pth", "ckpt", "bin"] {
            let p = dir.join(format!("{}.{ext}", model.name));
            if p.is_file() {
                return Ok(Located {
                    path: p,
                    origin: format!("local weights folder {}", dir.display()),
                });
            }
        }
    }
    if model.is_oml_checkpoint() {
        return oml_checkpoint(model, hub);
    }
    let cached = hub
        .cached(&model.hub_repo, &model.revision, &model.hub_file)
        .or_else(|| {
            model
                .fallback_file
                .as_deref()
                .and_then(|f| hub.cached(&model.hub_repo, &model.revision, f))
        });
    if let Some(path) = cached {
        return Ok(Located {
            path,
            origin: format!("Hub cache {}", hub.cache_dir.display()),
        });
    }
    let path = match hub.fetch(&model.hub_repo, &model.revision, &model.hub_file) {
        Ok(p) => p,
        Err(first) => match &model.fallback_file {
            Some(f) => hub
                .fetch(&model.hub_repo, &model.revision, f)
                .map_err(|_| first)?,
            None => return Err(first),
        },
    };
    if let Some(want) = &model.sha256 {
        let got = crate::fsio::sha256_of(&path)?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(Error::Format {
                path,
                message: format!(
                    "sha256 {got}, but the zoo expects {want} for {}: not the file oml was tested \
                     with; delete it, or pass it as a weights file if you trust it",
                    model.name
                ),
            });
        }
    }
    Ok(Located {
        path,
        origin: format!("downloaded from {}", hub.endpoint),
    })
}

fn md5_of(path: &Path) -> Result<String> {
    use md5::{Digest, Md5};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = Md5::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read", path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// OML's own checkpoint of `model`: converted already, or in OML's checkpoint folder (where
/// Python OML may have put it), or downloaded from OML's URLs; checked against OML's md5 prefix and
/// converted once into a safetensors file of the network's tensors beside it.
fn oml_checkpoint(model: &ZooModel, hub: &Hub) -> Result<Located> {
    let dir = &hub.oml_checkpoints;
    let converted = dir.join(format!("{}.safetensors", model.name));
    if converted.is_file() {
        return Ok(Located {
            path: converted,
            origin: format!("OML checkpoint, converted, in {}", dir.display()),
        });
    }
    let fname = model
        .oml_fname
        .clone()
        .unwrap_or_else(|| format!("{}.ckpt", model.name));
    let raw = dir.join(&fname);
    let hash = model.oml_hash.clone().unwrap_or_default();
    let good = |p: &Path| -> Result<bool> { Ok(md5_of(p)?.starts_with(&hash)) };
    let mut origin = format!("OML's checkpoint folder {}", dir.display());
    if !(raw.is_file() && good(&raw)?) {
        if hub.offline {
            return Err(Error::Msg(format!(
                "{} (OML's own checkpoint) is not in {} and the network is off (HF_HUB_OFFLINE or \
                 OML_OFFLINE is set): download {} where there is network and copy it there, or \
                 pass a weights file",
                model.name,
                dir.display(),
                model.urls.first().map(String::as_str).unwrap_or("it")
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let mut errors = Vec::new();
        let mut done = false;
        for url in &model.urls {
            let url = if url.contains("://") {
                url.clone()
            } else {
                format!("{}/{}", hub.checkpoints_url, url.trim_start_matches('/'))
            };
            let part = dir.join(format!("{fname}.part"));
            match download_url(&url, &part, hub.timeout) {
                Ok(()) if good(&part)? => {
                    std::fs::rename(&part, &raw)
                        .map_err(|e| Error::io("cannot rename", &part, e))?;
                    origin = format!("downloaded from {url}");
                    done = true;
                    break;
                }
                Ok(()) => {
                    errors.push(format!(
                        "{url}: md5 {} does not start with OML's {hash} (incomplete or altered)",
                        md5_of(&part).unwrap_or_default()
                    ));
                    let _ = std::fs::remove_file(&part);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    errors.push(e.to_string());
                }
            }
        }
        if !done {
            return Err(Error::Msg(format!(
                "cannot download {} (OML's own checkpoint): {}. Check the network (or \
                 OML_CHECKPOINTS_URL), or put the file in {} by hand",
                model.name,
                errors.join("; "),
                dir.display()
            )));
        }
    }
    // Convert once: exactly the network's tensors, in OML's names.
    let varmap = crate::models::import(&model.spec()?, &raw)?;
    // Written aside, flushed, then renamed: a killed conversion leaves no torn file.
    crate::fsio::write_atomic(&converted, |tmp| {
        varmap
            .save(tmp)
            .map_err(|e| Error::Msg(format!("cannot write {}: {e}", tmp.display())))
    })?;
    Ok(Located {
        path: converted,
        origin: format!("{origin}, converted to {}", dir.display()),
    })
}

/// Downloads `url` into `path` with a progress line, failing after `timeout` without data.
fn download_url(url: &str, path: &Path, timeout: Duration) -> Result<()> {
    let fail = |why: String| Error::Msg(format!("{url}: {why}"));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .build();
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let total = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut reader = response.into_reader();
    let mut file = std::fs::File::create(path).map_err(|e| Error::io("cannot create", path, e))?;
    let mut progress = Progress::new(format!("downloading {url}"), total, "B");
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut file, &buf[..n])
            .map_err(|e| Error::io("cannot write", path, e))?;
        progress.inc(n as u64);
    }
    progress.finish();
    if total > 0 && progress.done() != total {
        return Err(fail(format!(
            "{} of {total} bytes before the connection ended",
            progress.done()
        )));
    }
    file.sync_all()
        .map_err(|e| Error::io("cannot write", path, e))
}

/// The weights file of a zoo model (see [`locate`]).
pub fn weights(model: &ZooModel, hub: &Hub) -> Result<PathBuf> {
    Ok(locate(model, hub)?.path)
}

/// Whether a zoo model's weights are in the cache.
pub fn is_cached(model: &ZooModel, hub: &Hub) -> bool {
    if model.is_oml_checkpoint() {
        return hub
            .oml_checkpoints
            .join(format!("{}.safetensors", model.name))
            .is_file();
    }
    hub.cached(&model.hub_repo, &model.revision, &model.hub_file)
        .is_some()
        || model
            .fallback_file
            .as_deref()
            .is_some_and(|f| hub.cached(&model.hub_repo, &model.revision, f).is_some())
}
