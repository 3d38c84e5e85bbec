//! OML's `BalanceSampler`: `n_labels` labels times `n_instances` instances per batch.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;

use super::{BatchSampler, check_labels_have_two, epoch_rng, smart_sample};
use crate::{Error, Result};

/// `n_labels x n_instances` per batch (the P x K sampling of "In Defense of the Triplet Loss").
///
/// An epoch draws labels without replacement, `n_labels` per batch, and has `L / n_labels` batches
/// (the `L % n_labels` labels left over are not visited in that epoch), so every label is seen at
/// most once per epoch. Each label gives `n_instances` distinct samples; a label with fewer takes all
/// of its samples and draws the rest with replacement.
#[derive(Debug, Clone)]
pub struct BalanceSampler {
    label_ids: BTreeMap<usize, Vec<usize>>,
    n_labels: usize,
    n_instances: usize,
    seed: u64,
}

impl BalanceSampler {
    /// A sampler over the per-item `labels` (e.g. [`crate::data::ImageLabeledDataset::labels`]).
    ///
    /// Errors: `n_labels < 2`, `n_instances < 2`, more labels asked than exist, a label with a single
    /// sample.
    pub fn new(labels: &[usize], n_labels: usize, n_instances: usize) -> Result<Self> {
        if n_labels < 2 {
            return Err(Error::param(
                "n_labels",
                n_labels,
                "at least 2 labels per batch",
            ));
        }
        if n_instances < 2 {
            return Err(Error::param(
                "n_instances",
                n_instances,
                "at least 2 instances per label",
            ));
        }
        let label_ids = check_labels_have_two(labels)?;
        if n_labels > label_ids.len() {
            return Err(Error::param(
                "n_labels",
                n_labels,
                format!(
                    "at most the number of labels in the data, {}",
                    label_ids.len()
                ),
            ));
        }
        Ok(BalanceSampler {
            label_ids,
            n_labels,
            n_instances,
            seed: 0,
        })
    }

    /// The same sampler with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl BatchSampler for BalanceSampler {
    fn len(&self) -> usize {
        self.label_ids.len() / self.n_labels
    }

    fn batch_size(&self) -> usize {
        self.n_labels * self.n_instances
    }

    fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = epoch_rng(self.seed, epoch);
        let mut labels: Vec<usize> = self.label_ids.keys().copied().collect();
        labels.shuffle(&mut rng);
        labels
            .chunks_exact(self.n_labels)
            .map(|chunk| {
                chunk
                    .iter()
                    .flat_map(|l| smart_sample(&self.label_ids[l], self.n_instances, &mut rng))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn labels(counts: &[usize]) -> Vec<usize> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(l, &n)| std::iter::repeat_n(l, n))
            .collect()
    }

    #[test]
    fn batches_have_n_labels_times_n_instances() {
        let labels = labels(&[5, 2, 7, 3, 9, 4, 2, 6, 3]);
        let s = BalanceSampler::new(&labels, 4, 3)
            .expect("sampler")
            .with_seed(1);
        let epoch = s.batches(0);
        assert_eq!(epoch.len(), 9 / 4);
        assert_eq!(s.len(), 2);
        let mut seen_labels = HashSet::new();
        for batch in &epoch {
            assert_eq!(batch.len(), 12);
            let mut per_label: HashMap<usize, Vec<usize>> = HashMap::new();
            for &i in batch {
                per_label.entry(labels[i]).or_default().push(i);
            }
            assert_eq!(per_label.len(), 4);
            for (l, ids) in per_label {
                assert!(seen_labels.insert(l), "label {l} twice in an epoch");
                assert_eq!(ids.len(), 3);
                let distinct: HashSet<_> = ids.iter().collect();
                // Enough samples: no repetition; too few (label 1, 6 have 2): all of them taken.
                assert_eq!(
                    distinct.len(),
                    labels.iter().filter(|&&x| x == l).count().min(3)
                );
            }
        }
    }

    #[test]
    fn same_seed_same_batches_other_seed_or_epoch_other_batches() {
        let labels = labels(&[4; 20]);
        let a = BalanceSampler::new(&labels, 5, 2)
            .expect("sampler")
            .with_seed(7);
        let b = BalanceSampler::new(&labels, 5, 2)
            .expect("sampler")
            .with_seed(7);
        let c = BalanceSampler::new(&labels, 5, 2)
            .expect("sampler")
            .with_seed(8);
        assert_eq!(a.batches(3), b.batches(3));
        assert_ne!(a.batches(3), c.batches(3));
        assert_ne!(a.batches(3), a.batches(4));
    }

    /// OML's `test_balance.py` invariants on 100 random cases (2-30 labels of 2-10 samples,
    /// n_labels in [2, max(2, L / 5)], n_instances in [2, max count]).
    #[test]
    fn oml_random_invariants() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        for case in 0..100 {
            let n_labels_total = rng.random_range(2..=30);
            let counts: Vec<usize> = (0..n_labels_total)
                .map(|_| rng.random_range(2..=10))
                .collect();
            let labels = labels(&counts);
            let n_labels = rng.random_range(2..=(n_labels_total / 5).max(2));
            let n_instances = rng.random_range(2..=*counts.iter().max().expect("counts"));
            let s = BalanceSampler::new(&labels, n_labels, n_instances)
                .expect("sampler")
                .with_seed(case);
            let epoch = s.batches(0);
            assert_eq!(s.len(), n_labels_total / n_labels);
            assert_eq!(epoch.len(), s.len());
            let mut seen = HashSet::new();
            let mut total = 0;
            for batch in &epoch {
                total += batch.len();
                assert_eq!(batch.len(), n_labels * n_instances);
                assert!(batch.iter().collect::<HashSet<_>>().len() >= 4);
                let mut per_label: HashMap<usize, usize> = HashMap::new();
                for &i in batch {
                    *per_label.entry(labels[i]).or_default() += 1;
                }
                assert_eq!(per_label.len(), n_labels);
                assert!(per_label.values().all(|&c| c == n_instances));
                for l in per_label.keys() {
                    assert!(seen.insert(*l), "label {l} in two batches of one epoch");
                }
            }
            assert!(n_labels_total - n_labels < seen.len() && seen.len() <= n_labels_total);
            assert_eq!(total, s.len() * n_labels * n_instances);
        }
    }

    #[test]
    fn bad_parameters_name_the_parameter() {
        let labels = labels(&[3, 3, 1]);
        let e = BalanceSampler::new(&labels, 2, 2).unwrap_err().to_string();
        assert!(e.contains("labels") && e.contains("label 2"), "{e}");
        let labels = self::labels(&[3, 3, 3]);
        for (nl, ni, name) in [
            (1, 2, "n_labels"),
            (2, 1, "n_instances"),
            (4, 2, "n_labels"),
        ] {
            let e = BalanceSampler::new(&labels, nl, ni)
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
