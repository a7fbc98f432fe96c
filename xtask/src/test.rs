//! `cargo xtask test`: the whole suite in tiers.
//!
//! - lint: `cargo fmt --check`, `cargo clippy -D warnings`;
//! - unit: `cargo test` over the workspace, no root, no kernel features;
//! - host: the `host_*` tests of pxd-tests, as root on this host's kernel (eBPF, loop devices);
//! - vm:   the `vm_*` tests of pxd-tests, each test binary booted in its own guest through
//!   `cargo xtask vm` as cargo's runner (device-mapper, nbd, dm-raid live only there).
//!
//! Every tier prints `<tier>: N passed, N failed, N skipped`; the run fails if any tier does.
//!
//! When both lint and vm run, clippy runs beside the VM tier instead of before it (see
//! [`BesideVm`]): the emulated guest leaves about 40% of the host's CPU idle while it waits on
//! its own timers, and lint fits in that.

use crate::cmd;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Run only these tiers (lint, unit, host, vm); all by default.
    #[arg(long = "tier", value_enum)]
    pub tiers: Vec<Tier>,
    /// Skip `cargo xtask setup` (when you know the host is ready).
    #[arg(long)]
    pub no_setup: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Lint,
    Unit,
    Host,
    Vm,
}

/// Disks every VM test binary gets: sparse, so unused space costs nothing.
const VM_TEST_DISKS: &[&str] = &["2G", "2G", "2G", "2G", "2G", "2G"];

#[derive(Default, Debug, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

pub fn run(args: &TestArgs) -> Result<i32> {
    if !args.no_setup {
        let started = std::time::Instant::now();
        crate::setup::run()?;
        println!("setup took {} s", started.elapsed().as_secs());
    }
    let tiers = if args.tiers.is_empty() {
        vec![Tier::Lint, Tier::Unit, Tier::Host, Tier::Vm]
    } else {
        args.tiers.clone()
    };
    let lint_beside_vm = tiers.contains(&Tier::Lint) && tiers.contains(&Tier::Vm);
    let mut results = Vec::new();
    for tier in tiers {
        if tier == Tier::Lint && lint_beside_vm {
            continue;
        }
        println!("\n==== tier: {tier:?}");
        let started = std::time::Instant::now();
        let beside = if tier == Tier::Vm && lint_beside_vm {
            Some(BesideVm::start())
        } else {
            None
        };
        let counts = match tier {
            Tier::Lint => lint(),
            Tier::Unit => unit(),
            Tier::Host => host(),
            Tier::Vm => vm(),
        };
        results.push((tier, or_failed(tier, counts), started.elapsed()));
        if let Some(beside) = beside {
            println!("\n==== tier: Lint (ran beside the VM tier)");
            let (counts, took) = beside.finish();
            results.push((Tier::Lint, or_failed(Tier::Lint, counts), took));
        }
    }
    println!("\n==== summary");
    let mut total = Counts::default();
    for (tier, c, took) in &results {
        println!(
            "{}: {} passed, {} failed, {} skipped, in {} s",
            format!("{tier:?}").to_lowercase(),
            c.passed,
            c.failed,
            c.skipped,
            took.as_secs()
        );
        total.add(*c);
    }
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    let empty_tier = results.iter().any(|(_, c, _)| c.passed + c.failed == 0);
    if empty_tier {
        eprintln!("xtask test: a tier ran no test, which counts as a failure");
    }
    Ok(if total.failed > 0 || empty_tier { 1 } else { 0 })
}

/// A tier that could not run counts as one failure.
fn or_failed(tier: Tier, counts: Result<Counts>) -> Counts {
    counts.unwrap_or_else(|err| {
        eprintln!("xtask test: {tier:?} tier could not run: {err:#}");
        Counts {
            failed: 1,
            ..Counts::default()
        }
    })
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::workspace_root());
    c
}

fn fmt_check() -> Command {
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    c
}

fn clippy() -> Command {
    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    c
}

