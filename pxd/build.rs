//! Builds the eBPF probes (`pxd-ebpf`) so that `pxd::io` can embed the object.
//!
//! The probes are compiled by a nested `cargo build` for `bpf{el,eb}-unknown-none`, which needs:
//! - the `rust-src` component, because `core` is rebuilt for the bpf target (`-Z build-std`);
//! - `bpf-linker`, built against this rustc's LLVM;
//! - unstable cargo flags, which `RUSTC_BOOTSTRAP=1` unlocks for the nested build only (the
//!   project has no nightly toolchain; the rest of the build stays on plain stable).
//!
//! `cargo xtask setup` installs both tools. The nested build has its own target directory under
//! `OUT_DIR` (cargo would otherwise block on its own lock), and is incremental after the first
//! run. The object lands in `$OUT_DIR/pxd-ebpf.o`.

use std::{
    env,
    ffi::OsString,
    fmt, fs,
    path::{Path, PathBuf},
    process::{self, Command},
};

/// The probe crate's package and binary name.
const PROBE_PACKAGE: &str = "pxd-ebpf";

fn main() {
    if let Err(err) = build_probes() {
        eprintln!("error: building the eBPF probes ({PROBE_PACKAGE}) failed: {err}");
        process::exit(1);
    }
}

/// A build failure, with what to do about it.
struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn env_path(name: &str) -> Result<PathBuf, BuildError> {
    env::var_os(name)
        .map(PathBuf::from)
        .ok_or_else(|| BuildError(format!("cargo did not set {name} for the build script")))
}

fn build_probes() -> Result<(), BuildError> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| BuildError(format!("{} has no parent", manifest_dir.display())))?;
    let probe_dir = workspace.join(PROBE_PACKAGE);
    let out_dir = env_path("OUT_DIR")?;

    // A directory here means "anything under it"; that covers pxd-ebpf/common too.
    println!("cargo:rerun-if-changed={}", probe_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    let linker = find_bpf_linker().ok_or_else(|| {
        BuildError(
            "`bpf-linker` was not found on PATH or in $CARGO_HOME/bin. \
             Run `cargo xtask setup` to install it (it must be built against this rustc's LLVM)."
                .to_owned(),
        )
    })?;
    println!("cargo:rerun-if-changed={}", linker.display());

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    check_rust_src(&rustc)?;

    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").unwrap_or_default();
    let bpf_target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    // aya-ebpf selects architecture-specific register layouts by this cfg; it must describe
    // the machine pxd runs on, not the machine that builds it.
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();

    let target_dir = out_dir.join("ebpf-target");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{target_arch}\""),
        // The linker turns DWARF into the BTF that aya and the verifier need.
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        format!("-Clinker={}", linker.display()),
    ]
    .join("\x1f");

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--package", PROBE_PACKAGE])
        .args(["--bin", PROBE_PACKAGE, "--target", bpf_target])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The outer build's wrappers (clippy-driver under `cargo clippy`, sccache) and flags are
        // for host code; none of them applies to the bpf build.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");

    let status = cmd
        .status()
        .map_err(|err| BuildError(format!("could not run {cmd:?}: {err}")))?;
    if !status.success() {
        return Err(BuildError(format!(
            "{cmd:?} exited with {status}; its output is above. If the linker failed, \
             `cargo xtask setup` reinstalls bpf-linker for this rustc."
        )));
    }

    let built = target_dir
        .join(bpf_target)
        .join("release")
        .join(PROBE_PACKAGE);
    let object = out_dir.join("pxd-ebpf.o");
    fs::copy(&built, &object).map_err(|err| {
        BuildError(format!(
            "copying {} to {}: {err}",
            built.display(),
            object.display()
        ))
    })?;
    Ok(())
}

/// Looks for `bpf-linker` on PATH, then where `cargo install` puts it.
fn find_bpf_linker() -> Option<PathBuf> {
    let name = "bpf-linker";
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `-Z build-std` rebuilds `core` from the toolchain's sources, which ship separately.
fn check_rust_src(rustc: &OsString) -> Result<(), BuildError> {
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|err| {
            BuildError(format!(
                "running `{} --print sysroot`: {err}",
                rustc.display()
            ))
        })?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let core = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core.is_file() {
        Ok(())
    } else {
        Err(BuildError(format!(
            "the rust-src component is missing ({} does not exist). Run `cargo xtask setup` \
             (or `rustup component add rust-src`).",
            core.display()
        )))
    }
}
