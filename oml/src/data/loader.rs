//! Batches of images as tensors: decoded in parallel (rayon), the next batch prepared on a
//! background thread while the current one is used, decoded images optionally cached in memory.
//!
//! Augmentations are seeded per item from `(seed, epoch, batch, position)`, so the same seed gives
//! the same batches whatever the number of threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dataset::ImageSource;
use super::transforms::Transform;
use crate::{Error, Result};

/// Settings of an [`ImageLoader`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Batches prepared ahead on a background thread (0: none, batches are made on demand).
    pub prefetch: usize,
    /// Keep decoded (and cropped) images in memory, so later epochs skip decoding.
    pub cache: bool,
    /// Seed of the augmentations.
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            prefetch: 1,
            cache: false,
            seed: 0,
        }
    }
}

/// One batch: the images `[B, 3, H, W]` (`f32`, on the loader's device, the CPU by default) and the dataset indices they came from.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Dataset indices, in batch order.
    pub indices: Vec<usize>,
    /// Images, `[B, 3, H, W]`, `f32`, normalised.
    pub images: Tensor,
}

type Cache = Mutex<HashMap<usize, Arc<RgbImage>>>;

/// Items that stand in for unreadable ones: those of the same label.
struct Substitutes {
    label_of: Vec<usize>,
    members: Vec<Vec<usize>>,
    /// Unreadable items met so far, with the error (in the order met).
    bad: Mutex<Vec<(usize, String)>>,
}

/// Turns lists of dataset indices (a sampler's batches) into image tensors. Cheap to clone.
#[derive(Clone)]
pub struct ImageLoader {
    source: Arc<dyn ImageSource>,
    transform: Arc<Transform>,
    config: LoaderConfig,
    cache: Arc<Cache>,
    substitutes: Option<Arc<Substitutes>>,
    device: Device,
}

impl ImageLoader {
    /// A loader over `source` that applies `transform` to every image; fails when the transform's
    /// parameters are invalid.
    pub fn new(
        source: Arc<dyn ImageSource>,
        transform: Transform,
        config: LoaderConfig,
    ) -> Result<Self> {
        transform.validate()?;
        Ok(ImageLoader {
            source,
            transform: Arc::new(transform),
            config,
            cache: Arc::new(Mutex::new(HashMap::new())),
            substitutes: None,
            device: Device::Cpu,
        })
    }

    /// Batches uploaded to `device` where they are made: on the prefetch thread, so that the
    /// thread that trains finds each batch on the device (the CPU by default).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// An item that cannot be read is replaced by the next readable item of the same label
    /// (`labels[i]` is item `i`'s label), in a fixed order, so a run with unreadable images gives
    /// the same batches whenever it is resumed. [`ImageLoader::unreadable`] lists what was
    /// replaced. Without this, an unreadable item is an error naming the file.
    pub fn skip_unreadable(mut self, labels: &[usize]) -> Result<Self> {
        if labels.len() != self.source.len() {
            return Err(Error::param(
                "labels",
                labels.len(),
                format!("one label per item ({} items)", self.source.len()),
            ));
        }
        let n = labels.iter().max().map_or(0, |m| m + 1);
        let mut members = vec![Vec::new(); n];
        for (i, &l) in labels.iter().enumerate() {
            members[l].push(i);
        }
        self.substitutes = Some(Arc::new(Substitutes {
            label_of: labels.to_vec(),
            members,
            bad: Mutex::new(Vec::new()),
        }));
        Ok(self)
    }

