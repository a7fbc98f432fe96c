//! The `crypt` target, which devicemapper-rs does not have, as typed params in its style
//! (`FromStr`/`Display`, `TargetParams`).
//!
//! pxd never puts a key in a table: it names a `logon` key in the kernel keyring
//! (`:64:logon:<description>`), which dm-crypt reads once at load. Tables, `dmsetup table` and
//! every error message therefore carry only the key's name. A table made by someone else may
//! hold a hex key; it parses, but its key is kept redacted.

use crate::plan::names::{DeviceName, Id, Kind};
use crate::plan::table::{DevRef, DevicePlan, SegmentSpec, TargetSpec};
use devicemapper::{Device, DmError, Sectors, TargetParams, TargetTypeBuf};
use std::fmt;
use std::str::FromStr;

const CRYPT_TARGET_NAME: &str = "crypt";
/// The cipher pxd uses: AES in XTS mode, 64-bit plain IVs.
pub const CIPHER: &str = "aes-xts-plain64";
/// Key size for AES-256-XTS: two 256-bit keys.
pub const KEY_BYTES: usize = 64;
/// Encryption sector: 4 KiB, the block size of pxd volumes, which cuts per-sector cost 8x.
pub const SECTOR_BYTES: u32 = 4096;

/// Which of dm-crypt's workqueues I/O bypasses (`no_read_workqueue`, `no_write_workqueue`,
/// Linux 5.9 and later). Bypassing a queue runs the cipher in the submitter's context; it
/// can save latency on fast devices, or serialize writes behind it. The default is what
/// `cargo xtask bench params` measured best here (see the README's table); operators whose
/// hardware differs set it with the daemon's `--crypt-bypass-*-workqueue` flags. It never
/// changes what is on disk, so a live table may be reloaded with other flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Workqueues {
    pub bypass_reads: bool,
    pub bypass_writes: bool,
}

impl Workqueues {
    /// `cargo xtask bench params`, medians of 5 interleaved runs of 4k QD32 random I/O on
    /// crypt on thin (IOPS, read / write): both bypassed 3,429 / 2,265; reads only 3,656 /
    /// 4,099; writes only 3,681 / 2,331; neither 3,546 / 4,206; LUKS2 3,122 / 4,197.
    /// Bypassing the write queue halves random writes; the read queue's bypass is level with
    /// no bypass on writes and ahead on reads, within the runs' ranges: the trade-off taken.
    pub const DEFAULT: Workqueues = Workqueues {
        bypass_reads: true,
        bypass_writes: false,
    };

    /// What a kernel (`osrelease`) can take of these: none before 5.9.
    pub fn on_kernel(self, osrelease: &str) -> Workqueues {
        if kernel_has_workqueue_bypass(osrelease) {
            self
        } else {
            Workqueues::default()
        }
    }
}

/// How the table refers to its key.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key in the kernel keyring: `:<size>:<type>:<description>`.
    Keyring {
        size: usize,
        kind: String,
        description: String,
    },
    /// A key inline in hex (not made by pxd). Never printed.
    Inline(String),
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Keyring { .. } => write!(f, "{self}"),
            KeyRef::Inline(_) => f.write_str("<inline key>"),
        }
    }
}

impl fmt::Display for KeyRef {
    /// The keyring form as the kernel takes it; an inline key is shown redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Keyring {
                size,
                kind,
                description,
            } => write!(f, ":{size}:{kind}:{description}"),
            KeyRef::Inline(_) => f.write_str("<inline key>"),
        }
    }
}

/// Params of a `crypt` table line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptTargetParams {
    pub cipher: String,
    pub key: KeyRef,
    pub iv_offset: u64,
    pub device: Device,
    pub offset: Sectors,
    pub sector_size: Option<u32>,
    pub iv_large_sectors: bool,
    pub allow_discards: bool,
    pub no_read_workqueue: bool,
    pub no_write_workqueue: bool,
}

impl CryptTargetParams {
    /// The table pxd builds for an encrypted volume on `device`, with the key named
    /// `description` in the keyring, bypassing the `workqueues` chosen (which the caller has
    /// already checked the kernel for).
    pub fn pxd(device: Device, description: &str, workqueues: Workqueues) -> Self {
        CryptTargetParams {
            cipher: CIPHER.to_owned(),
            key: KeyRef::Keyring {
                size: KEY_BYTES,
                kind: "logon".to_owned(),
                description: description.to_owned(),
            },
            iv_offset: 0,
            device,
            offset: Sectors(0),
            sector_size: Some(SECTOR_BYTES),
            iv_large_sectors: true,
            allow_discards: true,
            no_read_workqueue: workqueues.bypass_reads,
            no_write_workqueue: workqueues.bypass_writes,
        }
    }

