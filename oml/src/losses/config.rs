//! Losses and miners as data: what a config file, the trainer builder and the demo name, built
//! into a [`Criterion`] when a run starts (by the code that runs it: see [`crate::Model`] on why
//! notebooks need that).

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{
    AllTripletsMiner, ArcFaceLoss, ArcFaceLossWithMLP, Criterion, HardClusterMiner,
    HardTripletsMiner, MinerWithBank, NHardTripletsMiner, NRange, Reduction, SurrogatePrecision,
    TripletLossWithMiner, TripletMiner, TripletMinerWithMemory,
};
use crate::{Error, Result};

/// A triplet miner (OML's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum MinerConfig {
    /// Every triplet (optionally capped): OML's `AllTripletsMiner`.
    AllTriplets {
        /// Cap.
        #[serde(default)]
        max_output_triplets: Option<usize>,
    },
    /// Hardest positive and negative per anchor: `HardTripletsMiner`.
    HardTriplets,
    /// n hardest positives and negatives per anchor: `NHardTripletsMiner`.
    NHardTriplets {
        /// Positives (an int, or a 1-based `[lo, hi]`).
        n_positive: NRange,
        /// Negatives.
        n_negative: NRange,
    },
    /// Per-label means: `HardClusterMiner`.
    HardCluster,
    /// n-hard over the batch and a memory bank: `MinerWithBank`.
    MinerWithBank {
        /// Batches in the bank.
        bank_size_in_batches: usize,
        /// Positives.
        n_positive: NRange,
        /// Negatives.
        n_negative: NRange,
    },
    /// Triplets expanded with a memory bank: `TripletMinerWithMemory`.
    TripletMinerWithMemory {
        /// Batches in the bank.
        bank_size_in_batches: usize,
        /// Expansion factor.
        tri_expand_k: usize,
    },
}

impl MinerConfig {
    /// The miner (`seed` for the ones that draw at random).
    pub fn build(&self, seed: u64) -> Result<Box<dyn TripletMiner>> {
        Ok(match self {
            MinerConfig::AllTriplets {
                max_output_triplets,
            } => Box::new(AllTripletsMiner::new(*max_output_triplets, seed)),
            MinerConfig::HardTriplets => Box::new(HardTripletsMiner),
            MinerConfig::NHardTriplets {
                n_positive,
                n_negative,
            } => Box::new(NHardTripletsMiner {
                n_positive: *n_positive,
                n_negative: *n_negative,
            }),
            MinerConfig::HardCluster => Box::new(HardClusterMiner),
            MinerConfig::MinerWithBank {
                bank_size_in_batches,
                n_positive,
                n_negative,
            } => Box::new(MinerWithBank::new(
                *bank_size_in_batches,
                NHardTripletsMiner {
                    n_positive: *n_positive,
                    n_negative: *n_negative,
                },
            )?),
            MinerConfig::TripletMinerWithMemory {
                bank_size_in_batches,
                tri_expand_k,
            } => Box::new(TripletMinerWithMemory::new(
                *bank_size_in_batches,
                *tri_expand_k,
                seed,
            )?),
        })
    }
}

/// A loss (OML's names): what [`crate::train::Trainer`] trains with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum CriterionConfig {
    /// Triplet loss on mined triplets: `TripletLossWithMiner`.
    TripletWithMiner {
        /// Margin (`null`: the soft loss `log1p(exp(d_ap - d_an))`).
        margin: Option<f64>,
        /// The miner.
        miner: MinerConfig,
        /// Reduction (`mean` or `sum` for training).
        #[serde(default)]
        reduction: Reduction,
    },
    /// ArcFace over the train labels: `ArcFaceLoss`, or `ArcFaceLossWithMLP` with `mlp_features`.
    Arcface {
        /// Angular margin.
        #[serde(default = "arc_m")]
        m: f64,
        /// Scale.
        #[serde(default = "arc_s")]
        s: f64,
        /// Label smoothing.
        #[serde(default)]
        smoothing_epsilon: f64,
        /// An MLP between the embeddings and ArcFace (`ArcFaceLossWithMLP`); empty for none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mlp_features: Vec<usize>,
    },
    /// Smooth precision@k: `SurrogatePrecision`.
    SurrogatePrecision {
        /// k.
        k: usize,
        /// Top-k temperature.
        #[serde(default = "one")]
        temperature1: f64,
        /// Rank temperature.
        #[serde(default = "t2")]
        temperature2: f64,
    },
}

fn arc_m() -> f64 {
    0.5
}
fn arc_s() -> f64 {
    64.0
}
fn one() -> f64 {
    1.0
}
fn t2() -> f64 {
    0.01
}

/// What a loss needs to know about the run to be built.
#[derive(Debug, Clone, Default)]
pub struct CriterionContext {
    /// Length of the embeddings.
    pub feat_dim: usize,
    /// Number of train labels (ArcFace's classes).
    pub n_labels: usize,
    /// Seed for miners that draw at random.
    pub seed: u64,
}

impl Default for CriterionConfig {
    /// The soft triplet loss on the hardest triplets of each batch.
    fn default() -> Self {
        CriterionConfig::TripletWithMiner {
            margin: None,
            miner: MinerConfig::HardTriplets,
            reduction: Reduction::Mean,
        }
    }
}

