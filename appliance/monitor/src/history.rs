//! Bounded history for the admin page graphs.
//!
//! Every series keeps three rings: the last hour at 1 s, the last 48 hours
//! at 1 min and the last 30 days at 15 min. A coarse bucket holds the mean
//! of the samples that fell into it. Memory is bounded by the ring sizes
//! times [`History::max_series`]: when a new series would exceed it, the
//! series updated least recently is dropped.
//!
//! The history is saved to a small binary file so graphs survive a
//! restart; a damaged file is reported and replaced, never trusted.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Step and length of each ring, finest first.
pub const RESOLUTIONS: [(u64, usize); 3] = [(1, 3600), (60, 2880), (900, 2880)];

const MAGIC: &[u8; 8] = b"APLHIST1";
const NO_BUCKET: u64 = u64::MAX;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("history file is damaged: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A time window of the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Hour,
    Day,
    Week,
    Month,
}

impl Window {
    /// How far back the window reaches.
    pub fn seconds(self) -> u64 {
        match self {
            Window::Hour => 3600,
            Window::Day => 86400,
            Window::Week => 7 * 86400,
            Window::Month => 30 * 86400,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Window::Hour => "Last hour",
            Window::Day => "Last day",
            Window::Week => "Last week",
            Window::Month => "Last month",
        }
    }

    /// Which ring serves the window and how many buckets of it.
    fn ring_and_len(self) -> (usize, usize) {
        match self {
            Window::Hour => (0, 3600),
            Window::Day => (1, 1440),
            Window::Week => (2, 672),
            Window::Month => (2, 2880),
        }
    }
}

#[derive(Debug, Clone)]
struct Ring {
    step: u64,
    cap: usize,
    values: VecDeque<f32>,
    /// The bucket (time / step) of the newest value.
    last_bucket: Option<u64>,
    /// How many samples the newest bucket averages, and their sum (kept
    /// in f64 so the mean is exact, not rounded at every step).
    last_count: u32,
    last_sum: f64,
}

impl Ring {
    fn new(step: u64, cap: usize) -> Ring {
        Ring {
            step,
            cap,
            values: VecDeque::new(),
            last_bucket: None,
            last_count: 0,
            last_sum: 0.0,
        }
    }

    fn push(&mut self, t: u64, v: f32) {
        let bucket = t / self.step;
        match self.last_bucket {
            Some(last) if bucket < last => return, // clock stepped back: drop
            Some(last) if bucket == last => {
                if let Some(back) = self.values.back_mut() {
                    self.last_sum += f64::from(v);
                    self.last_count += 1;
                    *back = (self.last_sum / f64::from(self.last_count)) as f32;
                }
                return;
            }
            Some(last) => {
                let gap = (bucket - last - 1).min(self.cap as u64) as usize;
                for _ in 0..gap {
                    self.values.push_back(f32::NAN);
                }
            }
            None => {}
        }
        self.values.push_back(v);
        while self.values.len() > self.cap {
            self.values.pop_front();
        }
        self.last_bucket = Some(bucket);
        self.last_count = 1;
        self.last_sum = f64::from(v);
    }

