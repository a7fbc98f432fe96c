//! Debian's Docker Engine run in a scratch directory (no bridge, no iptables, the vfs
//! storage driver, its own socket), and an image imported from a busybox tree: what the VM
//! tests and the demo drive pxd's volume plugin with. Plain std, so that the demo (an
//! example of the pxd crate) can include this file as it is.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The image [`Docker::import_busybox`] makes.
pub const BUSYBOX: &str = "pxd-busybox";

/// dockerd, killed on drop.
pub struct Docker {
    child: Child,
    dir: PathBuf,
}

impl Docker {
    /// Starts dockerd with its state under `dir` (emptied first); returns once it answers.
    pub fn start(dir: &Path) -> Docker {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("the Docker directory");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd's log");
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none", "--storage-driver=vfs"])
            .arg(format!("--data-root={}", dir.join("root").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .arg(format!(
                "--host=unix://{}",
                dir.join("docker.sock").display()
            ))
            .stdout(log.try_clone().expect("dockerd's log"))
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian's docker.io; `cargo xtask setup` installs it)");
        let d = Docker {
            child,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while d.try_run(&["version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The docker client (Debian's, whatever else is first on `PATH`) for this dockerd.
    fn client(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.arg(format!(
            "--host=unix://{}",
            self.dir.join("docker.sock").display()
        ));
        c
    }

    /// `docker ARGS`: its output, or its error.
    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.client().args(args).output().expect("docker");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `docker ARGS`, which must succeed.
    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args)
            .unwrap_or_else(|e| panic!("docker {args:?}: {e}\n--- dockerd ---\n{}", self.log()))
    }

    /// Imports [`BUSYBOX`] from a busybox tree (Debian's busybox-static).
    pub fn import_busybox(&self) {
        let tree = self.dir.join("busybox");
        std::fs::create_dir_all(tree.join("bin")).expect("the busybox tree");
        std::fs::copy("/bin/busybox", tree.join("bin/busybox")).expect("/bin/busybox");
        for applet in ["sh", "cat", "echo", "sleep", "sha256sum", "head", "sync"] {
            std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))
                .expect("an applet link");
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = self
            .client()
            .args(["import", "-", BUSYBOX])
            .stdin(tar.stdout.take().expect("tar's output"))
            .output()
            .expect("docker import");
        assert!(
            tar.wait().is_ok_and(|s| s.success()),
            "tar of the busybox tree"
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Containers first, so that their volumes are unmounted through the plugin.
        if let Ok(ids) = self.try_run(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.try_run(&["rm", "-f", id]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
