//! Losses and miners as data: what a config file, the trainer builder and the demo name, built
//! into a [`Criterion`] when a run starts (by the code that runs it: see [`crate::Model`] on why
//! notebooks need that).

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::pml::TakesMiner;
use super::pml_miners::{OmlIndexMiner, PmlAsTripletMiner};
use super::{
    AllTripletsMiner, ArcFaceLoss, ArcFaceLossWithMLP, BatchEasyHardMiner, BatchHardMiner,
    ContrastiveLoss, CosFaceLoss, Criterion, HardClusterMiner, HardTripletsMiner, MinerWithBank,
    MultiSimilarityLoss, MultiSimilarityMiner, NHardTripletsMiner, NRange, NTXentLoss, PmlMiner,
    ProxyAnchorLoss, Reduction, Strategy, SubCenterArcFaceLoss, SupConLoss, SurrogatePrecision,
    TripletLossWithMiner, TripletMarginMiner, TripletMiner, TripletMinerWithMemory, TripletType,
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
    /// PML's `BatchHardMiner`: the farthest positive and closest negative of every anchor
    /// (distances between normalised embeddings).
    BatchHard,
    /// PML's `BatchEasyHardMiner`: one positive and one negative per anchor, each by a strategy
    /// (`hard`, `semihard`, `easy`, `all`).
    BatchEasyHard {
        /// How positives are picked (PML's default `easy`).
        #[serde(default = "easy")]
        pos_strategy: Strategy,
        /// How negatives are picked (`semihard`).
        #[serde(default = "semihard")]
        neg_strategy: Strategy,
        /// Only positives at distances in `[lo, hi]`.
        #[serde(default)]
        allowed_pos_range: Option<(f64, f64)>,
        /// Only negatives at distances in `[lo, hi]`.
        #[serde(default)]
        allowed_neg_range: Option<(f64, f64)>,
    },
    /// PML's `TripletMarginMiner`: the triplets whose margin `d(a, n) - d(a, p)` is at most
    /// `margin` (`all`), and at most 0 (`hard`), above 0 (`semihard`), or above `margin` (`easy`).
    TripletMargin {
        /// The margin (0.2).
        #[serde(default = "tm_margin")]
        margin: f64,
        /// Which triplets (`all`).
        #[serde(default)]
        type_of_triplets: TripletType,
    },
    /// PML's `MultiSimilarityMiner`: pairs harder than the anchor's hardest pair of the other
    /// kind, with a slack `epsilon` (cosine similarity).
    MultiSimilarity {
        /// The slack (0.1).
        #[serde(default = "ms_epsilon")]
        epsilon: f64,
    },
}

fn triplet_margin_miner(margin: f64, type_of_triplets: TripletType) -> Result<TripletMarginMiner> {
    if !margin.is_finite() {
        return Err(Error::config("margin", "a finite number"));
    }
    Ok(TripletMarginMiner {
        margin,
        type_of_triplets,
    })
}

fn multi_similarity_miner(epsilon: f64) -> Result<MultiSimilarityMiner> {
    if !epsilon.is_finite() {
        return Err(Error::config("epsilon", "a finite number"));
    }
    Ok(MultiSimilarityMiner { epsilon })
}

fn easy() -> Strategy {
    Strategy::Easy
}
fn semihard() -> Strategy {
    Strategy::Semihard
}
fn tm_margin() -> f64 {
    0.2
}
fn ms_epsilon() -> f64 {
    0.1
}

impl MinerConfig {
    /// PML's `BatchHardMiner()`.
    pub fn batch_hard() -> Self {
        MinerConfig::BatchHard
    }

    /// PML's `BatchEasyHardMiner()` with its defaults (easy positives, semi-hard negatives).
    pub fn batch_easy_hard() -> Self {
        MinerConfig::BatchEasyHard {
            pos_strategy: Strategy::Easy,
            neg_strategy: Strategy::Semihard,
            allowed_pos_range: None,
            allowed_neg_range: None,
        }
    }

    /// PML's `TripletMarginMiner(margin, type_of_triplets)`.
    pub fn triplet_margin(margin: f64, type_of_triplets: TripletType) -> Self {
        MinerConfig::TripletMargin {
            margin,
            type_of_triplets,
        }
    }

    /// PML's `MultiSimilarityMiner(epsilon)`.
    pub fn multi_similarity(epsilon: f64) -> Self {
        MinerConfig::MultiSimilarity { epsilon }
    }

