//! Host tier: the Grafana dashboards and the alert rules in `grafana/` name only metric
//! families pxd exports, the rules and the example configuration pass Prometheus's own
//! `promtool`. (A VM test runs a real Prometheus against a node and evaluates each query.)
//!
//! Needs `promtool` (Debian's `prometheus`, which `cargo xtask setup` installs). Run with
//! `cargo test -p pxd-tests --test host_grafana`.

use pxd::io::volumes::VolumeIo;
use pxd::metrics::Metrics;
use std::collections::BTreeSet;
use std::process::Command;

/// Every `pxd_...` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("pxd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The family a series name belongs to: a histogram's `_bucket`, `_sum` and `_count`
/// series are its family's.
fn family<'a>(name: &'a str, families: &BTreeSet<String>) -> Option<&'a str> {
    if families.contains(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| families.contains(*base))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian's prometheus; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboards_and_alerts_name_only_exported_metrics_and_pass_promtool() {
    let dir = pxd_tests::grafana::dir();
    promtool(&["check", "rules", dir.join("alerts.yml").to_str().unwrap()]);
    promtool(&[
        "check",
        "config",
        dir.join("prometheus.yml").to_str().unwrap(),
    ]);

    let metrics = Metrics::new(VolumeIo::start(true)).expect("the metrics");
    let families: BTreeSet<String> = metrics.families().iter().cloned().collect();
    assert!(families.contains("pxd_volume_reads_total") && families.len() > 20);
    let mut checked = 0;
    let mut check = |where_: &str, expr: &str| {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{where_}: {expr} names no pxd metric");
        for n in names {
            assert!(
                family(&n, &families).is_some(),
                "{where_}: {expr} names {n}, which pxd does not export"
            );
        }
        checked += 1;
    };
    for e in pxd_tests::grafana::expressions() {
        check(&e.place, &e.text);
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("alerts.yml");
    for line in rules
        .lines()
        .filter(|l| l.contains("pxd_") && !l.trim_start().starts_with('#'))
    {
        check("alerts.yml", line);
    }
    println!(
        "{checked} expressions name only the {} families pxd exports",
        families.len()
    );
}
