//! OML's `CategoryBalanceSampler` and `DistinctCategoryBalanceSampler`: batches of
//! `n_categories x n_labels x n_instances`, labels grouped by category (for example all the glyphs
//! of a few scripts in one batch, which makes the negatives harder).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::seq::IndexedRandom;

use super::{BatchSampler, check_labels_have_two, epoch_rng, smart_sample};
use crate::{Error, Result};

/// Common checks of OML's two category samplers; returns label -> indices and category -> labels.
#[allow(clippy::type_complexity)]
fn prepare(
    labels: &[usize],
    label2category: &HashMap<usize, String>,
    n_categories: usize,
    n_labels: usize,
    n_instances: usize,
) -> Result<(
    BTreeMap<usize, Vec<usize>>,
    BTreeMap<String, BTreeSet<usize>>,
)> {
    let label_ids = check_labels_have_two(labels)?;
    let mut category_labels: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (&l, c) in label2category {
        category_labels.entry(c.clone()).or_default().insert(l);
    }
    if !(1..=category_labels.len()).contains(&n_categories) {
        return Err(Error::param(
            "n_categories",
            n_categories,
            format!(
                "between 1 and the number of categories, {}",
                category_labels.len()
            ),
        ));
    }
    if !(2..=label_ids.len()).contains(&n_labels) {
        return Err(Error::param(
            "n_labels",
            n_labels,
            format!("between 2 and the number of labels, {}", label_ids.len()),
        ));
    }
    if n_instances < 2 {
        return Err(Error::param(
            "n_instances",
            n_instances,
            "at least 2 instances per label",
        ));
    }
    if let Some(l) = label_ids.keys().find(|l| !label2category.contains_key(l)) {
        return Err(Error::param(
            "label2category",
            format!("no category for label {l}"),
            "every label needs a category",
        ));
    }
    if let Some(l) = label2category.keys().find(|l| !label_ids.contains_key(l)) {
        return Err(Error::param(
            "label2category",
            format!("label {l} is not in the labels"),
            "only labels of the data",
        ));
    }
    Ok((label_ids, category_labels))
}

fn too_few_labels(
    category_labels: &BTreeMap<String, BTreeSet<usize>>,
    n_labels: usize,
) -> Result<()> {
    if let Some((c, ls)) = category_labels.iter().find(|(_, ls)| ls.len() < n_labels) {
        return Err(Error::param(
            "n_labels",
            n_labels,
            format!(
                "at most the labels of the smallest category ('{c}' has {}), or allow resampling",
                ls.len()
            ),
        ));
    }
    Ok(())
}

/// OML's `CategoryBalanceSampler`: each batch draws `n_categories` distinct categories (weighted by
/// their number of labels unless `weight_categories` is off), `n_labels` labels of each category and
/// `n_instances` samples of each label. An epoch has `ceil(L / n_labels)` batches.
#[derive(Debug, Clone)]
pub struct CategoryBalanceSampler {
    label_ids: BTreeMap<usize, Vec<usize>>,
    category_labels: Vec<(String, Vec<usize>)>,
    weights: Option<Vec<f64>>,
    n_categories: usize,
    n_labels: usize,
    n_instances: usize,
    seed: u64,
}

