//! The topology file (`/etc/pxd/topology.yaml`): where an administrator writes down what no
//! node can find out itself, in the spirit of Cassandra's `cassandra-topology.properties`.
//!
//! ```yaml
//! # labels every node gets unless its own entry says otherwise
//! default:
//!   region: eu-west
//! nodes:
//!   node-a: {zone: z1, rack: r1, hypervisor: esx-01}
//!   10.0.0.12: {zone: z2, rack: r4}
//! ```
//!
//! A node's entry is keyed by its name or, failing that, by one of its addresses. One file
//! can be copied to every node, so the same text says the same thing everywhere.

use crate::{Domain, LabelError, Labels};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where the file lives unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/pxd/topology.yaml";

/// The parsed file: labels for every node, and per-node labels over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopologyFile {
    /// Labels every node gets unless its own entry says otherwise.
    pub default: Labels,
    /// Entries keyed by node name or IP address.
    pub nodes: BTreeMap<String, Labels>,
}

/// Which part of the file a bad label sits in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Default,
    Node(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Default => f.write_str("default"),
            Scope::Node(n) => write!(f, "node {n:?}"),
        }
    }
}

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Bad YAML or an unknown top-level key; serde's text carries the line and column.
    #[error("topology file: {0}")]
    Syntax(#[from] serde_yaml_ng::Error),
    #[error("{scope}: {source}")]
    Label { scope: Scope, source: LabelError },
    #[error("{scope}: value of {label} is not a string")]
    NotScalar { scope: Scope, label: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file as YAML says it, before the labels are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    default: Option<BTreeMap<String, serde_yaml_ng::Value>>,
    #[serde(default)]
    nodes: Option<BTreeMap<String, Option<BTreeMap<String, serde_yaml_ng::Value>>>>,
}

fn labels(
    scope: Scope,
    raw: Option<BTreeMap<String, serde_yaml_ng::Value>>,
) -> Result<Labels, FileError> {
    use serde_yaml_ng::Value;
    let mut out = Labels::default();
    for (k, v) in raw.unwrap_or_default() {
        let domain: Domain = match k.parse() {
            Ok(d) => d,
            Err(source) => return Err(FileError::Label { scope, source }),
        };
        // `rack: 7` is a number to YAML and a label to us.
        let value = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => return Err(FileError::NotScalar { scope, label: k }),
        };
        if let Err(source) = out.set(domain, &value) {
            return Err(FileError::Label { scope, source });
        }
    }
    Ok(out)
}

/// Reads the file's text. An empty file (or one of comments only) is an empty topology.
pub fn parse(text: &str) -> Result<TopologyFile, FileError> {
    let raw: Option<Raw> = serde_yaml_ng::from_str(text)?;
    let Some(raw) = raw else {
        return Ok(TopologyFile::default());
    };
    let default = labels(Scope::Default, raw.default)?;
    let mut nodes = BTreeMap::new();
    for (name, entry) in raw.nodes.unwrap_or_default() {
        let l = labels(Scope::Node(name.clone()), entry)?;
        nodes.insert(name, l);
    }
    Ok(TopologyFile { default, nodes })
}

