//! What a node can tell about its own place without being told: the platform it runs on,
//! from DMI (`/sys/class/dmi/id`), which says which detector to try (vSphere guestinfo and
//! vCenter, a cloud's metadata service) or that it is bare metal. Every input (the DMI
//! directory, the tools, the service URLs) comes from a [`Config`], so tests run against
//! fixture trees, scripts and loopback servers.
//!
//! Detection never fails: what it cannot learn it leaves out, with a warning that says what
//! was tried and what went wrong, for `pxd topology show` and the log.

mod cloud;
mod http;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod testserver;
mod vcenter;
mod vsphere;

use crate::sources::Source;
use crate::{Domain, Labels};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where detection looks, and how long it waits for each answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `/sys/class/dmi/id`.
    pub dmi_dir: PathBuf,
    pub hostname: String,
    /// The VMware tools that read guestinfo, tried in order: `vmware-rpctool`, `vmtoolsd`.
    pub guestinfo_tools: Vec<PathBuf>,
    /// Base URLs of the metadata services.
    pub aws_url: String,
    pub gcp_url: String,
    pub azure_url: String,
    pub vcenter: Option<VCenter>,
    /// Per request or tool run, connect included.
    pub timeout: Duration,
}

impl Config {
    /// The real machine's places, without vCenter.
    pub fn system(hostname: &str) -> Config {
        Config {
            dmi_dir: PathBuf::from("/sys/class/dmi/id"),
            hostname: hostname.to_owned(),
            guestinfo_tools: vec![
                PathBuf::from("/usr/bin/vmware-rpctool"),
                PathBuf::from("/usr/bin/vmtoolsd"),
            ],
            aws_url: "http://169.254.169.254".into(),
            gcp_url: "http://metadata.google.internal".into(),
            azure_url: "http://169.254.169.254".into(),
            vcenter: None,
            timeout: Duration::from_secs(2),
        }
    }
}

/// How to ask vCenter which ESXi host, cluster and tags this VM has. The credentials are in a
/// file (`user=NAME` and `password=SECRET` lines), never on a command line or in this
/// struct, so neither `Debug` nor a process listing shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VCenter {
    /// `https://vcenter.example`.
    pub url: String,
    pub credentials_file: PathBuf,
    /// A PEM trust root beside the public ones, for a vCenter with its own CA.
    pub ca_file: Option<PathBuf>,
    /// The VM's name in vCenter; usually the hostname.
    pub vm_name: String,
}

/// What detection found: one layer per source that knew something, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub platform: Platform,
    pub layers: Vec<(Source, Labels)>,
    pub warnings: Vec<String>,
}

/// Runs the detectors the platform calls for. Takes at most about one `timeout` per request
/// or tool run, and returns whatever it learned.
pub fn detect(cfg: &Config) -> Detected {
    let platform = platform(&cfg.dmi_dir);
    let mut warnings = Vec::new();
    // On a VM the hostname names the guest, not the machine it runs on: the host is then
    // unknown unless vCenter, guestinfo or the operator says which hypervisor it is.
    let host = match platform {
        Platform::Other => host_labels(&cfg.hostname, &mut warnings),
        _ => Labels::default(),
    };
    let mut layers = vec![(Source::BareMetal, host)];
    if cfg.vcenter.is_some() && platform != Platform::VSphere {
        warnings.push(format!(
            "vcenter: configured, but DMI says this is {platform}, not a VMware VM; not asked"
        ));
    }
    let found = match platform {
        Platform::VSphere => {
            let mut l = Labels::default();
            if let Some(vc) = &cfg.vcenter {
                l = vcenter::detect(vc, cfg.timeout, &mut warnings);
            }
            l.overlay(&vsphere::guestinfo(cfg, &mut warnings));
            Some((Source::VSphere, l))
        }
        Platform::Aws | Platform::Gcp | Platform::Azure => {
            match http::Client::new(cfg.timeout, None) {
                Ok(client) => {
                    let l = match platform {
                        Platform::Aws => cloud::aws(&client, &cfg.aws_url, &mut warnings),
                        Platform::Gcp => cloud::gcp(&client, &cfg.gcp_url, &mut warnings),
                        _ => cloud::azure(&client, &cfg.azure_url, &mut warnings),
                    };
                    Some((Source::Cloud, l))
                }
                Err(e) => {
                    warnings.push(format!("{platform}: no HTTP client: {e}"));
                    None
                }
            }
        }
        Platform::Other => None,
    };
    if let Some((source, l)) = found {
        if !l.is_empty() {
            layers.push((source, l));
        }
    }
    Detected {
        platform,
        layers,
        warnings,
    }
}

/// A value as a warning shows it: quoted, and cut short if it is long garbage.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

/// The bare-metal layer: the host is its own fault domain. A fully qualified name too long
/// or odd for a label falls back to its first DNS label, which is what `hostname -s` shows.
fn host_labels(hostname: &str, warnings: &mut Vec<String>) -> Labels {
    let mut l = Labels::default();
    let short = hostname.split('.').next().unwrap_or_default();
    if l.set(Domain::Host, hostname).is_err() && l.set(Domain::Host, short).is_err() {
        warnings.push(format!(
            "bare-metal: hostname {hostname:?} is not a valid label value \
             (1 to 63 bytes of [A-Za-z0-9._-]); no host label"
        ));
    }
    l
}

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

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::VSphere => "vsphere",
            Platform::Aws => "aws",
            Platform::Gcp => "gcp",
            Platform::Azure => "azure",
            Platform::Other => "other",
        })
    }
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
    fn system_config_points_at_the_real_places() {
        let c = Config::system("node-a");
        assert_eq!(c.dmi_dir, Path::new("/sys/class/dmi/id"));
        assert_eq!(c.hostname, "node-a");
        assert_eq!(
            c.guestinfo_tools,
            [
                Path::new("/usr/bin/vmware-rpctool"),
                Path::new("/usr/bin/vmtoolsd")
            ]
        );
        assert_eq!(c.aws_url, "http://169.254.169.254");
        assert_eq!(c.gcp_url, "http://metadata.google.internal");
        assert_eq!(c.azure_url, "http://169.254.169.254");
        assert_eq!(c.vcenter, None);
        assert_eq!(c.timeout, Duration::from_secs(2));
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
