//! SVG charts of the veth and tcp benchmarks (plotters' SVG backend; text
//! is left to the SVG viewer, so no font is loaded).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 7] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x7f, 0x7f, 0x7f),
];

fn err(e: impl std::fmt::Display) -> String {
    format!("plotting: {e}")
}

/// Rate against policy count: `lines` over policy counts (log x axis) and
/// `references` as flat dashed lines (paths the policy count does not
/// change).
pub fn rate_vs_policies(
    path: &Path,
    title: &str,
    lines: &[Series],
    references: &[(String, f64)],
) -> Result<(), String> {
    let x_max = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(10.0, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(references.iter().map(|r| r.1))
        .fold(0.1, f64::max)
        * 1.2;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0..x_max * 1.5).log_scale(), 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("policies (synthetic set, log scale)")
        .y_desc("Mpps (delivered + dropped by policy)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(err)?;
    for (i, s) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    for (j, (label, y)) in references.iter().enumerate() {
        let color = COLORS[(lines.len() + j) % COLORS.len()];
        let y = *y;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(1.0, y), (x_max * 1.5, y)],
                6,
                4,
                color.stroke_width(1),
            ))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, yy)| PathElement::new(vec![(x, yy), (x + 20, yy)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Nines of a quantile: 0.9 -> 1, 0.99 -> 2, 0.999 -> 3.
#[must_use]
pub fn nines(q: f64) -> f64 {
    -(1.0 - q.min(0.999_999)).log10()
}

/// Latency by percentile: x is the percentile in nines (50%, 90%, 99%,
/// 99.9%, ...), y the one-way latency in microseconds (log scale). Points
/// are `(quantile, microseconds)`.
pub fn latency_by_percentile(path: &Path, title: &str, lines: &[Series]) -> Result<(), String> {
    let y_max = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(10.0, f64::max)
        * 2.0;
    let y_min = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min)
        .clamp(0.1, 1.0);
    let x_max = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| nines(p.0)))
        .fold(3.0, f64::max);
    let whole_nines = (1..=6).take_while(|&n| f64::from(n) <= x_max).count();
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("one-way latency, us (log scale)")
        .x_labels(whole_nines + 1)
        .x_label_formatter(&|x| {
            let q = 1.0 - 10f64.powf(-x);
            let pct = 100.0 * q;
            if pct < 99.0 {
                format!("{pct:.0}%")
            } else {
                let digits = format!("{pct:.6}");
                format!("{}%", digits.trim_end_matches('0').trim_end_matches('.'))
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (i, s) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|&(q, v)| (nines(q), v.max(y_min)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Grouped bars: one group per entry of `groups` along x, one bar per
/// series in each (a series' `points` are `(group index, value)`; groups a
/// series has no point for get no bar).
pub fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Series],
) -> Result<(), String> {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.2;
    let n = groups.len().max(1) as f64;
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()
        .map_err(err)?;
    let width = 0.8 / series.len().max(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let left = 0.1 + width * i as f64;
        chart
            .draw_series(s.points.iter().map(|&(g, v)| {
                Rectangle::new(
                    [(g + left, 0.0), (g + left + width * 0.9, v)],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    // Group names under the axis, at the groups' centres.
    let style = ("sans-serif", 14)
        .into_font()
        .into_text_style(&root)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (name, k) in groups.iter().zip(0u32..) {
        let (x, y) = chart.backend_coord(&(f64::from(k) + 0.5, 0.0));
        root.draw(&Text::new(name.as_str(), (x, y + 8), style.clone()))
            .map_err(err)?;
    }
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("pf-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rate = dir.join("rate.svg");
        rate_vs_policies(
            &rate,
            "rate",
            &[Series {
                label: "podfence".into(),
                points: vec![(1.0, 0.5), (10.0, 0.5), (10_000.0, 0.48)],
            }],
            &[("kernel".into(), 0.6)],
        )
        .unwrap();
        let text = std::fs::read_to_string(&rate).unwrap();
        assert!(text.starts_with("<svg") && text.contains("podfence") && text.contains("kernel"));
        let lat = dir.join("lat.svg");
        latency_by_percentile(
            &lat,
            "latency",
            &[Series {
                label: "podfence".into(),
                points: vec![(0.5, 20.0), (0.99, 80.0), (0.999, 300.0)],
            }],
        )
        .unwrap();
        let text = std::fs::read_to_string(&lat).unwrap();
        assert!(text.contains("99.9%"), "percentile labels");
        let bar = dir.join("bars.svg");
        bars(
            &bar,
            "stream",
            "Gbit/s",
            &["MTU 1500".into(), "MTU 9000".into()],
            &[
                Series {
                    label: "kernel".into(),
                    points: vec![(0.0, 10.0), (1.0, 20.0)],
                },
                Series {
                    label: "podfence".into(),
                    points: vec![(0.0, 6.0)],
                },
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(&bar).unwrap();
        assert!(
            text.contains("MTU 1500") && text.contains("MTU 9000"),
            "group labels"
        );
        assert!(text.contains("podfence"));
        assert!(text.matches("<rect").count() >= 3, "three bars");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
    }
}