/// Reads the file at `path`; `Ok(None)` when there is none, which is the usual case.
pub fn load(path: &Path) -> Result<Option<TopologyFile>, FileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FileError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A YAML scalar that reads back as the same string: plain when it cannot be mistaken for a
/// number, boolean or null, else double-quoted (JSON's quoting is valid YAML).
fn scalar(s: &str) -> String {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

fn flow(labels: &Labels) -> String {
    let items: Vec<String> = labels
        .iter()
        .map(|(d, v)| format!("{d}: {}", scalar(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

impl TopologyFile {
    /// The labels the file gives the node called `name` with addresses `addrs`: the defaults,
    /// overlaid by the entry for its name, or else by the first entry whose key is one of its
    /// addresses. A name entry wins because names survive a change of address.
    pub fn labels_for(&self, name: &str, addrs: &[IpAddr]) -> Labels {
        let mut out = self.default.clone();
        let entry = self.nodes.get(name).or_else(|| {
            self.nodes
                .iter()
                .find(|(k, _)| k.parse::<IpAddr>().is_ok_and(|ip| addrs.contains(&ip)))
                .map(|(_, l)| l)
        });
        if let Some(l) = entry {
            out.overlay(l);
        }
        out
    }

    /// Sets one label of one node's entry, creating the entry.
    pub fn set(&mut self, node: &str, domain: Domain, value: &str) -> Result<(), LabelError> {
        let mut l = self.nodes.get(node).cloned().unwrap_or_default();
        l.set(domain, value)?;
        self.nodes.insert(node.to_owned(), l);
        Ok(())
    }

    /// Forgets one label of one node's entry; an entry left empty goes too.
    pub fn clear(&mut self, node: &str, domain: Domain) {
        if let Some(l) = self.nodes.get_mut(node) {
            l.remove(domain);
            if l.is_empty() {
                self.nodes.remove(node);
            }
        }
    }

    /// The file's text, in a stable order (keys sorted, labels widest first), so that two
    /// nodes writing the same topology write the same bytes.
    pub fn render(&self) -> String {
        let mut out =
            String::from("# labels every node gets unless its own entry says otherwise\n");
        out.push_str("default:");
        if self.default.is_empty() {
            out.push_str(" {}\n");
        } else {
            out.push('\n');
            for (d, v) in self.default.iter() {
                out.push_str(&format!("  {d}: {}\n", scalar(v)));
            }
        }
        out.push_str("nodes:");
        if self.nodes.is_empty() {
            out.push_str(" {}\n");
        } else {
            out.push('\n');
            for (name, l) in &self.nodes {
                out.push_str(&format!("  {}: {}\n", scalar(name), flow(l)));
            }
        }
        out
    }

    /// Writes the file so that a reader sees the old text or the new, never half of one: a
    /// temporary file in the same directory, synced, then renamed over the old one.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path names no file")
        })?;
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return written;
        }
        // The rename is durable once the directory is; some filesystems refuse to sync one.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# labels every node gets unless its own entry says otherwise
default:
  region: eu-west
nodes:
  node-a: {zone: z1, rack: r1, hypervisor: esx-01}
  10.0.0.12: {zone: z2, rack: r4}
";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn example_parses_and_round_trips() {
        let f = parse(EXAMPLE).unwrap();
        assert_eq!(f.default.get(Domain::Region), Some("eu-west"));
        assert_eq!(f.nodes.len(), 2);
        assert_eq!(f.nodes["node-a"].get(Domain::Hypervisor), Some("esx-01"));
        assert_eq!(parse(&f.render()).unwrap(), f);
        // Stable: rendering the parsed rendering gives the same bytes.
        assert_eq!(parse(&f.render()).unwrap().render(), f.render());
    }

    #[test]
    fn values_that_look_like_other_yaml_types_round_trip() {
        let mut f = TopologyFile::default();
        for (node, v) in [
            ("n1", "1.10"),
            ("n2", "true"),
            ("n3", "007"),
            ("fe80::1", "null"),
            ("yes", ".inf"),
            ("1e3", "0x1F"),
        ] {
            f.set(node, Domain::Rack, v).unwrap();
        }
        f.default.set(Domain::Zone, "No").unwrap();
        let back = parse(&f.render()).unwrap();
        assert_eq!(back, f, "{}", f.render());
        assert_eq!(
            parse(&TopologyFile::default().render()).unwrap(),
            TopologyFile::default()
        );
    }

    #[test]
    fn name_beats_ip_and_ip_matches_when_no_name_does() {
        let f = parse(
            "default: {region: eu-west, zone: z0}\n\
             nodes:\n  node-a: {zone: z1}\n  10.0.0.12: {zone: z2, rack: r4}\n",
        )
        .unwrap();
        let by_name = f.labels_for("node-a", &[ip("10.0.0.12")]);
        assert_eq!(by_name.get(Domain::Zone), Some("z1"));
        assert_eq!(by_name.get(Domain::Rack), None);
        assert_eq!(by_name.get(Domain::Region), Some("eu-west"));

        let by_ip = f.labels_for("node-b", &[ip("192.0.2.1"), ip("10.0.0.12")]);
        assert_eq!(by_ip.get(Domain::Zone), Some("z2"));
        assert_eq!(by_ip.get(Domain::Rack), Some("r4"));
        assert_eq!(by_ip.get(Domain::Region), Some("eu-west"));

        let default_only = f.labels_for("node-c", &[ip("10.0.0.13")]);
        assert_eq!(default_only, "region=eu-west,zone=z0".parse().unwrap());
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_topologies() {
        assert_eq!(parse("").unwrap(), TopologyFile::default());
        assert_eq!(parse("# nothing yet\n").unwrap(), TopologyFile::default());
        assert_eq!(parse("nodes:\n").unwrap(), TopologyFile::default());
        let f = parse("nodes:\n  node-a:\n").unwrap();
        assert_eq!(f.nodes["node-a"], Labels::default());
    }

    #[test]
    fn bad_values_name_the_node_and_the_label() {
        let long = "x".repeat(64);
        let e = parse(&format!("nodes:\n  node-a: {{rack: {long}}}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"node-a\": value of rack is 64 bytes; the limit is 63 bytes of [A-Za-z0-9._-]"
        );
        let e = parse("default: {zone: \"a b\"}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "default: value of zone \"a b\" may hold only [A-Za-z0-9._-]"
        );
        let e = parse("nodes:\n  node-a: {rack: [r1, r2]}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"node-a\": value of rack is not a string"
        );
    }

    #[test]
    fn unknown_labels_and_keys_are_refused() {
        let e = parse("nodes:\n  node-a: {shelf: s1}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"node-a\": unknown fault domain \"shelf\": \
             expected one of region, zone, rack, hypervisor, host"
        );
        let e = parse("default: {}\nracks:\n  r1: {}\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("unknown field `racks`"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = parse("default:\n  region: eu\nnodes:\n  node-a: {zone: z1\n").unwrap_err();
        assert!(matches!(e, FileError::Syntax(_)));
        assert!(e.to_string().contains("line "), "{e}");
        let e = parse("nodes: [a, b]\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn set_and_clear_edit_entries() {
        let mut f = TopologyFile::default();
        f.set("node-a", Domain::Rack, "r1").unwrap();
        f.set("node-a", Domain::Zone, "z1").unwrap();
        assert!(f.set("node-b", Domain::Rack, "r 1").is_err());
        assert!(
            !f.nodes.contains_key("node-b"),
            "a refused value adds no entry"
        );
        f.clear("node-a", Domain::Rack);
        assert_eq!(f.nodes["node-a"], "zone=z1".parse().unwrap());
        f.clear("node-a", Domain::Zone);
        assert!(f.nodes.is_empty());
        f.clear("nobody", Domain::Zone);
    }

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/pxd/topology.yaml");
        assert!(load(&path).unwrap().is_none());
        let f = parse(EXAMPLE).unwrap();
        f.store(&path).unwrap();
        assert_eq!(load(&path).unwrap(), Some(f.clone()));
        let mut g = f.clone();
        g.set("node-z", Domain::Rack, "r9").unwrap();
        g.store(&path).unwrap();
        assert_eq!(load(&path).unwrap(), Some(g));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["topology.yaml"], "no temporary file is left");
        // A directory where the file should be is an I/O error naming the path.
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, FileError::Io { .. }));
        assert!(e.to_string().starts_with(&dir.path().display().to_string()));
    }
}
