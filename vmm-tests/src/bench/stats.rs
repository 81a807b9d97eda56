//! Percentile summaries of latency samples.

use serde::Serialize;

/// Percentiles of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarizes `samples` (any order; sorted in place). Empty input gives all zeros.
    pub fn of(samples: &mut [f64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_by(f64::total_cmp);
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        Summary {
            n: samples.len(),
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
            p999: percentile(samples, 99.9),
            max: samples[samples.len() - 1],
            mean,
        }
    }
}

/// The nearest-rank percentile `p` (0–100) of sorted, non-empty `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // Nearest rank: the smallest value with at least p% of the samples at or
    // below it (less a hair, so 99.9% of 1000 is rank 999, not 1000).
    let rank = ((p / 100.0) * n as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Nanoseconds to microseconds.
pub fn us(ns: i64) -> f64 {
    ns as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!(
            (s.n, s.p50, s.p99, s.p999, s.max),
            (1000, 500.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(s.mean, 500.5);
        assert_eq!(Summary::of(&mut []), Summary::default());
        assert_eq!(Summary::of(&mut [7.0]).p999, 7.0);
    }
}
