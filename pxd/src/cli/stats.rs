//! `pxd volume stats [VOL] [--watch] [--json]`: an iostat-like table of the volumes whose
//! device is on this node, from two samples of the daemon's counters a second apart.

use super::{print_json, seg, CliError};
use crate::api::client::BlockingClient;
use crate::api::stats::VolumeStats;
use crate::cli::output::table;
use crate::io::IoCounts;
use crate::store::types::IopsLimit;
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long between the two samples a rate is taken over.
const INTERVAL: Duration = Duration::from_secs(1);

/// One volume's rates over an interval, and its totals at its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeRates {
    pub volume: String,
    pub id: String,
    pub node: String,
    pub interval_s: f64,
    pub reads_per_s: f64,
    pub writes_per_s: f64,
    pub read_bytes_per_s: f64,
    pub written_bytes_per_s: f64,
    /// Upper bounds of the latency buckets holding the 50th and 99th percentiles over the
    /// interval, in seconds; none without I/O or without the eBPF probes.
    pub read_p50_s: Option<f64>,
    pub read_p99_s: Option<f64>,
    pub write_p50_s: Option<f64>,
    pub write_p99_s: Option<f64>,
    pub max_iops: Option<IopsLimit>,
    /// The cgroups that did I/O over the interval.
    pub cgroups: Vec<CgroupRates>,
    /// Counts since the counters began.
    pub total: IoCounts,
    /// Completions timed since the counters began (reads, writes).
    pub timed: Option<(u64, u64)>,
    pub ebpf: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CgroupRates {
    pub cgroup: u64,
    pub path: Option<String>,
    pub reads_per_s: f64,
    pub writes_per_s: f64,
}

/// The rates between `before` and `after`, `secs` apart.
pub fn rates(before: &VolumeStats, after: &VolumeStats, secs: f64) -> VolumeRates {
    let d = after.counts.since(&before.counts);
    let per_s = |n: u64| n as f64 / secs.max(1e-3);
    let quantiles = |b: &Option<_>, a: &Option<crate::api::stats::LatencyView>| {
        let (Some(b), Some(a)) = (b.as_ref(), a.as_ref()) else {
            return (None, None);
        };
        let (b, mut a) = (
            crate::api::stats::LatencyView::latencies(b),
            crate::api::stats::LatencyView::latencies(a),
        );
        for (x, y) in a.buckets.iter_mut().zip(b.buckets) {
            *x = x.wrapping_sub(y);
        }
        (a.quantile_bound(0.5), a.quantile_bound(0.99))
    };
    let (read_p50_s, read_p99_s) = quantiles(&before.read_latency, &after.read_latency);
    let (write_p50_s, write_p99_s) = quantiles(&before.write_latency, &after.write_latency);
    let cgroups = after
        .cgroups
        .iter()
        .filter_map(|c| {
            let earlier = before
                .cgroups
                .iter()
                .find(|b| b.cgroup == c.cgroup)
                .map(|b| b.counts)
                .unwrap_or_default();
            let d = c.counts.since(&earlier);
            (d.reads + d.writes > 0).then(|| CgroupRates {
                cgroup: c.cgroup,
                path: c.path.clone(),
                reads_per_s: per_s(d.reads),
                writes_per_s: per_s(d.writes),
            })
        })
        .collect();
    let timed = |l: &Option<crate::api::stats::LatencyView>| {
        l.as_ref().map(|l| l.buckets.iter().sum::<u64>())
    };
    VolumeRates {
        volume: after.volume.clone(),
        id: after.id.clone(),
        node: after.node.clone(),
        interval_s: secs,
        reads_per_s: per_s(d.reads),
        writes_per_s: per_s(d.writes),
        read_bytes_per_s: per_s(d.read_bytes),
        written_bytes_per_s: per_s(d.written_bytes),
        read_p50_s,
        read_p99_s,
        write_p50_s,
        write_p99_s,
        max_iops: after.max_iops,
        cgroups,
        total: after.counts,
        timed: timed(&after.read_latency).zip(timed(&after.write_latency)),
        ebpf: after.ebpf,
    }
}

fn sample(c: &BlockingClient, volume: Option<&str>) -> Result<Vec<VolumeStats>, CliError> {
    Ok(match volume {
        Some(v) => vec![c.get(&format!("/v1/volumes/{}/stats", seg("volume", v)?))?],
        None => c.get("/v1/stats")?,
    })
}

