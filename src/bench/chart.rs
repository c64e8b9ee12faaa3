//! `bench codecs --chart`: stored ratio against compression speed, one series per block
//! size, drawn with plotters' SVG backend.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use plotters::prelude::*;
use stasis_store::Algorithm;

use super::block_label;
use super::codecs::Row;

/// Series colours (plotters' palette starts with colours too close for small points).
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draw `rows` into an SVG at `path`. `none` is left out: it does no work when
/// compressing, so its speed says nothing and would stretch the axis by decades.
pub fn draw(path: &Path, rows: &[Row], title: &str) -> Result<()> {
    let mut series: BTreeMap<u64, Vec<(f64, f64, &str)>> = BTreeMap::new();
    for r in rows {
        if r.algorithm == Algorithm::None {
            continue;
        }
        if let Some(x) = r.compress_mb_s.filter(|x| *x > 0.0 && x.is_finite()) {
            series
                .entry(r.block_size)
                .or_default()
                .push((x, r.stored_ratio, &r.codec));
        }
    }
    let points = || series.values().flatten();
    let (Some(x_lo), Some(x_hi)) = (
        points().map(|p| p.0).reduce(f64::min),
        points().map(|p| p.0).reduce(f64::max),
    ) else {
        bail!("nothing to chart: no codec other than none was measured");
    };
    let y_hi = points().map(|p| p.1).fold(1.0, f64::max);
    let y_lo = points().map(|p| p.1).fold(y_hi, f64::min);
    let pad = ((y_hi - y_lo) * 0.08).max(0.05);

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            ((x_lo / 1.6)..(x_hi * 1.6)).log_scale(),
            ((y_lo - pad).max(0.0))..(y_hi + pad),
        )?;
    chart
        .configure_mesh()
        .x_desc("compress MB/s, one core (log scale)")
        .y_desc("stored ratio: data bytes / stored bytes (dedup x compression)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    for (i, (bs, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(pts.iter().map(|&(x, y, label)| {
                EmptyElement::at((x, y))
                    + Circle::new((0, 0), 4, color.filled())
                    + Text::new(label.to_string(), (6, -12), ("sans-serif", 12))
            }))?
            .label(block_label(*bs))
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
