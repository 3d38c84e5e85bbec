//! Plots of a run's history (loss and learning rate per step, metrics per validation, distances
//! to the nearest positive and negative at the last validation), as PNG files or bytes for a
//! notebook. Fonts are the DejaVu faces embedded in the binary.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use super::Record;
use crate::{Error, Result};

pub(crate) fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

const W: u32 = 640;
const H: u32 = 360;

pub(crate) fn draw_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Msg(format!("cannot draw the plot: {e:?}"))
}

/// A line chart of one or more named series of `(x, y)` points, as PNG bytes.
pub fn line_chart_png(
    title: &str,
    x_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<Vec<u8>> {
    fonts();
    let mut buf = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let points: Vec<&(f64, f64)> = series
            .iter()
            .flat_map(|(_, s)| s.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in &points {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y0 = y0.min(*y);
            y1 = y1.max(*y);
        }
        if points.is_empty() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(draw_err)?;
        let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, (name, s)) in series.iter().enumerate() {
            let c = colours[i % colours.len()];
            let pts: Vec<(f64, f64)> = s
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let drawn = chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(draw_err)?;
            drawn
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c));
            if pts.len() < 30 {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(draw_err)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(W, H, buf)
        .ok_or_else(|| Error::Msg("plot buffer of the wrong size".into()))?;
    crate::viz::grid::encode_png(&img)
}

/// Two overlaid histograms as PNG bytes (distances to the nearest positive and negative).
pub fn histogram_png(title: &str, a: (&str, &[f32]), b: (&str, &[f32])) -> Result<Vec<u8>> {
    let all: Vec<f32> =
        a.1.iter()
            .chain(b.1)
            .copied()
            .filter(|v| v.is_finite())
            .collect();
    let lo = all.iter().copied().fold(f32::MAX, f32::min);
    let hi = all.iter().copied().fold(f32::MIN, f32::max);
    let bins = 30;
    let width = if hi > lo {
        (hi - lo) / bins as f32
    } else {
        1.0
    };
    let hist = |v: &[f32]| -> Vec<(f64, f64)> {
        let mut counts = vec![0f64; bins];
        for &x in v.iter().filter(|x| x.is_finite()) {
            let i = (((x - lo) / width) as usize).min(bins - 1);
            counts[i] += 1.0;
        }
        let n = v.len().max(1) as f64;
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| ((lo + (i as f32 + 0.5) * width) as f64, c / n))
            .collect()
    };
    line_chart_png(title, "distance", &[(a.0, hist(a.1)), (b.0, hist(b.1))])
}

/// The charts of a history: `(file name, PNG bytes)`.
pub fn history_plots(history: &[Record]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut loss = Vec::new();
    let mut lr = Vec::new();
    let mut metrics: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    let mut last_val = None;
    for r in history {
        match r {
            Record::Step {
                step,
                loss: l,
                lr: rate,
                ..
            } => {
                loss.push((*step as f64, *l));
                lr.push((*step as f64, *rate));
            }
            Record::Validation {
                epoch,
                metrics: m,
                pos_dist,
                neg_dist,
                ..
            } => {
                for (k, v) in m {
                    if k.starts_with("OVERALL/")
                        && (k.contains("/cmc/") || k.contains("/map/") || k.contains("/precision/"))
                    {
                        metrics
                            .entry(k.trim_start_matches("OVERALL/").to_owned())
                            .or_default()
                            .push((*epoch as f64, *v));
                    }
                }
                last_val = Some((pos_dist, neg_dist));
            }
            Record::Skipped { .. } => {}
        }
    }
    // A running mean over 10 steps keeps the loss curve readable.
    let smooth: Vec<(f64, f64)> = loss
        .iter()
        .enumerate()
        .map(|(i, &(s, _))| {
            let from = i.saturating_sub(9);
            let w = &loss[from..=i];
            (s, w.iter().map(|(_, l)| l).sum::<f64>() / w.len() as f64)
        })
        .collect();
    let mut out = vec![
        (
            "loss.png".to_owned(),
            line_chart_png(
                "training loss",
                "step",
                &[("loss", loss), ("mean of 10", smooth)],
            )?,
        ),
        (
            "lr.png".to_owned(),
            line_chart_png("learning rate", "step", &[("lr", lr)])?,
        ),
    ];
    if !metrics.is_empty() {
        let series: Vec<(&str, Vec<(f64, f64)>)> = metrics
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        out.push((
            "metrics.png".to_owned(),
            line_chart_png("validation metrics", "epoch", &series)?,
        ));
    }
    if let Some((p, n)) = last_val {
        out.push((
            "distances.png".to_owned(),
            histogram_png(
                "last validation: nearest positive vs negative",
                ("positive", p),
                ("negative", n),
            )?,
        ));
    }
    Ok(out)
}

/// Writes [`history_plots`] into `dir`.
pub fn save_history_plots(history: &[Record], dir: &Path) -> Result<()> {
    for (name, png) in history_plots(history)? {
        let path = dir.join(name);
        std::fs::write(&path, png).map_err(|e| Error::io("cannot write", &path, e))?;
    }
    Ok(())
}

/// Shows the history's charts inline in a notebook (evcxr).
pub fn show_history(history: &[Record]) -> Result<()> {
    let mut html = String::new();
    for (name, png) in history_plots(history)? {
        html += &format!(
            "<img title=\"{name}\" src=\"{}\"/>",
            crate::notebook::png_data_url(&png)
        );
    }
    crate::notebook::emit_html(&html);
    Ok(())
}
