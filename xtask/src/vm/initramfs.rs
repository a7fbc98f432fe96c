//! The guest's initramfs, built in Rust: busybox, the handful of modules needed to reach the
//! host's root over virtio-9p, and an `/init` that mounts that root read-only under a tmpfs
//! overlay and hands over to the run's stage-two script.

use super::kernel::Kernel;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Modules the root needs before anything on the host side can run. (Everything else, e.g.
/// dm-thin-pool, loads on demand through the host's modprobe once the root is up.)
const ROOT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "overlay",
];

/// Mount tag of the host's `/` and of the per-run directory.
pub const HOST_TAG: &str = "pxd-host";
pub const RUN_TAG: &str = "pxd-run";
/// Where the per-run directory appears in the guest.
pub const RUN_MOUNT: &str = "/pxd-vm";

const BUSYBOX: &str = "/bin/busybox";

/// Writes the initramfs for `kernel` to `out`.
pub fn build(kernel: &Kernel, out: &Path) -> Result<()> {
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (package busybox-static; run `cargo xtask setup`)")
    })?;
    let modules = load_order(&kernel.modules(), ROOT_MODULES)?;

    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "mods", "host", "rw", "root"] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, init_script().as_bytes());
    let mut order = String::new();
    for rel in &modules {
        let name = Path::new(rel)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let data = std::fs::read(kernel.modules().join(rel))
            .with_context(|| format!("reading module {rel}"))?;
        cpio.file(&format!("mods/{name}"), 0o644, &data);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("mods/order", 0o644, order.as_bytes());
    std::fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

/// The modules (paths relative to the modules dir) to insert, dependencies first, skipping
/// those built into the kernel.
fn load_order(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("reading modules.dep in {}", modules_dir.display()))?;
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    resolve_order(&dep, &builtin, wanted)
}

/// Module name as modprobe compares them: file stem, `-` and `_` equal.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn resolve_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(str::to_owned).collect();
        deps.insert(module_name(path), (path.to_owned(), list));
    }
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();

    fn visit(
        path: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        if let Some((_, list)) = deps.get(&module_name(path)) {
            // modules.dep lists every transitive dependency; later ones are deeper.
            for d in list.iter().rev() {
                visit(d, deps, seen, out);
            }
        }
        out.push(path.to_owned());
    }

    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for want in wanted {
        let key = module_name(want);
        match deps.get(&key) {
            Some((path, _)) => visit(path, &deps, &mut seen, &mut out),
            None if builtin.contains(&key) => {}
            None => bail!("module {want} is neither in modules.dep nor built in"),
        }
    }
    Ok(out)
}

/// PID 1. Busybox only: the host's root is not mounted yet.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
# PID 1 of the pxd test VM: reach the host's root over 9p and hand over to the run script.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
give_up() {{ echo "pxd-vm init: $*" > /dev/console; echo o > /proc/sysrq-trigger; sleep 60; }}
while read -r m; do insmod "/mods/$m" || give_up "cannot load $m"; done < /mods/order
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose {HOST_TAG} /host \
    || give_up "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /root \
    || give_up "cannot mount the overlay root"
mkdir -p /root{RUN_MOUNT}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none {RUN_TAG} /root{RUN_MOUNT} \
    || give_up "cannot mount the run directory"
for d in proc sys dev; do mount --move /$d /root/$d; done
exec switch_root /root /bin/bash {RUN_MOUNT}/stage2.sh
"#
    )
}

/// A minimal writer of the "newc" cpio format the kernel unpacks initramfs images from.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// Where the modules of a kernel are linked from inside the guest.
pub fn guest_modules_link(kernel: &Kernel) -> PathBuf {
    PathBuf::from("/lib/modules").join(&kernel.release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first_and_once() {
        let dep = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
                   kernel/net/9p/9pnet.ko:\n\
                   kernel/fs/netfs/netfs.ko:\n\
                   kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let builtin = "kernel/fs/overlayfs/overlay.ko\n";
        let order = resolve_order(dep, builtin, &["9pnet_virtio", "9p", "overlay"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko",
            ]
        );
        assert!(resolve_order(dep, builtin, &["nosuch"]).is_err());
    }

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!x");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let header = std::str::from_utf8(&out[6..110]).unwrap();
        assert_eq!(&header[8..16], "000081ed", "regular file, mode 0755");
        assert_eq!(&header[48..56], "00000003", "file size");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
