//! A lock-free histogram that a stage keeps in its stats struct and the metrics endpoint reads at
//! scrape time. Observing costs two or three relaxed atomic adds and a short scan of the bucket
//! bounds; reading copies the counts (a scrape may see an observation in `count` before its
//! bucket: harmless for a histogram that is only ever read as rates).

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// The upper bounds of a histogram's buckets (strictly increasing; `+Inf` is implicit).
pub trait Buckets: Send + Sync + 'static {
    /// Upper bounds, strictly increasing.
    const BOUNDS: &'static [f64];
}

/// Durations in seconds, from half a millisecond (a group commit on a fast disk) to five minutes
/// (a large upload).
#[derive(Debug)]
pub struct Seconds;

impl Buckets for Seconds {
    const BOUNDS: &'static [f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 120.0, 300.0,
    ];
}

/// Counts of records, powers of four up to 4096 (the committer's largest group).
#[derive(Debug)]
pub struct Records;

impl Buckets for Records {
    const BOUNDS: &'static [f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];
}

/// A histogram over the buckets of `B`.
pub struct Histogram<B: Buckets> {
    /// One count per bound, plus the `+Inf` bucket (not cumulative).
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
    count: AtomicU64,
    buckets: PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        Self {
            counts: (0..=B::BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
            buckets: PhantomData,
        }
    }
}

impl<B: Buckets> fmt::Debug for Histogram<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &snapshot.count)
            .field("sum", &snapshot.sum)
            .finish()
    }
}

/// What a histogram held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound, observations in this bucket only)`, the last bound being `f64::MAX`
    /// (`+Inf`), as `prometheus-client`'s encoder wants them.
    pub buckets: Vec<(f64, u64)>,
}

impl<B: Buckets> Histogram<B> {
    /// Records one observation. Negative and NaN values count in the first bucket and add
    /// nothing to the sum.
    pub fn observe(&self, value: f64) {
        let index = if value.is_nan() {
            0
        } else {
            B::BOUNDS
                .iter()
                .position(|bound| value <= *bound)
                .unwrap_or(B::BOUNDS.len())
        };
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        if value.is_finite() && value > 0.0 {
            // Only the stage that owns the histogram writes it; the loop is for safety.
            let _ = self
                .sum_bits
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    Some((f64::from_bits(bits) + value).to_bits())
                });
        }
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A copy of the current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = B::BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter())
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::<Records>::default();
        for value in [1.0, 1.0, 3.0, 4096.0, 5000.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.sum, 9_101.0);
        let counts: Vec<u64> = snapshot.buckets.iter().map(|(_, c)| *c).collect();
        assert_eq!(counts, [2, 1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(snapshot.buckets.last().map(|(b, _)| *b), Some(f64::MAX));
    }

    #[test]
    fn nonsense_values_are_counted_without_spoiling_the_sum() {
        let histogram = Histogram::<Seconds>::default();
        histogram.observe(f64::NAN);
        histogram.observe(-1.0);
        histogram.observe(0.25);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.sum, 0.25);
    }
}