    /// The miner as PML's losses take it: PML's miners, or OML's all, hard and n-hard triplets.
    /// The miners with a memory bank (and hard-cluster, which returns no rows) work only with
    /// `triplet_with_miner`.
    pub fn build_pml(&self, seed: u64) -> Result<Box<dyn PmlMiner>> {
        Ok(match self {
            MinerConfig::BatchHard => Box::new(BatchHardMiner),
            MinerConfig::BatchEasyHard {
                pos_strategy,
                neg_strategy,
                allowed_pos_range,
                allowed_neg_range,
            } => Box::new(BatchEasyHardMiner::new(
                *pos_strategy,
                *neg_strategy,
                *allowed_pos_range,
                *allowed_neg_range,
            )?),
            MinerConfig::TripletMargin {
                margin,
                type_of_triplets,
            } => Box::new(triplet_margin_miner(*margin, *type_of_triplets)?),
            MinerConfig::MultiSimilarity { epsilon } => Box::new(multi_similarity_miner(*epsilon)?),
            MinerConfig::AllTriplets {
                max_output_triplets: Some(_),
            } => {
                return Err(Error::config(
                    "max_output_triplets",
                    "a capped all_triplets draws a random subset and keeps a counter that only \
                     triplet_with_miner saves with a checkpoint; with this loss leave the cap out",
                ));
            }
            MinerConfig::AllTriplets {
                max_output_triplets: None,
            } => Box::new(OmlIndexMiner(Box::new(AllTripletsMiner::new(None, seed)))),
            MinerConfig::HardTriplets => Box::new(OmlIndexMiner(Box::new(HardTripletsMiner))),
            MinerConfig::NHardTriplets {
                n_positive,
                n_negative,
            } => Box::new(OmlIndexMiner(Box::new(NHardTripletsMiner {
                n_positive: *n_positive,
                n_negative: *n_negative,
            }))),
            MinerConfig::HardCluster
            | MinerConfig::MinerWithBank { .. }
            | MinerConfig::TripletMinerWithMemory { .. } => {
                let what = match self {
                    MinerConfig::HardCluster => "returns per-label means, not rows of the batch",
                    _ => "mines from a memory bank beyond the batch's rows",
                };
                return Err(Error::config(
                    "name",
                    format!(
                        "`{}` {what}: it works only with the loss `triplet_with_miner`; with this \
                         loss use batch_hard, batch_easy_hard, triplet_margin, multi_similarity, \
                         all_triplets, hard_triplets or n_hard_triplets",
                        self.name()
                    ),
                ));
            }
        })
    }

