//! What a user asks for when creating a volume, parsed and checked once, the same way for the
//! CLI flags, the inline spec (`size=10G,fs=xfs,name=db`), REST and the Docker plugin's `Opts`.
//! Every refusal names the field, what was given, and the limit.

pub use super::limits::{BandwidthLimit, IopsLimit};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Longest volume name, in bytes.
pub const MAX_NAME: usize = 64;
/// Volumes are whole 4 KiB blocks (see `plan::thin::SIZE_GRANULE`).
pub const SIZE_GRANULE: u64 = 4096;
/// Largest volume: 256 TiB, well inside dm-thin's limits and any filesystem's.
pub const MAX_SIZE: u64 = 256 << 40;
pub const MAX_REPL: u8 = 3;
/// mkfs.xfs refuses filesystems smaller than 300 MiB.
pub const MIN_XFS_SIZE: u64 = 300 << 20;
/// Smallest ext4 volume. mkfs.ext4 as `kernel::fs::mkfs` runs it (e2fsprogs 1.47) makes
/// nothing below 224 KiB and leaves out the journal below 8 MiB; 16 MiB has a journal and
/// room for files.
pub const MIN_EXT4_SIZE: u64 = 16 << 20;
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 63;

/// A refused field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

pub(crate) fn refuse(field: &'static str, value: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        value: value.chars().take(80).collect(),
        reason: reason.into(),
    }
}

/// Filesystem made on the volume, or none.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Fs {
    #[default]
    Ext4,
    Xfs,
    Raw,
}

impl FromStr for Fs {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "ext4" => Ok(Fs::Ext4),
            "xfs" => Ok(Fs::Xfs),
            "raw" | "none" => Ok(Fs::Raw),
            _ => Err(refuse(
                "fs",
                s,
                "is not a filesystem pxd makes: use ext4, xfs or raw",
            )),
        }
    }
}

impl fmt::Display for Fs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Raw => "raw",
        })
    }
}

/// A QoS class: of drives (by benchmark), of pools, and of the pool a volume asks for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    High,
    Medium,
    Low,
}

impl FromStr for Class {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.to_ascii_lowercase().as_str() {
            "high" => Ok(Class::High),
            "medium" => Ok(Class::Medium),
            "low" => Ok(Class::Low),
            _ => Err(refuse(
                "io_priority",
                s,
                "is not a class: use high, medium or low",
            )),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::High => "high",
            Class::Medium => "medium",
            Class::Low => "low",
        })
    }
}

/// Parses a size: a byte count or a number with K, M, G, T or P (powers of 1024, as pxctl
/// and dmsetup users expect), optionally followed by `i`/`iB`/`B`. Rounds up to whole 4 KiB.
/// Nothing is trimmed: a size is valid as sent or refused.
pub fn parse_size(field: &'static str, s: &str) -> Result<u64, SpecError> {
    if s.starts_with('-') {
        return Err(refuse(field, s, "is negative: a size must be positive"));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(refuse(
            field,
            s,
            "is not a size like 10G, 512M or 1073741824",
        ));
    }
    let (num, unit) = s.split_at(digits);
    let prefix = ["iB", "B", "i"]
        .iter()
        .find_map(|suffix| unit.strip_suffix(suffix))
        .unwrap_or(unit);
    let shift = match prefix {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        _ => return Err(refuse(field, s, "has an unknown unit: use K, M, G, T or P")),
    };
    let too_big = || {
        refuse(
            field,
            s,
            format!("is larger than the limit of {}", human(MAX_SIZE)),
        )
    };
    let n: u64 = num.parse().map_err(|_| too_big())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(too_big)?;
    if bytes == 0 {
        return Err(refuse(field, s, "is zero: a volume needs at least 4 KiB"));
    }
    // Checked: rounding 2^64-1 up to whole blocks overflows.
    bytes
        .checked_next_multiple_of(SIZE_GRANULE)
        .filter(|r| *r <= MAX_SIZE)
        .ok_or_else(too_big)
}

