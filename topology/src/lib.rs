//! Fault domains: where a node sits (region, zone, rack, hypervisor) and how far apart a set of
//! nodes is. Placement uses [`spread`] to prefer replica sets that share the least fate; the
//! detectors (DMI, vSphere, cloud metadata, a topology file) fill [`Labels`] on each node.

pub mod detect;
pub mod file;
pub mod place;
pub mod sources;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Fault domains from the widest to the narrowest. Two nodes that differ at a wider level share
/// less fate: two VMs on one ESXi host fail together, two racks in one zone mostly do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Domain {
    Region,
    Zone,
    Rack,
    Hypervisor,
    /// The physical machine: on bare metal the node itself, so two nodes sharing one is a
    /// test rig or a misconfiguration, and placement avoids it like a shared hypervisor.
    Host,
}

impl Domain {
    /// Widest first: the order in which placement tries to spread.
    pub const ALL: [Domain; 5] = [
        Domain::Region,
        Domain::Zone,
        Domain::Rack,
        Domain::Hypervisor,
        Domain::Host,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Region => "region",
            Domain::Zone => "zone",
            Domain::Rack => "rack",
            Domain::Hypervisor => "hypervisor",
            Domain::Host => "host",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a label could not be taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("unknown fault domain {0:?}: expected one of region, zone, rack, hypervisor, host")]
    UnknownDomain(String),
    #[error("label {0:?} is not of the form domain=value")]
    NotKeyValue(String),
    #[error("value of {domain} is {len} bytes; the limit is {max} bytes of [A-Za-z0-9._-]")]
    BadValue {
        domain: Domain,
        len: usize,
        max: usize,
    },
    #[error("value of {domain} {value:?} may hold only [A-Za-z0-9._-]")]
    BadChar { domain: Domain, value: String },
}

/// Longest value a domain label may hold; values end up in metric labels and CLI tables.
pub const MAX_VALUE_LEN: usize = 63;

impl FromStr for Domain {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| LabelError::UnknownDomain(s.to_owned()))
    }
}

/// The fault-domain labels of one node. A missing level is unknown, not shared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Labels(BTreeMap<Domain, String>);

impl Labels {
    pub fn get(&self, domain: Domain) -> Option<&str> {
        self.0.get(&domain).map(String::as_str)
    }

    /// Sets one level after checking the value; used by `pxd topology tag` and the detectors.
    pub fn set(&mut self, domain: Domain, value: &str) -> Result<(), LabelError> {
        if value.is_empty() || value.len() > MAX_VALUE_LEN {
            return Err(LabelError::BadValue {
                domain,
                len: value.len(),
                max: MAX_VALUE_LEN,
            });
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(LabelError::BadChar {
                domain,
                value: value.to_owned(),
            });
        }
        self.0.insert(domain, value.to_owned());
        Ok(())
    }

    /// Forgets one level: `pxd topology tag --clear`, and the topology file's `clear`.
    pub fn remove(&mut self, domain: Domain) -> Option<String> {
        self.0.remove(&domain)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The known levels, widest first.
    pub fn iter(&self) -> impl Iterator<Item = (Domain, &str)> + '_ {
        self.0.iter().map(|(d, v)| (*d, v.as_str()))
    }

    /// Takes every level `top` knows, keeping the others: a node's own entry over the
    /// file's defaults, guestinfo over what vCenter says.
    pub fn overlay(&mut self, top: &Labels) {
        for (d, v) in &top.0 {
            self.0.insert(*d, v.clone());
        }
    }

    /// The widest level at which `self` and `other` are known to differ.
    pub fn first_difference(&self, other: &Labels) -> Option<Domain> {
        Domain::ALL
            .into_iter()
            .find(|d| match (self.get(*d), other.get(*d)) {
                (Some(a), Some(b)) => a != b,
                _ => false,
            })
    }
}

impl FromStr for Labels {
    type Err = LabelError;
    /// Parses `zone=z1,rack=r7`, the form `pxd topology tag` takes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut labels = Labels::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| LabelError::NotKeyValue(item.to_owned()))?;
            labels.set(k.trim().parse()?, v.trim())?;
        }
        Ok(labels)
    }
}

/// How widely a set of nodes is spread: for each pair, the widest domain at which the two
/// differ scores highest (region 5 .. host 1, distinct nodes with nothing known 0).
/// The worst pair decides, because one shared failure takes out both replicas of that pair.
pub fn spread(nodes: &[&Labels]) -> u32 {
    let score = |d: Option<Domain>| match d {
        Some(Domain::Region) => 5,
        Some(Domain::Zone) => 4,
        Some(Domain::Rack) => 3,
        Some(Domain::Hypervisor) => 2,
        Some(Domain::Host) => 1,
        None => 0,
    };
    let mut worst: Option<u32> = None;
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            let s = score(a.first_difference(b));
            worst = Some(worst.map_or(s, |w| w.min(s)));
        }
    }
    worst.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Labels {
        s.parse().unwrap()
    }

    #[test]
    fn parses_tag_syntax_and_rejects_bad_input() {
        let l = labels("zone=z1, rack=r7");
        assert_eq!(l.get(Domain::Zone), Some("z1"));
        assert_eq!(l.get(Domain::Rack), Some("r7"));
        assert_eq!(l.get(Domain::Region), None);
        assert_eq!(
            "shelf=3".parse::<Labels>(),
            Err(LabelError::UnknownDomain("shelf".into()))
        );
        assert_eq!(
            "zone".parse::<Labels>(),
            Err(LabelError::NotKeyValue("zone".into()))
        );
        let long = format!("rack={}", "x".repeat(64));
        assert!(matches!(
            long.parse::<Labels>(),
            Err(LabelError::BadValue {
                len: 64,
                max: 63,
                ..
            })
        ));
        assert!("rack=a b".parse::<Labels>().is_err());
    }

    #[test]
    fn wider_difference_scores_higher_and_worst_pair_decides() {
        let a = labels("zone=z1,rack=r1,hypervisor=esx1");
        let b = labels("zone=z1,rack=r1,hypervisor=esx2");
        let c = labels("zone=z1,rack=r2,hypervisor=esx3");
        let d = labels("zone=z2,rack=r9,hypervisor=esx9");
        assert_eq!(spread(&[&a, &b]), 2);
        assert_eq!(spread(&[&a, &c]), 3);
        assert_eq!(spread(&[&a, &d]), 4);
        // Two VMs on one hypervisor drag the whole set down to "shares fate".
        let a2 = labels("zone=z1,rack=r1,hypervisor=esx1");
        assert_eq!(spread(&[&a, &d, &a2]), 0);
        assert_eq!(spread(&[&a]), 0);
    }
}
