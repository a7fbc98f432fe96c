//! Holds each volume's IOPS and bandwidth limits for the volume as a whole, whoever does the
//! I/O (DESIGN §7). The kernel throttles per cgroup, so a limit written into one cgroup does
//! not hold a volume that several containers share. Each tick this controller reads, from
//! the probes, which cgroups did I/O to each limited device and how much, and splits the
//! volume's budget among them: an idle cgroup loses its share, a sole writer gets it all, and
//! a cgroup using less than its share leaves the rest to the others. Cgroups it has not seen
//! yet are bounded by guards: the whole budget on every cgroup whose throttle bounds the
//! others (v2: the root's children, since v2 throttles are hierarchical; v1: every cgroup,
//! since v1's are flat). What a new writer takes before its first split is paid back from
//! the next seconds' budget, so the volume's rate over time stays at its limit.

use super::cgroups::Hierarchy;
use super::{DevT, IoCounts};
use crate::kernel::throttle::{self, Knobs};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// How often the controller runs. A new writer runs on the guard's whole budget until the
/// next tick, and an overshoot inside one tick is averaged with whatever idle time the tick
/// held, so the tick bounds how far a volume's rate can pass its limit: five a second.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// Ticks between walks of the hierarchy for the guards (a cgroup made meanwhile waits).
const GUARD_REFRESH: u32 = 5;

/// Ticks (a second) a cgroup that stopped its I/O keeps a share before it loses it.
const IDLE_TICKS: u32 = 5;

/// Ticks (a second) a cgroup uses less than its share before the share is cut to its use.
const LIGHT_TICKS: u32 = 5;

/// The least share of a bandwidth budget: a smaller one would hold a large bio for seconds.
const MIN_BPS_SHARE: f64 = 64.0 * 1024.0;

/// The kernel lets throttled I/O through per 100 ms slice, a whole number of I/Os a slice:
/// past 10 IOPS the fraction is lost (97 IOPS gives 9 a slice, 90 a second), so IOPS shares
/// are written in steps of 10.
const IOPS_QUANTUM: f64 = 10.0;

/// IOPS `v` as the kernel gives it: whole [`IOPS_QUANTUM`]s from one up.
fn in_steps(v: f64) -> f64 {
    match v < IOPS_QUANTUM {
        true => v,
        false => (v / IOPS_QUANTUM).floor() * IOPS_QUANTUM,
    }
}

/// `split` in whole [`IOPS_QUANTUM`]s where a share is one or more, the steps left over from
/// the total going to the largest remainders (lowest cgroup first on a tie): the shares
/// the kernel gives in full, adding up to what the split gave. A share under one step is
/// kept: the kernel carries its fraction from slice to slice.
fn in_quanta(split: &BTreeMap<u64, f64>) -> BTreeMap<u64, f64> {
    let q = IOPS_QUANTUM;
    let mut out: BTreeMap<u64, f64> = split.iter().map(|(c, s)| (*c, in_steps(*s))).collect();
    let total: f64 = split.values().sum();
    let mut left = ((total - out.values().sum::<f64>()) / q + 1e-9).floor();
    let mut order: Vec<(u64, f64)> = split
        .iter()
        .filter(|(_, s)| **s >= q)
        .map(|(c, s)| (*c, s - out.get(c).copied().unwrap_or_default()))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (c, _) in order {
        if left < 1.0 {
            break;
        }
        if let Some(share) = out.get_mut(&c) {
            *share += q;
            left -= 1.0;
        }
    }
    out
}

/// A limited device and its budget (read IOPS, write IOPS, read B/s, write B/s; 0 is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub dev: DevT,
    pub knobs: Knobs,
}

/// The per-knob amount in a count: reads, writes, bytes read, bytes written.
fn amounts(c: &IoCounts) -> [u64; 4] {
    [c.reads, c.writes, c.read_bytes, c.written_bytes]
}

