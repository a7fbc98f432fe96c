//! `cargo xtask vm`: boots Debian's kernel under qemu (TCG) with this host's `/` as the guest's
//! root (read-only 9p under a tmpfs overlay) and runs one command there as root. The command's
//! output comes back on a second serial port and its exit status through a shared directory.
//!
//! It doubles as cargo's runner (`CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER`), so a test
//! binary built on the host runs unchanged in the guest: one boot per binary.

pub mod initramfs;
pub mod kernel;

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// A virtio disk: SIZE (a new sparse image for this run, e.g. 2G), PATH (an existing image,
    /// reused as it is), or PATH=SIZE (created at that size if missing, reused otherwise).
    /// Disks appear as /dev/vda, /dev/vdb, ... in order.
    #[arg(long = "disk", value_name = "SIZE|PATH|PATH=SIZE")]
    pub disks: Vec<String>,
    /// Give the guest a NIC (qemu user networking; guest address 10.0.2.15).
    #[arg(long)]
    pub net: bool,
    /// Seconds before the guest is killed and the run fails.
    #[arg(long, default_value_t = 1200)]
    pub timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub mem: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Share this host directory read-write with the guest, at the same path (for results).
    #[arg(long = "share", value_name = "DIR")]
    pub shares: Vec<PathBuf>,
    /// Pass this host environment variable into the guest (RUST_*, CARGO_* and PXD_* always are).
    #[arg(long = "env", value_name = "VAR")]
    pub env: Vec<String>,
    /// Stream the guest's kernel console to stderr.
    #[arg(long)]
    pub verbose: bool,
    /// Keep the run directory (console log, scripts, disk images) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// The command to run in the guest, with its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Exit status when the guest never reported one (panic, hang, boot failure).
const NO_STATUS: i32 = 255;
/// Exit status when the run hit its timeout.
const TIMED_OUT: i32 = 124;