    /// The items found unreadable and replaced so far, with their files and errors, in the order
    /// met (see [`ImageLoader::skip_unreadable`]).
    pub fn unreadable(&self) -> Vec<(usize, PathBuf, String)> {
        self.substitutes.as_ref().map_or_else(Vec::new, |s| {
            s.bad
                .lock()
                .map(|b| {
                    b.iter()
                        .map(|(i, e)| (*i, self.source.image_path(*i), e.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Item `i`'s image, or with substitutes the first readable one of its label from `i` on.
    fn image_or_substitute(&self, i: usize) -> Result<Arc<RgbImage>> {
        let Some(subs) = &self.substitutes else {
            return self.image(i);
        };
        let known_bad = |j: usize| {
            subs.bad
                .lock()
                .map(|b| b.iter().any(|(k, _)| *k == j))
                .unwrap_or(false)
        };
        let group = &subs.members[subs.label_of[i]];
        let start = group.iter().position(|&j| j == i).unwrap_or(0);
        let mut first_error = None;
        for k in 0..group.len() {
            let j = group[(start + k) % group.len()];
            if known_bad(j) {
                continue;
            }
            match self.image(j) {
                Ok(img) => return Ok(img),
                Err(e) => {
                    if let Ok(mut b) = subs.bad.lock()
                        && !b.iter().any(|(x, _)| *x == j)
                    {
                        b.push((j, e.to_string()));
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(Error::Msg(format!(
            "no readable image of item {i}'s label: every one failed ({})",
            first_error.map_or_else(|| "all known unreadable".to_owned(), |e| e.to_string())
        )))
    }

    /// A loader over a dataset (any [`ImageSource`], cloned: datasets are cheap to clone).
    pub fn from_dataset<D: ImageSource + Clone + 'static>(
        dataset: &D,
        transform: Transform,
        config: LoaderConfig,
    ) -> Result<Self> {
        Self::new(Arc::new(dataset.clone()), transform, config)
    }

    /// The transform applied to every image.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Number of decoded images held in the cache.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn image(&self, i: usize) -> Result<Arc<RgbImage>> {
        if self.config.cache
            && let Some(img) = self.cache.lock().ok().and_then(|c| c.get(&i).cloned())
        {
            return Ok(img);
        }
        let img = Arc::new(self.source.load_image(i)?);
        if self.config.cache
            && let Ok(mut c) = self.cache.lock()
        {
            c.insert(i, img.clone());
        }
        Ok(img)
    }

    /// Decodes and transforms the items `indices` in parallel into one batch. `epoch` and `batch`
    /// only seed the augmentations.
    pub fn load_batch(&self, indices: &[usize], epoch: u64, batch: u64) -> Result<Batch> {
        if indices.is_empty() {
            return Err(Error::param(
                "indices",
                "[]",
                "a batch needs at least one index",
            ));
        }
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.source.len()) {
            return Err(Error::param(
                "indices",
                bad,
                format!("indices below the dataset length {}", self.source.len()),
            ));
        }
        let items: Vec<(Vec<f32>, u32, u32)> = indices
            .par_iter()
            .enumerate()
            .map(|(pos, &i)| {
                let img = self.image_or_substitute(i)?;
                let mut rng = ChaCha8Rng::seed_from_u64(item_seed(
                    self.config.seed,
                    epoch,
                    batch,
                    pos as u64,
                ));
                Ok(self.transform.apply(&img, &mut rng))
            })
            .collect::<Result<_>>()?;
        let (_, h, w) = items[0];
        if let Some((k, (_, h2, w2))) = items
            .iter()
            .enumerate()
            .find(|(_, it)| (it.1, it.2) != (h, w))
        {
            return Err(Error::Msg(format!(
                "transform '{}' gave images of different sizes ({h}x{w} and {h2}x{w2} for item {}); add a crop or an exact resize so a batch can be stacked",
                self.transform.name, indices[k]
            )));
        }
        let mut data = Vec::with_capacity(items.len() * items[0].0.len());
        for (chw, _, _) in &items {
            data.extend_from_slice(chw);
        }
        let images =
            Tensor::from_vec(data, (items.len(), 3, h as usize, w as usize), &Device::Cpu)?;
        let images = crate::host::upload(&images, &self.device, "loader: images")?;
        Ok(Batch {
            indices: indices.to_vec(),
            images,
        })
    }

    /// Iterates over `batches` (e.g. one epoch of a sampler), preparing up to `prefetch` batches
    /// ahead on a background thread. Dropping the iterator stops the thread.
    pub fn iter(&self, batches: Vec<Vec<usize>>, epoch: u64) -> BatchIter {
        self.iter_from(batches, epoch, 0)
    }

    /// As [`ImageLoader::iter`] for the batches of an epoch from batch `first` on (a resumed
    /// run): batch `i` of `batches` gets the augmentations of batch `first + i` of the epoch.
    pub fn iter_from(&self, batches: Vec<Vec<usize>>, epoch: u64, first: usize) -> BatchIter {
        if self.config.prefetch == 0 {
            return BatchIter {
                inner: Inner::Direct {
                    loader: self.clone(),
                    batches: batches.into_iter().enumerate(),
                    epoch,
                    first,
                },
            };
        }
        // The channel holds `prefetch - 1` batches; the thread prepares one more while blocked.
        let (tx, rx) = sync_channel(self.config.prefetch - 1);
        let loader = self.clone();
        let recorder = crate::host::Inherited::here();
        let handle = std::thread::spawn(move || {
            recorder.install();
            for (b, indices) in batches.iter().enumerate() {
                let batch = loader.load_batch(indices, epoch, (first + b) as u64);
                let stop = batch.is_err();
                if tx.send(batch).is_err() || stop {
                    break;
                }
            }
        });
        BatchIter {
            inner: Inner::Prefetch(rx, Some(handle)),
        }
    }
}

fn item_seed(seed: u64, epoch: u64, batch: u64, pos: u64) -> u64 {
    // SplitMix64 steps: different inputs give unrelated seeds.
    let mut z = seed;
    for v in [epoch, batch, pos] {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(v);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

enum Inner {
    Prefetch(Receiver<Result<Batch>>, Option<std::thread::JoinHandle<()>>),
    Direct {
        loader: ImageLoader,
        batches: std::iter::Enumerate<std::vec::IntoIter<Vec<usize>>>,
        epoch: u64,
        first: usize,
    },
}

/// Iterator over prepared batches; see [`ImageLoader::iter`].
pub struct BatchIter {
    inner: Inner,
}

impl Iterator for BatchIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Prefetch(rx, handle) => match rx.recv() {
                Ok(batch) => Some(batch),
                // The thread is done: normally, or by a panic, which must not pass for the end of
                // the epoch.
                Err(_) => match handle.take().map(std::thread::JoinHandle::join) {
                    Some(Err(_)) => Some(Err(Error::Msg(
                        "the batch-loading thread panicked; the epoch is incomplete".to_owned(),
                    ))),
                    _ => None,
                },
            },
            Inner::Direct {
                loader,
                batches,
                epoch,
                first,
            } => {
                let (b, indices) = batches.next()?;
                Some(loader.load_batch(&indices, *epoch, (*first + b) as u64))
            }
        }
    }
}
