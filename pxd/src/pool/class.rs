//! Sorting a measured drive into a QoS class. Thresholds are configuration; the defaults put
//! NVMe and good SATA SSDs in `high`, provisioned cloud and virtual disks in `medium`, and
//! spinning or throttled disks in `low`.
//!
//! The class rests on IOPS and median latency. p99 is measured and reported, but it is the
//! first figure to swing with host noise (it varies 30x under an emulated CPU while the median
//! holds), and a class that flips between runs is useless for placement.

use crate::pool::benchmark::BenchResult;
use crate::volume::spec::Class;

/// Minimum random IOPS and maximum median latency (µs) for a class. A drive must meet both,
/// for reads and (when measured) writes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Thresholds {
    pub high_min_iops: f64,
    pub high_max_p50_us: u64,
    pub medium_min_iops: f64,
    pub medium_max_p50_us: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            high_min_iops: 20_000.0,
            high_max_p50_us: 500,
            medium_min_iops: 1_000.0,
            medium_max_p50_us: 3_000,
        }
    }
}

/// The class a benchmark earns.
pub fn classify(r: &BenchResult, t: &Thresholds) -> Class {
    let patterns: Vec<_> = std::iter::once(r.random_read)
        .chain(r.random_write)
        .collect();
    let meets = |iops: f64, p50: u64| patterns.iter().all(|m| m.iops >= iops && m.p50_us <= p50);
    if meets(t.high_min_iops, t.high_max_p50_us) {
        Class::High
    } else if meets(t.medium_min_iops, t.medium_max_p50_us) {
        Class::Medium
    } else {
        Class::Low
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::benchmark::Measured;

    fn result(iops: f64, p50_us: u64, write: Option<(f64, u64)>) -> BenchResult {
        let m = |iops: f64, p50_us: u64| Measured {
            iops,
            p50_us,
            p99_us: 40 * p50_us,
        };
        BenchResult {
            random_read: m(iops, p50_us),
            random_write: write.map(|(iops, p50)| m(iops, p50)),
            sequential_read_mib_s: 100.0,
        }
    }

    #[test]
    fn iops_and_median_latency_decide_and_the_weaker_pattern_counts() {
        let t = Thresholds::default();
        let class = |r: BenchResult| classify(&r, &t);
        assert_eq!(
            class(result(80_000.0, 100, Some((50_000.0, 150)))),
            Class::High
        );
        assert_eq!(
            class(result(80_000.0, 100, Some((5_000.0, 900)))),
            Class::Medium
        );
        assert_eq!(class(result(80_000.0, 1_000, None)), Class::Medium);
        // A 5 ms disk: latency alone makes it low, whatever its queue depth buys.
        assert_eq!(class(result(1_500.0, 5_400, None)), Class::Low);
        assert_eq!(
            class(result(150.0, 12_000, Some((140.0, 15_000)))),
            Class::Low
        );
        // Measured in the test VM: a raw virtio disk is medium, the 5 ms delay disk low.
        assert_eq!(
            class(result(5_638.0, 597, Some((2_858.0, 1_502)))),
            Class::Medium
        );
        assert_eq!(
            class(result(603.0, 12_505, Some((621.0, 12_273)))),
            Class::Low
        );
    }
}
