//! A log-linear latency histogram in microseconds (HDR-like: about 3% relative precision, fixed
//! memory, mergeable across connections).

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above `LINEAR` (so precision is 1/32 of the value).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above `LINEAR`: 2^6 .. 2^40 µs (about 12 days).
const OCTAVES: usize = 34;
const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB as usize;

/// Counts of values (µs) in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram(n={}, max={})", self.total, self.max)
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 6
    let octave = (exp - 6) as usize;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = ((v >> (exp - SUB_BITS)) & (SUB - 1)) as usize;
    LINEAR as usize + octave * SUB as usize + sub
}

/// The largest value that lands in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    if b < LINEAR as usize {
        return b as u64;
    }
    let octave = (b - LINEAR as usize) / SUB as usize;
    let sub = ((b - LINEAR as usize) % SUB as usize) as u64;
    let exp = octave as u32 + 6;
    let step = 1u64 << (exp - SUB_BITS);
    (1u64 << exp) + (sub + 1) * step - 1
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    /// Counts one value.
    pub fn record(&mut self, micros: u64) {
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value counted (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values counted (exact), 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding it, never more
    /// than the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(b).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_three_percent() {
        let mut last_high = None;
        for b in 0..BUCKETS - 1 {
            let high = bucket_high(b);
            if let Some(prev) = last_high {
                assert_eq!(
                    bucket_of(prev + 1),
                    b,
                    "bucket {b} starts right after {prev}"
                );
            }
            assert_eq!(bucket_of(high), b);
            last_high = Some(high);
        }
        for v in [100u64, 1_000, 4_999, 123_456, 10_000_000] {
            let high = bucket_high(bucket_of(v));
            assert!(
                high >= v && (high - v) as f64 <= v as f64 / 32.0 + 1.0,
                "{v} -> {high}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_run() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((5_000..=5_160).contains(&p50), "p50 {p50}");
        assert!((9_900..=10_000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.count(), 10_000);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_max() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(5_000);
        b.record(7);
        a.merge(&b);
        assert_eq!((a.count(), a.max()), (3, 5_000));
        assert_eq!(a.quantile(0.34), 10);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }
}
