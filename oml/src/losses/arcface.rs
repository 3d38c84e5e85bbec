//! ArcFace (additive angular margin) with OML's semantics, label smoothing and its
//! category-aware variant, and the MLP-headed version.

use std::collections::BTreeMap;

use candle_core::{D, DType, Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use super::{Criterion, LossOutput, Reduction, reduce};
use crate::{Error, Result};

/// OML's `label_smoothing`: one-hot targets `[B, C]` moved by `epsilon` towards uniform, over all
/// classes or, with `categories` (a category id per class), over the classes of the label's
/// category only. Rows sum to 1.
pub fn label_smoothing(
    labels: &[usize],
    num_classes: usize,
    epsilon: f64,
    categories: Option<&[usize]>,
) -> Result<Vec<f32>> {
    if !(0.0..1.0).contains(&epsilon) {
        return Err(Error::param(
            "smoothing_epsilon",
            epsilon,
            "0 <= epsilon < 1",
        ));
    }
    let eps = epsilon as f32;
    let mut out = vec![0f32; labels.len() * num_classes];
    for (i, &y) in labels.iter().enumerate() {
        if y >= num_classes {
            return Err(Error::Msg(format!(
                "label {y} >= num_classes {num_classes}"
            )));
        }
        let row = &mut out[i * num_classes..(i + 1) * num_classes];
        match categories {
            None => {
                for v in row.iter_mut() {
                    *v = eps / num_classes as f32;
                }
            }
            Some(cat) => {
                let same = cat.iter().filter(|&&c| c == cat[y]).count() as f32;
                for (c, v) in row.iter_mut().enumerate() {
                    *v = if cat[c] == cat[y] { eps / same } else { 0.0 };
                }
            }
        }
        row[y] += 1.0 - eps;
    }
    Ok(out)
}

/// ArcFace: `cos = normalise(x) normalise(W)^T`, the target logit replaced by `cos(theta + m)`
/// (or `cos - m sin(m)` past the threshold), everything scaled by `s`, then cross-entropy with
/// (optionally smoothed) targets. `1 - cos^2` is clamped at 1e-12 so that a feature parallel to a
/// class centre gives a finite gradient (OML's gives NaN there).
pub struct ArcFaceLoss {
    weight: Tensor,
    num_classes: usize,
    s: f64,
    cos_m: f32,
    sin_m: f32,
    th: f32,
    mm: f32,
    smoothing_epsilon: f64,
    categories: Option<Vec<usize>>,
    reduction: Reduction,
}

impl ArcFaceLoss {
    /// A loss with class centres `[num_classes, in_features]` from `vb` (`weight`, Xavier-uniform
    /// when new). `label2category` maps every class to a category (any text; sorted to ids as OML
    /// does) and only matters with smoothing.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_features: usize,
        num_classes: usize,
        m: f64,
        s: f64,
        smoothing_epsilon: f64,
        label2category: Option<&BTreeMap<usize, String>>,
        reduction: Reduction,
        vb: VarBuilder,
    ) -> Result<Self> {
        if num_classes == 0 || in_features == 0 {
            return Err(Error::param("num_classes/in_features", 0, "both > 0"));
        }
        if !(0.0..1.0).contains(&smoothing_epsilon) {
            return Err(Error::param(
                "smoothing_epsilon",
                smoothing_epsilon,
                "0 <= epsilon < 1",
            ));
        }
        let bound = (6.0 / (in_features + num_classes) as f64).sqrt();
        let weight = vb.get_with_hints(
            (num_classes, in_features),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let categories = match label2category {
            None => None,
            Some(map) => {
                let names: std::collections::BTreeSet<&String> = map.values().collect();
                let ids: BTreeMap<&String, usize> =
                    names.into_iter().enumerate().map(|(i, n)| (n, i)).collect();
                let cats = (0..num_classes)
                    .map(|c| {
                        map.get(&c).map(|n| ids[n]).ok_or_else(|| {
                            Error::Msg(format!("label2category has no category for class {c}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(cats)
            }
        };
        Ok(ArcFaceLoss {
            weight,
            num_classes,
            s,
            cos_m: m.cos() as f32,
            sin_m: m.sin() as f32,
            th: (std::f64::consts::PI - m).cos() as f32,
            mm: (m.sin() * m) as f32,
            smoothing_epsilon,
            categories,
            reduction,
        })
    }

    /// The class centres `[C, D]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The loss of `features` `[B, D]` with class ids `labels` (`< num_classes`), and the logs
    /// (`accuracy` of the nearest centre before the margin).
    pub fn forward_classes(&self, features: &Tensor, labels: &[usize]) -> Result<LossOutput> {
        let (b, _) = features.dims2()?;
        if labels.len() != b {
            return Err(Error::Msg(format!(
                "{b} embeddings but {} labels",
                labels.len()
            )));
        }
        if let Some(&y) = labels.iter().find(|&&y| y >= self.num_classes) {
            return Err(Error::Msg(format!(
                "label {y} is not a class of this ArcFace ({} classes)",
                self.num_classes
            )));
        }
        let dev = features.device();
        let normalise = |t: &Tensor| -> Result<Tensor> {
            let n = t.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            Ok(t.broadcast_div(&n)?)
        };
        let cos = normalise(features)?.matmul(&normalise(&self.weight)?.t()?)?;
        let accuracy = super::accuracy(&cos, labels)?;
        let sin = (1.0 - cos.sqr()?)?.clamp(1e-12f32, 1f32)?.sqrt()?;
        let with_margin = ((&cos * self.cos_m as f64)? - (sin * self.sin_m as f64)?)?;
        let past = (&cos - self.mm as f64)?;
        let with_margin = cos.gt(self.th as f64)?.where_cond(&with_margin, &past)?;
        let onehot: Vec<u8> = labels
            .iter()
            .flat_map(|&y| (0..self.num_classes).map(move |c| u8::from(c == y)))
            .collect();
        let onehot = Tensor::from_vec(onehot, (b, self.num_classes), dev)?;
        let logits = (onehot.where_cond(&with_margin, &cos)? * self.s)?;
        let target = if self.smoothing_epsilon > 0.0 {
            label_smoothing(
                labels,
                self.num_classes,
                self.smoothing_epsilon,
                self.categories.as_deref(),
            )?
        } else {
            label_smoothing(labels, self.num_classes, 0.0, None)?
        };
        let target =
            Tensor::from_vec(target, (b, self.num_classes), dev)?.to_dtype(logits.dtype())?;
        let per = (candle_nn::ops::log_softmax(&logits, D::Minus1)? * target)?
            .sum(1)?
            .neg()?;
        Ok(LossOutput {
            loss: reduce(&per.to_dtype(DType::F32)?, self.reduction)?,
            logs: BTreeMap::new(),
            device_logs: BTreeMap::from([("accuracy".to_owned(), accuracy)]),
        })
    }
}

fn class_ids(labels: &[i64]) -> Result<Vec<usize>> {
    labels
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .map_err(|_| Error::Msg(format!("ArcFace needs class ids 0..C-1; got label {l}")))
        })
        .collect()
}

impl Criterion for ArcFaceLoss {
    fn forward(&self, features: &Tensor, labels: &[i64]) -> Result<LossOutput> {
        self.forward_classes(features, &class_ids(labels)?)
    }
}

/// OML's `ArcFaceLossWithMLP`: torchvision's `MLP(in_features, mlp_features)` (`mlp.{3i}`), then
/// ArcFace on its output (`arcface.weight`).
pub struct ArcFaceLossWithMLP {
    layers: Vec<Linear>,
    /// The ArcFace on the MLP's output.
    pub arcface: ArcFaceLoss,
}

impl ArcFaceLossWithMLP {
    /// The MLP from `vb.pp("mlp")`, ArcFace from `vb.pp("arcface")`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_features: usize,
        num_classes: usize,
        mlp_features: &[usize],
        m: f64,
        s: f64,
        smoothing_epsilon: f64,
        label2category: Option<&BTreeMap<usize, String>>,
        reduction: Reduction,
        vb: VarBuilder,
    ) -> Result<Self> {
        let Some(&last) = mlp_features.last() else {
            return Err(Error::param("mlp_features", "[]", "at least one layer"));
        };
        let mut cin = in_features;
        let mut layers = Vec::new();
        for (i, &n) in mlp_features.iter().enumerate() {
            layers.push(candle_nn::linear(
                cin,
                n,
                vb.pp("mlp").pp((3 * i).to_string()),
            )?);
            cin = n;
        }
        let arcface = ArcFaceLoss::new(
            last,
            num_classes,
            m,
            s,
            smoothing_epsilon,
            label2category,
            reduction,
            vb.pp("arcface"),
        )?;
        Ok(ArcFaceLossWithMLP { layers, arcface })
    }

    /// The MLP's output `[B, mlp_features.last]`.
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        let mut x = features.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i < last {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

impl Criterion for ArcFaceLossWithMLP {
    fn forward(&self, features: &Tensor, labels: &[i64]) -> Result<LossOutput> {
        self.arcface
            .forward_classes(&self.project(features)?, &class_ids(labels)?)
    }
}
