//! Repetitions: each figure is the median of runs interleaved across the stacks compared
//! (A, B, C, A, B, C, ...), so that a slow minute of the host weighs on all of them alike,
//! printed with its range.

use crate::fio::{fio, Job};
use anyhow::Result;
use serde_json::{json, Value};
use std::path::PathBuf;

/// A device to measure, and the stack a user would pick instead of it, if any.
pub struct Stack {
    pub name: String,
    pub dev: PathBuf,
    pub peer: Option<String>,
}

/// Median, min and max of a stack's figures for one job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(xs: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Runs every job on every stack `reps` times, interleaved; every run is returned.
pub fn measure(stacks: &[Stack], jobs: &[&Job], reps: usize) -> Result<Vec<Value>> {
    let mut runs = Vec::new();
    for rep in 0..reps {
        for job in jobs {
            for s in stacks {
                let mut r = fio(&s.dev, job)?;
                r["stack"] = json!(s.name);
                r["job"] = json!(job.name);
                r["rep"] = json!(rep);
                r["figure"] = json!(job.figure(&r));
                runs.push(r);
            }
        }
        eprintln!("bench: repetition {} of {reps} done", rep + 1);
    }
    Ok(runs)
}

/// The spread of `stack`'s figures for `job` among `runs`.
pub fn spread(runs: &[Value], stack: &str, job: &Job) -> Option<Spread> {
    let xs: Vec<f64> = runs
        .iter()
        .filter(|r| r["stack"] == stack && r["job"] == job.name)
        .filter_map(|r| r["figure"].as_f64())
        .collect();
    Spread::of(&xs)
}

/// Prints a table of medians with ranges and ratios (to `baseline`, and to each stack's peer),
/// and returns the same as JSON.
pub fn report(runs: &[Value], stacks: &[Stack], jobs: &[&Job], baseline: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for job in jobs {
        println!(
            "\n  {} ({}; median of the runs, min-max)",
            job.name,
            job.unit()
        );
        let base = spread(runs, baseline, job).map_or(0.0, |s| s.median);
        for s in stacks {
            let Some(sp) = spread(runs, &s.name, job) else {
                continue;
            };
            let to_base = ratio(sp.median, base);
            let peer = s.peer.as_ref().and_then(|p| {
                let ps = spread(runs, p, job)?;
                Some((p.clone(), ratio(sp.median, ps.median)))
            });
            let peer_text = peer
                .as_ref()
                .map(|(p, r)| format!("   {r:>5.2}x {p}"))
                .unwrap_or_default();
            println!(
                "    {:<30} {:>9.0}  ({:>7.0}-{:<7.0})  {to_base:>5.2}x {baseline}{peer_text}",
                s.name, sp.median, sp.min, sp.max
            );
            out.push(json!({
                "stack": s.name,
                "job": job.name,
                "unit": job.unit(),
                "median": sp.median,
                "min": sp.min,
                "max": sp.max,
                "ratio_to": { baseline: to_base },
                "peer": peer.as_ref().map(|(p, _)| p),
                "ratio_to_peer": peer.map(|(_, r)| r),
            }));
        }
    }
    out
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (3.5, 1.0, 5.0));
        assert_eq!(Spread::of(&[2.0, 9.0, 4.0]).unwrap().median, 4.0);
        assert_eq!(Spread::of(&[]), None);
    }
}