    /// The newest `n` buckets as (bucket start time, value).
    fn tail(&self, n: usize) -> Vec<(u64, Option<f32>)> {
        let Some(last) = self.last_bucket else {
            return Vec::new();
        };
        let len = self.values.len();
        let skip = len.saturating_sub(n);
        self.values
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, v)| {
                let bucket = last - (len - 1 - i) as u64;
                (bucket * self.step, (!v.is_nan()).then_some(*v))
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Series {
    rings: Vec<Ring>,
    last_update: u64,
}

impl Series {
    fn new() -> Series {
        Series {
            rings: RESOLUTIONS.iter().map(|(s, c)| Ring::new(*s, *c)).collect(),
            last_update: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct History {
    series: BTreeMap<String, Series>,
    max_series: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(256)
    }
}

impl History {
    pub fn new(max_series: usize) -> History {
        History {
            series: BTreeMap::new(),
            max_series: max_series.max(1),
        }
    }

    pub fn max_series(&self) -> usize {
        self.max_series
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.series.keys().map(String::as_str)
    }

    /// Records `value` for series `name` at unix time `t` (seconds).
    pub fn record(&mut self, name: &str, t: u64, value: f64) {
        if !value.is_finite() {
            return;
        }
        if !self.series.contains_key(name) {
            if self.series.len() >= self.max_series {
                let oldest = self
                    .series
                    .iter()
                    .min_by_key(|(_, s)| s.last_update)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.series.remove(&k);
                }
            }
            self.series.insert(name.to_string(), Series::new());
        }
        let s = self.series.get_mut(name).expect("inserted above");
        for ring in &mut s.rings {
            ring.push(t, value as f32);
        }
        s.last_update = s.last_update.max(t);
    }

    /// Points of one series over a window, oldest first; `None` marks a gap.
    pub fn query(&self, name: &str, window: Window) -> Vec<(u64, Option<f32>)> {
        let (ring, n) = window.ring_and_len();
        self.series.get(name).map(|s| s.rings[ring].tail(n)).unwrap_or_default()
    }

    /// Drops series not updated since `cutoff` (unix seconds): interfaces
    /// and sensors that went away long ago.
    pub fn prune(&mut self, cutoff: u64) {
        self.series.retain(|_, s| s.last_update >= cutoff);
    }

    pub fn save(&self, mut w: impl Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&(self.series.len() as u32).to_le_bytes())?;
        for (name, s) in &self.series {
            w.write_all(&(name.len() as u16).to_le_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&s.last_update.to_le_bytes())?;
            for r in &s.rings {
                w.write_all(&r.step.to_le_bytes())?;
                w.write_all(&(r.cap as u32).to_le_bytes())?;
                w.write_all(&r.last_bucket.unwrap_or(NO_BUCKET).to_le_bytes())?;
                w.write_all(&r.last_count.to_le_bytes())?;
                w.write_all(&(r.values.len() as u32).to_le_bytes())?;
                for v in &r.values {
                    w.write_all(&v.to_le_bytes())?;
                }
            }
        }
        w.flush()
    }

    /// Reads what [`History::save`] wrote. Rings whose step or size differ
    /// from this build's are left empty rather than misread.
    pub fn load(mut r: impl Read, max_series: usize) -> Result<History, HistoryError> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(eof)?;
        if &magic != MAGIC {
            return Err(HistoryError::Corrupt("wrong magic".into()));
        }
        let count = read_u32(&mut r)? as usize;
        let mut h = History::new(max_series);
        for _ in 0..count {
            let name_len = read_u16(&mut r)? as usize;
            let mut name = vec![0u8; name_len];
            r.read_exact(&mut name).map_err(eof)?;
            let name = String::from_utf8(name).map_err(|_| HistoryError::Corrupt("series name is not UTF-8".into()))?;
            let mut s = Series::new();
            s.last_update = read_u64(&mut r)?;
            for ring in &mut s.rings {
                let step = read_u64(&mut r)?;
                let cap = read_u32(&mut r)? as usize;
                let last_bucket = read_u64(&mut r)?;
                let last_count = read_u32(&mut r)?;
                let len = read_u32(&mut r)? as usize;
                if len > cap || cap > 1_000_000 {
                    return Err(HistoryError::Corrupt(format!(
                        "series {name:?}: {len} values in a ring of {cap}"
                    )));
                }
                let mut values = VecDeque::with_capacity(len);
                let mut buf = [0u8; 4];
                for _ in 0..len {
                    r.read_exact(&mut buf).map_err(eof)?;
                    values.push_back(f32::from_le_bytes(buf));
                }
                if step == ring.step && cap == ring.cap && last_bucket != NO_BUCKET {
                    ring.values = values;
                    ring.last_bucket = Some(last_bucket);
                    ring.last_count = last_count;
                    ring.last_sum = ring
                        .values
                        .back()
                        .map_or(0.0, |v| f64::from(*v) * f64::from(last_count));
                }
            }
            if h.series.len() < h.max_series {
                h.series.insert(name, s);
            }
        }
        let mut rest = [0u8; 1];
        if r.read(&mut rest)? != 0 {
            return Err(HistoryError::Corrupt("trailing bytes".into()));
        }
        Ok(h)
    }
}

fn eof(e: io::Error) -> HistoryError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        HistoryError::Corrupt("truncated".into())
    } else {
        HistoryError::Io(e)
    }
}