/// Shares of `budget` for cgroups with `demands` (none: no cap known), each at most what it
/// asks, the rest shared equally: max-min fairness. What no one asks for is spread on top,
/// so that a cgroup may grow.
pub fn water_fill(budget: f64, demands: &[(u64, Option<f64>)]) -> BTreeMap<u64, f64> {
    let mut order: Vec<(u64, f64)> = demands
        .iter()
        .map(|(c, d)| (*c, d.unwrap_or(f64::INFINITY)))
        .collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut left = budget;
    let mut out = BTreeMap::new();
    for (i, (c, d)) in order.iter().enumerate() {
        let fair = left / (order.len() - i) as f64;
        let give = d.min(fair);
        out.insert(*c, give);
        left -= give;
    }
    if left > 0.0 && !out.is_empty() {
        let extra = left / out.len() as f64;
        for share in out.values_mut() {
            *share += extra;
        }
    }
    out
}

/// What the controller keeps for one limited device between ticks.
#[derive(Debug, Default)]
struct DeviceState {
    /// Each cgroup's counts at the last tick.
    last: BTreeMap<u64, IoCounts>,
    /// Each knob's overshoot, in I/Os or bytes, still to be paid back.
    debt: [f64; 4],
    /// Each cgroup's last share per knob.
    shares: BTreeMap<u64, [f64; 4]>,
    /// Each cgroup's rate, smoothed over the last ticks: what its demand is judged by.
    smooth: BTreeMap<u64, [f64; 4]>,
    /// Per bandwidth knob, what the throttles are written at over the shares (0 read as 1):
    /// the kernel releases throttled I/O on timer ticks, so a writer with one I/O in
    /// flight gets a little less than its throttle; while every writer is held at its
    /// share, the gain closes the gap between what they get and the budget. (IOPS shares
    /// are written in the kernel's own steps instead: see [`IOPS_QUANTUM`].)
    gain: [f64; 4],
    /// Per cgroup and knob, the ticks in a row it did no I/O: a cgroup keeps a (shrinking)
    /// share for [`IDLE_TICKS`], so that a pause between two I/Os does not send it back to
    /// the guard.
    quiet: BTreeMap<u64, [u32; 4]>,
    /// Per cgroup and knob, the ticks in a row it used less than 90% of its share: only
    /// after [`LIGHT_TICKS`] is its share cut to what it uses, so that one slow tick (a
    /// pause, a payback the probes could not tell) does not start a rewrite.
    light: BTreeMap<u64, [u32; 4]>,
    /// Past the first tick: the counts in `last` are the baseline, and a cgroup not in it
    /// did all its I/O since.
    started: bool,
}

/// The limit controller of one node.
pub struct Controller {
    hierarchy: Hierarchy,
    devices: BTreeMap<DevT, DeviceState>,
    /// The throttles written, by cgroup directory and device, with the tick of the write.
    written: BTreeMap<(PathBuf, DevT), Written>,
    /// Ticks since the controller started.
    clock: u64,
    /// Devices whose leftover throttles (from before a restart) were looked for.
    swept: BTreeSet<DevT>,
    /// The io controller is on where throttles are written (v2).
    delegated: bool,
    paths: BTreeMap<u64, PathBuf>,
    guards: Vec<PathBuf>,
    ticks: u32,
}

