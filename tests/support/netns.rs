//! Network namespaces on one bridge: several "nodes" on one kernel, each with its own
//! address on 10.77.0.0/24 (which exists only inside namespaces the test made). Work that
//! must happen inside a namespace (an nvmet port's socket, an NVMe/TCP connect) runs on a
//! thread that entered only the network namespace: `ip netns exec` would remount /sys and
//! hide configfs. Dropping a `Net` (also on panic) deletes its namespaces.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces `n0..n{k}` on one bridge.
pub struct Net {
    prefix: String,
    hub: String,
    count: usize,
    /// The address index of node 0: nets that share a kernel need distinct addresses, since
    /// nvmet finds its ports by address.
    first: usize,
}

impl Net {
    pub fn new(count: usize) -> Net {
        Net::new_at(count, 0)
    }

    /// [`Net::new`], node `i` at address index `first + i`.
    pub fn new_at(count: usize, first: usize) -> Net {
        crate::no_huge_pages();
        assert!(
            first + count < 200,
            "the test subnet has room for 200 nodes"
        );
        let prefix = format!(
            "pxdt{}x{}",
            std::process::id(),
            NEXT_NET.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{prefix}hub");
        let net = Net {
            prefix,
            hub: hub.clone(),
            count: 0,
            first,
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        let mut net = net;
        for i in 0..count {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns]);
            net.count = i + 1;
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr_of(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    pub fn addr(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// Node `i`'s address on this net.
    pub fn addr_of(&self, i: usize) -> String {
        Net::addr(self.first + i)
    }

    /// Cuts node `i` off (its veth down) or connects it again.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.ns(i),
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
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
