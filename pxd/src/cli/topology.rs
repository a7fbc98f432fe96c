//! `pxd topology tag|show|refresh`: where nodes sit. `tag` records manual labels through
//! the daemon (any node, any member); with the daemon down it writes this host's entry in
//! the local topology file instead, and says so.

use super::output::table;
use super::{print_json, seg, CliError};
use crate::api::client::{BlockingClient, ClientError};
use crate::api::topology::{NodeTopologyView, RefreshView, TagRequest};
use ::topology::{file, Domain};
use clap::Subcommand;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum TopologyCommand {
    /// Set or clear a node's manual labels; they outrank the topology file and detection.
    Tag {
        /// The member to tag, by name or id (default: this node).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        hypervisor: Option<String>,
        #[arg(long)]
        host: Option<String>,
        /// Remove a manual label (repeatable): region, zone, rack, hypervisor or host.
        #[arg(long, value_name = "LABEL")]
        clear: Vec<String>,
        /// The file written when the daemon is not running.
        #[arg(long, default_value = file::DEFAULT_PATH)]
        topology_file: PathBuf,
    },
    /// Each node's labels, the value of each and the source that set it.
    Show {
        /// Only this member, by name or id.
        #[arg(long)]
        node: Option<String>,
        /// Print this node's (or --node's) labels as Mesos agent `--attributes`.
        #[arg(long = "mesos-attributes")]
        mesos_attributes: bool,
    },
    /// Run this node's detection again and re-read its topology file.
    Refresh,
}

/// Runs a topology command; `local` says the client talks to this host's daemon (the unix
/// socket), whose topology file an offline `tag` may write.
pub fn run(
    json: bool,
    local: bool,
    c: &BlockingClient,
    cmd: &TopologyCommand,
) -> Result<(), CliError> {
    match cmd {
        TopologyCommand::Tag {
            node,
            region,
            zone,
            rack,
            hypervisor,
            host,
            clear,
            topology_file,
        } => {
            let set: BTreeMap<String, String> = [
                (Domain::Region, region),
                (Domain::Zone, zone),
                (Domain::Rack, rack),
                (Domain::Hypervisor, hypervisor),
                (Domain::Host, host),
            ]
            .into_iter()
            .filter_map(|(d, v)| v.as_ref().map(|v| (d.to_string(), v.clone())))
            .collect();
            let req = TagRequest {
                node: node.clone(),
                set,
                clear: clear.clone(),
            };
            match c.post::<_, NodeTopologyView>("/v1/topology/tag", &req) {
                Ok(v) if json => print_json(&v),
                Ok(v) => print_nodes(&[v]),
                Err(ClientError::Connect { .. }) if local => {
                    return tag_offline(json, &req, topology_file)
                }
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        TopologyCommand::Show {
            node,
            mesos_attributes,
        } => {
            let path = match node {
                Some(n) => format!("/v1/topology?node={}", seg("node", n)?),
                None => "/v1/topology".into(),
            };
            let nodes: Vec<NodeTopologyView> = c.get(&path)?;
            if *mesos_attributes {
                let me = match node {
                    Some(_) => nodes.first().map(|n| n.id),
                    None => Some(
                        c.get::<crate::cluster::view::Status>("/v1/cluster/status")?
                            .node,
                    ),
                };
                let line = nodes
                    .iter()
                    .find(|n| Some(n.id) == me)
                    .map(|n| n.mesos_attributes.clone())
                    .unwrap_or_default();
                println!("{line}");
            } else if json {
                print_json(&nodes);
            } else {
                print_nodes(&nodes);
            }
            Ok(())
        }
        TopologyCommand::Refresh => {
            let r: RefreshView = c.post("/v1/topology/refresh", &serde_json::json!({}))?;
            if json {
                print_json(&r);
                return Ok(());
            }
            println!("platform: {}", r.platform);
            for w in &r.warnings {
                println!("warning:  {w}");
            }
            print_nodes(&[r.node]);
            Ok(())
        }
    }
}

fn print_nodes(nodes: &[NodeTopologyView]) {
    let mut rows = Vec::new();
    for n in nodes {
        if n.labels.is_empty() {
            rows.push(vec![n.name.clone(), "-".into(), "-".into(), "-".into()]);
        }
        for l in &n.labels {
            rows.push(vec![
                n.name.clone(),
                l.label.to_string(),
                l.value.clone(),
                l.source.to_string(),
            ]);
        }
    }
    print!("{}", table(&["NODE", "LABEL", "VALUE", "SOURCE"], &rows));
}

/// The daemon is down: the labels go into the local topology file, under `--node` or this
/// host's name, and count once the daemon reads the file (at start, or `topology refresh`).
fn tag_offline(json: bool, req: &TagRequest, path: &Path) -> Result<(), CliError> {
    let key = req
        .node
        .clone()
        .unwrap_or_else(crate::kernel::host::hostname);
    if key.is_empty() {
        return Err(CliError::Usage(
            "node: the daemon is not running and this host has no name; give --node".into(),
        ));
    }
    let usage = |e: &dyn std::fmt::Display| CliError::Usage(e.to_string());
    let mut f = file::load(path).map_err(|e| usage(&e))?.unwrap_or_default();
    for d in &req.clear {
        let d: Domain = d.parse().map_err(|e| usage(&format!("clear: {e}")))?;
        f.clear(&key, d);
    }
    for (k, v) in &req.set {
        let d: Domain = k.parse().map_err(|e| usage(&format!("set: {e}")))?;
        f.set(&key, d, v).map_err(|e| usage(&format!("set: {e}")))?;
    }
    f.store(path)
        .map_err(|e| usage(&format!("write {}: {e}", path.display())))?;
    let labels = f.labels_for(&key, &[]);
    if json {
        print_json(&serde_json::json!({
            "offline": true,
            "file": path,
            "node": key,
            "labels": labels,
        }));
    } else {
        println!(
            "the daemon is not running: wrote node {key:?} to {} (labels from the file rank below manual tags; the daemon reads them when it starts)",
            path.display()
        );
        for (d, v) in labels.iter() {
            println!("  {d}: {v}");
        }
    }
    Ok(())
}
