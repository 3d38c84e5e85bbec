//! fnmr@fmr: the false non-match rate at the distance threshold where the false match rate is
//! `fmr` (OML's `calc_fnmr_at_fmr`): the threshold is the `fmr`-quantile of the negative distances
//! (linear interpolation, numpy's default), and fnmr is the fraction of positive distances `>=` it.
//!
//! Over all query-gallery pairs (as OML's `EmbeddingMetrics` when fmr values are asked) without
//! materialising them: the positive distances are kept (there are few), the negatives are counted
//! in a histogram of the top 16 bits of their `f32` bit patterns (monotone for distances >= 0), then,
//! in a second pass, only the bins holding the needed ranks are refined on the low 16 bits, which
//! gives the exact order statistics.

use candle_core::Tensor;
use serde::Serialize;

use crate::retrieval::distances::{SearchConfig, fold_pairs};
use crate::retrieval::results::{Prepared, QueryGalleryInfo};
use crate::{Error, Result};

fn check_fmr(fmr_vals: &[f64]) -> Result<()> {
    if fmr_vals.is_empty() {
        return Err(Error::param(
            "fmr_vals",
            "[]",
            "at least one fraction in [0, 1]",
        ));
    }
    if let Some(v) = fmr_vals.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(Error::param(
            "fmr_vals",
            v,
            "fractions in [0, 1] (0.1 means 10%)",
        ));
    }
    Ok(())
}

/// numpy's linear quantile of sorted values given a rank accessor.
fn linear_quantile(m: usize, q: f64, at: &dyn Fn(usize) -> f64) -> f64 {
    let h = (m - 1) as f64 * q;
    let lo = h.floor() as usize;
    let lo_v = at(lo);
    if lo + 1 >= m {
        return lo_v;
    }
    lo_v + (h - lo as f64) * (at(lo + 1) - lo_v)
}

fn fnmr_given(pos: &[f32], thresholds: &[f64]) -> Vec<f64> {
    thresholds
        .iter()
        .map(|&t| {
            if pos.is_empty() {
                f64::NAN
            } else {
                pos.iter().filter(|&&p| p as f64 >= t).count() as f64 / pos.len() as f64
            }
        })
        .collect()
}

/// OML's `calc_fnmr_at_fmr` on explicit positive and negative distances.
pub fn fnmr_at_fmr_from_distances(pos: &[f32], neg: &[f32], fmr_vals: &[f64]) -> Result<Vec<f64>> {
    check_fmr(fmr_vals)?;
    if neg.is_empty() {
        return Err(Error::Msg(
            "fnmr@fmr needs at least one negative pair".to_owned(),
        ));
    }
    let mut sorted = neg.to_vec();
    sorted.sort_by(f32::total_cmp);
    let thresholds: Vec<f64> = fmr_vals
        .iter()
        .map(|&q| linear_quantile(sorted.len(), q, &|i| sorted[i] as f64))
        .collect();
    Ok(fnmr_given(pos, &thresholds))
}

/// fnmr@fmr over all pairs, with the thresholds and pair counts.
#[derive(Debug, Clone, Serialize)]
pub struct FnmrAtFmr {
    /// The fmr values asked.
    pub fmr: Vec<f64>,
    /// fnmr per fmr value.
    pub fnmr: Vec<f64>,
    /// Distance threshold per fmr value.
    pub thresholds: Vec<f64>,
    /// Positive pairs.
    pub positives: usize,
    /// Negative pairs.
    pub negatives: u64,
}

const BINS: usize = 1 << 16;

