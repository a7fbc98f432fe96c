//! Cgroups a test makes in the host's I/O hierarchy, and fio run inside one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A cgroup made for a test, removed on drop.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    /// A fresh cgroup `name` under `root` (what a killed run left is removed first).
    pub fn new(root: &Path, name: &str) -> TestCgroup {
        let dir = root.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("making cgroup {}: {e}", dir.display()));
        TestCgroup(dir)
    }

    /// Its cgroup v2 `io.max` line for device `dev` (`major:minor`), if any.
    pub fn io_max(&self, dev: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.0.join("io.max")).ok()?;
        text.lines()
            .find(|l| l.starts_with(&format!("{dev} ")))
            .map(str::to_owned)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// fio job `name` on `dev` (direct, synchronous, one I/O in flight, JSON output) with `args`
/// on top, run by a shell that first joins cgroup `cg`, so all of fio's I/O is charged there.
pub fn fio_in(cg: &Path, dev: &Path, name: &str, args: &str) -> Command {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec fio --name={name} --filename={} --direct=1 \
         --ioengine=psync --iodepth=1 --randrepeat=0 --output-format=json {args}",
        cg.display(),
        dev.display()
    );
    let mut c = Command::new("sh");
    c.args(["-c", &script]);
    c
}