    /// The same table with no workqueue bypass: what two tables must agree on to map the
    /// same data the same way (the flags only change where the cipher runs).
    pub fn layout(&self) -> CryptTargetParams {
        CryptTargetParams {
            no_read_workqueue: false,
            no_write_workqueue: false,
            ..self.clone()
        }
    }

    fn features(&self) -> Vec<String> {
        // The kernel prints optional args in this order; keeping it makes tables compare equal.
        let mut v = Vec::new();
        if self.allow_discards {
            v.push("allow_discards".to_owned());
        }
        if self.no_read_workqueue {
            v.push("no_read_workqueue".to_owned());
        }
        if self.no_write_workqueue {
            v.push("no_write_workqueue".to_owned());
        }
        if let Some(s) = self.sector_size {
            v.push(format!("sector_size:{s}"));
        }
        if self.iv_large_sectors {
            v.push("iv_large_sectors".to_owned());
        }
        v
    }
}

impl fmt::Display for CryptTargetParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CRYPT_TARGET_NAME} {}", self.param_str())
    }
}

fn invalid(msg: String) -> DmError {
    DmError::Dm(devicemapper::ErrorEnum::Invalid, msg)
}

impl FromStr for CryptTargetParams {
    type Err = DmError;

    fn from_str(s: &str) -> Result<Self, DmError> {
        let vals: Vec<&str> = s.split(' ').collect();
        if vals.len() < 6 {
            return Err(invalid(format!(
                "expected at least 6 values in a crypt line, found {}",
                vals.len()
            )));
        }
        if vals[0] != CRYPT_TARGET_NAME {
            return Err(invalid(format!(
                "expected a crypt line, found a {} line",
                vals[0]
            )));
        }
        let key = match vals[2].strip_prefix(':') {
            Some(rest) => {
                let mut parts = rest.splitn(3, ':');
                let (Some(size), Some(kind), Some(description)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(invalid(
                        "a keyring key must be :size:type:description".into(),
                    ));
                };
                KeyRef::Keyring {
                    size: size
                        .parse()
                        .map_err(|_| invalid(format!("key size {size:?} is not a number")))?,
                    kind: kind.to_owned(),
                    description: description.to_owned(),
                }
            }
            None => KeyRef::Inline(vals[2].to_owned()),
        };
        let num = |v: &str, what: &str| {
            v.parse::<u64>()
                .map_err(|_| invalid(format!("{what} {v:?} is not a number")))
        };
        let mut p = CryptTargetParams {
            cipher: vals[1].to_owned(),
            key,
            iv_offset: num(vals[3], "iv offset")?,
            device: vals[4].parse::<Device>()?,
            offset: Sectors(num(vals[5], "offset")?),
            sector_size: None,
            iv_large_sectors: false,
            allow_discards: false,
            no_read_workqueue: false,
            no_write_workqueue: false,
        };
        if vals.len() > 6 {
            let count = num(vals[6], "optional argument count")? as usize;
            let args = vals.get(7..7 + count).ok_or_else(|| {
                invalid(format!("crypt line announces {count} optional arguments"))
            })?;
            for arg in args {
                match *arg {
                    "allow_discards" => p.allow_discards = true,
                    "no_read_workqueue" => p.no_read_workqueue = true,
                    "no_write_workqueue" => p.no_write_workqueue = true,
                    "iv_large_sectors" => p.iv_large_sectors = true,
                    other => match other.strip_prefix("sector_size:") {
                        Some(n) => {
                            p.sector_size = Some(n.parse().map_err(|_| {
                                invalid(format!("sector size {n:?} is not a number"))
                            })?)
                        }
                        // Options pxd does not set (same_cpu_crypt, integrity, ...) make the
                        // line differ from any plan, which is what a comparison should see.
                        None => return Err(invalid(format!("unsupported crypt option {other}"))),
                    },
                }
            }
        }
        Ok(p)
    }
}

impl TargetParams for CryptTargetParams {
    fn param_str(&self) -> String {
        let features = self.features();
        let mut s = format!(
            "{} {} {} {} {}",
            self.cipher, self.key, self.iv_offset, self.device, *self.offset
        );
        if !features.is_empty() {
            s.push_str(&format!(" {} {}", features.len(), features.join(" ")));
        }
        s
    }

    fn target_type(&self) -> TargetTypeBuf {
        TargetTypeBuf::new(CRYPT_TARGET_NAME.into()).expect("\"crypt\" is a valid target type")
    }
}

