//! Batch samplers: which dataset indices form each batch. OML's semantics, each sampler with its
//! own seed.
//!
//! A sampler is a pure function of `(seed, epoch)`: `batches(epoch)` gives the same batches for the
//! same seed and epoch, on any machine and any number of threads, which makes resuming a run exact.
//! The random streams differ from Python's numpy, so batches are not the same as OML's; their
//! distribution and every invariant of OML's sampler tests are.

mod balance;
mod category_balance;
mod config;

pub use balance::BalanceSampler;
pub use category_balance::{CategoryBalanceSampler, DistinctCategoryBalanceSampler};
pub use config::SamplerConfig;

use std::collections::{BTreeMap, HashMap};

use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

/// Something that forms the batches of an epoch.
pub trait BatchSampler: Send + Sync {
    /// Batches in an epoch.
    fn len(&self) -> usize;
    /// Whether an epoch has no batches.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Items in a batch.
    fn batch_size(&self) -> usize;
    /// The batches of epoch `epoch` (dataset indices), determined by the sampler's seed and `epoch`.
    fn batches(&self, epoch: u64) -> Vec<Vec<usize>>;
}

fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    rng
}

/// Indices of every label, labels in sorted order.
fn label_to_indices(labels: &[usize]) -> BTreeMap<usize, Vec<usize>> {
    let mut map: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        map.entry(l).or_default().push(i);
    }
    map
}

/// OML's `smart_sample`: `k` distinct items when there are enough; otherwise all of them (shuffled)
/// and the rest drawn with replacement.
fn smart_sample<T: Copy>(items: &[T], k: usize, rng: &mut ChaCha8Rng) -> Vec<T> {
    if items.len() >= k {
        items.choose_multiple(rng, k).copied().collect()
    } else {
        let mut out: Vec<T> = items.to_vec();
        out.shuffle(rng);
        for _ in items.len()..k {
            if let Some(&x) = items.choose(rng) {
                out.push(x);
            }
        }
        out
    }
}

fn check_labels_have_two(labels: &[usize]) -> crate::Result<BTreeMap<usize, Vec<usize>>> {
    let map = label_to_indices(labels);
    if let Some((l, ids)) = map.iter().find(|(_, ids)| ids.len() < 2) {
        return Err(crate::Error::param(
            "labels",
            format!("label {l} with {} sample(s)", ids.len()),
            "every label needs at least 2 samples (a positive pair)",
        ));
    }
    Ok(map)
}

/// Category of every label, from per-item labels and categories (as datasets give them).
pub fn label_to_category(labels: &[usize], categories: &[String]) -> HashMap<usize, String> {
    labels
        .iter()
        .zip(categories)
        .map(|(&l, c)| (l, c.clone()))
        .collect()
}
