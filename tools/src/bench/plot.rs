//! `--plot FILE.svg|FILE.html`: the latency percentile curve and throughput over time
//! as one self-contained SVG (an HTML file wraps the same SVG).
//!
//! The percentile axis is logarithmic in `1 / (1 - p)` (0, 90, 99, 99.9, 99.99, 99.999
//! are evenly spaced), the latency axis logarithmic in microseconds, as HdrHistogram
//! plots are, so the tail is visible next to the median. Hand-written SVG: a plotting
//! crate would pull in fonts and image codecs for two line charts.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Percentiles at which the curve is sampled: dense towards the tail.
const CURVE_PERCENTILES: [f64; 16] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.995, 99.999,
    100.0,
];

/// Highest tail the x axis shows, in "nines" (5 = 99.999 %).
const MAX_NINES: f64 = 5.0;

/// One curve of the percentile chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    /// (percentile 0..=100, latency µs).
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// Samples a histogram of nanoseconds.
    pub fn from_histogram(label: &str, h: &Histogram<u64>) -> Curve {
        let points = if h.is_empty() {
            Vec::new()
        } else {
            CURVE_PERCENTILES
                .iter()
                .map(|&p| (p, h.value_at_percentile(p) as f64 / 1000.0))
                .collect()
        };
        Curve {
            label: label.to_string(),
            points,
        }
    }
}

/// Everything one plot shows.
#[derive(Debug, Clone, Default)]
pub struct PlotData {
    pub title: String,
    pub curves: Vec<Curve>,
    /// (seconds since start, messages per second over the interval ending then).
    pub throughput: Vec<(f64, f64)>,
}

const W: f64 = 900.0;
const PANEL_H: f64 = 320.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const GAP: f64 = 70.0;
const COLORS: [&str; 5] = ["#222222", "#d62728", "#ff7f0e", "#2ca02c", "#1f77b4"];

fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        MAX_NINES
    } else {
        (-(1.0 - p / 100.0).log10()).min(MAX_NINES)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn svg(d: &PlotData) -> String {
    let mut s = String::new();
    let h = TOP + PANEL_H * 2.0 + GAP + 50.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(&d.title)
    );
    latency_panel(&mut s, d, TOP);
    throughput_panel(&mut s, d, TOP + PANEL_H + GAP);
    s.push_str("</svg>\n");
    s
}

/// An HTML page holding the SVG.
pub fn html(d: &PlotData) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head><body>\n{}</body></html>\n",
        escape(&d.title),
        svg(d)
    )
}

fn frame(s: &mut String, y0: f64, x_label: &str, y_label: &str) {
    let pw = W - LEFT - RIGHT;
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        LEFT + pw / 2.0,
        y0 + PANEL_H + 36.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">{y_label}</text>"#,
        y0 + PANEL_H / 2.0,
        y0 + PANEL_H / 2.0
    );
}

fn latency_panel(s: &mut String, d: &PlotData, y0: f64) {
    frame(s, y0, "percentile", "latency (log scale)");
    let pw = W - LEFT - RIGHT;
    let all: Vec<f64> = d
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1.max(0.001)))
        .collect();
    if all.is_empty() {
        return;
    }
    let lo = all.iter().copied().fold(f64::MAX, f64::min).log10().floor();
    let hi = all
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |p: f64| LEFT + nines(p) / MAX_NINES * pw;
    let y = |us: f64| y0 + PANEL_H - (us.max(0.001).log10() - lo) / (hi - lo) * PANEL_H;
    percentile_grid(s, y0, &x);
    latency_grid(s, (lo, hi), &y);
    for (i, c) in d.curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = c
            .points
            .iter()
            .map(|&(p, us)| format!("{:.1},{:.1}", x(p), y(us)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = y0 + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{ly}" fill="{color}">{}</text>"#,
            LEFT + pw + 12.0,
            escape(&c.label)
        );
    }
}

