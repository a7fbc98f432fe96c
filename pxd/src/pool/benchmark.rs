//! Measures a drive when it is added (DESIGN §6): O_DIRECT 4 KiB random reads and writes at a
//! fixed queue depth, with latency percentiles, and sequential 1 MiB reads. Random writes only
//! run on a drive that holds nothing yet; a drive already in a pool is re-measured read-only.

use crate::kernel::block::AlignedBuf;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// How to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// Time per random pattern (reads, then writes).
    pub duration: Duration,
    /// Concurrent requests (one thread each).
    pub queue_depth: usize,
    /// The part of the drive to use, from its start, in bytes.
    pub span: u64,
    /// Whether writes may be issued (they destroy data).
    pub destructive: bool,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            duration: Duration::from_secs(3),
            queue_depth: 8,
            span: 1 << 30,
            destructive: false,
        }
    }
}

/// One pattern's result.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Measured {
    pub iops: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// A drive's benchmark.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BenchResult {
    pub random_read: Measured,
    /// None when the drive was measured read-only.
    pub random_write: Option<Measured>,
    pub sequential_read_mib_s: f64,
}

const BLOCK: usize = 4096;
const SEQ_BLOCK: usize = 1 << 20;

/// Runs the benchmark on `path`.
pub fn run(path: &Path, cfg: &BenchConfig) -> std::io::Result<BenchResult> {
    let size = crate::kernel::block::size_bytes(path)?;
    let span = cfg.span.min(size) / BLOCK as u64 * BLOCK as u64;
    if span < BLOCK as u64 * 16 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is too small to measure ({size} bytes)", path.display()),
        ));
    }
    let random_read = random(path, cfg, span, false)?;
    let random_write = if cfg.destructive {
        Some(random(path, cfg, span, true)?)
    } else {
        None
    };
    Ok(BenchResult {
        random_read,
        random_write,
        sequential_read_mib_s: sequential_read(path, cfg.duration / 2, span)?,
    })
}

fn random(path: &Path, cfg: &BenchConfig, span: u64, write: bool) -> std::io::Result<Measured> {
    let blocks = span / BLOCK as u64;
    let started = Instant::now();
    let deadline = started + cfg.duration;
    let per_thread: Vec<std::io::Result<Vec<u32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.queue_depth.max(1))
            .map(|t| {
                s.spawn(move || -> std::io::Result<Vec<u32>> {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(write)
                        .custom_flags(libc::O_DIRECT)
                        .open(path)?;
                    let mut buf = AlignedBuf::zeroed(BLOCK);
                    buf.as_mut_slice().fill(0xa5);
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ ((t as u64 + 1) * 0x1000_0001);
                    let mut lat = Vec::with_capacity(4096);
                    while Instant::now() < deadline {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % blocks) * BLOCK as u64;
                        let t0 = Instant::now();
                        if write {
                            file.write_all_at(buf.as_slice(), off)?;
                        } else {
                            file.read_exact_at(buf.as_mut_slice(), off)?;
                        }
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("benchmark thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in per_thread {
        all.extend(r?);
    }
    Ok(summarize(&mut all, elapsed))
}

/// IOPS and percentiles from latencies (µs) over `elapsed` seconds.
fn summarize(lat: &mut [u32], elapsed: f64) -> Measured {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            u64::from(lat[((lat.len() - 1) as f64 * p).round() as usize])
        }
    };
    Measured {
        iops: lat.len() as f64 / elapsed.max(f64::EPSILON),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn sequential_read(path: &Path, duration: Duration, span: u64) -> std::io::Result<f64> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = AlignedBuf::zeroed(SEQ_BLOCK);
    let started = Instant::now();
    let mut off = 0u64;
    let mut bytes = 0u64;
    while started.elapsed() < duration {
        if off + SEQ_BLOCK as u64 > span {
            off = 0;
        }
        file.read_exact_at(buf.as_mut_slice(), off)?;
        off += SEQ_BLOCK as u64;
        bytes += SEQ_BLOCK as u64;
    }
    Ok(bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut lat: Vec<u32> = (1..=100).collect();
        let m = summarize(&mut lat, 2.0);
        assert_eq!(m.iops, 50.0);
        assert_eq!(m.p50_us, 51);
        assert_eq!(m.p99_us, 99);
        assert_eq!(summarize(&mut [], 1.0).p99_us, 0);
    }
}