fn lint() -> Result<Counts> {
    let mut counts = Counts::default();
    for mut check in [fmt_check(), clippy()] {
        println!("$ {}", cmd::show(&check));
        if check.status()?.success() {
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    Ok(counts)
}

/// The lint tier running beside the VM tier. `cargo fmt --check` takes a second and runs at
/// once; clippy runs in the idle scheduling class (`chrt --idle`), so it takes only CPU the
/// guest leaves unused and never delays the guest's timers, with its own target directory
/// (the VM tier's cargo holds the main one's lock) and its output in `target/lint.log`.
struct BesideVm {
    started: std::time::Instant,
    fmt_ok: bool,
    clippy: Result<std::process::Child>,
    log: std::path::PathBuf,
}

impl BesideVm {
    fn start() -> BesideVm {
        let started = std::time::Instant::now();
        let mut fmt = fmt_check();
        println!("$ {}", cmd::show(&fmt));
        let fmt_ok = fmt.status().is_ok_and(|s| s.success());
        let target = crate::workspace_root().join("target");
        let log = target.join("lint.log");
        let inner = clippy();
        let mut c = Command::new("chrt");
        c.args(["--idle", "0"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .current_dir(crate::workspace_root())
            .env("CARGO_TARGET_DIR", target.join("lint"));
        println!(
            "$ {} (beside the VM tier; output in {})",
            cmd::show(&c),
            log.display()
        );
        let clippy = std::fs::create_dir_all(&target)
            .and_then(|()| std::fs::File::create(&log))
            .and_then(|out| {
                let err = out.try_clone()?;
                c.stdout(out).stderr(err).spawn()
            })
            .context("starting clippy beside the VM tier");
        BesideVm {
            started,
            fmt_ok,
            clippy,
            log,
        }
    }

    /// Waits for clippy and prints what it said.
    fn finish(self) -> (Result<Counts>, std::time::Duration) {
        let counts = self.clippy.and_then(|mut child| {
            let clippy_ok = child.wait()?.success();
            let said = std::fs::read_to_string(&self.log).unwrap_or_default();
            print!("{said}");
            let mut counts = Counts::default();
            for ok in [self.fmt_ok, clippy_ok] {
                if ok {
                    counts.passed += 1;
                } else {
                    counts.failed += 1;
                }
            }
            Ok(counts)
        });
        (counts, self.started.elapsed())
    }
}

/// Unit tests: every library's, and xtask's. Binaries without tests are not linked as test
/// harnesses (each links all of pxd), and the test package's own unit test runs with the
/// host tier, which builds that package anyway.
fn unit() -> Result<Counts> {
    let mut c = cargo();
    c.args([
        "test",
        "--workspace",
        "--exclude",
        "pxd-tests",
        "--exclude",
        "pxd-ebpf",
        "--lib",
        "--bin",
        "xtask",
    ]);
    run_cargo_test(c)
}

fn host() -> Result<Counts> {
    anyhow::ensure!(
        cmd::is_root(),
        "the host tier needs root (eBPF, loop devices)"
    );
    let targets = test_targets("host_")?;
    build_pxd()?;
    let mut c = cargo();
    c.args(["test", "--no-fail-fast", "-p", "pxd-tests", "--lib"]);
    for t in &targets {
        c.args(["--test", t]);
    }
    run_cargo_test(c)
}

/// Tests that run the `pxd` binary need it built: `cargo test -p pxd-tests` only builds the
/// test package's own binaries.
pub fn build_pxd() -> Result<()> {
    let mut build = cargo();
    build.args(["build", "-p", "pxd", "--bins"]);
    println!("$ {}", cmd::show(&build));
    cmd::run(&mut build)
}

fn vm() -> Result<Counts> {
    let targets = test_targets("vm_")?;
    build_pxd()?;
    let runner = vm_runner(VM_TEST_DISKS)?;
    let mut c = cargo();
    // Every test binary runs even when one fails, so a run reports the whole tier.
    c.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", runner)
        .args(["test", "--no-fail-fast", "-p", "pxd-tests"]);
    for t in &targets {
        c.args(["--test", t]);
    }
    run_cargo_test(c)
}

/// Cargo's runner that boots each test binary in its own guest with `disks`.
pub fn vm_runner(disks: &[&str]) -> Result<String> {
    vm_runner_for(disks, None)
}

/// [`vm_runner`], with a guest that may run `timeout` seconds instead of the default.
pub fn vm_runner_for(disks: &[&str], timeout: Option<u64>) -> Result<String> {
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let mut runner = format!("{} vm", xtask.display());
    if let Some(t) = timeout {
        runner.push_str(&format!(" --timeout {t}"));
    }
    for d in disks {
        runner.push_str(&format!(" --disk {d}"));
    }
    runner.push_str(" --");
    Ok(runner)
}

/// The integration test targets of pxd-tests whose names start with `prefix`.
fn test_targets(prefix: &str) -> Result<Vec<String>> {
    let meta = cmd::output(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let meta: serde_json::Value = serde_json::from_str(&meta)?;
    let mut out = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        if pkg["name"] != "pxd-tests" {
            continue;
        }
        for t in pkg["targets"].as_array().into_iter().flatten() {
            let is_test = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"));
            let name = t["name"].as_str().unwrap_or_default();
            if is_test && name.starts_with(prefix) {
                out.push(name.to_owned());
            }
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "pxd-tests has no test targets named {prefix}*"
    );
    Ok(out)
}

/// Runs a `cargo test` command, echoing its output and adding up libtest's result lines.
fn run_cargo_test(mut c: Command) -> Result<Counts> {
    println!("$ {}", cmd::show(&c));
    let mut child = c.stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().context("capturing cargo's output")?;
    let mut counts = Counts::default();
    let mut binaries = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(c) = parse_result_line(&line) {
            counts.add(c);
            binaries += 1;
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        // A build failure, a crashed binary or a guest that never reported: count it.
        eprintln!(
            "xtask test: `{}` failed ({status}) without a failing test line",
            cmd::show(&c)
        );
        counts.failed += 1;
    }
    println!("({binaries} test binaries)");
    Ok(counts)
}

/// Parses `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let mut counts = Counts::default();
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(kind), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match kind {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.skipped = n,
            _ => {}
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_result_lines_are_counted() {
        let c = parse_result_line(
            "test result: FAILED. 27 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.14s",
        )
        .unwrap();
        assert_eq!((c.passed, c.failed, c.skipped), (27, 2, 1));
        assert!(parse_result_line("running 3 tests").is_none());
    }
}
