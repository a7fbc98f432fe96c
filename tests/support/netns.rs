//! Network namespaces joined by a veth pair: two "nodes" in one guest. Work that must happen
//! inside a namespace (an nvmet port's socket, an NVMe/TCP connect) runs on a thread that
//! entered only the network namespace: `ip netns exec` would remount /sys and hide configfs.

use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `<prefix>a` at 10.<net>.0.1 and `<prefix>b` at 10.<net>.0.2.
pub struct Pair {
    pub a: String,
    pub b: String,
    pub addr_a: String,
    pub addr_b: String,
}

impl Pair {
    pub fn new(prefix: &str, net: u8) -> Pair {
        let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
        let (va, vb) = (format!("{prefix}va"), format!("{prefix}vb"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &a]);
        ip(&["link", "set", &vb, "netns", &b]);
        let (addr_a, addr_b) = (format!("10.{net}.0.1"), format!("10.{net}.0.2"));
        for (ns, dev, addr) in [(&a, &va, &addr_a), (&b, &vb, &addr_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        Pair {
            a,
            b,
            addr_a,
            addr_b,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it opens live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a namespace fd affects only this thread, which runs `f` and ends.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespace thread")
}