impl CategoryBalanceSampler {
    /// `resample_labels` allows categories with fewer than `n_labels` labels (labels then repeat);
    /// `weight_categories` draws categories in proportion to their number of labels (OML's
    /// defaults: `false`, `true`).
    pub fn new(
        labels: &[usize],
        label2category: &HashMap<usize, String>,
        n_categories: usize,
        n_labels: usize,
        n_instances: usize,
        resample_labels: bool,
        weight_categories: bool,
    ) -> Result<Self> {
        let (label_ids, category_labels) =
            prepare(labels, label2category, n_categories, n_labels, n_instances)?;
        if !resample_labels {
            too_few_labels(&category_labels, n_labels)?;
        }
        let total = label_ids.len() as f64;
        let weights = weight_categories.then(|| {
            category_labels
                .values()
                .map(|ls| ls.len() as f64 / total)
                .collect()
        });
        Ok(CategoryBalanceSampler {
            label_ids,
            category_labels: category_labels
                .into_iter()
                .map(|(c, ls)| (c, ls.into_iter().collect()))
                .collect(),
            weights,
            n_categories,
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

impl BatchSampler for CategoryBalanceSampler {
    fn len(&self) -> usize {
        self.label_ids.len().div_ceil(self.n_labels)
    }

    fn batch_size(&self) -> usize {
        self.n_categories * self.n_labels * self.n_instances
    }

    fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = epoch_rng(self.seed, epoch);
        let n_cat = self.category_labels.len();
        (0..self.len())
            .map(|_| {
                // Categories without replacement, weighted: draw one at a time, zeroing the drawn.
                let mut weights = self.weights.clone().unwrap_or_else(|| vec![1.0; n_cat]);
                let mut chosen = Vec::with_capacity(self.n_categories);
                for _ in 0..self.n_categories {
                    let k = match WeightedIndex::new(&weights) {
                        Ok(dist) => dist.sample(&mut rng),
                        Err(_) => (0..n_cat).find(|&k| !chosen.contains(&k)).unwrap_or(0),
                    };
                    weights[k] = 0.0;
                    chosen.push(k);
                }
                let mut batch = Vec::with_capacity(self.batch_size());
                for k in chosen {
                    let labels = smart_sample(&self.category_labels[k].1, self.n_labels, &mut rng);
                    for l in labels {
                        batch.extend(smart_sample(
                            &self.label_ids[&l],
                            self.n_instances,
                            &mut rng,
                        ));
                    }
                }
                batch
            })
            .collect()
    }
}

/// OML's `DistinctCategoryBalanceSampler`: like [`CategoryBalanceSampler`] (categories uniformly),
/// but labels are not repeated within a category until all of its labels have been used; when fewer
/// than `n_categories` categories have labels left, every category is refilled. An epoch has
/// `epoch_size` batches.
#[derive(Debug, Clone)]
pub struct DistinctCategoryBalanceSampler {
    label_ids: BTreeMap<usize, Vec<usize>>,
    category_labels: BTreeMap<String, BTreeSet<usize>>,
    n_categories: usize,
    n_labels: usize,
    n_instances: usize,
    epoch_size: usize,
    seed: u64,
}

impl DistinctCategoryBalanceSampler {
    /// Every category needs at least `n_labels` labels.
    pub fn new(
        labels: &[usize],
        label2category: &HashMap<usize, String>,
        n_categories: usize,
        n_labels: usize,
        n_instances: usize,
        epoch_size: usize,
    ) -> Result<Self> {
        let (label_ids, category_labels) =
            prepare(labels, label2category, n_categories, n_labels, n_instances)?;
        too_few_labels(&category_labels, n_labels)?;
        if epoch_size == 0 {
            return Err(Error::param(
                "epoch_size",
                epoch_size,
                "at least 1 batch per epoch",
            ));
        }
        Ok(DistinctCategoryBalanceSampler {
            label_ids,
            category_labels,
            n_categories,
            n_labels,
            n_instances,
            epoch_size,
            seed: 0,
        })
    }

    /// The same sampler with another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl BatchSampler for DistinctCategoryBalanceSampler {
    fn len(&self) -> usize {
        self.epoch_size
    }

    fn batch_size(&self) -> usize {
        self.n_categories * self.n_labels * self.n_instances
    }

    fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = epoch_rng(self.seed, epoch);
        let mut available = self.category_labels.clone();
        let mut used: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut epoch_batches = Vec::with_capacity(self.epoch_size);
        for _ in 0..self.epoch_size {
            if available.len() < self.n_categories {
                available = self.category_labels.clone();
                used.clear();
            }
            let names: Vec<String> = available.keys().cloned().collect();
            let categories: Vec<String> = names
                .choose_multiple(&mut rng, self.n_categories.min(names.len()))
                .cloned()
                .collect();
            let mut batch = Vec::with_capacity(self.batch_size());
            for category in categories {
                let left: Vec<usize> = available
                    .get(&category)
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default();
                let labels: Vec<usize> = if self.n_labels <= left.len() {
                    left.choose_multiple(&mut rng, self.n_labels)
                        .copied()
                        .collect()
                } else {
                    let old: Vec<usize> = used
                        .get(&category)
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    let mut labels = left.clone();
                    labels.extend(
                        old.choose_multiple(&mut rng, self.n_labels - left.len())
                            .copied(),
                    );
                    labels
                };
                for &l in &labels {
                    batch.extend(smart_sample(
                        &self.label_ids[&l],
                        self.n_instances,
                        &mut rng,
                    ));
                }
                if let Some(set) = available.get_mut(&category) {
                    for l in &labels {
                        set.remove(l);
                    }
                    if set.is_empty() {
                        available.remove(&category);
                    }
                }
                used.entry(category).or_default().extend(labels);
            }
            epoch_batches.push(batch);
        }
        epoch_batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// 4 categories with 3..6 labels of 2..5 samples each.
    fn data() -> (Vec<usize>, HashMap<usize, String>) {
        let mut labels = Vec::new();
        let mut l2c = HashMap::new();
        let mut label = 0;
        for (c, n_labels) in [3usize, 4, 5, 6].iter().enumerate() {
            for k in 0..*n_labels {
                for _ in 0..(2 + (k + c) % 4) {
                    labels.push(label);
                }
                l2c.insert(label, format!("cat{c}"));
                label += 1;
            }
        }
        (labels, l2c)
    }

    fn check_batch(
        batch: &[usize],
        labels: &[usize],
        l2c: &HashMap<usize, String>,
        nc: usize,
        nl: usize,
        ni: usize,
    ) {
        assert_eq!(batch.len(), nc * nl * ni);
        let mut per_cat: HashMap<&str, HashMap<usize, usize>> = HashMap::new();
        for &i in batch {
            *per_cat
                .entry(l2c[&labels[i]].as_str())
                .or_default()
                .entry(labels[i])
                .or_default() += 1;
        }
        assert_eq!(per_cat.len(), nc, "categories in a batch");
        for per_label in per_cat.values() {
            assert_eq!(per_label.len(), nl, "labels per category");
            assert!(per_label.values().all(|&n| n == ni), "instances per label");
        }
    }

    #[test]
    fn category_balance_invariants() {
        let (labels, l2c) = data();
        let s = CategoryBalanceSampler::new(&labels, &l2c, 2, 3, 2, false, true)
            .expect("sampler")
            .with_seed(4);
        assert_eq!(s.len(), 18usize.div_ceil(3));
        let epoch = s.batches(0);
        assert_eq!(epoch.len(), s.len());
        for b in &epoch {
            check_batch(b, &labels, &l2c, 2, 3, 2);
        }
        assert_eq!(epoch, s.clone().batches(0));
    }

    #[test]
    fn category_balance_errors() {
        let (labels, l2c) = data();
        let e = CategoryBalanceSampler::new(&labels, &l2c, 2, 4, 2, false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_labels") && e.contains("cat0"), "{e}");
        assert!(CategoryBalanceSampler::new(&labels, &l2c, 2, 4, 2, true, true).is_ok());
        let e = CategoryBalanceSampler::new(&labels, &l2c, 5, 2, 2, false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_categories"), "{e}");
        let mut partial = l2c.clone();
        partial.remove(&0);
        let e = CategoryBalanceSampler::new(&labels, &partial, 2, 2, 2, false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no category for label 0"), "{e}");
    }

    #[test]
    fn distinct_category_balance_uses_every_label_before_repeating() {
        let (labels, l2c) = data();
        let s = DistinctCategoryBalanceSampler::new(&labels, &l2c, 1, 3, 2, 30)
            .expect("sampler")
            .with_seed(2);
        let epoch = s.batches(0);
        assert_eq!(epoch.len(), 30);
        // The first floor(T / n_labels) batches of a category with T labels use distinct labels.
        let mut seen: HashMap<String, (usize, HashSet<usize>)> = HashMap::new();
        for b in &epoch {
            check_batch(b, &labels, &l2c, 1, 3, 2);
            let cat = l2c[&labels[b[0]]].clone();
            let total = l2c.values().filter(|c| **c == cat).count();
            let (count, used) = seen.entry(cat).or_default();
            *count += 1;
            if *count <= total / 3 {
                for &i in b {
                    used.insert(labels[i]);
                }
                assert_eq!(used.len(), *count * 3, "a label repeated too early");
            }
        }
        assert_eq!(seen.len(), 4, "every category visited in 30 batches");
    }
}
