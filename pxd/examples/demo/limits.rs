//! The demo's limit step: two writers in two cgroups (two containers, as far as the kernel
//! knows) share one volume's write IOPS limit, and `pxd volume stats` shows it.

use super::Node;
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The cgroup v2 mount, where the demo makes its writers' cgroups.
const CGROUP2: &str = "/sys/fs/cgroup";

/// A cgroup made for a writer, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Result<Cgroup> {
        let dir = Path::new(CGROUP2).join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("making cgroup {}", dir.display()))?;
        Ok(Cgroup(dir))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// fio writing 4 KiB blocks at random to `dev` for `secs` seconds, from inside `cg`.
fn writer(cg: &Cgroup, dev: &Path, name: &str, secs: u32) -> Result<Child> {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec fio --name={name} --filename={} --direct=1 \
         --ioengine=psync --rw=randwrite --bs=4k --size=32M --time_based --runtime={secs} \
         --output-format=json",
        cg.0.display(),
        dev.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting fio")
}

/// `dev`'s `major:minor`, as cgroup files name it.
fn device_number(dev: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let rdev = std::fs::metadata(dev)?.rdev();
    Ok(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// The `io.max` line of cgroup `cg` for device `key`.
fn io_max(cg: &Cgroup, key: &str) -> Option<String> {
    std::fs::read_to_string(cg.0.join("io.max"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .map(str::to_owned)
}

/// A finished fio's write IOPS.
fn write_iops(child: Child) -> Result<f64> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "fio failed: {text}");
    let v: serde_json::Value = serde_json::from_str(&text[text.find('{').context("fio json")?..])?;
    v["jobs"][0]["write"]["iops"]
        .as_f64()
        .context("fio's write IOPS")
}

/// Caps volume `name` (raw, device `dev`) at 200 write IOPS live, runs two writers in two
/// cgroups on it, shows `pxd volume stats` while they run and their sum after.
pub fn run(node: &Node, name: &str, dev: &Path) -> Result<()> {
    if !Path::new(CGROUP2).join("cgroup.controllers").exists() {
        println!("      (no cgroup v2 hierarchy here: skipped)");
        return Ok(());
    }
    node.show(&["volume", "update", name, "--max_iops", "max,200"])?;
    let (a, b) = (Cgroup::new("pxd-demo-a")?, Cgroup::new("pxd-demo-b")?);
    // pxd finds new cgroups within a second and bounds each by the whole budget.
    let key = device_number(dev)?;
    for cg in [&a, &b] {
        super::cluster::wait(&format!("pxd to guard {}", cg.0.display()), || {
            io_max(cg, &key).filter(|l| l.contains("wiops=") && !l.contains("wiops=max"))
        })?;
    }
    let (wa, wb) = (writer(&a, dev, "a", 8)?, writer(&b, dev, "b", 8)?);
    std::thread::sleep(Duration::from_secs(4));
    node.show(&["volume", "stats", name])?;
    for cg in [&a, &b] {
        println!(
            "      {}/io.max, as pxd wrote it: {}",
            cg.0.display(),
            io_max(cg, &key).unwrap_or_default()
        );
    }
    let (ia, ib) = (write_iops(wa)?, write_iops(wb)?);
    println!(
        "      fio in cgroup pxd-demo-a: {ia:.0} writes/s, in pxd-demo-b: {ib:.0}; together {:.0} (limit 200)",
        ia + ib
    );
    ensure!(
        (ia + ib - 200.0).abs() <= 20.0,
        "two writers got {:.0} write IOPS under a limit of 200",
        ia + ib
    );
    node.show(&["volume", "update", name, "--max_iops", "none"])?;
    Ok(())
}