impl CriterionConfig {
    /// `TripletLossWithMiner(margin, miner)`.
    pub fn triplet(margin: impl Into<Option<f64>>, miner: MinerConfig) -> Self {
        CriterionConfig::TripletWithMiner {
            margin: margin.into(),
            miner,
            reduction: Reduction::Mean,
        }
    }

    /// `TripletLossWithMiner(margin, HardTripletsMiner())`: the hardest positive and negative of
    /// every anchor.
    pub fn triplet_hard(margin: impl Into<Option<f64>>) -> Self {
        Self::triplet(margin, MinerConfig::HardTriplets)
    }

    /// `TripletLossWithMiner(margin, AllTripletsMiner())`.
    pub fn triplet_all(margin: impl Into<Option<f64>>) -> Self {
        Self::triplet(
            margin,
            MinerConfig::AllTriplets {
                max_output_triplets: None,
            },
        )
    }

    /// `ArcFaceLoss` with OML's defaults (m 0.5, s 64).
    pub fn arcface() -> Self {
        Self::arcface_with(arc_m(), arc_s())
    }

    /// `ArcFaceLoss` with angular margin `m` and scale `s`.
    pub fn arcface_with(m: f64, s: f64) -> Self {
        CriterionConfig::Arcface {
            m,
            s,
            smoothing_epsilon: 0.0,
            mlp_features: Vec::new(),
        }
    }

    /// `SurrogatePrecision(k)` with OML's temperatures.
    pub fn surrogate_precision(k: usize) -> Self {
        CriterionConfig::SurrogatePrecision {
            k,
            temperature1: one(),
            temperature2: t2(),
        }
    }

    /// Checks the values (a scalar loss for training, margins, k), naming the key.
    pub fn validate(&self) -> Result<()> {
        match self {
            CriterionConfig::TripletWithMiner { reduction, .. }
                if *reduction == Reduction::None =>
            {
                Err(Error::config(
                    "reduction",
                    "training needs a scalar loss (mean or sum)",
                ))
            }
            CriterionConfig::TripletWithMiner { margin, miner, .. } => {
                super::TripletLoss::new(*margin, Reduction::Mean)
                    .map_err(|e| Error::config("margin", e))?;
                miner.build(0).map_err(|e| Error::config("miner", e))?;
                Ok(())
            }
            CriterionConfig::Arcface {
                m, s, mlp_features, ..
            } => {
                if !(m.is_finite() && s.is_finite() && *s > 0.0) {
                    return Err(Error::config("s", "m and s must be finite, s > 0"));
                }
                if mlp_features.contains(&0) {
                    return Err(Error::config("mlp_features", "every layer size > 0"));
                }
                Ok(())
            }
            CriterionConfig::SurrogatePrecision { k, .. } => {
                SurrogatePrecision::new(*k).map_err(|e| Error::config("k", e))?;
                Ok(())
            }
        }
    }

    /// The loss, its parameters (ArcFace's class centres, an MLP) taken from `vb`.
    pub fn build(&self, ctx: &CriterionContext, vb: VarBuilder) -> Result<Box<dyn Criterion>> {
        self.validate()?;
        Ok(match self {
            CriterionConfig::TripletWithMiner {
                margin,
                miner,
                reduction,
            } => Box::new(TripletLossWithMiner::new(
                *margin,
                Some(miner.build(ctx.seed)?),
                *reduction,
            )?),
            CriterionConfig::Arcface {
                m,
                s,
                smoothing_epsilon,
                mlp_features,
            } if !mlp_features.is_empty() => Box::new(ArcFaceLossWithMLP::new(
                ctx.feat_dim,
                ctx.n_labels,
                mlp_features,
                *m,
                *s,
                *smoothing_epsilon,
                None,
                Reduction::Mean,
                vb,
            )?),
            CriterionConfig::Arcface {
                m,
                s,
                smoothing_epsilon,
                ..
            } => Box::new(ArcFaceLoss::new(
                ctx.feat_dim,
                ctx.n_labels,
                *m,
                *s,
                *smoothing_epsilon,
                None,
                Reduction::Mean,
                vb,
            )?),
            CriterionConfig::SurrogatePrecision {
                k,
                temperature1,
                temperature2,
            } => {
                let mut sp = SurrogatePrecision::new(*k)?;
                sp.temperature1 = *temperature1;
                sp.temperature2 = *temperature2;
                Box::new(sp)
            }
        })
    }

    /// A short name for reports (`triplet (margin 0.1, hard_triplets)`).
    pub fn describe(&self) -> String {
        match self {
            CriterionConfig::TripletWithMiner { margin, miner, .. } => {
                let miner = serde_json::to_value(miner)
                    .ok()
                    .and_then(|v| v.get("name").and_then(|n| n.as_str().map(str::to_owned)))
                    .unwrap_or_else(|| "miner".into());
                match margin {
                    Some(m) => format!("triplet loss (margin {m}, {miner})"),
                    None => format!("soft triplet loss ({miner})"),
                }
            }
            CriterionConfig::Arcface { m, s, .. } => format!("ArcFace (m {m}, s {s})"),
            CriterionConfig::SurrogatePrecision { k, .. } => format!("surrogate precision@{k}"),
        }
    }
}
