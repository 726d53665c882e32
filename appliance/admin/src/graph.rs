//! Graphs as inline SVG, drawn on the server: they need no JavaScript, no
//! external library and little weight. Gaps in the history stay gaps.

use std::fmt::Write;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    /// (unix seconds, value); `None` is a gap.
    pub points: Vec<(u64, Option<f32>)>,
}

/// A horizontal threshold line.
#[derive(Debug, Clone)]
pub struct Threshold {
    pub label: String,
    pub value: f64,
    /// "warn" or "critical": picks the colour and dash.
    pub kind: &'static str,
}

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 24.0;
/// Points per line at most; more are averaged into buckets.
pub const MAX_POINTS: usize = 360;

/// Averages neighbouring points so a line has at most `max` points.
pub fn downsample(points: &[(u64, Option<f32>)], max: usize) -> Vec<(u64, Option<f32>)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| {
            let vals: Vec<f32> = c.iter().filter_map(|p| p.1).collect();
            let v = (!vals.is_empty()).then(|| vals.iter().sum::<f32>() / vals.len() as f32);
            (c[0].0, v)
        })
        .collect()
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "%" => format!("{:.0} %", v * 100.0),
        "°C" => format!("{v:.0} °C"),
        "B" => crate::format_bytes_short(v),
        "B/s" => format!("{}/s", crate::format_bits(v * 8.0)),
        _ => format!("{v:.2}"),
    }
}

fn fmt_time(t: u64, span: u64) -> String {
    // "2026-11-02T14:30:00Z": the date matters only when the graph spans days.
    let full = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).to_string();
    if span > 2 * 86400 {
        full[5..16].replace('T', " ")
    } else {
        format!("{} UTC", &full[11..16])
    }
}

/// Renders a chart. `unit` picks value formatting: "%", "°C", "B", "B/s".
pub fn chart(title: &str, unit: &str, lines: &[Line], thresholds: &[Threshold]) -> String {
    let lines: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            label: l.label.clone(),
            points: downsample(&l.points, MAX_POINTS),
        })
        .collect();
    let times: Vec<u64> = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).collect();
    let values: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1.map(f64::from)))
        .collect();
    let mut out = String::with_capacity(4096);
    let desc = format!("{title}: {} points", values.len());
    let _ = write!(out, r#"<figure class="chart"><figcaption>{}</figcaption>"#, esc(title));
    if values.is_empty() {
        out.push_str(r#"<p class="empty">No data yet for this period.</p></figure>"#);
        return out;
    }
    let (t0, t1) = (*times.iter().min().unwrap_or(&0), *times.iter().max().unwrap_or(&0));
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for t in thresholds {
        hi = hi.max(t.value);
    }
    if unit == "%" {
        lo = 0.0;
        hi = hi.max(1.0);
    } else if lo > 0.0 && unit != "°C" {
        lo = 0.0;
    }
    if (hi - lo).abs() < f64::EPSILON {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = if unit == "%" {
        (lo, hi)
    } else {
        (lo - if lo == 0.0 { 0.0 } else { pad }, hi + pad)
    };
    let x = |t: u64| {
        LEFT + if t1 > t0 {
            (t - t0) as f64 / (t1 - t0) as f64 * (W - LEFT - RIGHT)
        } else {
            W - RIGHT
        }
    };
    let y = |v: f64| TOP + (1.0 - (v - lo) / (hi - lo)) * (H - TOP - BOTTOM);
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {W} {H}" role="img" aria-label="{}" preserveAspectRatio="none">"#,
        esc(&desc)
    );
    // Axes and labels.
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}"/><line class="axis" x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}"/>"#,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    let _ = write!(
        out,
        r#"<text class="lbl" x="{}" y="{}" text-anchor="end">{}</text>"#,
        LEFT - 4.0,
        TOP + 10.0,
        esc(&fmt_value(hi, unit))
    );
    let _ = write!(
        out,
        r#"<text class="lbl" x="{}" y="{}" text-anchor="end">{}</text>"#,
        LEFT - 4.0,
        H - BOTTOM,
        esc(&fmt_value(lo, unit))
    );
    let span = t1.saturating_sub(t0);
    let _ = write!(
        out,
        r#"<text class="lbl" x="{LEFT}" y="{}">{}</text>"#,
        H - 6.0,
        fmt_time(t0, span)
    );
    let _ = write!(
        out,
        r#"<text class="lbl" x="{}" y="{}" text-anchor="end">{}</text>"#,
        W - RIGHT,
        H - 6.0,
        fmt_time(t1, span)
    );
    for t in thresholds {
        let yy = y(t.value);
        let _ = write!(
            out,
            r#"<line class="th {k}" x1="{LEFT}" y1="{yy:.1}" x2="{r}" y2="{yy:.1}"><title>{l}: {v}</title></line><text class="lbl {k}" x="{r}" y="{ty:.1}" text-anchor="end">{l} {v}</text>"#,
            k = t.kind,
            r = W - RIGHT,
            l = esc(&t.label),
            v = esc(&fmt_value(t.value, unit)),
            ty = yy - 3.0
        );
    }
    for (i, l) in lines.iter().enumerate() {
        // A polyline per unbroken run, so gaps are drawn as gaps.
        let mut run = String::new();
        let flush = |run: &mut String, out: &mut String| {
            if !run.is_empty() {
                let _ = write!(
                    out,
                    r#"<polyline class="s{}" points="{}"><title>{}</title></polyline>"#,
                    i % 6,
                    run.trim_end(),
                    esc(&l.label)
                );
                run.clear();
            }
        };
        for (t, v) in &l.points {
            match v {
                Some(v) => {
                    let _ = write!(run, "{:.1},{:.1} ", x(*t), y(f64::from(*v)));
                }
                None => flush(&mut run, &mut out),
            }
        }
        flush(&mut run, &mut out);
    }
    out.push_str("</svg>");
    if lines.len() > 1 {
        out.push_str(r#"<ul class="legend">"#);
        for (i, l) in lines.iter().enumerate() {
            let _ = write!(out, r#"<li><span class="key s{}"></span>{}</li>"#, i % 6, esc(&l.label));
        }
        out.push_str("</ul>");
    }
    out.push_str("</figure>");
    out
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_averages_and_keeps_gaps() {
        let pts: Vec<(u64, Option<f32>)> = (0..10)
            .map(|i| (i, if i == 4 || i == 5 { None } else { Some(i as f32) }))
            .collect();
        let d = downsample(&pts, 5);
        assert_eq!(
            d,
            vec![
                (0, Some(0.5)),
                (2, Some(2.5)),
                (4, None),
                (6, Some(6.5)),
                (8, Some(8.5))
            ]
        );
        assert_eq!(downsample(&pts, 100).len(), 10);
    }

    #[test]
    fn chart_draws_runs_thresholds_and_escapes() {
        let line = Line {
            label: "coretemp/<pkg>".into(),
            points: vec![(0, Some(40.0)), (60, Some(50.0)), (120, None), (180, Some(45.0))],
        };
        let svg = chart(
            "Temperature",
            "°C",
            &[line],
            &[Threshold {
                label: "warn".into(),
                value: 85.0,
                kind: "warn",
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 2, "the gap splits the line");
        assert!(svg.contains("warn 85 °C"));
        assert!(svg.contains("coretemp/&lt;pkg&gt;") && !svg.contains("<pkg>"));
        assert!(svg.contains(r#"aria-label="Temperature: 3 points""#));
        let empty = chart(
            "CPU",
            "%",
            &[Line {
                label: "cpu".into(),
                points: vec![],
            }],
            &[],
        );
        assert!(empty.contains("No data yet"));
    }
}