/// Bytes as a short human string (binary units).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Checks a volume name: 1 to [`MAX_NAME`] bytes of `[A-Za-z0-9._-]`, not starting with `-` or
/// `.` (so it never reads as a flag or a hidden path).
pub fn check_name(s: &str) -> Result<(), SpecError> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(refuse(
            "name",
            s,
            format!("is {} bytes: a name must be 1 to {MAX_NAME} bytes", s.len()),
        ));
    }
    if !ok_chars || s.starts_with(['-', '.']) {
        return Err(refuse(
            "name",
            s,
            "may only hold [A-Za-z0-9._-] and may not start with - or .",
        ));
    }
    Ok(())
}

/// A flag's value: present alone (`secure`) or spelled out.
fn parse_bool(field: &'static str, v: &str) -> Result<bool, SpecError> {
    match v {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(refuse(field, v, "must be true or false")),
    }
}

fn check_label(k: &str, v: &str) -> Result<(), SpecError> {
    let good = |x: &str, allow_empty: bool| {
        (allow_empty || !x.is_empty())
            && x.len() <= MAX_LABEL_LEN
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    };
    if !good(k, false) || !good(v, true) {
        return Err(refuse(
            "label",
            &format!("{k}={v}"),
            format!("keys and values are up to {MAX_LABEL_LEN} bytes of [A-Za-z0-9._-/]"),
        ));
    }
    Ok(())
}

/// A checked request for a new volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub size: u64,
    pub fs: Fs,
    pub repl: u8,
    /// The pool class wanted; `None` takes the best class this node has.
    pub io_priority: Option<Class>,
    /// IOPS limits (`max_iops`), held for the volume as a whole.
    #[serde(default)]
    pub max_iops: Option<IopsLimit>,
    /// Bandwidth limits (`max_bandwidth`), bytes a second.
    #[serde(default)]
    pub max_bandwidth: Option<BandwidthLimit>,
    pub secure: bool,
    pub labels: BTreeMap<String, String>,
    /// Where replicas may go (pxctl's `--nodes`, `--zones`, `--racks`); empty is anywhere.
    #[serde(default)]
    pub placement: Constraints,
    /// Place fewer replicas, or spread them less widely, than asked when the cluster cannot
    /// do better; the shortfall is recorded on the volume.
    #[serde(default)]
    pub best_effort: bool,
}

/// Placement constraints: node names or ids, zone and rack values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Constraints {
    pub nodes: BTreeSet<String>,
    pub zones: BTreeSet<String>,
    pub racks: BTreeSet<String>,
}

/// Most values one constraint may list.
pub const MAX_CONSTRAINT_VALUES: usize = 64;

