//! vSphere guestinfo: labels an administrator sets on the VM (`guestinfo.pxd.rack = r7` in
//! the VM's advanced settings, or `vmware-rpctool "info-set guestinfo.pxd.rack r7"`), read
//! back inside the guest with the VMware tools. Needs no network and no credentials.

use super::shown;
use super::Config;
use crate::{Domain, Labels};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A guestinfo value is one short line; more is not one.
const MAX_OUTPUT: u64 = 64 * 1024;

/// Why a tool run gave no answer.
enum RunError {
    TimedOut,
    Spawn(std::io::Error),
}

/// Runs `cmd` with no input, killing it past `timeout`. `Ok(None)` is a nonzero exit: the
/// key is not set. The output is read on a thread of its own, so a grandchild that keeps
/// the pipe open cannot hold detection past the deadline.
fn run(mut cmd: Command, timeout: Duration) -> Result<Option<String>, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.take(MAX_OUTPUT).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(Duration::from_millis(5)));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut);
            }
        }
    };
    if !status.success() {
        return Ok(None);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let out = rx.recv_timeout(left).map_err(|_| RunError::TimedOut)?;
    Ok(Some(String::from_utf8_lossy(&out).trim().to_owned()))
}

/// The command that reads one key: `vmtoolsd --cmd "info-get KEY"` for `vmtoolsd`,
/// `vmware-rpctool "info-get KEY"` for anything else.
fn command(tool: &Path, key: &str) -> Command {
    let mut cmd = Command::new(tool);
    if tool.file_name().is_some_and(|n| n == "vmtoolsd") {
        cmd.arg("--cmd");
    }
    cmd.arg(format!("info-get {key}"));
    cmd
}

/// Reads `guestinfo.pxd.{region,zone,rack,hypervisor}` with the first tool that exists.
pub(super) fn guestinfo(cfg: &Config, warnings: &mut Vec<String>) -> Labels {
    let mut l = Labels::default();
    let Some(tool) = cfg.guestinfo_tools.iter().find(|p| p.is_file()) else {
        let tried: Vec<String> = cfg
            .guestinfo_tools
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        warnings.push(format!(
            "vsphere: no VMware tools found (tried {}); install open-vm-tools and set \
             guestinfo.pxd.region/zone/rack/hypervisor on the VM (VM advanced settings, or \
             `vmware-rpctool \"info-set guestinfo.pxd.rack r1\"`), or configure vCenter",
            if tried.is_empty() {
                "none".to_owned()
            } else {
                tried.join(", ")
            }
        ));
        return l;
    };
    for d in [
        Domain::Region,
        Domain::Zone,
        Domain::Rack,
        Domain::Hypervisor,
    ] {
        let key = format!("guestinfo.pxd.{d}");
        match run(command(tool, &key), cfg.timeout) {
            Ok(Some(v)) if !v.is_empty() => {
                if let Err(e) = l.set(d, &v) {
                    warnings.push(format!("vsphere: {key} = {}: {e}", shown(&v)));
                }
            }
            Ok(_) => {}
            Err(RunError::TimedOut) => {
                warnings.push(format!(
                    "vsphere: {} did not answer info-get {key} within {:?}; killed it and \
                     read no more guestinfo",
                    tool.display(),
                    cfg.timeout
                ));
                break;
            }
            Err(RunError::Spawn(e)) => {
                warnings.push(format!("vsphere: cannot run {}: {e}", tool.display()));
                break;
            }
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testserver::{script, FORKS};
    use std::path::PathBuf;

    fn config(tools: Vec<PathBuf>) -> Config {
        let mut cfg = Config::system("node-a");
        cfg.guestinfo_tools = tools;
        cfg.timeout = Duration::from_millis(1500);
        cfg
    }

    /// Answers like vmware-rpctool: the value on stdout, or exit 1 when unset.
    const RPCTOOL: &str = r#"case "$1" in
  "info-get guestinfo.pxd.rack") echo r7 ;;
  "info-get guestinfo.pxd.zone") echo "  z2  " ;;
  "info-get guestinfo.pxd.hypervisor") echo "esx 01" ;;
  *) echo "No value found" >&2; exit 1 ;;
esac"#;

    #[test]
    fn rpctool_values_are_read_and_bad_ones_warned() {
        let _g = FORKS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "vmware-rpctool", RPCTOOL);
        let cfg = config(vec![dir.path().join("missing"), tool]);
        let mut w = Vec::new();
        let l = guestinfo(&cfg, &mut w);
        assert_eq!(l, "zone=z2,rack=r7".parse().unwrap());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("guestinfo.pxd.hypervisor"), "{w:?}");
        assert!(w[0].contains("value of hypervisor"), "{w:?}");
    }

    #[test]
    fn vmtoolsd_is_called_with_cmd() {
        let _g = FORKS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let tool = script(
            dir.path(),
            "vmtoolsd",
            r#"[ "$1" = --cmd ] || exit 2
[ "$2" = "info-get guestinfo.pxd.region" ] && echo eu-west && exit 0
exit 1"#,
        );
        let mut w = Vec::new();
        let l = guestinfo(&config(vec![tool]), &mut w);
        assert_eq!(l, "region=eu-west".parse().unwrap());
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_hanging_tool_is_killed_with_a_warning() {
        let _g = FORKS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "vmware-rpctool", "exec sleep 1000");
        let mut w = Vec::new();
        let l = guestinfo(&config(vec![tool.clone()]), &mut w);
        assert!(l.is_empty());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("did not answer"), "{w:?}");
        assert!(w[0].contains("killed"), "{w:?}");

        // A grandchild holding the pipe open does not hold detection either.
        let tool = script(dir.path(), "rpc2", "sleep 3 &\necho r1");
        let mut w = Vec::new();
        let l = guestinfo(&config(vec![tool]), &mut w);
        assert!(l.is_empty());
        assert!(w[0].contains("did not answer"), "{w:?}");
    }

    #[test]
    fn no_tool_says_what_to_install() {
        let mut w = Vec::new();
        let l = guestinfo(
            &config(vec![PathBuf::from("/nonexistent/vmtoolsd")]),
            &mut w,
        );
        assert!(l.is_empty());
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("install open-vm-tools"), "{w:?}");
        assert!(w[0].contains("configure vCenter"), "{w:?}");
    }
}
