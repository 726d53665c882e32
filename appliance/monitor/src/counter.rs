//! Turns raw kernel counters, which wrap and reset, into monotonic totals.

/// A monotonic total built from a raw kernel counter.
///
/// The first reading is taken as the starting total, so on a box that never
/// wraps or resets, `total` equals the kernel's own figure. Afterwards only
/// deltas are added:
/// - a counter that decreases from a value that fits 32 bits, by a step
///   that is plausible for one sampling interval, wrapped (some drivers
///   still keep 32-bit counters);
/// - any other decrease is a reset (driver reload, interface re-created),
///   and the new raw value is what accumulated since then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    last_raw: Option<u64>,
    total: u64,
}

/// The largest wrap step we believe for one sample: half the 32-bit range.
/// A larger "wrap" is far more likely a reset.
const MAX_WRAP_STEP: u64 = 1 << 31;

impl Counter {
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records a reading and returns how much the counter grew since the
    /// previous one (0 for the first reading).
    pub fn observe(&mut self, raw: u64) -> u64 {
        let delta = match self.last_raw {
            None => {
                self.total = raw;
                0
            }
            Some(last) if raw >= last => raw - last,
            Some(last) => {
                let wrapped = (u32::MAX as u64).checked_sub(last).map(|room| room + raw + 1);
                match wrapped {
                    Some(w) if w < MAX_WRAP_STEP => w,
                    _ => raw,
                }
            }
        };
        self.total = self.total.saturating_add(delta);
        self.last_raw = Some(raw);
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(readings: &[u64]) -> (Vec<u64>, u64) {
        let mut c = Counter::default();
        let deltas = readings.iter().map(|r| c.observe(*r)).collect();
        (deltas, c.total())
    }

    #[test]
    fn table() {
        let u32max = u32::MAX as u64;
        let cases: &[(&str, &[u64], &[u64], u64)] = &[
            ("steady growth", &[100, 150, 400], &[0, 50, 250], 400),
            ("no change", &[7, 7, 7], &[0, 0, 0], 7),
            ("32-bit wrap", &[u32max - 9, 5], &[0, 15], u32max - 9 + 15),
            (
                "reset to small value",
                &[5_000_000_000, 1000],
                &[0, 1000],
                5_000_001_000,
            ),
            (
                "drop within 32-bit range too big to be a wrap",
                &[1_000_000_000, 10],
                &[0, 10],
                1_000_000_010,
            ),
            ("wrap then growth", &[u32max, 0, 10], &[0, 1, 10], u32max + 11),
        ];
        for (name, readings, want_deltas, want_total) in cases {
            let (deltas, total) = run(readings);
            assert_eq!(&deltas, want_deltas, "{name}: deltas");
            assert_eq!(total, *want_total, "{name}: total");
        }
    }
}
