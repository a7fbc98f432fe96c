//! VM tier: a real Prometheus server (Debian's `prometheus`) scrapes three pxd nodes while
//! fio runs on a replicated volume. Every query of every Grafana dashboard in `grafana/`
//! must return data from it (a panel naming a metric pxd does not export returns none and
//! fails the test), and the near-full alert of `grafana/alerts.yml` must fire once a small
//! pool is filled past its threshold.

use pxd::api::pools::PoolView;
use pxd::api::volumes::VolumeView;
use pxd::kernel::loop_device::LoopDevice;
use pxd::plan::placement::Provision;
use pxd_tests::trio::{legs_built, Cluster};
use pxd_tests::{pattern, write_direct};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Each node's pool: one small loop device, so that filling one takes seconds.
const DISK_MIB: u64 = 320;
/// The daemons' near-full threshold, low so that the fill stays well clear of a full pool.
const FULL_PERCENT: u64 = 50;
const PROMETHEUS_PORT: u16 = 9490;

/// A Prometheus server in network namespace `ns`, killed on drop.
struct Prometheus {
    ns: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts one that scrapes `targets` every second with the repository's alert rules, each
    /// rule's `for:` cut to 2 s so that a test sees it fire.
    fn start(ns: &str, targets: &[String]) -> Prometheus {
        let dir = PathBuf::from(format!("/tmp/pxd-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = std::fs::read_to_string(pxd_tests::grafana::dir().join("alerts.yml")).unwrap();
        let rules: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s\n", &l[..l.len() - l.trim_start().len()]),
                None => format!("{l}\n"),
            })
            .collect();
        assert!(rules.contains("for: 2s"), "{rules}");
        std::fs::write(dir.join("alerts.yml"), rules).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
                 scrape_configs:\n  - job_name: pxd\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package; `cargo xtask setup` installs it)");
        let p = Prometheus {
            ns: ns.to_owned(),
            child,
            dir,
        };
        pxd_tests::trio::wait_until("prometheus ready", Duration::from_secs(120), || {
            p.get("/-/ready", &[]).ok()
        });
        p
    }

    /// GETs `path` with `query` parameters; the body, or why not.
    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<String, String> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .args(["curl", "-sS", "--fail", "--get"]);
        for (k, v) in query {
            c.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        let out = c
            .arg(format!("http://127.0.0.1:{PROMETHEUS_PORT}{path}"))
            .output()
            .expect("curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The series an instant query returns (an error is a failure of the test).
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let body = self
            .get("/api/v1/query", &[("query", promql)])
            .unwrap_or_else(|e| panic!("query {promql}: {e}\n{}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A dashboard expression with its template variables set to "everything".
fn instantiate(expr: &str) -> String {
    expr.replace("$job", "pxd")
        .replace("$instance", ".+")
        .replace("$pool", ".+")
        .replace("$volume", ".+")
}

/// A variable's `label_values(selector, label)` as the query Grafana runs for it.
fn label_values_query(def: &str) -> String {
    let inner = def
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {def}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    format!(
        "count by ({}) ({})",
        label.trim(),
        instantiate(selector.trim())
    )
}

/// fio reading and writing `dev` at a modest rate until killed.
fn background_fio(dev: &Path) -> Child {
    Command::new("fio")
        .args([
            "--name=prom",
            &format!("--filename={}", dev.display()),
            "--size=32M",
            "--rw=randrw",
            "--bs=4k",
            "--direct=1",
            "--ioengine=psync",
            "--rate_iops=50,50",
            "--time_based",
            "--runtime=3600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fio")
}

#[test]
fn prometheus_gets_data_for_every_dashboard_panel_and_the_near_full_alert_fires() {
    let backing: Vec<PathBuf> = (0..3)
        .map(|i| PathBuf::from(format!("/tmp/pxd-prom-{i}.img")))
        .collect();
    let loops: Vec<LoopDevice> = backing
        .iter()
        .map(|b| {
            std::fs::File::create(b)
                .and_then(|f| f.set_len(DISK_MIB * MIB))
                .unwrap();
            LoopDevice::attach(b).unwrap()
        })
        .collect();
    let disks: Vec<PathBuf> = loops.iter().map(|l| l.path().to_owned()).collect();
    let full = FULL_PERCENT.to_string();
    let c = Cluster::start_with("prom", &disks, 30, 9480, &["--pool-full-percent", &full]);
    let a = &c.nodes[0];

    // A replicated volume attached on a, under fio, with a limit and a finished check.
    a.ok(&[
        "volume",
        "create",
        "pv",
        "--size",
        "64M",
        "--fs",
        "raw",
        "--repl",
        "2",
        "--max_iops",
        "400,400",
    ]);
    legs_built(&c, "pv");
    let v: VolumeView = a.json(&["volume", "attach", "pv"]);
    let mut fio = background_fio(&v.device.clone().expect("a device"));
    a.ok(&["volume", "check", "pv"]);
    c.wait("pv's check done", Duration::from_secs(300), || {
        let v: VolumeView = a.json(&["volume", "inspect", "pv"]);
        v.check.and_then(|k| k.mismatches)
    });

    let targets: Vec<String> = (0..3)
        .map(|i| format!("{}:9480", c.net.addr_of(i)))
        .collect();
    let prom = Prometheus::start(&c.net.ns(0), &targets);

    // Every panel and variable query returns data once a minute's rates have two samples.
    let exprs = pxd_tests::grafana::expressions();
    let mut empty: Vec<String> = Vec::new();
    for _ in 0..60 {
        empty = exprs
            .iter()
            .filter_map(|e| {
                let q = if e.variable {
                    label_values_query(&e.text)
                } else {
                    instantiate(&e.text)
                };
                prom.query(&q)
                    .is_empty()
                    .then(|| format!("{}: {q}", e.place))
            })
            .collect();
        if empty.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        empty.is_empty(),
        "queries with no data after 2 minutes:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "prometheus: all {} dashboard queries return data",
        exprs.len()
    );
    let _ = fio.kill();
    let _ = fio.wait();

    // Fill a's pool past the near-full threshold: the alert fires for that pool.
    let pools: Vec<PoolView> = a.json(&["pool", "list", "--json"]);
    let pool = pools
        .iter()
        .find(|p| p.node.to_string() == c.id(0))
        .expect("a's pool");
    let usage = pool.usage.expect("a's pool usage");
    assert!(
        prom.query(&format!(
            "ALERTS{{alertname=\"PxdPoolNearFull\",pool=\"{}\"}}",
            pool.id
        ))
        .is_empty(),
        "near full before the fill"
    );
    let want = usage.data_total * (FULL_PERCENT + 8) / 100;
    let fill = want.saturating_sub(usage.data_used).next_multiple_of(MIB);
    let on = c.nodes[0].name.clone();
    a.ok(&[
        "volume", "create", "fill", "--size", "256M", "--fs", "raw", "--nodes", &on,
    ]);
    let f: VolumeView = a.json(&["volume", "attach", "fill"]);
    write_direct(
        &f.device.clone().expect("a device"),
        0,
        &pattern(3, fill as usize),
    );
    let firing = c.wait("PxdPoolNearFull firing", Duration::from_secs(180), || {
        let alerts = prom.query(&format!(
            "ALERTS{{alertname=\"PxdPoolNearFull\",alertstate=\"firing\",pool=\"{}\"}}",
            pool.id
        ));
        alerts.into_iter().next()
    });
    eprintln!(
        "prometheus: PxdPoolNearFull fired for pool {} after {} MiB written: {}",
        pool.id,
        fill / MIB,
        firing["metric"]
    );
    assert_eq!(firing["metric"]["severity"], "warning");
    // The other pools are not near full.
    let others = prom.query("ALERTS{alertname=\"PxdPoolNearFull\",alertstate=\"firing\"}");
    assert_eq!(others.len(), 1, "{others:?}");

    // provision-status: every pool, what was promised out of it and what it holds.
    let rows: Vec<Provision> = a.json(&["cluster", "provision-status"]);
    let brief: Vec<_> = rows
        .iter()
        .map(|r| (&r.node_name, r.online, r.near_full.is_some()))
        .collect();
    eprintln!("provision-status: {rows:?}");
    assert_eq!(rows.len(), 3, "{brief:?}");
    assert_eq!(
        rows.iter().map(|r| r.provisioned).sum::<u64>(),
        2 * (64 * MIB) + 256 * MIB
    );
    assert_eq!(rows.iter().map(|r| r.volumes).sum::<usize>(), 3);
    for r in &rows {
        assert!(r.online && r.limit > 0 && r.used.is_some(), "{r:?}");
        let on_a = r.pool == pool.id;
        assert_eq!(r.near_full.is_some(), on_a, "{r:?}");
        assert!(!on_a || r.used.unwrap_or_default() >= fill, "{r:?}");
    }
    let table = a.ok(&["cluster", "provision-status"]);
    assert!(c.nodes.iter().all(|n| table.contains(&n.name)), "{table}");
    drop(prom);
    drop(c);
    for l in loops {
        let _ = l.detach();
    }
    for b in backing {
        let _ = std::fs::remove_file(b);
    }
}
