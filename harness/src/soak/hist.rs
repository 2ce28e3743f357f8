//! A latency histogram with log-linear buckets (about 1.5 % wide), cheap to record into and to
//! merge, so that each sample and each window of a long run keeps its own.

/// Exact below this many microseconds; above, 64 buckets per power of two.
const LINEAR: u64 = 128;
const PER_OCTAVE: u64 = 64;
const BUCKETS: usize = (LINEAR + PER_OCTAVE * (64 - 7)) as usize;

#[derive(Clone)]
pub(super) struct Hist {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let octave = 63 - u64::from(micros.leading_zeros()); // ≥ 7
    let within = (micros >> (octave - 6)) & (PER_OCTAVE - 1);
    (LINEAR + (octave - 7) * PER_OCTAVE + within) as usize
}

/// The smallest value of bucket `b`.
fn floor(b: usize) -> u64 {
    let b = b as u64;
    if b < LINEAR {
        return b;
    }
    let octave = (b - LINEAR) / PER_OCTAVE + 7;
    let within = (b - LINEAR) % PER_OCTAVE;
    (PER_OCTAVE + within) << (octave - 6)
}

impl Hist {
    pub(super) fn record(&mut self, micros: u64) {
        self.counts[bucket(micros)] += 1;
        self.total += 1;
    }

    pub(super) fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    pub(super) fn count(&self) -> u64 {
        self.total
    }

    /// The value below which a fraction `q` of the recorded values lie, in milliseconds (the
    /// bucket's lower bound); 0 when empty.
    pub(super) fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return floor(b) as f64 / 1000.0;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::from(u32::MAX)]) {
            let b = bucket(v);
            assert!(b >= last, "{v}");
            assert!(floor(b) <= v, "{v}: floor {}", floor(b));
            assert!(v - floor(b) <= v / 64 + 1, "{v}: floor {}", floor(b));
            last = b;
        }
    }

    #[test]
    fn quantiles_of_a_known_set() {
        let mut h = Hist::default();
        for v in 1..=1000 {
            h.record(v * 10); // 10 µs … 10 ms
        }
        assert!(
            (h.quantile_ms(0.5) - 5.0).abs() < 0.1,
            "{}",
            h.quantile_ms(0.5)
        );
        assert!(
            (h.quantile_ms(0.99) - 9.9).abs() < 0.2,
            "{}",
            h.quantile_ms(0.99)
        );
        let mut two = h.clone();
        two.merge(&h);
        assert_eq!(two.count(), 2000);
        assert_eq!(two.quantile_ms(0.99), h.quantile_ms(0.99));
        assert_eq!(Hist::default().quantile_ms(0.99), 0.0);
    }
}