/// Vertical lines and labels at the percentiles the x axis marks.
fn percentile_grid(s: &mut String, y0: f64, x: &impl Fn(f64) -> f64) {
    for (p, label) in [
        (0.0, "0%"),
        (90.0, "90%"),
        (99.0, "99%"),
        (99.9, "99.9%"),
        (99.99, "99.99%"),
        (99.999, "99.999%"),
    ] {
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{y0}" x2="{0}" y2="{1}" stroke="#eee"/><text x="{0}" y="{2}" text-anchor="middle">{label}</text>"##,
            x(p),
            y0 + PANEL_H,
            y0 + PANEL_H + 16.0
        );
    }
}

/// Horizontal lines and labels at each power of ten from 10^lo to 10^hi µs.
fn latency_grid(s: &mut String, (lo, hi): (f64, f64), y: &impl Fn(f64) -> f64) {
    let pw = W - LEFT - RIGHT;
    let mut e = lo as i32;
    while f64::from(e) <= hi {
        let us = 10f64.powi(e);
        let label = if us >= 1000.0 {
            format!("{} ms", us / 1000.0)
        } else {
            format!("{us} µs")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{label}</text>"##,
            y(us),
            LEFT + pw,
            LEFT - 6.0,
            y(us) + 4.0
        );
        e += 1;
    }
}

fn throughput_panel(s: &mut String, d: &PlotData, y0: f64) {
    frame(s, y0, "seconds since start", "messages per second");
    let pw = W - LEFT - RIGHT;
    if d.throughput.is_empty() {
        return;
    }
    let t_max = d
        .throughput
        .iter()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .max(1e-3);
    let r_max = d
        .throughput
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let x = |t: f64| LEFT + t / t_max * pw;
    let y = |r: f64| y0 + PANEL_H - r / r_max * PANEL_H;
    for i in 0..=4 {
        let r = r_max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#eee"/><text x="{2}" y="{3}" text-anchor="end">{4:.0}</text>"##,
            y(r),
            LEFT + pw,
            LEFT - 6.0,
            y(r) + 4.0,
            r
        );
        let t = t_max * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{t:.1}</text>"#,
            x(t),
            y0 + PANEL_H + 16.0
        );
    }
    let pts: Vec<String> = d
        .throughput
        .iter()
        .map(|&(t, r)| format!("{:.1},{:.1}", x(t), y(r)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
        COLORS[4],
        pts.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{new_histogram, record_ns};

    #[test]
    fn curve_is_monotonic_and_spans_the_histogram() {
        let mut h = new_histogram();
        for i in 1..=100_000u64 {
            record_ns(&mut h, i * 1000);
        }
        let c = Curve::from_histogram("all", &h);
        assert_eq!(c.points.len(), CURVE_PERCENTILES.len());
        assert!(c.points.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(
            (c.points[2].1 - 50_000.0).abs() / 50_000.0 < 0.01,
            "{:?}",
            c.points[2]
        );
        assert!((c.points.last().unwrap().1 - 100_000.0).abs() / 100_000.0 < 0.01);
    }

    #[test]
    fn svg_has_one_line_per_curve_plus_throughput_and_escapes_text() {
        let mut h = new_histogram();
        record_ns(&mut h, 1_000);
        record_ns(&mut h, 5_000_000);
        let d = PlotData {
            title: "e2e <test> & more".into(),
            curves: vec![
                Curve::from_histogram("all", &h),
                Curve::from_histogram("p0", &h),
            ],
            throughput: vec![(0.5, 1000.0), (1.0, 2000.0)],
        };
        let s = svg(&d);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("e2e &lt;test&gt; &amp; more"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
        assert!(html(&d).contains(&s));
    }

    #[test]
    fn empty_data_still_draws_the_frames() {
        let s = svg(&PlotData::default());
        assert_eq!(s.matches("<polyline").count(), 0);
        assert_eq!(s.matches("<rect").count(), 3);
    }
}