impl Controller {
    pub fn new(hierarchy: Hierarchy) -> Self {
        Self {
            hierarchy,
            devices: BTreeMap::new(),
            written: BTreeMap::new(),
            clock: 0,
            swept: BTreeSet::new(),
            delegated: false,
            paths: BTreeMap::new(),
            guards: Vec::new(),
            ticks: 0,
        }
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// One tick, `dt` seconds after the last: `limits` are the devices with a limit now,
    /// `known` every volume device on this node (limited or not), `counts` the probes'
    /// per-cgroup counters. Returns what could not be written.
    pub fn tick(
        &mut self,
        limits: &[Limit],
        known: &[DevT],
        counts: &[(DevT, u64, IoCounts)],
        dt: f64,
    ) -> Vec<String> {
        self.clock += 1;
        let mut errors = Vec::new();
        let mut wanted: BTreeMap<(PathBuf, DevT), Knobs> = BTreeMap::new();
        let limited: BTreeSet<DevT> = limits.iter().map(|l| l.dev).collect();
        if !limits.is_empty() && !self.delegated {
            match throttle::delegate_io(&self.hierarchy) {
                Ok(turned_on) => {
                    self.delegated = true;
                    if turned_on {
                        tracing::info!("turned the io controller on for the root cgroup's children, to hold volume I/O limits");
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Throttles left from before a restart, on devices this node serves now.
        for dev in known.iter().chain(&limited) {
            if self.swept.insert(*dev) {
                for dir in throttle::holding(&self.hierarchy, *dev) {
                    let left = Written::new([u64::MAX; 4], self.clock);
                    self.written.insert((dir, *dev), left);
                }
            }
        }
        self.devices.retain(|d, _| limited.contains(d));
        if limits.is_empty() {
            // Walk the hierarchy again as soon as a limit comes.
            self.ticks = 0;
        } else {
            if self.ticks.is_multiple_of(GUARD_REFRESH) {
                self.guards = throttle::guards(&self.hierarchy);
            }
            self.ticks = self.ticks.wrapping_add(1);
        }
        let guards = self.guards.clone();
        for limit in limits {
            let paying = self.paying_back(limit.dev, counts);
            let state = self.devices.entry(limit.dev).or_default();
            let now: BTreeMap<u64, IoCounts> = counts
                .iter()
                .filter(|(d, _, _)| *d == limit.dev)
                .map(|(_, cg, c)| (*cg, *c))
                .collect();
            let first = !state.started;
            state.started = true;
            let usage: BTreeMap<u64, [f64; 4]> = now
                .iter()
                .map(|(cg, c)| {
                    let before = match state.last.get(cg) {
                        Some(b) => *b,
                        None if first => *c,
                        None => IoCounts::default(),
                    };
                    let d = amounts(&c.since(&before));
                    (*cg, d.map(|x| x as f64 / dt.max(1e-3)))
                })
                .collect();
            state.last = now;
            let plan = plan_device(limit.knobs, &usage, &paying, state, dt);
            tracing::debug!(dev = %super::dev_name(limit.dev), ?usage, ?paying, debt = ?state.debt, shares = ?plan.shares, "limit tick");
            for (cg, knobs) in plan.shares {
                if let Some(dir) = self.path_of(cg) {
                    if throttle::can_throttle(&self.hierarchy, &dir) {
                        wanted.insert((dir, limit.dev), knobs);
                    }
                }
            }
            for g in &guards {
                wanted.entry((g.clone(), limit.dev)).or_insert(plan.guard);
            }
            for (cg, u) in &usage {
                if let Some(dir) = self.path_of(*cg) {
                    if let Some(w) = self.written.get_mut(&(dir, limit.dev)) {
                        w.charge(u, dt);
                    }
                }
            }
        }
        // Lift what was written and is not wanted any more; write what changed.
        let stale: Vec<(PathBuf, DevT)> = self
            .written
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            match throttle::set(&self.hierarchy, &key.0, key.1, [0; 4]) {
                Ok(()) => {
                    self.written.remove(&key);
                }
                // A cgroup removed meanwhile holds nothing any more.
                Err(_) if !key.0.exists() => {
                    self.written.remove(&key);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        for (key, knobs) in wanted {
            if self
                .written
                .get(&key)
                .is_some_and(|w| !w.rewrite_due(&knobs, self.clock))
            {
                continue;
            }
            tracing::debug!(cgroup = %key.0.display(), dev = %super::dev_name(key.1), ?knobs, was = ?self.written.get(&key), "throttle written");
            match throttle::set(&self.hierarchy, &key.0, key.1, knobs) {
                Ok(()) => {
                    self.written.insert(key, Written::new(knobs, self.clock));
                }
                Err(_) if !key.0.exists() => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    }

    /// The cgroups doing I/O to `dev` whose throttle the kernel holds shut while they pay
    /// back a burst (see [`Written::rewrite_due`]).
    fn paying_back(&mut self, dev: DevT, counts: &[(DevT, u64, IoCounts)]) -> BTreeSet<u64> {
        let cgroups: BTreeSet<u64> = counts
            .iter()
            .filter(|(d, _, _)| *d == dev)
            .map(|(_, cg, _)| *cg)
            .collect();
        cgroups
            .into_iter()
            .filter(|cg| {
                self.path_of(*cg)
                    .and_then(|dir| self.written.get(&(dir, dev)))
                    .is_some_and(Written::paying_back)
            })
            .collect()
    }

    /// The directory of cgroup `id`, cached; 0 (no cgroup) has none.
    fn path_of(&mut self, id: u64) -> Option<PathBuf> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.paths.get(&id).filter(|p| p.exists()) {
            return Some(p.clone());
        }
        let p = self.hierarchy.path_of(id)?;
        self.paths.insert(id, p.clone());
        Some(p)
    }
}

/// A throttle as written, the tick it was written at, and what the cgroup did past it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Written {
    knobs: Knobs,
    at: u64,
    /// Per knob, the I/Os or bytes the cgroup did past its throttle since the write, less
    /// what it left unused since: the kernel's debt on it, as the probes see it.
    over: [f64; 4],
    /// Per knob, its use in the last tick, per second.
    used: [f64; 4],
}

/// Ticks (two seconds) a throttle stands before a small cut is written over it.
const SETTLE_TICKS: u64 = 10;

/// Ticks a throttle stands before a small raise is written over it: a raise cannot let a
/// burst through (the new allowance covers what the old one owed), so it waits less.
const RAISE_SETTLE_TICKS: u64 = 2;

/// Ticks (ten seconds) at most that a rewrite waits for a cgroup to pay a debt back.
const PAYBACK_TICKS: u64 = 50;

impl Written {
    fn new(knobs: Knobs, at: u64) -> Self {
        Self {
            knobs,
            at,
            over: [0.0; 4],
            used: [0.0; 4],
        }
    }

    /// Adds one tick of the cgroup's `usage` (per second) over `dt` seconds to the debt.
    fn charge(&mut self, usage: &[f64; 4], dt: f64) {
        for ((over, limit), used) in self.over.iter_mut().zip(self.knobs).zip(usage) {
            if limit != 0 && limit != u64::MAX {
                *over = (*over + (used - limit as f64) * dt).max(0.0);
            }
        }
        self.used = *usage;
    }

    /// Whether the kernel holds the cgroup back to pay a debt, or just let a burst through:
    /// more than a quarter second of the throttle owed, and the last tick far from it (a
    /// cgroup held at its throttle shows within 60% of it a tick, as the kernel releases
    /// I/O in 100 ms slices; paying back, it is all but still).
    fn paying_back(&self) -> bool {
        (0..4).any(|k| {
            let limit = self.knobs[k] as f64;
            let held = (0.4 * limit..=1.6 * limit).contains(&self.used[k]);
            self.knobs[k] != 0 && self.knobs[k] != u64::MAX && self.over[k] > limit * 0.25 && !held
        })
    }

    /// Whether this throttle should be rewritten with `want` at tick `now`. Every rewrite
    /// is a risk: the kernel restarts its throttling slice and, while I/O is queued,
    /// carries the old setting's allowance over to the new one. On 6.1 that carry-over is
    /// unsigned, so a cgroup a little past its allowance comes out of a rewrite with no
    /// throttle for one kernel slice (100 ms: in the VM, 300 to 550 writes under a limit
    /// of 100), and is then held back entirely while it pays that back. A rewrite during
    /// the payback lets another slice through: a controller rewriting every few seconds
    /// kept two writers at 795 IOPS under a 200 limit. So a knob turned on or off is
    /// written at once; a move of a quarter or more (a writer came or went) once any debt
    /// is paid; a smaller move (an IOPS step, or more than 5% of a bandwidth) only after
    /// the throttle stood for [`SETTLE_TICKS`] too ([`RAISE_SETTLE_TICKS`] for a raise).
    fn rewrite_due(&self, want: &Knobs, now: u64) -> bool {
        let switched = self
            .knobs
            .iter()
            .zip(want)
            .any(|(x, y)| (*x == 0) != (*y == 0));
        let moved = |limit: f64| {
            self.knobs
                .iter()
                .zip(want)
                .any(|(x, y)| x.abs_diff(*y) as f64 > (*y as f64 * limit).max(1.0))
        };
        // IOPS shares come in the kernel's steps: any step is a real change.
        let stepped = self.knobs[..2] != want[..2];
        let age = now.saturating_sub(self.at);
        let settled = !self.paying_back() || age >= PAYBACK_TICKS;
        let raising = self.knobs.iter().zip(want).all(|(x, y)| y >= x);
        let settle = if raising {
            RAISE_SETTLE_TICKS
        } else {
            SETTLE_TICKS
        };
        let small = (stepped || moved(0.05)) && age >= settle;
        switched || (settled && (moved(0.25) || small))
    }
}

/// Per cgroup of `cgroups` and knob, how many ticks in a row `holds` has been true, counting
/// on from `before`.
fn streaks<'a>(
    before: &BTreeMap<u64, [u32; 4]>,
    cgroups: impl Iterator<Item = &'a u64>,
    holds: impl Fn(u64, usize) -> bool,
) -> BTreeMap<u64, [u32; 4]> {
    cgroups
        .map(|cg| {
            let was = before.get(cg).copied().unwrap_or_default();
            let now = std::array::from_fn(|k| match holds(*cg, k) {
                true => was[k].saturating_add(1),
                false => 0,
            });
            (*cg, now)
        })
        .collect()
}

/// One device's throttles for this tick.
#[derive(Debug, Clone, PartialEq)]
struct DevicePlan {
    /// Each cgroup doing I/O: its share of each limited knob (0: that knob is unlimited).
    shares: BTreeMap<u64, Knobs>,
    /// What bounds a cgroup not seen yet: the budget left this second.
    guard: Knobs,
}

/// Moves knob `k`'s gain: toward what brings the writers' total to `effective` while one
/// of them is held at its last share, else back toward 1. Returns the gain to write with.
fn adjust_gain(
    gain: &mut f64,
    effective: f64,
    split: &BTreeMap<u64, f64>,
    last: &BTreeMap<u64, [f64; 4]>,
    smooth: &BTreeMap<u64, [f64; 4]>,
    k: usize,
) -> f64 {
    if *gain == 0.0 {
        *gain = 1.0;
    }
    // One writer held at its share is enough: the others are using what they want.
    let held = split.keys().any(|cg| {
        let share = last.get(cg).map_or(0.0, |s| s[k]);
        let used = smooth.get(cg).map_or(0.0, |s| s[k]);
        share > 0.0 && used >= 0.85 * share
    });
    let total: f64 = split
        .keys()
        .filter_map(|cg| smooth.get(cg))
        .map(|s| s[k])
        .sum();
    if held && total > 0.0 {
        // Half a step toward the correction, at most 5% a tick.
        let step = (effective / total).sqrt().clamp(0.95, 1.05);
        *gain = (*gain * step).clamp(0.5, 2.0);
    } else {
        *gain = 1.0 + (*gain - 1.0) * 0.9;
    }
    *gain
}

/// Splits each limited knob of `budget` among the cgroups in `usage` (per second). A
/// cgroup in `paying` is held back by the kernel: it idles but wants its whole share.
fn plan_device(
    budget: Knobs,
    usage: &BTreeMap<u64, [f64; 4]>,
    paying: &BTreeSet<u64>,
    state: &mut DeviceState,
    dt: f64,
) -> DevicePlan {
    let mut shares: BTreeMap<u64, Knobs> = BTreeMap::new();
    let mut guard = [0u64; 4];
    let mut new_shares: BTreeMap<u64, [f64; 4]> = BTreeMap::new();
    let smooth: BTreeMap<u64, [f64; 4]> = usage
        .iter()
        .map(|(cg, u)| {
            let s = match state.smooth.get(cg) {
                Some(prev) => std::array::from_fn(|k| 0.5 * prev[k] + 0.5 * u[k]),
                None => *u,
            };
            (*cg, s)
        })
        .collect();
    state.smooth = smooth.clone();
    state.quiet = streaks(&state.quiet, usage.keys(), |cg, k| {
        usage[&cg][k] == 0.0 && !paying.contains(&cg)
    });
    state.light = streaks(&state.light, usage.keys(), |cg, k| {
        let share = state.shares.get(&cg).map_or(0.0, |s| s[k]);
        let used = smooth.get(&cg).map_or(0.0, |s| s[k]);
        share > 0.0 && used < 0.9 * share && !paying.contains(&cg)
    });
    for k in 0..4 {
        let b = budget[k] as f64;
        if b == 0.0 {
            state.debt[k] = 0.0;
            continue;
        }
        let floor = if k < 2 { 1.0 } else { MIN_BPS_SHARE };
        let had_share = |cg: &u64| state.shares.get(cg).is_some_and(|s| s[k] > 0.0);
        let total: f64 = usage.values().map(|u| u[k]).sum();
        // What cgroups with no share did, on the guard: the only real overshoot. Those
        // held at a share are bounded by the kernel; a short tick that shows them a little
        // over is the kernel's slices, not I/O to pay back. Any tick under the budget pays.
        let unsplit: f64 = usage
            .iter()
            .filter(|(cg, _)| !had_share(cg))
            .map(|(_, u)| u[k])
            .sum();
        if total > b {
            state.debt[k] += unsplit.min(total - b) * dt;
        } else {
            state.debt[k] = (state.debt[k] - (b - total) * dt).max(0.0);
        }
        // Pay an overshoot back within a second, never starving the volume.
        let effective = (b - state.debt[k]).clamp((b * 0.1).max(floor), b);
        let active: Vec<(u64, Option<f64>)> = usage
            .iter()
            .filter(|(cg, u)| {
                let quiet = state.quiet.get(*cg).map_or(0, |q| q[k]);
                u[k] > 0.0 || (had_share(cg) && quiet < IDLE_TICKS)
            })
            .map(|(cg, _)| {
                let had = state.shares.get(cg).map(|s| s[k]).filter(|s| *s > 0.0);
                let used = smooth.get(cg).map_or(0.0, |s| s[k]);
                // Under 90% of its share for a second: it wants what it uses and a margin;
                // else (or new) it may want more than it gets.
                let light = state.light.get(cg).map_or(0, |l| l[k]);
                let demand = match had {
                    Some(_) if light >= LIGHT_TICKS => Some(used * 1.25 + b * 0.02),
                    _ => None,
                };
                (*cg, demand)
            })
            .collect();
        let split = water_fill(effective, &active);
        // IOPS shares in the kernel's steps need no gain; while one pays back, the others'
        // total says nothing of the kernel's slack.
        let (split, gain) = match (k < 2, paying.is_empty()) {
            (true, _) => (in_quanta(&split), 1.0),
            (false, true) => {
                let g = adjust_gain(
                    &mut state.gain[k],
                    effective,
                    &split,
                    &state.shares,
                    &smooth,
                    k,
                );
                (split, g)
            }
            (false, false) if state.gain[k] == 0.0 => (split, 1.0),
            (false, false) => (split, state.gain[k]),
        };
        guard[k] = match k < 2 {
            true => in_steps(effective),
            false => effective * gain,
        }
        .round() as u64;
        for (cg, share) in split {
            let share = share.max(floor);
            new_shares.entry(cg).or_default()[k] = share;
            shares.entry(cg).or_insert([0; 4])[k] = (share * gain).round() as u64;
        }
    }
    // A cgroup with a share on some knob is bounded on the others by the guard.
    for s in shares.values_mut() {
        for k in 0..4 {
            if s[k] == 0 {
                s[k] = guard[k];
            }
        }
    }
    state.shares = new_shares;
    DevicePlan { shares, guard }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iops_shares_go_in_whole_slices_and_still_add_up() {
        let split = [(1, 96.75), (2, 96.75)].into();
        assert_eq!(in_quanta(&split), [(1, 100.0), (2, 90.0)].into());
        let split = [(1, 66.7), (2, 66.7), (3, 66.6)].into();
        assert_eq!(in_quanta(&split), [(1, 70.0), (2, 70.0), (3, 60.0)].into());
        // Under a step, the kernel keeps the fraction: left as it is.
        let split = [(1, 4.5), (2, 195.5)].into();
        assert_eq!(in_quanta(&split), [(1, 4.5), (2, 190.0)].into());
    }

    #[test]
    fn water_filling_gives_the_unasked_to_the_hungry() {
        let s = water_fill(200.0, &[(1, None), (2, None)]);
        assert_eq!((s[&1], s[&2]), (100.0, 100.0));
        // One asks for 20: the other gets the rest, and what is left over is spread.
        let s = water_fill(200.0, &[(1, Some(20.0)), (2, None)]);
        assert_eq!((s[&1], s[&2]), (20.0, 180.0));
        let s = water_fill(200.0, &[(1, Some(20.0)), (2, Some(30.0))]);
        assert_eq!((s[&1], s[&2]), (95.0, 105.0));
        assert!(water_fill(200.0, &[]).is_empty());
    }

    /// Runs `ticks` ticks of 200 ms with writers that would each do `wants` a second and
    /// get their throttle in whole I/Os per 100 ms slice, as the kernel gives it; returns
    /// what each got a second in the last tick, and the plan.
    fn simulate(
        st: &mut DeviceState,
        wants: &[(u64, f64)],
        ticks: usize,
        written: &mut BTreeMap<u64, u64>,
    ) -> (BTreeMap<u64, f64>, DevicePlan) {
        let budget = [0, 200, 0, 0];
        let mut plan = None;
        let mut got = BTreeMap::new();
        for _ in 0..ticks {
            got = wants
                .iter()
                .map(|(cg, w)| {
                    // A cgroup never split yet sits under a guard of the whole budget.
                    let throttle = written.get(cg).copied().unwrap_or(200) as f64;
                    let given = match throttle < 10.0 {
                        true => throttle,
                        false => (throttle / 10.0).floor() * 10.0,
                    };
                    (*cg, w.min(given))
                })
                .collect();
            let usage = got.iter().map(|(c, g)| (*c, [0.0, *g, 0.0, 0.0])).collect();
            let p = plan_device(budget, &usage, &BTreeSet::new(), st, 0.2);
            written.clear();
            written.extend(p.shares.iter().map(|(c, k)| (*c, k[1])));
            plan = Some(p);
        }
        (got, plan.unwrap())
    }

    #[test]
    fn two_writers_split_a_write_budget_and_a_sole_one_takes_it_all() {
        let mut st = DeviceState::default();
        let mut written = BTreeMap::new();
        // Both new on the guard: the overshoot is owed, and paid back by the next ticks.
        let (_, p) = simulate(&mut st, &[(1, 1000.0), (2, 1000.0)], 1, &mut written);
        assert!(st.debt[1] > 0.0 && p.guard[1] < 200, "{:?} {p:?}", st.debt);
        // Reads are not limited: their knob stays open.
        assert_eq!(p.shares[&1][0], 0);
        // Held at their shares, they split the budget evenly and get all of it between them.
        let (got, _) = simulate(&mut st, &[(1, 1000.0), (2, 1000.0)], 40, &mut written);
        let total: f64 = got.values().sum();
        assert!((total - 200.0).abs() < 200.0 * 0.03, "{got:?}");
        assert!((got[&1] - got[&2]).abs() < 5.0, "{got:?}");
        // One stops: the other gets the whole budget.
        let (got, p) = simulate(&mut st, &[(1, 1000.0)], 10, &mut written);
        assert!((got[&1] - 200.0).abs() < 200.0 * 0.03, "{got:?}");
        assert!(!p.shares.contains_key(&2));
    }

    #[test]
    fn the_kernel_s_slack_is_no_debt_and_a_short_pause_keeps_a_share() {
        let mut st = DeviceState::default();
        let mut written = BTreeMap::new();
        simulate(&mut st, &[(1, 1000.0), (2, 1000.0)], 40, &mut written);
        assert_eq!(st.debt[1], 0.0);
        // A short tick in which the kernel let both split writers a little past their shares.
        let usage = [(1, [0.0, 120.0, 0.0, 0.0]), (2, [0.0, 115.0, 0.0, 0.0])].into();
        plan_device([0, 200, 0, 0], &usage, &BTreeSet::new(), &mut st, 0.2);
        assert_eq!(st.debt[1], 0.0);
        // 2 pauses for a tick: it keeps its share rather than going back to the guard.
        let before = st.shares[&2][1];
        let usage = [(1, [0.0, 100.0, 0.0, 0.0]), (2, [0.0; 4])].into();
        let p = plan_device([0, 200, 0, 0], &usage, &BTreeSet::new(), &mut st, 0.2);
        assert_eq!(p.shares[&2][1] as f64, before, "{p:?}");
        // Quiet for a second, it loses it.
        let mut p = p;
        for _ in 0..IDLE_TICKS {
            p = plan_device([0, 200, 0, 0], &usage, &BTreeSet::new(), &mut st, 0.2);
        }
        assert!(!p.shares.contains_key(&2), "{p:?}");
    }

    #[test]
    fn a_cgroup_the_kernel_holds_back_keeps_its_share() {
        let mut st = DeviceState::default();
        let mut written = BTreeMap::new();
        let (_, before) = simulate(&mut st, &[(1, 1000.0), (2, 1000.0)], 40, &mut written);
        // 1 pays back a burst for two seconds: no I/O, yet its share stands and the gain
        // does not grow to hand 2 what 1 does not use.
        let usage = [(1, [0.0; 4]), (2, [0.0, 100.0, 0.0, 0.0])].into();
        let mut p = before.clone();
        for _ in 0..10 {
            p = plan_device([0, 200, 0, 0], &usage, &BTreeSet::from([1]), &mut st, 0.2);
        }
        assert_eq!(p.shares[&1], before.shares[&1], "{p:?}");
        assert_eq!(p.shares[&2], before.shares[&2], "{p:?}");
    }

    #[test]
    fn a_light_writer_leaves_its_unused_share_to_a_heavy_one() {
        let mut st = DeviceState::default();
        let mut written = BTreeMap::new();
        let (got, _) = simulate(&mut st, &[(1, 20.0), (2, 1000.0)], 40, &mut written);
        assert_eq!(got[&1], 20.0, "{got:?}");
        assert!(got[&2] >= 170.0 && got[&2] <= 180.0, "{got:?}");
    }

    #[test]
    fn rewrites_wait_for_a_real_change_and_small_ones_for_the_throttle_to_settle() {
        let w = Written::new([0, 100, 0, 0], 10);
        // A writer came or went, or a knob turned on: at once.
        assert!(w.rewrite_due(&[0, 50, 0, 0], 11));
        assert!(w.rewrite_due(&[5, 100, 0, 0], 11));
        // A small cut waits for the throttle to stand two seconds, a small raise less.
        assert!(!w.rewrite_due(&[0, 90, 0, 0], 11));
        assert!(w.rewrite_due(&[0, 90, 0, 0], 10 + SETTLE_TICKS));
        assert!(!w.rewrite_due(&[0, 110, 0, 0], 11));
        assert!(w.rewrite_due(&[0, 110, 0, 0], 10 + RAISE_SETTLE_TICKS));
        let bw = Written::new([0, 0, 0, 1 << 20], 10);
        assert!(bw.rewrite_due(&[0, 0, 0, 1_110_000], 10 + SETTLE_TICKS));
        assert!(!bw.rewrite_due(&[0, 0, 0, 1_070_000], 100));
    }

    #[test]
    fn a_cgroup_paying_back_a_burst_keeps_its_throttle_until_it_has() {
        let mut w = Written::new([0, 100, 0, 0], 0);
        // The kernel's release in 100 ms batches shows as ticks a little over and under.
        for rate in [130.0, 70.0, 125.0, 75.0] {
            w.charge(&[0.0, rate, 0.0, 0.0], 0.2);
        }
        assert!(
            !w.paying_back() && w.rewrite_due(&[0, 50, 0, 0], 4),
            "{w:?}"
        );
        // A burst: 250 writes in a tick, then nothing while the kernel holds it back.
        w.charge(&[0.0, 1250.0, 0.0, 0.0], 0.2);
        assert!(
            w.rewrite_due(&[0, 100, 5, 0], 5),
            "a knob turned on goes at once"
        );
        for tick in 6..16 {
            assert!(!w.rewrite_due(&[0, 50, 0, 0], tick), "{tick}: {w:?}");
            w.charge(&[0.0; 4], 0.2);
        }
        assert!(w.paying_back());
        w.charge(&[0.0; 4], 0.2);
        w.charge(&[0.0; 4], 0.2);
        assert!(
            !w.paying_back() && w.rewrite_due(&[0, 50, 0, 0], 18),
            "{w:?}"
        );
        // Noise never adds up to a payback: a cgroup near its throttle is not held back.
        let mut noisy = Written::new([0, 80, 0, 0], 0);
        for _ in 0..50 {
            noisy.charge(&[0.0, 120.0, 0.0, 0.0], 0.2);
            noisy.charge(&[0.0, 75.0, 0.0, 0.0], 0.2);
        }
        assert!(!noisy.paying_back(), "{noisy:?}");
        // A debt the probes never see paid does not hold a throttle for ever.
        let mut stuck = Written::new([0, 100, 0, 0], 0);
        stuck.charge(&[0.0, 5000.0, 0.0, 0.0], 0.2);
        assert!(!stuck.rewrite_due(&[0, 50, 0, 0], PAYBACK_TICKS - 1));
        assert!(stuck.rewrite_due(&[0, 50, 0, 0], PAYBACK_TICKS));
    }
}