/// Parses `a;b` (or `a,b` from a flag) into a set of label-like values.
fn parse_set(field: &'static str, v: &str) -> Result<BTreeSet<String>, SpecError> {
    let mut out = BTreeSet::new();
    for item in v.split([';', ',']) {
        let ok = !item.is_empty()
            && item.len() <= MAX_LABEL_LEN
            && item
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(refuse(
                field,
                item,
                format!("must be a list of values of 1 to {MAX_LABEL_LEN} bytes of [A-Za-z0-9._-], separated by ;"),
            ));
        }
        out.insert(item.to_owned());
    }
    if out.len() > MAX_CONSTRAINT_VALUES {
        return Err(refuse(
            field,
            v,
            format!(
                "lists {} values; the limit is {MAX_CONSTRAINT_VALUES}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

impl VolumeSpec {
    /// Builds a spec from `key=value` options (the inline spec, REST, Docker `Opts`). Unknown
    /// keys are refused, so a typo never silently yields a default; nothing is trimmed, so a
    /// value is used as sent or refused.
    pub fn from_options<'a>(
        opts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<VolumeSpec, SpecError> {
        let mut name = None;
        let mut size = None;
        let mut spec = VolumeSpec {
            name: String::new(),
            size: 0,
            fs: Fs::default(),
            repl: 1,
            io_priority: None,
            max_iops: None,
            max_bandwidth: None,
            secure: false,
            labels: BTreeMap::new(),
            placement: Constraints::default(),
            best_effort: false,
        };
        for (k, v) in opts {
            match k {
                "name" => {
                    check_name(v)?;
                    name = Some(v.to_owned());
                }
                "size" => size = Some(parse_size("size", v)?),
                "fs" => spec.fs = v.parse()?,
                "repl" => {
                    spec.repl = v
                        .parse::<u8>()
                        .ok()
                        .filter(|r| (1..=MAX_REPL).contains(r))
                        .ok_or_else(|| refuse("repl", v, format!("must be 1 to {MAX_REPL}")))?
                }
                "io_priority" | "priority_io" => spec.io_priority = Some(v.parse()?),
                "max_iops" => spec.max_iops = Some(v.parse()?),
                "max_bandwidth" => spec.max_bandwidth = Some(v.parse()?),
                "secure" => spec.secure = parse_bool("secure", v)?,
                "nodes" => spec.placement.nodes = parse_set("nodes", v)?,
                "zones" => spec.placement.zones = parse_set("zones", v)?,
                "racks" => spec.placement.racks = parse_set("racks", v)?,
                "best_effort" => spec.best_effort = parse_bool("best_effort", v)?,
                "label" | "labels" => {
                    for kv in v.split(';').filter(|s| !s.is_empty()) {
                        let (lk, lv) = kv
                            .split_once('=')
                            .ok_or_else(|| refuse("label", kv, "must be key=value"))?;
                        check_label(lk, lv)?;
                        spec.labels.insert(lk.to_owned(), lv.to_owned());
                    }
                    if spec.labels.len() > MAX_LABELS {
                        return Err(refuse(
                            "label",
                            v,
                            format!("makes {} labels; the limit is {MAX_LABELS}", spec.labels.len()),
                        ));
                    }
                }
                other => {
                    return Err(refuse(
                        "option",
                        other,
                        "is not a volume option: use name, size, fs, repl, io_priority, max_iops, max_bandwidth, secure, label, nodes, zones, racks, best_effort",
                    ))
                }
            }
        }
        spec.name = name.ok_or_else(|| refuse("name", "", "is required"))?;
        spec.size = size.ok_or_else(|| refuse("size", "", "is required"))?;
        let min = match spec.fs {
            Fs::Ext4 => MIN_EXT4_SIZE,
            Fs::Xfs => MIN_XFS_SIZE,
            Fs::Raw => 0,
        };
        if spec.size < min {
            return Err(refuse(
                "size",
                &human(spec.size),
                format!(
                    "is below the {} an {} filesystem needs",
                    human(min),
                    spec.fs
                ),
            ));
        }
        Ok(spec)
    }

    /// Parses the inline spec `size=10G,repl=2,name=db`. Whitespace after a comma is part of
    /// the separator; anywhere else it stays in the key or value, which is then refused.
    pub fn parse_inline(s: &str) -> Result<VolumeSpec, SpecError> {
        VolumeSpec::from_options(inline_pairs(s)?)
    }
}

/// The `key=value` pairs of an inline spec, unchecked: what [`VolumeSpec::parse_inline`]
/// builds a spec from, and what the Docker plugin takes a volume's name out of.
pub fn inline_pairs(s: &str) -> Result<Vec<(&str, &str)>, SpecError> {
    s.split(',')
        .map(str::trim_start)
        .filter(|i| !i.is_empty())
        .map(|item| {
            item.split_once('=')
                .ok_or_else(|| refuse("spec", item, "must be key=value"))
        })
        .collect()
}

/// Refuses a size that would push a pool past its allowed overcommit: the sum of provisioned
/// volume sizes may reach `ratio` times the pool's data capacity.
pub fn check_overcommit(
    size: u64,
    provisioned: u64,
    capacity: u64,
    ratio: f64,
) -> Result<(), SpecError> {
    let limit = (capacity as f64 * ratio) as u64;
    if provisioned.saturating_add(size) > limit {
        return Err(refuse(
            "size",
            &human(size),
            format!(
                "does not fit: the pool holds {} of volumes already and allows {} ({ratio}x its {} capacity)",
                human(provisioned),
                human(limit),
                human(capacity)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units_and_round_to_blocks() {
        assert_eq!(parse_size("size", "10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("size", "10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("size", "512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("size", "1").unwrap(), 4096);
        assert_eq!(parse_size("size", "4097").unwrap(), 8192);
        assert_eq!(parse_size("size", "256T").unwrap(), MAX_SIZE);
    }

    #[test]
    fn bad_sizes_name_the_field_and_the_limit() {
        let e = |s| parse_size("size", s).unwrap_err().to_string();
        assert_eq!(e("0"), "size: \"0\" is zero: a volume needs at least 4 KiB");
        assert_eq!(
            e("-1G"),
            "size: \"-1G\" is negative: a size must be positive"
        );
        assert_eq!(
            e("257T"),
            "size: \"257T\" is larger than the limit of 256 TiB"
        );
        assert_eq!(
            e("99999999999999999999"),
            "size: \"99999999999999999999\" is larger than the limit of 256 TiB"
        );
        // The largest u64 overflowed when rounded up to whole blocks.
        for huge in ["18446744073709551615", "18446744073709551615B", "16383P"] {
            assert_eq!(
                e(huge),
                format!("size: {huge:?} is larger than the limit of 256 TiB")
            );
        }
        assert!(e("10X").contains("unknown unit"));
        assert!(e("10GBB").contains("unknown unit"));
        assert!(e("G").contains("not a size"));
    }

    #[test]
    fn inline_spec_and_defaults() {
        let s = VolumeSpec::parse_inline("size=10G,fs=xfs,name=db").unwrap();
        assert_eq!(
            (s.name.as_str(), s.size, s.fs, s.repl),
            ("db", 10 << 30, Fs::Xfs, 1)
        );
        assert_eq!(s.io_priority, None);
        let s = VolumeSpec::parse_inline(
            "name=web.1,size=1G,repl=3,io_priority=HIGH,max_iops=100,200,secure=true,label=app=web;tier=gold",
        );
        // max_iops contains a comma, which the inline form splits on: it is refused, not
        // misread. `;` separates its sides there.
        assert!(s.is_err());
        let s =
            VolumeSpec::parse_inline("name=a,size=1G,max_iops=100;200,max_bandwidth=4M").unwrap();
        assert_eq!(
            s.max_iops,
            Some(IopsLimit {
                read: 100,
                write: 200
            })
        );
        assert_eq!(
            s.max_bandwidth.map(|b| (b.read, b.write)),
            Some((4 << 20, 4 << 20))
        );
        let s = VolumeSpec::from_options([
            ("name", "web.1"),
            ("size", "1G"),
            ("repl", "3"),
            ("io_priority", "HIGH"),
            ("max_iops", "300"),
            ("secure", "true"),
            ("label", "app=web;tier=gold"),
        ])
        .unwrap();
        assert_eq!(s.io_priority, Some(Class::High));
        assert_eq!(s.max_iops.map(|l| (l.read, l.write)), Some((300, 300)));
        assert!(s.secure);
        assert_eq!(s.labels["tier"], "gold");
        // Whitespace after a comma separates; the values themselves are as sent.
        let s = VolumeSpec::parse_inline("size=1G, name=db,").unwrap();
        assert_eq!((s.name.as_str(), s.size), ("db", 1 << 30));
    }

    #[test]
    fn bad_limits_name_their_field() {
        for (k, v) in [
            ("max_iops", "0"),
            ("max_iops", "-1"),
            ("max_iops", "abc"),
            ("max_iops", "1,2,3"),
            ("max_bandwidth", "100K"),
            ("max_bandwidth", "lots"),
        ] {
            let e = VolumeSpec::from_options([("name", "a"), ("size", "1G"), (k, v)]).unwrap_err();
            assert_eq!(e.field, k, "{k}={v}: {e}");
        }
    }

    #[test]
    fn names_are_used_as_sent_or_refused_never_trimmed() {
        let refused = "may only hold [A-Za-z0-9._-] and may not start with - or .";
        for (opts, shown) in [
            (vec![("name", "trail\n"), ("size", "1G")], "\"trail\\n\""),
            (vec![("name", " lead"), ("size", "1G")], "\" lead\""),
        ] {
            let e = VolumeSpec::from_options(opts).unwrap_err();
            assert_eq!(e.to_string(), format!("name: {shown} {refused}"));
        }
        for inline in [
            "name= lead,size=1G",
            "name=trail ,size=1G",
            "size=1G,name=trail\n",
        ] {
            let e = VolumeSpec::parse_inline(inline).unwrap_err();
            assert_eq!(e.field, "name", "{inline:?}");
        }
        // A key with whitespace is not a known option either.
        let e = VolumeSpec::from_options([(" name", "a"), ("size", "1G")]).unwrap_err();
        assert_eq!(e.field, "option");
        assert_eq!(
            parse_size("size", " 1G").unwrap_err().to_string(),
            "size: \" 1G\" is not a size like 10G, 512M or 1073741824"
        );
    }

    #[test]
    fn bad_options_are_refused_by_field() {
        let err = |o: &[(&str, &str)]| VolumeSpec::from_options(o.iter().copied()).unwrap_err();
        assert_eq!(err(&[("size", "1G")]).field, "name");
        assert_eq!(err(&[("name", "a")]).field, "size");
        assert_eq!(
            err(&[("name", "a"), ("size", "1G"), ("fs", "btrfs")]).field,
            "fs"
        );
        assert_eq!(
            err(&[("name", "a"), ("size", "1G"), ("repl", "4")]).to_string(),
            "repl: \"4\" must be 1 to 3"
        );
        assert_eq!(
            err(&[("name", "a"), ("size", "1G"), ("io_priority", "urgent")]).field,
            "io_priority"
        );
        assert_eq!(
            err(&[("name", "a"), ("size", "1G"), ("sise", "1G")]).field,
            "option"
        );
        for bad in ["", "a b", "a/b", "-a", ".a", "é"] {
            assert_eq!(check_name(bad).unwrap_err().field, "name", "{bad:?}");
        }
        let long = "a".repeat(65);
        assert!(check_name(&long)
            .unwrap_err()
            .to_string()
            .contains("1 to 64 bytes"));
        assert!(check_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn filesystems_have_a_minimum_size() {
        let e = |fs, size| {
            VolumeSpec::from_options([("name", "a"), ("fs", fs), ("size", size)])
                .map(|s| s.size)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            e("ext4", "8M"),
            Err("size: \"8 MiB\" is below the 16 MiB an ext4 filesystem needs".into())
        );
        assert_eq!(e("ext4", "16M"), Ok(MIN_EXT4_SIZE));
        assert_eq!(
            e("xfs", "299M"),
            Err("size: \"299 MiB\" is below the 300 MiB an xfs filesystem needs".into())
        );
        assert_eq!(e("xfs", "300M"), Ok(MIN_XFS_SIZE));
        assert_eq!(e("raw", "1"), Ok(4096));
        // ext4 is the default filesystem.
        let d = VolumeSpec::from_options([("name", "a"), ("size", "1M")]).unwrap_err();
        assert_eq!(d.field, "size");
    }

    #[test]
    fn overcommit_is_bounded() {
        let g = 1u64 << 30;
        assert!(check_overcommit(g, 0, 4 * g, 2.0).is_ok());
        assert!(check_overcommit(4 * g, 4 * g, 4 * g, 2.0).is_ok());
        let e = check_overcommit(g, 8 * g, 4 * g, 2.0)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "size: \"1 GiB\" does not fit: the pool holds 8 GiB of volumes already and allows 8 GiB (2x its 4 GiB capacity)"
        );
    }

    #[test]
    fn placement_constraints_parse_as_sets_and_refuse_bad_values() {
        let s = VolumeSpec::parse_inline("name=a,size=1G,zones=z1;z2,racks=r1,best_effort=true")
            .unwrap();
        assert_eq!(
            s.placement.zones,
            BTreeSet::from(["z1".to_owned(), "z2".to_owned()])
        );
        assert_eq!(s.placement.racks, BTreeSet::from(["r1".to_owned()]));
        assert!(s.placement.nodes.is_empty());
        assert!(s.best_effort);
        // A flag's comma-separated list arrives as one option value.
        let s =
            VolumeSpec::from_options([("name", "a"), ("size", "1G"), ("nodes", "n1,n2")]).unwrap();
        assert_eq!(s.placement.nodes.len(), 2);
        let e = VolumeSpec::from_options([("name", "a"), ("size", "1G"), ("zones", "z 1")])
            .unwrap_err();
        assert_eq!(e.field, "zones");
        let e = VolumeSpec::from_options([("name", "a"), ("size", "1G"), ("racks", "r1;;r2")])
            .unwrap_err();
        assert_eq!(e.field, "racks");
        let e = VolumeSpec::from_options([("name", "a"), ("size", "1G"), ("best_effort", "maybe")])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "best_effort: \"maybe\" must be true or false"
        );
    }
}
