//! The guest kernel: Debian's own `linux-image-amd64`, resolved (never hard-coded, since Debian
//! drops old versions from the archive), downloaded with apt, unpacked and indexed with depmod,
//! and cached under `target/pxd-vm/kernels/<release>`.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An unpacked kernel ready to boot.
pub struct Kernel {
    pub release: String,
    /// The unpacked package: `boot/`, `lib/modules/<release>/`.
    pub root: PathBuf,
    /// The uncompressed ELF kernel, booted through its PVH entry point.
    pub vmlinux: PathBuf,
}

impl Kernel {
    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

fn kernels_dir() -> PathBuf {
    crate::cache_dir().join("kernels")
}

/// Resolves, fetches and unpacks the kernel if it is not cached yet.
pub fn ensure() -> Result<Kernel> {
    let release = match std::env::var("PXD_VM_KERNEL") {
        Ok(r) if !r.is_empty() => r,
        _ => resolve_release()?,
    };
    let root = kernels_dir().join(&release);
    let kernel = Kernel {
        vmlinux: root.join("vmlinux"),
        root: root.clone(),
        release: release.clone(),
    };
    if root.join(".complete").exists() {
        return Ok(kernel);
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let deb = download(&release)?;
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    // The package ships no modules.dep: build it so modprobe works in the guest.
    cmd::run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    extract_vmlinux(&vmlinuz, &kernel.vmlinux)?;
    std::fs::remove_file(&deb).ok();
    std::fs::write(root.join(".complete"), &release)?;
    Ok(kernel)
}

/// `apt-cache depends linux-image-amd64` names the current kernel package. Without apt lists
/// (a fresh container), fall back to the newest kernel already cached.
fn resolve_release() -> Result<String> {
    let resolved = cmd::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))
        .ok()
        .and_then(|out| parse_depends(&out));
    if let Some(r) = resolved {
        return Ok(r);
    }
    let mut cached: Vec<String> = std::fs::read_dir(kernels_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(".complete").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    cached.pop().context(
        "cannot tell which Debian kernel to use: `apt-cache depends linux-image-amd64` names none \
         (run `apt-get update`, or `cargo xtask setup`)",
    )
}

fn parse_depends(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(str::to_owned)
        .find(|r| r.ends_with("-amd64"))
}

fn download(release: &str) -> Result<PathBuf> {
    let dir = crate::cache_dir().join("download");
    std::fs::create_dir_all(&dir)?;
    let pkg = format!("linux-image-{release}");
    let fetch = || {
        cmd::output(
            Command::new("apt-get")
                .current_dir(&dir)
                .args(["download", &pkg]),
        )
    };
    if fetch().is_err() {
        // Stale or missing package lists are the usual cause: refresh once and retry.
        cmd::run(cmd::as_root("apt-get").args(["update", "-qq"]))?;
        fetch()?;
    }
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&format!("{pkg}_")) && name.ends_with(".deb") {
            return Ok(p);
        }
    }
    bail!("apt-get download {pkg} left no .deb in {}", dir.display())
}

/// Debian's amd64 vmlinuz is a bzImage with an xz payload (with the x86 BCJ filter). The ELF
/// inside boots through PVH, skipping the slow real-mode setup and decompression under TCG.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .with_context(|| format!("{} holds no xz payload", vmlinuz.display()))?;
    let elf = decompress_first_xz_stream(&image[start..])
        .with_context(|| format!("decompressing the kernel in {}", vmlinuz.display()))?;
    if !elf.starts_with(b"\x7fELF") {
        bail!("the payload of {} is not an ELF kernel", vmlinuz.display());
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &elf)?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Decodes one xz stream and ignores what follows it (the rest of the bzImage).
fn decompress_first_xz_stream(input: &[u8]) -> Result<Vec<u8>> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0)?;
    let mut out = Vec::with_capacity(input.len() * 8);
    loop {
        let consumed = usize::try_from(stream.total_in())?;
        let before = (stream.total_in(), stream.total_out());
        if out.len() == out.capacity() {
            out.reserve(16 << 20);
        }
        match stream.process_vec(&input[consumed..], &mut out, Action::Run)? {
            Status::StreamEnd => return Ok(out),
            _ if before == (stream.total_in(), stream.total_out())
                && out.len() < out.capacity() =>
            {
                bail!("the xz stream ends early")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_output_names_the_release() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(out).as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }
}