fn read_u16(r: &mut impl Read) -> Result<u16, HistoryError> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b).map_err(eof)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Result<u32, HistoryError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(eof)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64, HistoryError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(eof)?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_ring_keeps_one_hour_and_marks_gaps() {
        let mut h = History::default();
        let t0 = 1_700_000_000;
        for i in 0..5000u64 {
            h.record("cpu", t0 + i, i as f64);
        }
        let pts = h.query("cpu", Window::Hour);
        assert_eq!(pts.len(), 3600);
        assert_eq!(pts.last().unwrap(), &(t0 + 4999, Some(4999.0)));
        assert_eq!(pts[0], (t0 + 1400, Some(1400.0)));
        h.record("cpu", t0 + 5003, 1.0);
        let pts = h.query("cpu", Window::Hour);
        assert_eq!(
            &pts[3596..],
            &[
                (t0 + 5000, None),
                (t0 + 5001, None),
                (t0 + 5002, None),
                (t0 + 5003, Some(1.0))
            ]
        );
    }

    #[test]
    fn coarse_rings_average_their_bucket() {
        let mut h = History::default();
        // 120 one-second samples starting on a minute boundary: two minutes.
        let t0 = 1_700_000_100; // on a minute and a quarter-hour boundary
        assert_eq!((t0 % 60, t0 % 900), (0, 0));
        for i in 0..120u64 {
            h.record("m", t0 + i, if i < 60 { 10.0 } else { (i - 60) as f64 });
        }
        let day = h.query("m", Window::Day);
        assert_eq!(day, vec![(t0, Some(10.0)), (t0 + 60, Some(29.5))]);
        let week = h.query("m", Window::Week);
        assert_eq!(week.len(), 1);
        let mean = (60.0 * 10.0 + f64::from((0..60).sum::<i32>())) / 120.0;
        assert_eq!(week[0], (t0, Some(mean as f32)));
    }

    #[test]
    fn bounded_in_series_and_values() {
        let mut h = History::new(3);
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            h.record(n, 100 + i as u64, 1.0);
        }
        assert_eq!(
            h.names().collect::<Vec<_>>(),
            ["b", "c", "d"],
            "least recently updated goes"
        );
        // A jump of a year does not allocate a year of gaps.
        h.record("b", 100 + 365 * 86400, 2.0);
        assert!(h.query("b", Window::Hour).len() <= 3600);
        assert!(h.query("b", Window::Month).len() <= 2880);
    }

    #[test]
    fn clock_stepping_back_is_ignored_and_nan_skipped() {
        let mut h = History::default();
        h.record("x", 1000, 1.0);
        h.record("x", 900, 5.0);
        h.record("x", 1001, f64::NAN);
        assert_eq!(h.query("x", Window::Hour), vec![(1000, Some(1.0))]);
    }

    #[test]
    fn save_load_round_trip_and_corruption() {
        let mut h = History::default();
        for i in 0..200u64 {
            h.record("cpu", 1_700_000_000 + i, (i % 7) as f64);
            h.record("temp:coretemp/Package id 0", 1_700_000_000 + i, 40.0 + (i % 3) as f64);
        }
        let mut buf = Vec::new();
        h.save(&mut buf).unwrap();
        let back = History::load(&buf[..], 256).unwrap();
        let mut again = Vec::new();
        back.save(&mut again).unwrap();
        assert_eq!(again, buf);
        assert_eq!(back.query("cpu", Window::Hour), h.query("cpu", Window::Hour));
        assert_eq!(back.query("cpu", Window::Hour).len(), 200);
        for cut in [0, 7, 12, buf.len() / 2, buf.len() - 1] {
            assert!(
                matches!(History::load(&buf[..cut], 256), Err(HistoryError::Corrupt(_))),
                "cut at {cut}"
            );
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert!(History::load(&extra[..], 256).is_err());
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(History::load(&bad[..], 256).is_err());
    }
}