/// Runs `pxd volume stats`.
pub fn volume_stats(
    c: &BlockingClient,
    volume: Option<&str>,
    watch: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut before = sample(c, volume)?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(INTERVAL);
        let after = sample(c, volume)?;
        let now = Instant::now();
        let secs = now.duration_since(at).as_secs_f64();
        let rows: Vec<VolumeRates> = after
            .iter()
            .map(|a| {
                let b = before.iter().find(|b| b.id == a.id).unwrap_or(a);
                rates(b, a, secs)
            })
            .collect();
        if json {
            print_json(&rows);
        } else {
            print!("{}", render(&rows));
        }
        if !watch {
            return Ok(());
        }
        (before, at) = (after, now);
    }
}

fn latency(s: Option<f64>) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.1}s"),
    }
}

fn limit(l: Option<IopsLimit>) -> String {
    match l {
        None => "-".to_owned(),
        Some(l) => format!("{},{}", l.read, l.write),
    }
}

/// The table, a row a volume.
pub fn render(rows: &[VolumeRates]) -> String {
    if rows.is_empty() {
        return "no volume has its device on this node\n".to_owned();
    }
    let mib = |b: f64| format!("{:.2}", b / f64::from(1 << 20));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let cgroups: Vec<String> = r
                .cgroups
                .iter()
                .map(|c| {
                    let name = c.path.clone().unwrap_or_else(|| format!("#{}", c.cgroup));
                    format!("{name} {:.0}r/{:.0}w", c.reads_per_s, c.writes_per_s)
                })
                .collect();
            vec![
                r.volume.clone(),
                format!("{:.0}", r.reads_per_s),
                format!("{:.0}", r.writes_per_s),
                mib(r.read_bytes_per_s),
                mib(r.written_bytes_per_s),
                format!("{}/{}", latency(r.read_p50_s), latency(r.read_p99_s)),
                format!("{}/{}", latency(r.write_p50_s), latency(r.write_p99_s)),
                limit(r.max_iops),
                if cgroups.is_empty() {
                    "-".to_owned()
                } else {
                    cgroups.join(", ")
                },
            ]
        })
        .collect();
    table(
        &[
            "VOLUME",
            "R/S",
            "W/S",
            "RMB/S",
            "WMB/S",
            "R P50/P99",
            "W P50/P99",
            "LIMIT R,W",
            "CGROUPS",
        ],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::stats::{CgroupIo, LatencyView};

    fn stats(reads: u64, writes: u64, slow_writes: u64, cg: u64) -> VolumeStats {
        let mut buckets = vec![0u64; crate::io::LATENCY_BUCKETS];
        buckets[10] = reads + writes - slow_writes;
        buckets[20] = slow_writes;
        let counts = IoCounts {
            reads,
            writes,
            read_bytes: reads * 4096,
            written_bytes: writes * 4096,
        };
        VolumeStats {
            volume: "db".into(),
            id: "v1".into(),
            node: "n1".into(),
            ebpf: true,
            counts,
            read_latency: Some(LatencyView {
                buckets: vec![0; crate::io::LATENCY_BUCKETS],
                sum_ns: 0,
            }),
            write_latency: Some(LatencyView { buckets, sum_ns: 0 }),
            cgroups: vec![CgroupIo {
                cgroup: 7,
                path: Some("/app".into()),
                counts: IoCounts {
                    writes: cg,
                    ..IoCounts::default()
                },
            }],
            max_iops: Some(IopsLimit {
                read: 200,
                write: 100,
            }),
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let r = rates(&stats(0, 100, 0, 100), &stats(0, 300, 2, 300), 2.0);
        assert_eq!((r.reads_per_s, r.writes_per_s), (0.0, 100.0));
        assert_eq!(r.written_bytes_per_s, 100.0 * 4096.0);
        // 198 writes near 1 µs and 2 near 1 ms in the interval: p50 in the first bucket,
        // p99 in the second.
        assert_eq!(r.write_p50_s, Some(2048e-9));
        assert_eq!(r.write_p99_s, Some(2048e-9));
        assert_eq!(r.cgroups.len(), 1);
        assert_eq!(r.cgroups[0].writes_per_s, 100.0);
        assert_eq!(r.total.writes, 300);
        let text = render(&[r]);
        assert!(text.contains("db") && text.contains("200,100") && text.contains("/app 0r/100w"));
        // Nothing in the interval: no latency, no cgroup.
        let idle = rates(&stats(0, 300, 2, 300), &stats(0, 300, 2, 300), 1.0);
        assert_eq!((idle.write_p50_s, idle.cgroups.len()), (None, 0));
    }
}