/// fnmr@fmr over every non-excluded query-gallery pair of `embeddings` (same exclusions as
/// retrieval: an item and itself, items of one sequence). Exact, in memory `O(positives)`.
/// `search` gives the distance and the block sizes (its `top_n` is not used).
pub fn fnmr_at_fmr(
    embeddings: &Tensor,
    info: &QueryGalleryInfo,
    search: &SearchConfig,
    fmr_vals: &[f64],
) -> Result<FnmrAtFmr> {
    check_fmr(fmr_vals)?;
    let p = Prepared::new(embeddings, info)?;
    let Some((ql, gl)) = &p.labels else {
        return Err(Error::Msg("fnmr@fmr needs labels".to_owned()));
    };
    let config = search;
    // Pass 1: positives kept, negatives counted by the top 16 bits.
    type Acc = (Vec<f32>, Vec<u64>);
    let init = || -> Acc { (Vec::new(), vec![0u64; BINS]) };
    let visit = |acc: &mut Acc, q: usize, g: usize, d: f32| {
        if ql[q] == gl[g] {
            acc.0.push(d);
        } else {
            acc.1[(d.to_bits() >> 16) as usize] += 1;
        }
    };
    let merge = |mut a: Acc, b: Acc| -> Acc {
        a.0.extend(b.0);
        for (x, y) in a.1.iter_mut().zip(b.1) {
            *x += y;
        }
        a
    };
    let (pos, hist) = fold_pairs(
        &p.queries,
        &p.gallery,
        config,
        &p.exclusion,
        &init,
        &visit,
        &merge,
    )?;
    let m: u64 = hist.iter().sum();
    if m == 0 {
        return Err(Error::Msg(
            "fnmr@fmr needs at least one negative pair (all gallery items share the query's label)"
                .to_owned(),
        ));
    }
    // The ranks needed by the linear quantiles, and the high bins holding them.
    let mut ranks: Vec<u64> = Vec::new();
    for &q in fmr_vals {
        let h = (m - 1) as f64 * q;
        let lo = h.floor() as u64;
        ranks.push(lo);
        if lo + 1 < m {
            ranks.push(lo + 1);
        }
    }
    let locate = |rank: u64| -> (usize, u64) {
        let mut seen = 0u64;
        for (b, &c) in hist.iter().enumerate() {
            if seen + c > rank {
                return (b, rank - seen);
            }
            seen += c;
        }
        (BINS - 1, 0)
    };
    let mut bins: Vec<usize> = ranks.iter().map(|&r| locate(r).0).collect();
    bins.sort_unstable();
    bins.dedup();
    // Pass 2: the needed bins refined on the low 16 bits.
    type Acc2 = Vec<Vec<u64>>;
    let nb = bins.len();
    let init2 = || -> Acc2 { vec![vec![0u64; BINS]; nb] };
    let visit2 = |acc: &mut Acc2, q: usize, g: usize, d: f32| {
        if ql[q] != gl[g] {
            let bits = d.to_bits();
            if let Ok(k) = bins.binary_search(&((bits >> 16) as usize)) {
                acc[k][(bits & 0xFFFF) as usize] += 1;
            }
        }
    };
    let merge2 = |mut a: Acc2, b: Acc2| -> Acc2 {
        for (x, y) in a.iter_mut().zip(b) {
            for (u, v) in x.iter_mut().zip(y) {
                *u += v;
            }
        }
        a
    };
    let fine = fold_pairs(
        &p.queries,
        &p.gallery,
        config,
        &p.exclusion,
        &init2,
        &visit2,
        &merge2,
    )?;
    let value_at = |rank: usize| -> f64 {
        let (b, offset) = locate(rank as u64);
        let Ok(k) = bins.binary_search(&b) else {
            return f64::NAN;
        };
        let mut seen = 0u64;
        for (low, &c) in fine[k].iter().enumerate() {
            if seen + c > offset {
                return f32::from_bits(((b as u32) << 16) | low as u32) as f64;
            }
            seen += c;
        }
        f64::NAN
    };
    let thresholds: Vec<f64> = fmr_vals
        .iter()
        .map(|&q| linear_quantile(m as usize, q, &value_at))
        .collect();
    Ok(FnmrAtFmr {
        fmr: fmr_vals.to_vec(),
        fnmr: fnmr_given(&pos, &thresholds),
        thresholds,
        positives: pos.len(),
        negatives: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oml_docstring_case() {
        let pos = [0.0f32, 0.0, 1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 9.0, 9.0];
        let neg = [3.0f32, 3.0, 4.0, 4.0, 6.0, 6.0, 7.0, 7.0, 8.0, 8.0];
        let f = fnmr_at_fmr_from_distances(&pos, &neg, &[0.1, 0.5]).expect("fnmr");
        assert!(
            (f[0] - 0.4).abs() < 1e-12 && (f[1] - 0.2).abs() < 1e-12,
            "{f:?}"
        );
        assert!(fnmr_at_fmr_from_distances(&pos, &neg, &[1.5]).is_err());
        assert!(fnmr_at_fmr_from_distances(&[], &neg, &[0.5]).expect("nan")[0].is_nan());
    }
}
