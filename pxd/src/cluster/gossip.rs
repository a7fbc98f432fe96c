//! Heartbeats. Every node sends every other member a beat with its stats about once per
//! interval; a node is `offline` once `missed` beats in a row have not arrived and `online`
//! again with the next one. Liveness is each node's own view: it is not written to Raft (a
//! write per node per second would be most of the log).

use crate::store::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a node reports about itself in each beat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// Bytes in this node's pools, and bytes used of them.
    pub capacity: u64,
    pub used: u64,
    /// Completed block I/Os per second over the node's disks, reads plus writes.
    pub iops: u64,
    /// CPU busy, 0–100, over the last interval.
    pub cpu_percent: f64,
    pub memory_total: u64,
    pub memory_used: u64,
    /// This node's pools as its last reconcile pass read them, by pool id: what placement on
    /// any node needs to know about them beyond the store.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolBeat>,
}

/// One pool in a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolBeat {
    pub data_used: u64,
    pub data_total: u64,
    /// Why it refuses new allocations, if it is near full.
    pub near_full: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Online,
    Offline,
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Liveness::Online => "online",
            Liveness::Offline => "offline",
        })
    }
}

struct Beat {
    at: Instant,
    stats: NodeStats,
}

/// The beats this node has received.
pub struct Beats {
    interval: Duration,
    missed: u32,
    seen: Mutex<HashMap<NodeId, Beat>>,
}

impl Beats {
    pub fn new(interval: Duration, missed: u32) -> Beats {
        Beats {
            interval,
            missed: missed.max(1),
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn record(&self, from: NodeId, stats: NodeStats) {
        self.record_at(from, stats, Instant::now());
    }

    fn record_at(&self, from: NodeId, stats: NodeStats, at: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(from, Beat { at, stats });
    }

    /// A node's liveness and last stats as seen from here. A node never heard from is
    /// offline.
    pub fn view(&self, id: NodeId) -> (Liveness, Option<NodeStats>) {
        self.view_at(id, Instant::now())
    }

    fn view_at(&self, id: NodeId, now: Instant) -> (Liveness, Option<NodeStats>) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&id) {
            Some(b) => {
                let limit = self.interval * self.missed;
                let live = if now.saturating_duration_since(b.at) <= limit {
                    Liveness::Online
                } else {
                    Liveness::Offline
                };
                (live, Some(b.stats.clone()))
            }
            None => (Liveness::Offline, None),
        }
    }
}

/// Samples this node's stats; CPU and IOPS are rates over the time since the last sample.
#[derive(Default)]
pub struct StatsSampler {
    last_cpu: Option<(u64, u64)>,
    last_ios: Option<(u64, Instant)>,
}

impl StatsSampler {
    pub fn sample(&mut self, pools: BTreeMap<String, PoolBeat>) -> NodeStats {
        let capacity = pools.values().map(|p| p.data_total).sum();
        let used = pools.values().map(|p| p.data_used).sum();
        let (memory_total, memory_used) = memory().unwrap_or((0, 0));
        let cpu_percent = match (cpu_times(), self.last_cpu) {
            (Some((busy, total)), Some((b0, t0))) if total > t0 => {
                self.last_cpu = Some((busy, total));
                (busy.saturating_sub(b0)) as f64 * 100.0 / (total - t0) as f64
            }
            (now, _) => {
                self.last_cpu = now;
                0.0
            }
        };
        let now = Instant::now();
        let iops = match (disk_ios(), self.last_ios) {
            (Some(ios), Some((ios0, t0))) => {
                self.last_ios = Some((ios, now));
                let secs = now.duration_since(t0).as_secs_f64();
                if secs > 0.0 {
                    (ios.saturating_sub(ios0) as f64 / secs) as u64
                } else {
                    0
                }
            }
            (ios, _) => {
                self.last_ios = ios.map(|i| (i, now));
                0
            }
        };
        NodeStats {
            capacity,
            used,
            iops,
            cpu_percent,
            memory_total,
            memory_used,
            pools,
        }
    }
}

/// (busy, total) jiffies from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    // idle and iowait are the 4th and 5th values.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (total, used) bytes from /proc/meminfo.
fn memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&info)
}

fn parse_meminfo(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let total = field("MemTotal:")? * 1024;
    let available = field("MemAvailable:")? * 1024;
    Some((total, total.saturating_sub(available)))
}

/// Completed reads plus writes over the whole disks in /sys/block (partitions are not
/// listed there, so nothing is counted twice; loop and ram devices are left out).
fn disk_ios() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("dm-") {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let v: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        total += v.first().copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_goes_offline_after_missed_beats_and_back_online_with_the_next() {
        let beats = Beats::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let n = NodeId(7);
        assert_eq!(beats.view_at(n, t0).0, Liveness::Offline);
        beats.record_at(n, NodeStats::default(), t0);
        assert_eq!(
            beats.view_at(n, t0 + Duration::from_secs(3)).0,
            Liveness::Online
        );
        assert_eq!(
            beats.view_at(n, t0 + Duration::from_millis(3100)).0,
            Liveness::Offline
        );
        beats.record_at(n, NodeStats::default(), t0 + Duration::from_secs(5));
        assert_eq!(
            beats.view_at(n, t0 + Duration::from_secs(5)).0,
            Liveness::Online
        );
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            parse_cpu_line("cpu  10 0 10 70 10 0 0 0 0 0"),
            Some((20, 100))
        );
        assert_eq!(
            parse_meminfo("MemTotal:       1000 kB\nMemFree: 1 kB\nMemAvailable:    600 kB\n"),
            Some((1_024_000, 409_600))
        );
    }
}
