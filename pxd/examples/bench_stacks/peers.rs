//! The stacks a user would pick instead of pxd's, each made by its own standard tool with its
//! defaults, on a disk of its own: LVM thin (`lvcreate --thin`) and LUKS2 (`cryptsetup
//! luksFormat`) on an LVM thin volume. The one departure: LUKS2's key derivation is held to
//! 64 MiB of memory so that it fits the guest; it costs only at unlock, never per I/O.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const VG: &str = "pxdbench";
const LUKS: &str = "pxdbench-luks";
/// The LUKS2 key file: random bytes on the guest's tmpfs, never on a command line.
const KEY_FILE: &str = "/run/pxdbench-luks.key";

pub struct Peers {
    pub lvm_thin: PathBuf,
    pub luks: PathBuf,
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Peers {
    /// An LVM volume group on `disk` with a thin pool of lvm's defaults, two 1 GiB thin
    /// volumes, and LUKS2 opened on the second.
    pub fn build(disk: &Path) -> Result<Peers> {
        let disk = disk.to_str().context("a disk path in UTF-8")?;
        run("pvcreate", &["-ff", "-y", "-q", disk])?;
        run("vgcreate", &["-q", VG, disk])?;
        run("lvcreate", &["-q", "-L", "3G", "-T", &format!("{VG}/pool")])?;
        for lv in ["thin", "crypt"] {
            run(
                "lvcreate",
                &["-q", "-V", "1G", "-T", &format!("{VG}/pool"), "-n", lv],
            )?;
        }
        let mut key = [0u8; 64];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
        std::fs::write(KEY_FILE, key).context("writing the LUKS2 key file")?;
        let crypt_lv = format!("/dev/{VG}/crypt");
        run(
            "cryptsetup",
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf-memory",
                "65536",
                "--key-file",
                KEY_FILE,
                &crypt_lv,
            ],
        )?;
        run(
            "cryptsetup",
            &["open", "--key-file", KEY_FILE, &crypt_lv, LUKS],
        )?;
        Ok(Peers {
            lvm_thin: PathBuf::from(format!("/dev/{VG}/thin")),
            luks: PathBuf::from(format!("/dev/mapper/{LUKS}")),
        })
    }

    /// The LUKS2 table as dm shows it (`cryptsetup`'s choices: cipher, sector size, flags),
    /// with the key left out.
    pub fn luks_table() -> String {
        Command::new("dmsetup")
            .args(["table", LUKS])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| if i == 4 { "<key>" } else { w })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn teardown(self) -> Result<()> {
        run("cryptsetup", &["close", LUKS])?;
        let _ = std::fs::remove_file(KEY_FILE);
        run("vgremove", &["-ff", "-q", VG])
    }
}