pub fn run(args: &VmArgs) -> Result<i32> {
    let kernel = kernel::ensure()?;
    let run_dir = RunDir::new(args.keep)?;
    initramfs::build(&kernel, &run_dir.path.join("initrd.cpio"))?;
    let disks = prepare_disks(&args.disks, &run_dir.path)?;
    let shares = args
        .shares
        .iter()
        .map(|d| {
            std::fs::create_dir_all(d)?;
            std::path::absolute(d)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    std::fs::write(
        run_dir.path.join("stage2.sh"),
        stage2_script(&kernel, args.net, &shares),
    )?;
    std::fs::write(run_dir.path.join("cmd.sh"), command_script(args)?)?;

    let console = run_dir.path.join("console.log");
    let mut qemu = qemu_command(&kernel, &run_dir.path, &disks, &shares, &console, args);
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start qemu (`{}`)", cmd::show(&qemu)))?;
    let deadline = started + Duration::from_secs(args.timeout);
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    let status = std::fs::read_to_string(run_dir.path.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match (status, timed_out) {
        (Some(code), false) => Ok(code),
        (_, true) => {
            eprintln!(
                "xtask vm: the guest did not finish within {} s and was killed; console tail:",
                args.timeout
            );
            print_tail(&console);
            Ok(TIMED_OUT)
        }
        (None, false) => {
            eprintln!("xtask vm: the guest reported no exit status (panic or boot failure); console tail:");
            print_tail(&console);
            Ok(NO_STATUS)
        }
    }
}

/// A per-run directory under `target/pxd-vm/runs`, shared read-write with the guest. It lives
/// on the same filesystem as the checkout, so disk images support O_DIRECT (cache=none).
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn new(keep: bool) -> Result<RunDir> {
        let base = crate::cache_dir().join("runs");
        std::fs::create_dir_all(&base)?;
        for n in 0.. {
            let path = base.join(format!("{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path, keep }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        unreachable!("an unbounded range always yields a free name")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("xtask vm: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Parses `2G`, `512M`, `4096K` or a byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)?
        .checked_mul(mult)
}

fn prepare_disks(specs: &[String], run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let (path, size) = if let Some(size) = parse_size(spec) {
            (run_dir.join(format!("disk{i}.img")), Some(size))
        } else if let Some((p, s)) = spec.rsplit_once('=') {
            let size = parse_size(s)
                .with_context(|| format!("--disk {spec}: {s:?} is not a size like 2G or 512M"))?;
            (PathBuf::from(p), Some(size))
        } else {
            (PathBuf::from(spec), None)
        };
        if path.exists() {
            // Reuse as it is: a second boot on the disks of a first one (power-loss tests).
        } else if let Some(size) = size {
            let f = std::fs::File::create(&path)
                .with_context(|| format!("--disk {spec}: creating {}", path.display()))?;
            f.set_len(size)?;
        } else {
            bail!("--disk {spec}: no such image (give SIZE, or PATH=SIZE to create it)");
        }
        out.push(std::path::absolute(&path)?);
    }
    Ok(out)
}

/// Single-quotes a string for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The user's command, its environment and working directory, as a shell script.
fn command_script(args: &VmArgs) -> Result<String> {
    let mut s = String::new();
    for (k, v) in std::env::vars() {
        let forwarded =
            ["RUST_", "CARGO_", "PXD_"].iter().any(|p| k.starts_with(p)) || args.env.contains(&k);
        if forwarded && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            writeln!(s, "export {k}={}", quote(&v))?;
        }
    }
    let cwd = std::env::current_dir()?;
    writeln!(
        s,
        "cd {} 2>/dev/null || cd /",
        quote(&cwd.to_string_lossy())
    )?;
    let line: Vec<String> = args.command.iter().map(|a| quote(a)).collect();
    writeln!(s, "exec {}", line.join(" "))?;
    Ok(s)
}

/// Stage two runs on the host's root (bash available): finish what udev and systemd would do
/// on a normal boot, run the command with its output on ttyS1, record the status, power off.
fn stage2_script(kernel: &kernel::Kernel, net: bool, shares: &[PathBuf]) -> String {
    let modules = kernel.modules();
    let link = initramfs::guest_modules_link(kernel);
    let run = initramfs::RUN_MOUNT;
    let net_up = if net {
        "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2\n\
         echo nameserver 10.0.2.3 > /etc/resolv.conf\n"
    } else {
        ""
    };
    let mut mounts = String::new();
    for (i, dir) in shares.iter().enumerate() {
        let d = quote(&dir.to_string_lossy());
        mounts.push_str(&format!(
            "mkdir -p {d} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none pxd-share{i} {d}\n"
        ));
    }
    format!(
        r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run 2>/dev/null; mkdir -p /run/lock
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mkdir -p /lib/modules && ln -sfn '{modules}' '{link}'
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin; ln -sfn /proc/self/fd/1 /dev/stdout; ln -sfn /proc/self/fd/2 /dev/stderr
# No udev: make the nodes whose first open loads a module (mapper/control, loop-control, ...).
grep -v '^#' '{modules}/modules.devname' | while read -r _mod name dev; do
    type=${{dev%%[0-9]*}}; nums=${{dev#?}}
    [ -e "/dev/$name" ] || {{ mkdir -p "/dev/$(dirname "$name")"; mknod "/dev/$name" "$type" "${{nums%%:*}}" "${{nums#*:}}"; }}
done
hostname pxd-vm
ip link set lo up
{net_up}{mounts}export DM_DISABLE_UDEV=1 PXD_IN_VM=1
stty -F /dev/ttyS1 raw -echo 2>/dev/null
echo "pxd-vm: command starts at $(cut -d' ' -f1 /proc/uptime) s uptime" > /dev/console
bash {run}/cmd.sh < /dev/null > /dev/ttyS1 2>&1
rc=$?; echo "pxd-vm: command exited with status $rc" > /dev/console
echo $rc > {run}/rc
sync
echo o > /proc/sysrq-trigger
sleep 60
"#,
        modules = modules.display(),
        link = link.display(),
    )
}

fn qemu_command(
    kernel: &kernel::Kernel,
    run_dir: &Path,
    disks: &[PathBuf],
    shares: &[PathBuf],
    console: &Path,
    args: &VmArgs,
) -> Command {
    let mut q = Command::new("qemu-system-x86_64");
    q.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-machine",
        "pc",
    ])
    .args(["-smp", &args.cpus.to_string(), "-m", &args.mem.to_string()])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&kernel.vmlinux)
    .arg("-initrd")
    .arg(run_dir.join("initrd.cpio"))
    // An oops panics the guest, so a test fails at once with the trace instead of waiting
    // on a kernel that is already broken (tests that put NVMe/TCP hosts and targets in one
    // kernel turn huge pages off for the reason `pxd_tests::no_huge_pages` gives).
    .args([
        "-append",
        "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 rdinit=/init",
    ])
    .arg("-fsdev")
    .arg("local,id=hostfs,path=/,security_model=none,readonly=on,multidevs=remap")
    .args([
        "-device",
        &format!(
            "virtio-9p-pci,fsdev=hostfs,mount_tag={}",
            initramfs::HOST_TAG
        ),
    ])
    .arg("-fsdev")
    .arg(format!(
        "local,id=runfs,path={},security_model=none,multidevs=remap",
        run_dir.display()
    ))
    .args([
        "-device",
        &format!("virtio-9p-pci,fsdev=runfs,mount_tag={}", initramfs::RUN_TAG),
    ]);
    for (i, dir) in shares.iter().enumerate() {
        q.arg("-fsdev").arg(format!(
            "local,id=share{i},path={},security_model=none,multidevs=remap",
            dir.display()
        ));
        q.args([
            "-device",
            &format!("virtio-9p-pci,fsdev=share{i},mount_tag=pxd-share{i}"),
        ]);
    }
    // ttyS0: kernel console (a log file, or our stderr); ttyS1: the command's output.
    if args.verbose {
        q.args(["-chardev", "file,id=con,path=/dev/stderr"]);
    } else {
        q.arg("-chardev")
            .arg(format!("file,id=con,path={}", console.display()));
    }
    q.args([
        "-serial",
        "chardev:con",
        "-chardev",
        "stdio,id=out,signal=off",
        "-serial",
        "chardev:out",
    ]);
    for (i, d) in disks.iter().enumerate() {
        q.arg("-drive").arg(format!(
            "file={},if=none,id=d{i},format=raw,cache=none,aio=native",
            d.display()
        ));
        q.args([
            "-device",
            &format!("virtio-blk-pci,drive=d{i},serial=pxd-disk{i}"),
        ]);
    }
    if args.net {
        q.args(["-nic", "user,model=virtio-net-pci"]);
    }
    q
}

fn print_tail(console: &Path) {
    match std::fs::read_to_string(console) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("  | {l}");
            }
        }
        Err(_) => eprintln!("  (no console log; run with --verbose to see the console)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0G"), None);
        assert_eq!(parse_size("/tmp/a.img"), None);
        assert_eq!(parse_size("G"), None);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
