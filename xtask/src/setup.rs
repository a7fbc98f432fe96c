//! `cargo xtask setup`: everything a fresh Debian 12 / Ubuntu host needs for pxd's build, tests
//! and demo. Every step checks first, so a second run takes seconds.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages: the VM (qemu, busybox, kmod), the C libraries pxd links (bindgen needs
/// clang), the tools tests use inside the guest (fio, mkfs, thin_check, cryptsetup, ip), and
/// the peers benchmarks compare with (nbd-server), Prometheus for the dashboards' tests and
/// Docker for the volume plugin's.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "clang",
    "libclang-dev",
    "libdevmapper-dev",
    "libblkid-dev",
    "libzmq3-dev",
    "pkg-config",
    "fio",
    "e2fsprogs",
    "xfsprogs",
    "thin-provisioning-tools",
    "cryptsetup-bin",
    "iproute2",
    // The peers `cargo xtask bench` compares with: LVM thin (and LUKS2 on it, with
    // cryptsetup-bin above), and an NBD leg, served and attached by hand.
    "lvm2",
    "nbd-server",
    "nbd-client",
    // Prometheus and promtool: the dashboards' and alert rules' tests run the real ones.
    "prometheus",
    // Docker Engine, started inside the guest by the volume plugin's test.
    "docker.io",
    // A venv for the Python tools below, and curl for the API's test.
    "python3-venv",
    "curl",
];

/// Python tools from PyPI, pinned, in a venv under `target/pxd-vm/python` that the guest sees
/// too: schemathesis fuzzes the API against its OpenAPI document, openapi-spec-validator
/// checks the document.
pub const PYTHON_TOOLS: &[&str] = &["schemathesis==4.32.5", "openapi-spec-validator==0.9.0"];

pub fn run() -> Result<()> {
    step("Debian packages", apt_packages)?;
    step(
        "rust-src (to build the eBPF probes for bpfel-unknown-none)",
        rust_src,
    )?;
    step(
        "bpf-linker (links the eBPF probes with rustc's own LLVM)",
        bpf_linker,
    )?;
    step(
        "Python tools (schemathesis, openapi-spec-validator)",
        python_tools,
    )?;
    step("Debian kernel for the test VM", || {
        crate::vm::kernel::ensure().map(|k| println!("   {}", k.release))
    })?;
    Ok(())
}

fn step(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("setup: {what}");
    f().with_context(|| format!("setup step failed: {what}"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        println!("   all {} present", PACKAGES.len());
        return Ok(());
    }
    println!("   installing: {}", missing.join(" "));
    cmd::run(cmd::as_root("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        cmd::as_root("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still: Vec<&&str> = missing.iter().filter(|p| !package_installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get ran but these are still missing: {still:?}");
    }
    Ok(())
}

fn package_installed(name: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", name]))
        .is_ok_and(|s| s.trim() == "installed")
}

fn python_tools() -> Result<()> {
    let venv = crate::cache_dir().join("python");
    // What the venv holds, written once pip is done: a changed pin installs again.
    let record = venv.join("pxd-tools.txt");
    let want = PYTHON_TOOLS.join("\n");
    if std::fs::read_to_string(&record).is_ok_and(|have| have == want) {
        println!("   present");
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        // Debian's own Python: the guest runs the venv from the host's root.
        cmd::run(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )?;
    }
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_TOOLS),
    )?;
    std::fs::write(&record, want).with_context(|| format!("writing {}", record.display()))
}

fn rust_src() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("   present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn bpf_linker() -> Result<()> {
    if cmd::exists("bpf-linker", "--version") {
        println!("   present");
        return Ok(());
    }
    // bpf-linker must read the LLVM bitcode rustc emits, so it links against rustc's own
    // libLLVM (shipped in the sysroot) rather than a distribution LLVM.
    let sysroot =
        PathBuf::from(cmd::output(Command::new("rustc").args(["--print", "sysroot"]))?.trim());
    let (lib, major) = rustc_llvm(&sysroot.join("lib"))?;
    println!("   building against {lib} (LLVM {major}); this takes a few minutes");
    let libdir = sysroot.join("lib");
    let rustflags = format!(
        "-L {dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}",
        dir = libdir.display()
    );
    cmd::run(
        Command::new("cargo")
            .env("RUSTFLAGS", rustflags)
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{major},no-llvm-linking")]),
    )
}

/// Finds `libLLVM-<major>-rust-<version>.so` in rustc's sysroot: (link name, LLVM major).
fn rustc_llvm(libdir: &Path) -> Result<(String, String)> {
    for entry in
        std::fs::read_dir(libdir).with_context(|| format!("reading {}", libdir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so")) {
            if let Some(rest) = stem.strip_prefix("LLVM-") {
                if let Some((major, _)) = rest.split_once('-') {
                    return Ok((stem.to_owned(), major.to_owned()));
                }
            }
        }
    }
    bail!(
        "no libLLVM-*.so in {}: is this a rustup toolchain?",
        libdir.display()
    )
}
