//! Graphs as inline SVG, drawn on the server: they need no JavaScript, no
//! external library and little weight. Gaps in the history stay gaps.

use std::fmt::Write;

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

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

/// The time axis: the whole chosen window, not just the span of the
/// data, in the node's time zone.
#[derive(Debug, Clone)]
pub struct Axis {
    pub from: u64,
    pub to: u64,
    pub tz: TimeZone,
}

impl Axis {
    /// The window of `secs` seconds ending at `now`.
    pub fn ending(now: u64, secs: u64, tz: TimeZone) -> Axis {
        Axis {
            from: now.saturating_sub(secs),
            to: now,
            tz,
        }
    }

    fn zoned(&self, t: u64) -> Option<Zoned> {
        Timestamp::from_second(t as i64)
            .ok()
            .map(|ts| ts.to_zoned(self.tz.clone()))
    }

    /// "14:05", or "Mon 30 14:05" when the window spans days.
    pub fn time(&self, t: u64) -> String {
        let fmt = if self.to - self.from > 2 * 86400 {
            "%a %d %H:%M"
        } else {
            "%H:%M"
        };
        self.zoned(t).map(|z| z.strftime(fmt).to_string()).unwrap_or_default()
    }

    /// "Mon 30 Nov 14:05 CET": a moment in a sentence.
    pub fn moment(&self, t: u64) -> String {
        self.zoned(t)
            .map(|z| z.strftime("%a %d %b %H:%M %Z").to_string())
            .unwrap_or_default()
    }

    /// The zone's abbreviation now ("CET"), for the axis.
    pub fn zone(&self) -> String {
        self.zoned(self.to)
            .map(|z| z.strftime("%Z").to_string())
            .unwrap_or_default()
    }

    /// Tick times at round local times: every 10 minutes for an hour, 3
    /// hours for a day, local midnights for a week or more.
    pub fn ticks(&self) -> Vec<(u64, String)> {
        let span = self.to.saturating_sub(self.from);
        let (step_min, fmt) = match span {
            0..=7200 => (10, "%H:%M"),
            7201..=172_800 => (180, "%H:%M"),
            172_801..=1_209_600 => (1440, "%a %d"),
            _ => (5 * 1440, "%d %b"),
        };
        let Some(first) = self.zoned(self.from) else {
            return vec![];
        };
        let Ok(day0) = first.start_of_day().map(|z| z.datetime()) else {
            return vec![];
        };
        let mut out: Vec<(u64, String)> = Vec::new();
        // DST days have 23 or 25 hours: step in local wall-clock time, so
        // ticks stay on 00:00, 03:00, ... either side of the change.
        for k in 0..2000i64 {
            let Ok(local) = day0.checked_add(jiff::Span::new().minutes(k * step_min)) else {
                break;
            };
            let Ok(t) = local.to_zoned(self.tz.clone()) else {
                break;
            };
            let secs = t.timestamp().as_second();
            if secs > self.to as i64 {
                break;
            }
            if secs >= self.from as i64 && out.last().is_none_or(|l| l.0 != secs as u64) {
                out.push((secs as u64, t.strftime(fmt).to_string()));
            }
        }
        out
    }
}

const W: f64 = 720.0;
const H: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 36.0;
const TOP: f64 = 10.0;
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

pub fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "%" => format!("{:.0} %", v * 100.0),
        "°C" => format!("{v:.0} °C"),
        "B" => crate::format_bytes_short(v),
        "B/s" => format!("{}/s", crate::format_bits(v * 8.0)),
        _ => format!("{v:.2}"),
    }
}

/// A round step near `range / 4`: 1, 2, 2.5 or 5 times a power of ten.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 4.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The value range and its gridlines: ratios run 0 to 100 %; other units
/// start at 0 (temperatures near the data) and end on a round value.
fn value_scale(values: &[f64], thresholds: &[Threshold], unit: &str) -> (f64, f64, Vec<f64>) {
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for t in thresholds {
        hi = hi.max(t.value);
        lo = lo.min(t.value);
    }
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if unit == "%" {
        let hi = hi.max(1.0);
        return (0.0, hi, (0..=4).map(|i| hi * f64::from(i) / 4.0).collect());
    }
    // Temperatures from room temperature; everything else from zero.
    lo = lo.min(if unit == "°C" { 20.0 } else { 0.0 });
    if (hi - lo).abs() < f64::EPSILON {
        hi = lo + 1.0;
    }
    let step = nice_step(hi - lo);
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let n = ((hi - lo) / step).round() as usize;
    (lo, hi, (0..=n).map(|i| lo + step * i as f64).collect())
}

