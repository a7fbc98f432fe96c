//! What a node can tell about its own place without asking anyone: the platform it runs on,
//! from DMI (`/sys/class/dmi/id`), which says which detector to try (vSphere guestinfo, a
//! cloud's metadata service) or that it is bare metal. Reads a directory given by the
//! caller, so tests run against fixture trees.

use crate::{Domain, Labels};
use std::path::Path;

/// The platform DMI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    VSphere,
    Aws,
    Gcp,
    Azure,
    /// Anything else, bare metal included: the host is its own fault domain.
    Other,
}

/// Reads `sys_vendor` and `product_name` (and `board_vendor`, `bios_vendor`, which some
/// clouds fill instead) under `dmi_dir`. Unreadable files count as empty.
pub fn platform(dmi_dir: &Path) -> Platform {
    let read = |f: &str| {
        std::fs::read_to_string(dmi_dir.join(f))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let vendor = read("sys_vendor");
    let product = read("product_name");
    let board = read("board_vendor");
    let bios = read("bios_vendor");
    match () {
        _ if vendor == "VMware, Inc." => Platform::VSphere,
        _ if vendor == "Amazon EC2" || bios.starts_with("Amazon") => Platform::Aws,
        _ if vendor == "Google" || product == "Google Compute Engine" => Platform::Gcp,
        _ if vendor == "Microsoft Corporation" && product == "Virtual Machine" => Platform::Azure,
        _ if board == "Amazon EC2" => Platform::Aws,
        _ => Platform::Other,
    }
}

/// A node's labels in the Mesos agent `--attributes` syntax (`zone:z1;rack:r1`), widest
/// first, for Marathon constraints.
pub fn mesos_attributes(labels: &Labels) -> String {
    Domain::ALL
        .into_iter()
        .filter_map(|d| labels.get(d).map(|v| format!("{d}:{v}")))
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), format!("{text}\n")).unwrap();
        }
        dir
    }

    #[test]
    fn platforms_are_told_apart_by_dmi() {
        let cases: [(&[(&str, &str)], Platform); 6] = [
            (
                &[
                    ("sys_vendor", "VMware, Inc."),
                    ("product_name", "VMware7,1"),
                ],
                Platform::VSphere,
            ),
            (&[("sys_vendor", "Amazon EC2")], Platform::Aws),
            (&[("bios_vendor", "Amazon EC2")], Platform::Aws),
            (&[("product_name", "Google Compute Engine")], Platform::Gcp),
            (
                &[
                    ("sys_vendor", "Microsoft Corporation"),
                    ("product_name", "Virtual Machine"),
                ],
                Platform::Azure,
            ),
            (
                &[("sys_vendor", "QEMU"), ("product_name", "Standard PC")],
                Platform::Other,
            ),
        ];
        for (files, want) in cases {
            let dir = fixture(files);
            assert_eq!(platform(dir.path()), want, "{files:?}");
        }
        assert_eq!(platform(Path::new("/nonexistent")), Platform::Other);
    }

    #[test]
    fn mesos_attributes_list_labels_widest_first() {
        let labels: Labels = "rack=r1,zone=z1,hypervisor=esx-3".parse().unwrap();
        assert_eq!(
            mesos_attributes(&labels),
            "zone:z1;rack:r1;hypervisor:esx-3"
        );
        assert_eq!(mesos_attributes(&Labels::default()), "");
    }
}