    /// The config name (`hard_triplets`).
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("name").and_then(|n| n.as_str().map(str::to_owned)))
            .unwrap_or_else(|| "miner".into())
    }

    /// The miner (`seed` for the ones that draw at random).
    pub fn build(&self, seed: u64) -> Result<Box<dyn TripletMiner>> {
        Ok(match self {
            MinerConfig::BatchHard
            | MinerConfig::BatchEasyHard { .. }
            | MinerConfig::TripletMargin { .. }
            | MinerConfig::MultiSimilarity { .. } => {
                Box::new(PmlAsTripletMiner(self.build_pml(seed)?))
            }
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
    /// PML's `ContrastiveLoss`: positive pairs pulled within `pos_margin`, negative pairs pushed
    /// beyond `neg_margin` (distances between normalised embeddings).
    Contrastive {
        /// PML's default 0.
        #[serde(default)]
        pos_margin: f64,
        /// PML's default 1.
        #[serde(default = "one")]
        neg_margin: f64,
        /// Which pairs (every pair of the batch when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
    /// PML's `MultiSimilarityLoss` (cosine similarity).
    MultiSimilarity {
        /// Weight of positive pairs (2).
        #[serde(default = "ms_alpha")]
        alpha: f64,
        /// Weight of negative pairs (50).
        #[serde(default = "ms_beta")]
        beta: f64,
        /// Similarity offset (0.5).
        #[serde(default = "half")]
        base: f64,
        /// Which pairs (every pair when absent; PML pairs it with `multi_similarity`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
    /// PML's `SupConLoss` (supervised contrastive, cosine similarity).
    #[serde(rename = "supcon")]
    SupCon {
        /// Temperature (0.1).
        #[serde(default = "supcon_t")]
        temperature: f64,
        /// Which pairs (every pair when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
    /// PML's `NTXentLoss` (InfoNCE over the batch, cosine similarity).
    #[serde(rename = "ntxent")]
    NtXent {
        /// Temperature (0.07).
        #[serde(default = "ntxent_t")]
        temperature: f64,
        /// Which pairs (every pair when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
    /// PML's `ProxyAnchorLoss`: one trainable proxy per train label.
    ProxyAnchor {
        /// Margin (0.1).
        #[serde(default = "pa_margin")]
        margin: f64,
        /// Scale (32).
        #[serde(default = "pa_alpha")]
        alpha: f64,
        /// The proxies' learning rate over the base (100, as in the Proxy-Anchor paper).
        #[serde(default = "hundred")]
        lr_scale: f64,
        /// Weights samples by how often a miner picks them (none: all equal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
    /// PML's `CosFaceLoss`: a cosine margin on trainable class centres.
    #[serde(rename = "cosface")]
    CosFace {
        /// Margin (0.35).
        #[serde(default = "cosface_margin")]
        margin: f64,
        /// Scale (64).
        #[serde(default = "arc_s")]
        scale: f64,
        /// The centres' learning rate over the base (1).
        #[serde(default = "one")]
        lr_scale: f64,
        /// Weights samples by how often a miner picks them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
    /// PML's `SubCenterArcFaceLoss`: ArcFace with `sub_centers` centres per class.
    SubCenterArcface {
        /// Angular margin in degrees (28.6).
        #[serde(default = "subcenter_margin")]
        margin: f64,
        /// Scale (64).
        #[serde(default = "arc_s")]
        scale: f64,
        /// Centres per class (3).
        #[serde(default = "three")]
        sub_centers: usize,
        /// The centres' learning rate over the base (1).
        #[serde(default = "one")]
        lr_scale: f64,
        /// Weights samples by how often a miner picks them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        miner: Option<MinerConfig>,
    },
}

fn ms_alpha() -> f64 {
    2.0
}
fn ms_beta() -> f64 {
    50.0
}
fn half() -> f64 {
    0.5
}
fn supcon_t() -> f64 {
    0.1
}
fn ntxent_t() -> f64 {
    0.07
}
fn pa_margin() -> f64 {
    0.1
}
fn pa_alpha() -> f64 {
    32.0
}
fn hundred() -> f64 {
    100.0
}
fn cosface_margin() -> f64 {
    0.35
}
fn subcenter_margin() -> f64 {
    28.6
}
fn three() -> usize {
    3
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

    /// `ArcFaceLossWithMLP`: an MLP of `mlp_features` between the embeddings and ArcFace (OML's
    /// defaults m 0.5, s 64).
    pub fn arcface_with_mlp(mlp_features: &[usize]) -> Self {
        CriterionConfig::Arcface {
            m: arc_m(),
            s: arc_s(),
            smoothing_epsilon: 0.0,
            mlp_features: mlp_features.to_vec(),
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

    /// PML's `ContrastiveLoss()` (margins 0 and 1).
    pub fn contrastive() -> Self {
        CriterionConfig::Contrastive {
            pos_margin: 0.0,
            neg_margin: 1.0,
            miner: None,
        }
    }

    /// PML's `MultiSimilarityLoss()` with `MultiSimilarityMiner(0.1)`, as PML's docs pair them.
    pub fn multi_similarity() -> Self {
        CriterionConfig::MultiSimilarity {
            alpha: ms_alpha(),
            beta: ms_beta(),
            base: half(),
            miner: Some(MinerConfig::multi_similarity(0.1)),
        }
    }

    /// PML's `SupConLoss(temperature)`.
    pub fn supcon(temperature: f64) -> Self {
        CriterionConfig::SupCon {
            temperature,
            miner: None,
        }
    }

    /// PML's `NTXentLoss(temperature)`.
    pub fn ntxent(temperature: f64) -> Self {
        CriterionConfig::NtXent {
            temperature,
            miner: None,
        }
    }

    /// PML's `ProxyAnchorLoss()` (margin 0.1, alpha 32), proxies at 100x the base learning rate.
    pub fn proxy_anchor() -> Self {
        CriterionConfig::ProxyAnchor {
            margin: pa_margin(),
            alpha: pa_alpha(),
            lr_scale: hundred(),
            miner: None,
        }
    }

    /// PML's `CosFaceLoss(margin, scale)`.
    pub fn cosface(margin: f64, scale: f64) -> Self {
        CriterionConfig::CosFace {
            margin,
            scale,
            lr_scale: 1.0,
            miner: None,
        }
    }

    /// PML's `SubCenterArcFaceLoss(margin (degrees), scale, sub_centers)`.
    pub fn sub_center_arcface(margin: f64, scale: f64, sub_centers: usize) -> Self {
        CriterionConfig::SubCenterArcface {
            margin,
            scale,
            sub_centers,
            lr_scale: 1.0,
            miner: None,
        }
    }

    /// The same loss with `miner` (the triplet loss's miner replaced; PML's losses take its
    /// pairs or weights). ArcFace and surrogate precision take no miner: for them this changes
    /// nothing.
    pub fn with_miner(mut self, miner: MinerConfig) -> Self {
        match &mut self {
            CriterionConfig::TripletWithMiner { miner: m, .. } => *m = miner,
            CriterionConfig::Contrastive { miner: m, .. }
            | CriterionConfig::MultiSimilarity { miner: m, .. }
            | CriterionConfig::SupCon { miner: m, .. }
            | CriterionConfig::NtXent { miner: m, .. }
            | CriterionConfig::ProxyAnchor { miner: m, .. }
            | CriterionConfig::CosFace { miner: m, .. }
            | CriterionConfig::SubCenterArcface { miner: m, .. } => *m = Some(miner),
            CriterionConfig::Arcface { .. } | CriterionConfig::SurrogatePrecision { .. } => {}
        }
        self
    }

    /// The learning rate of the loss's own parameters over the base.
    pub fn lr_scale(&self) -> f64 {
        match self {
            CriterionConfig::ProxyAnchor { lr_scale, .. }
            | CriterionConfig::CosFace { lr_scale, .. }
            | CriterionConfig::SubCenterArcface { lr_scale, .. } => *lr_scale,
            _ => 1.0,
        }
    }

    /// Whether the loss has trainable parameters of its own (class centres, proxies, an MLP).
    pub fn has_parameters(&self) -> bool {
        matches!(
            self,
            CriterionConfig::Arcface { .. }
                | CriterionConfig::ProxyAnchor { .. }
                | CriterionConfig::CosFace { .. }
                | CriterionConfig::SubCenterArcface { .. }
        )
    }

    fn pml_miner(miner: &Option<MinerConfig>, seed: u64) -> Result<Option<Box<dyn PmlMiner>>> {
        miner
            .as_ref()
            .map(|m| m.build_pml(seed).map_err(|e| e.at("miner")))
            .transpose()
    }

    /// Checks the values (a scalar loss for training, margins, k), naming the key.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &'static str, v: f64| -> Result<()> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::config(key, format!("a positive number; got {v}")))
            }
        };
        let finite = |key: &'static str, v: f64| -> Result<()> {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::config(key, format!("a finite number; got {v}")))
            }
        };
        match self {
            CriterionConfig::Contrastive {
                pos_margin,
                neg_margin,
                miner,
            } => {
                finite("pos_margin", *pos_margin)?;
                finite("neg_margin", *neg_margin)?;
                Self::pml_miner(miner, 0).map(|_| ())
            }
            CriterionConfig::MultiSimilarity {
                alpha,
                beta,
                base,
                miner,
            } => {
                positive("alpha", *alpha)?;
                positive("beta", *beta)?;
                finite("base", *base)?;
                Self::pml_miner(miner, 0).map(|_| ())
            }
            CriterionConfig::SupCon { temperature, miner }
            | CriterionConfig::NtXent { temperature, miner } => {
                positive("temperature", *temperature)?;
                Self::pml_miner(miner, 0).map(|_| ())
            }
            CriterionConfig::ProxyAnchor {
                margin,
                alpha,
                lr_scale,
                miner,
            } => {
                finite("margin", *margin)?;
                positive("alpha", *alpha)?;
                positive("lr_scale", *lr_scale)?;
                Self::pml_miner(miner, 0).map(|_| ())
            }
            CriterionConfig::CosFace {
                margin,
                scale,
                lr_scale,
                miner,
            } => {
                finite("margin", *margin)?;
                positive("scale", *scale)?;
                positive("lr_scale", *lr_scale)?;
                Self::pml_miner(miner, 0).map(|_| ())
            }
            CriterionConfig::SubCenterArcface {
                margin,
                scale,
                sub_centers,
                lr_scale,
                miner,
            } => {
                if !(0.0..180.0).contains(margin) {
                    return Err(Error::config(
                        "margin",
                        format!("an angle in degrees in [0, 180); got {margin}"),
                    ));
                }
                positive("scale", *scale)?;
                positive("lr_scale", *lr_scale)?;
                if *sub_centers == 0 {
                    return Err(Error::config("sub_centers", "at least 1"));
                }
                Self::pml_miner(miner, 0).map(|_| ())
            }
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
            CriterionConfig::Contrastive {
                pos_margin,
                neg_margin,
                miner,
            } => ContrastiveLoss::new(*pos_margin, *neg_margin)?
                .boxed_with(Self::pml_miner(miner, ctx.seed)?),
            CriterionConfig::MultiSimilarity {
                alpha,
                beta,
                base,
                miner,
            } => MultiSimilarityLoss::new(*alpha, *beta, *base)?
                .boxed_with(Self::pml_miner(miner, ctx.seed)?),
            CriterionConfig::SupCon { temperature, miner } => {
                SupConLoss::new(*temperature)?.boxed_with(Self::pml_miner(miner, ctx.seed)?)
            }
            CriterionConfig::NtXent { temperature, miner } => {
                NTXentLoss::new(*temperature)?.boxed_with(Self::pml_miner(miner, ctx.seed)?)
            }
            CriterionConfig::ProxyAnchor {
                margin,
                alpha,
                miner,
                ..
            } => ProxyAnchorLoss::new(ctx.n_labels, ctx.feat_dim, *margin, *alpha, vb)?
                .boxed_with(Self::pml_miner(miner, ctx.seed)?),
            CriterionConfig::CosFace {
                margin,
                scale,
                miner,
                ..
            } => CosFaceLoss::new(ctx.n_labels, ctx.feat_dim, *margin, *scale, vb)?
                .boxed_with(Self::pml_miner(miner, ctx.seed)?),
            CriterionConfig::SubCenterArcface {
                margin,
                scale,
                sub_centers,
                miner,
                ..
            } => SubCenterArcFaceLoss::new(
                ctx.n_labels,
                ctx.feat_dim,
                *margin,
                *scale,
                *sub_centers,
                vb,
            )?
            .boxed_with(Self::pml_miner(miner, ctx.seed)?),
        })
    }

    /// A short name for reports (`triplet (margin 0.1, hard_triplets)`).
    pub fn describe(&self) -> String {
        match self {
            CriterionConfig::TripletWithMiner { margin, miner, .. } => {
                let miner = miner.name();
                match margin {
                    Some(m) => format!("triplet loss (margin {m}, {miner})"),
                    None => format!("soft triplet loss ({miner})"),
                }
            }
            CriterionConfig::Arcface { m, s, .. } => format!("ArcFace (m {m}, s {s})"),
            CriterionConfig::SurrogatePrecision { k, .. } => format!("surrogate precision@{k}"),
            CriterionConfig::Contrastive {
                pos_margin,
                neg_margin,
                miner,
            } => format!(
                "contrastive loss (margins {pos_margin}/{neg_margin}{})",
                miner_note(miner, ", ", "")
            ),
            CriterionConfig::MultiSimilarity { miner, .. } => {
                format!("multi-similarity loss{}", miner_note(miner, " (", ")"))
            }
            CriterionConfig::SupCon { temperature, miner } => {
                format!("SupCon (t {temperature}{})", miner_note(miner, ", ", ""))
            }
            CriterionConfig::NtXent { temperature, miner } => {
                format!("NT-Xent (t {temperature}{})", miner_note(miner, ", ", ""))
            }
            CriterionConfig::ProxyAnchor { margin, alpha, .. } => {
                format!("Proxy-Anchor (margin {margin}, alpha {alpha})")
            }
            CriterionConfig::CosFace { margin, scale, .. } => {
                format!("CosFace (m {margin}, s {scale})")
            }
            CriterionConfig::SubCenterArcface {
                margin,
                scale,
                sub_centers,
                ..
            } => format!("sub-center ArcFace (m {margin} deg, s {scale}, {sub_centers} centres)"),
        }
    }
}

/// The miner's name between `open` and `close`, or nothing.
fn miner_note(miner: &Option<MinerConfig>, open: &str, close: &str) -> String {
    miner
        .as_ref()
        .map(|m| format!("{open}{}{close}", m.name()))
        .unwrap_or_default()
}