/// Renders a chart over `axis`. `unit` picks value formatting: "%",
/// "°C", "B", "B/s". Every point carries its time and value in a
/// `<title>`, so it can be read without JavaScript (hover, or a screen
/// reader).
pub fn chart(title: &str, unit: &str, lines: &[Line], thresholds: &[Threshold], axis: &Axis) -> String {
    let lines: Vec<Line> = lines
        .iter()
        .map(|l| Line {
            label: l.label.clone(),
            points: downsample(
                &l.points
                    .iter()
                    .copied()
                    .filter(|(t, _)| (axis.from..=axis.to).contains(t))
                    .collect::<Vec<_>>(),
                MAX_POINTS,
            ),
        })
        .collect();
    let values: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1.map(f64::from)))
        .collect();
    let first = lines
        .iter()
        .filter_map(|l| l.points.iter().find(|p| p.1.is_some()).map(|p| p.0))
        .min();
    let mut out = String::with_capacity(8192);
    let _ = write!(out, r#"<figure class="chart"><figcaption>{}</figcaption>"#, esc(title));
    let (lo, hi, grid) = value_scale(&values, thresholds, unit);
    let span = axis.to.saturating_sub(axis.from).max(1);
    let x = |t: u64| LEFT + t.saturating_sub(axis.from) as f64 / span as f64 * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v - lo) / (hi - lo)) * (H - TOP - BOTTOM);
    let desc = format!(
        "{title}, {} to {} {}: {} points",
        axis.moment(axis.from),
        axis.time(axis.to),
        axis.zone(),
        values.len()
    );
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
        esc(&desc)
    );
    let (b, r) = (H - BOTTOM, W - RIGHT);
    for g in &grid {
        let yy = y(*g);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" y1="{yy:.1}" x2="{r}" y2="{yy:.1}"/><text class="lbl" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 4.0,
            yy + 4.0,
            esc(&fmt_value(*g, unit))
        );
    }
    for (t, label) in axis.ticks() {
        let xx = x(t);
        let _ = write!(
            out,
            r#"<line class="grid" x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{b}"/><text class="lbl tick" x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            H - 8.0,
            esc(&label)
        );
    }
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}"/><line class="axis" x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}"/><text class="lbl zone" x="{W}" y="{}" text-anchor="end">{}</text>"#,
        H - 8.0,
        esc(&axis.zone())
    );
    for t in thresholds {
        let yy = y(t.value);
        let _ = write!(
            out,
            r#"<line class="th {k}" data-value="{raw}" x1="{LEFT}" y1="{yy:.1}" x2="{r}" y2="{yy:.1}"><title>{l}: {v}</title></line><text class="lbl {k}" x="{tx}" y="{ty:.1}" text-anchor="end">{l} {v}</text>"#,
            k = t.kind,
            raw = t.value,
            tx = r - 2.0,
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
        out.push_str(r#"<g class="pts">"#);
        for (t, v) in &l.points {
            if let Some(v) = v {
                let _ = write!(
                    out,
                    r#"<circle class="pt s{}" cx="{:.1}" cy="{:.1}" r="3"><title>{}: {} at {}</title></circle>"#,
                    i % 6,
                    x(*t),
                    y(f64::from(*v)),
                    esc(&l.label),
                    esc(&fmt_value(f64::from(*v), unit)),
                    esc(&axis.time(*t))
                );
            }
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    match first {
        None => out.push_str(r#"<p class="empty">No data in this period.</p>"#),
        // A young node: say where its history starts rather than leave the
        // window's start looking like a flat line or a broken chart.
        Some(t) if t > axis.from + span / 50 => {
            let _ = write!(
                out,
                r#"<p class="nodata">No data before {}: the history starts then.</p>"#,
                esc(&axis.moment(t))
            );
        }
        Some(_) => {}
    }
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

    fn amsterdam(from: u64, to: u64) -> Axis {
        Axis {
            from,
            to,
            tz: TimeZone::get("Europe/Amsterdam").unwrap(),
        }
    }

    #[test]
    fn chart_draws_runs_thresholds_points_and_escapes() {
        // 2026-11-30 12:00:00 UTC = 13:00 CET.
        let t0 = 1_796_040_000;
        let line = Line {
            label: "coretemp/<pkg>".into(),
            points: vec![
                (t0, Some(40.0)),
                (t0 + 60, Some(50.0)),
                (t0 + 120, None),
                (t0 + 180, Some(45.0)),
            ],
        };
        let axis = amsterdam(t0, t0 + 3600);
        let svg = chart(
            "Temperature",
            "°C",
            &[line],
            &[Threshold {
                label: "warn".into(),
                value: 85.0,
                kind: "warn",
            }],
            &axis,
        );
        assert_eq!(svg.matches("<polyline").count(), 2, "the gap splits the line");
        assert!(svg.contains("warn 85 °C") && svg.contains(r#"data-value="85""#));
        assert!(svg.contains("coretemp/&lt;pkg&gt;") && !svg.contains("<pkg>"));
        assert!(svg.contains("coretemp/&lt;pkg&gt;: 50 °C at 13:01"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">CET</text>"), "the zone is on the axis");
        assert!(!svg.contains("No data before"), "data from the window's start");
        let empty = chart(
            "CPU",
            "%",
            &[Line {
                label: "cpu".into(),
                points: vec![],
            }],
            &[],
            &axis,
        );
        assert!(
            empty.contains("No data in this period") && empty.contains("<svg"),
            "{empty}"
        );
    }

    #[test]
    fn a_young_node_gets_the_whole_week_and_a_no_data_note() {
        let now = 1_796_040_000; // Mon 30 Nov 2026 13:00 CET
        let axis = amsterdam(now - 7 * 86400, now);
        let line = Line {
            label: "CPU".into(),
            points: vec![(now - 600, Some(0.2)), (now - 300, Some(0.3))],
        };
        let svg = chart("CPU", "%", &[line], &[], &axis);
        assert!(svg.contains("No data before Mon 30 Nov 12:50 CET"), "{svg}");
        // The points sit at the right end, the axis runs a week: ticks at
        // seven local midnights (Tue 24 to Mon 30).
        let ticks: Vec<String> = axis.ticks().into_iter().map(|t| t.1).collect();
        assert_eq!(
            ticks,
            ["Tue 24", "Wed 25", "Thu 26", "Fri 27", "Sat 28", "Sun 29", "Mon 30"]
        );
        let last_x: f64 = svg
            .rsplit("cx=\"")
            .next()
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            last_x > 683.0 && last_x <= 684.0,
            "the newest point at the right edge: {last_x}"
        );
    }

    #[test]
    fn ticks_follow_local_time_across_a_dst_change() {
        // 2026-03-29: Amsterdam jumps from 02:00 CET to 03:00 CEST.
        let from = 1_774_735_200; // 2026-03-28 22:00 UTC = 23:00 CET
        let axis = amsterdam(from, from + 86400);
        let ticks: Vec<String> = axis.ticks().into_iter().map(|t| t.1).collect();
        // 24 real hours from 23:00 CET end at 00:00 CEST: the day had 23.
        assert_eq!(
            ticks,
            [
                "00:00", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00", "21:00", "00:00"
            ]
        );
        let hour = amsterdam(from, from + 3600);
        assert_eq!(hour.ticks().len(), 7, "every 10 minutes, both ends included");
    }

    #[test]
    fn value_scales_are_round() {
        assert_eq!(value_scale(&[0.3], &[], "%").2, [0.0, 0.25, 0.5, 0.75, 1.0]);
        let (lo, hi, grid) = value_scale(&[3.1e9, 7.9e9], &[], "B");
        assert_eq!((lo, hi), (0.0, 8e9));
        assert_eq!(grid.len(), 5);
        let (lo, hi, _) = value_scale(
            &[45.0, 48.0],
            &[Threshold {
                label: "c".into(),
                value: 95.0,
                kind: "critical",
            }],
            "°C",
        );
        assert_eq!((lo, hi), (20.0, 100.0));
    }
}