/// True if the running kernel (`osrelease`, e.g. "6.1.0-56-amd64") has dm-crypt's
/// `no_read_workqueue`/`no_write_workqueue` (Linux 5.9 and later).
pub fn kernel_has_workqueue_bypass(osrelease: &str) -> bool {
    let mut nums = osrelease
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    matches!((nums.next(), nums.next()), (Some(maj), Some(min)) if (maj, min) >= (5, 9))
}

/// The crypt layer of an encrypted volume, over `lower` (its thin device or raid).
pub fn plan_crypt(
    node: &Id,
    volume: &Id,
    size: Sectors,
    lower: DeviceName,
    workqueues: Workqueues,
) -> DevicePlan {
    let name = DeviceName::new(node, Kind::Crypt, volume, None);
    DevicePlan {
        read_only: false,
        segments: vec![SegmentSpec {
            start: Sectors(0),
            length: size,
            target: TargetSpec::Crypt {
                dev: DevRef::Dm(lower),
                key: key_description(&name),
                workqueues,
            },
        }],
        name,
    }
}

/// The keyring description of a crypt device's key: its dm name, under a `pxd:` prefix.
pub fn key_description(crypt: &DeviceName) -> String {
    format!("pxd:{crypt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_kernel_before_5_9_is_asked_to_bypass_a_workqueue() {
        let all = Workqueues {
            bypass_reads: true,
            bypass_writes: true,
        };
        assert_eq!(all.on_kernel("5.4.0-150-generic"), Workqueues::default());
        assert_eq!(all.on_kernel("6.1.0-57-amd64"), all);
        assert_eq!(
            Workqueues::DEFAULT.on_kernel("5.10.0-30-amd64"),
            Workqueues::DEFAULT
        );
    }

    #[test]
    fn pxd_crypt_lines_round_trip_through_the_kernel_form() {
        let both = Workqueues {
            bypass_reads: true,
            bypass_writes: true,
        };
        let p = CryptTargetParams::pxd(Device::from(0xfd03), "pxd:pxd-n1-crypt-v1", both);
        let line = p.to_string();
        assert_eq!(
            line,
            "crypt aes-xts-plain64 :64:logon:pxd:pxd-n1-crypt-v1 0 253:3 0 5 allow_discards \
             no_read_workqueue no_write_workqueue sector_size:4096 iv_large_sectors"
        );
        assert_eq!(line.parse::<CryptTargetParams>().unwrap(), p);
    }

    #[test]
    fn inline_keys_parse_but_never_print() {
        let key = "ab".repeat(64);
        let line = format!("crypt aes-xts-plain64 {key} 0 8:0 0");
        let p: CryptTargetParams = line.parse().unwrap();
        assert!(!p.to_string().contains(&key));
        assert!(!format!("{p:?}").contains(&key));
        assert!(p.to_string().contains("<inline key>"));
    }

    #[test]
    fn unknown_options_and_short_lines_are_refused() {
        assert!("crypt aes-xts-plain64 :64:logon:x 0 8:0 0 1 same_cpu_crypt"
            .parse::<CryptTargetParams>()
            .is_err());
        assert!("crypt aes".parse::<CryptTargetParams>().is_err());
        assert!("linear 8:0 0 1 2 3".parse::<CryptTargetParams>().is_err());
    }

    #[test]
    fn crypt_layer_sits_on_the_thin_device_and_names_its_key() {
        let [n, v] = ["n1", "v1"].map(|s| Id::object(s).unwrap());
        let thin = DeviceName::new(&n, Kind::Thin, &v, None);
        let plan = plan_crypt(&n, &v, Sectors(2048), thin.clone(), Workqueues::default());
        assert_eq!(plan.name.to_string(), "pxd-n1-crypt-v1");
        assert_eq!(plan.depends_on(), vec![&thin]);
        let line = &plan.resolve(&|_| Some(Device::from(0xfd04))).unwrap()[0];
        assert_eq!(
            line.to_string(),
            "0 2048 crypt aes-xts-plain64 :64:logon:pxd:pxd-n1-crypt-v1 0 253:4 0 3 \
             allow_discards sector_size:4096 iv_large_sectors"
        );
    }

    #[test]
    fn workqueue_bypass_needs_5_9() {
        assert!(kernel_has_workqueue_bypass("6.1.0-56-amd64"));
        assert!(kernel_has_workqueue_bypass("5.10.0"));
        assert!(!kernel_has_workqueue_bypass("5.4.0-150-generic"));
        assert!(!kernel_has_workqueue_bypass("garbage"));
    }
}
