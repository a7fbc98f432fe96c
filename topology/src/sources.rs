//! Where a node's labels come from, and which wins. A manual tag beats the topology file,
//! which beats what the node detects itself (vSphere guestinfo, cloud metadata), which beats
//! the bare-metal default; each label keeps the source it came from, so `pxd topology show`
//! can say why a node is where it is.

use crate::{Domain, Labels};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A source of labels, lowest precedence first (the derived order is the precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Source {
    BareMetal,
    Cloud,
    VSphere,
    File,
    Manual,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::BareMetal => "bare-metal",
            Source::Cloud => "cloud",
            Source::VSphere => "vsphere",
            Source::File => "file",
            Source::Manual => "manual",
        })
    }
}

/// One label as resolved: its value and the source that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub value: String,
    pub source: Source,
}

/// Merges what each source says, level by level: the highest-precedence source that knows a
/// level sets it. A source that knows nothing of a level leaves it to the others.
pub fn resolve(layers: &[(Source, Labels)]) -> BTreeMap<Domain, Resolved> {
    let mut out: BTreeMap<Domain, Resolved> = BTreeMap::new();
    for d in Domain::ALL {
        let best = layers
            .iter()
            .filter_map(|(s, l)| l.get(d).map(|v| (*s, v)))
            .max_by_key(|(s, _)| *s);
        if let Some((source, value)) = best {
            out.insert(
                d,
                Resolved {
                    value: value.to_owned(),
                    source,
                },
            );
        }
    }
    out
}

/// The labels alone, for placement.
pub fn labels_of(resolved: &BTreeMap<Domain, Resolved>) -> Labels {
    let mut l = Labels::default();
    for (d, r) in resolved {
        // Every layer's values were checked when it was built.
        let _ = l.set(*d, &r.value);
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_tag_beats_the_file_which_beats_detection() {
        let layers = [
            (
                Source::VSphere,
                "zone=z-det,rack=r-det,hypervisor=esx-7".parse().unwrap(),
            ),
            (Source::Manual, "rack=r-manual".parse().unwrap()),
            (Source::File, "zone=z-file,rack=r-file".parse().unwrap()),
        ];
        let r = resolve(&layers);
        let got: Vec<(Domain, &str, Source)> = r
            .iter()
            .map(|(d, x)| (*d, x.value.as_str(), x.source))
            .collect();
        assert_eq!(
            got,
            [
                (Domain::Zone, "z-file", Source::File),
                (Domain::Rack, "r-manual", Source::Manual),
                (Domain::Hypervisor, "esx-7", Source::VSphere),
            ]
        );
        assert_eq!(labels_of(&r).get(Domain::Rack), Some("r-manual"));
        assert!(resolve(&[]).is_empty());
    }

    #[test]
    fn bad_labels_are_refused_naming_the_field_and_limit() {
        let long = format!("rack={}", "x".repeat(64));
        assert_eq!(
            long.parse::<Labels>().unwrap_err().to_string(),
            "value of rack is 64 bytes; the limit is 63 bytes of [A-Za-z0-9._-]"
        );
        assert!("rack=a b".parse::<Labels>().is_err());
        assert_eq!(
            "shelf=s1".parse::<Labels>().unwrap_err().to_string(),
            "unknown fault domain \"shelf\": expected one of region, zone, rack, hypervisor, host"
        );
    }
}
