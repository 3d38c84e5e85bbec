//! Samplers as data: what a config file and the trainer builder name, built over a train set when
//! a run starts.

use serde::{Deserialize, Serialize};

use super::{BalanceSampler, BatchSampler, CategoryBalanceSampler, DistinctCategoryBalanceSampler};
use crate::data::ImageLabeledDataset;
use crate::{Error, Result};

/// A batch sampler (OML's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum SamplerConfig {
    /// `n_labels` labels x `n_instances` images per batch: OML's `BalanceSampler`.
    Balance {
        /// Labels per batch.
        n_labels: usize,
        /// Images per label.
        n_instances: usize,
    },
    /// `n_categories` categories x `n_labels` labels x `n_instances` images: OML's
    /// `CategoryBalanceSampler` (needs the CSV's `category` column).
    CategoryBalance {
        /// Categories per batch.
        n_categories: usize,
        /// Labels per category.
        n_labels: usize,
        /// Images per label.
        n_instances: usize,
        /// Allow categories with fewer than `n_labels` labels (labels then repeat).
        #[serde(default)]
        resample_labels: bool,
        /// Draw categories in proportion to their number of labels.
        #[serde(default = "yes")]
        weight_categories: bool,
    },
    /// As `category_balance`, each label used once per epoch: OML's
    /// `DistinctCategoryBalanceSampler`.
    DistinctCategoryBalance {
        /// Categories per batch.
        n_categories: usize,
        /// Labels per category.
        n_labels: usize,
        /// Images per label.
        n_instances: usize,
        /// Batches per epoch.
        epoch_size: usize,
    },
}

fn yes() -> bool {
    true
}

impl Default for SamplerConfig {
    /// 8 labels x 4 images.
    fn default() -> Self {
        SamplerConfig::Balance {
            n_labels: 8,
            n_instances: 4,
        }
    }
}

impl SamplerConfig {
    /// `BalanceSampler(n_labels, n_instances)`.
    pub fn balance(n_labels: usize, n_instances: usize) -> Self {
        SamplerConfig::Balance {
            n_labels,
            n_instances,
        }
    }

    /// `CategoryBalanceSampler(n_categories, n_labels, n_instances)` with OML's defaults (no
    /// label resampling, categories weighted by their number of labels).
    pub fn category_balance(n_categories: usize, n_labels: usize, n_instances: usize) -> Self {
        SamplerConfig::CategoryBalance {
            n_categories,
            n_labels,
            n_instances,
            resample_labels: false,
            weight_categories: true,
        }
    }

    /// `DistinctCategoryBalanceSampler(n_categories, n_labels, n_instances, epoch_size)`.
    pub fn distinct_category_balance(
        n_categories: usize,
        n_labels: usize,
        n_instances: usize,
        epoch_size: usize,
    ) -> Self {
        SamplerConfig::DistinctCategoryBalance {
            n_categories,
            n_labels,
            n_instances,
            epoch_size,
        }
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        match self {
            SamplerConfig::Balance {
                n_labels,
                n_instances,
            } => n_labels * n_instances,
            SamplerConfig::CategoryBalance {
                n_categories,
                n_labels,
                n_instances,
                ..
            }
            | SamplerConfig::DistinctCategoryBalance {
                n_categories,
                n_labels,
                n_instances,
                ..
            } => n_categories * n_labels * n_instances,
        }
    }

    /// The sampler over `train`'s labels (and categories), seeded.
    pub fn build(&self, train: &ImageLabeledDataset, seed: u64) -> Result<Box<dyn BatchSampler>> {
        let categories = || -> Result<std::collections::HashMap<usize, String>> {
            let c = train.categories().ok_or_else(|| {
                Error::config(
                    "name",
                    format!(
                        "{}: the category samplers need the CSV's `category` column",
                        train.table().csv_path.display()
                    ),
                )
            })?;
            Ok(super::label_to_category(train.labels(), &c))
        };
        Ok(match self {
            SamplerConfig::Balance {
                n_labels,
                n_instances,
            } => Box::new(
                BalanceSampler::new(train.labels(), *n_labels, *n_instances)?.with_seed(seed),
            ),
            SamplerConfig::CategoryBalance {
                n_categories,
                n_labels,
                n_instances,
                resample_labels,
                weight_categories,
            } => Box::new(
                CategoryBalanceSampler::new(
                    train.labels(),
                    &categories()?,
                    *n_categories,
                    *n_labels,
                    *n_instances,
                    *resample_labels,
                    *weight_categories,
                )?
                .with_seed(seed),
            ),
            SamplerConfig::DistinctCategoryBalance {
                n_categories,
                n_labels,
                n_instances,
                epoch_size,
            } => Box::new(
                DistinctCategoryBalanceSampler::new(
                    train.labels(),
                    &categories()?,
                    *n_categories,
                    *n_labels,
                    *n_instances,
                    *epoch_size,
                )?
                .with_seed(seed),
            ),
        })
    }
}
