//! A volume's I/O limits, as pxctl takes them: `--max_iops R,W` and `--max_bandwidth R,W`.
//! Each side is a number, or `max` for none that way; one value limits both. The limit holds
//! for the volume as a whole, whoever does the I/O (see `crate::io::limits`).

use super::spec::{parse_size, refuse, SpecError};
use serde::{Deserialize, Serialize};

/// Most IOPS a limit may name: beyond what any device does, so a typo is caught.
pub const MAX_IOPS: u64 = 10_000_000;
/// Least bandwidth a limit may name: below it a volume could not even be formatted in time.
pub const MIN_BANDWIDTH: u64 = 1 << 20;
/// Most bandwidth a limit may name.
pub const MAX_BANDWIDTH: u64 = 1 << 40;

/// Read and write IOPS limits; 0 is none that way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IopsLimit {
    pub read: u64,
    pub write: u64,
}

/// Read and write bytes a second; 0 is none that way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BandwidthLimit {
    pub read: u64,
    pub write: u64,
}

/// Splits `R,W` (or one value for both) and parses each side with `one`; `max` is none.
fn pair(
    field: &'static str,
    s: &str,
    one: impl Fn(&str) -> Result<u64, String>,
) -> Result<(u64, u64), SpecError> {
    // `;` too: the inline spec (`max_iops=200;100`) splits its options on commas.
    let parts: Vec<&str> = s.split([',', ';']).collect();
    let side = |p: &str| match p {
        "max" => Ok(0),
        p => one(p).map_err(|why| refuse(field, s, why)),
    };
    let (r, w) = match parts[..] {
        [both] => side(both).map(|v| (v, v))?,
        [r, w] => (side(r)?, side(w)?),
        _ => {
            return Err(refuse(
                field,
                s,
                "must be R,W (reads, writes) or one value for both",
            ))
        }
    };
    if r == 0 && w == 0 {
        return Err(refuse(
            field,
            s,
            "limits neither reads nor writes; to remove a limit give `none`",
        ));
    }
    Ok((r, w))
}

impl std::str::FromStr for IopsLimit {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (read, write) = pair("max_iops", s, |p| match p.parse::<u64>() {
            Ok(n) if (1..=MAX_IOPS).contains(&n) => Ok(n),
            _ => Err(format!(
                "each side must be a whole number from 1 to {MAX_IOPS}, or max for no limit \
                 that way (0 would stop all I/O)"
            )),
        })?;
        Ok(IopsLimit { read, write })
    }
}

impl std::str::FromStr for BandwidthLimit {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (read, write) = pair("max_bandwidth", s, |p| {
            match parse_size("max_bandwidth", p) {
                Ok(n) if (MIN_BANDWIDTH..=MAX_BANDWIDTH).contains(&n) => Ok(n),
                _ => Err(
                    "each side must be bytes a second from 1M to 1T (K, M, G, T: powers of 1024), \
                 or max for no limit that way"
                        .to_owned(),
                ),
            }
        })?;
        Ok(BandwidthLimit { read, write })
    }
}

/// A limit to set, or `none` to remove it.
pub fn parse_change<T: std::str::FromStr<Err = SpecError>>(
    s: &str,
) -> Result<Option<T>, SpecError> {
    if s == "none" {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iops_take_r_w_or_one_value_and_refuse_the_rest() {
        assert_eq!(
            "200,100".parse::<IopsLimit>().unwrap(),
            IopsLimit {
                read: 200,
                write: 100
            }
        );
        assert_eq!(
            "300".parse::<IopsLimit>().unwrap(),
            IopsLimit {
                read: 300,
                write: 300
            }
        );
        assert_eq!(
            "max,50".parse::<IopsLimit>().unwrap(),
            IopsLimit { read: 0, write: 50 }
        );
        for bad in [
            "0", "-1", "abc", "1,2,3", "", "0,100", "max", "max,max", "20000000",
        ] {
            let e = bad.parse::<IopsLimit>().unwrap_err().to_string();
            assert!(e.contains("max_iops"), "{bad}: {e}");
        }
    }

    #[test]
    fn bandwidth_takes_sizes_of_at_least_a_mebibyte() {
        assert_eq!(
            "4M".parse::<BandwidthLimit>().unwrap(),
            BandwidthLimit {
                read: 4 << 20,
                write: 4 << 20
            }
        );
        assert_eq!(
            "max,1G".parse::<BandwidthLimit>().unwrap(),
            BandwidthLimit {
                read: 0,
                write: 1 << 30
            }
        );
        for bad in ["512K", "0", "-1M", "fast", "1M,2M,3M", "2T"] {
            let e = bad.parse::<BandwidthLimit>().unwrap_err().to_string();
            assert!(
                e.contains("max_bandwidth") && e.contains("1M"),
                "{bad}: {e}"
            );
        }
        assert_eq!(parse_change::<BandwidthLimit>("none").unwrap(), None);
    }
}
