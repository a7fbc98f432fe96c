//! Where this node sits, as it finds out itself and tells the cluster: the topology file's
//! entry for it, and what detection learns (vSphere, cloud metadata, the bare host). Found at
//! start and on `pxd topology refresh`, in the background: a metadata service that hangs
//! costs a warning, never a slow start. The findings are reported through Raft whenever they
//! differ from what the store holds, so a node that joins later reports them then.

use super::{Cluster, ClusterError, Op};
use crate::store::state::Command;
use crate::store::topology::TopologyChange;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use topology::detect::{self, Config};
use topology::sources::Source;
use topology::{file, Labels};

/// How often the node checks that the store holds its latest findings.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the last detection found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Findings {
    /// The platform DMI names (`vsphere`, `aws`, `gcp`, `azure`, `other`); empty before the
    /// first detection ends.
    pub platform: String,
    pub layers: Vec<(Source, Labels)>,
    /// Sources skipped and why: a file that does not parse, a metadata service that timed out.
    pub warnings: Vec<String>,
}

pub struct NodeTopology {
    cluster: Arc<Cluster>,
    file: PathBuf,
    detect: Config,
    addr: IpAddr,
    found: Mutex<Findings>,
    /// One detection at a time: `refresh` and the start-up run never overlap.
    running: tokio::sync::Mutex<()>,
}

impl NodeTopology {
    pub fn new(cluster: Arc<Cluster>, file: PathBuf, detect: Config, addr: IpAddr) -> Self {
        NodeTopology {
            cluster,
            file,
            detect,
            addr,
            found: Mutex::new(Findings::default()),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The topology file this node reads.
    pub fn file(&self) -> &PathBuf {
        &self.file
    }

    pub fn findings(&self) -> Findings {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs detection and reads the file again, then reports what changed. Logs each
    /// warning once per run.
    pub async fn refresh(&self) -> Result<Findings, ClusterError> {
        let _one = self.running.lock().await;
        let cfg = self.detect.clone();
        let file = self.file.clone();
        let name = self.cluster.identity.name.clone();
        let addr = self.addr;
        let found = tokio::task::spawn_blocking(move || find(&cfg, &file, &name, addr))
            .await
            .unwrap_or_else(|e| Findings {
                warnings: vec![format!("detection stopped: {e}")],
                ..Findings::default()
            });
        for w in &found.warnings {
            tracing::warn!("topology: {w}");
        }
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = found.clone();
        self.report().await?;
        Ok(found)
    }

    /// Records the findings through Raft if the store holds something else.
    async fn report(&self) -> Result<(), ClusterError> {
        let layers = self.findings().layers;
        let me = self.cluster.id();
        let stored = self
            .cluster
            .state()
            .read(|st| st.nodes.get(&me).map(|n| n.topology.reported.clone()));
        match stored {
            // Not a member yet: the loop reports once it is.
            None => Ok(()),
            Some(s) if s == layers => Ok(()),
            Some(_) => {
                let cmd = Command::ChangeTopology {
                    node: me,
                    change: TopologyChange::Reported { layers },
                };
                self.cluster.submit_and_apply(Op::Command(cmd)).await?;
                Ok(())
            }
        }
    }

    /// Detects once in the background, then keeps the store in step.
    pub fn spawn(self: Arc<Self>) {
        tokio::spawn(async move {
            if let Err(e) = self.refresh().await {
                tracing::debug!(error = %e, "topology: not reported yet; retrying");
            }
            let mut tick = tokio::time::interval(REPORT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.report().await {
                    tracing::debug!(error = %e, "topology: not reported yet; retrying");
                }
            }
        });
    }
}

/// The file's entry for this node (by name, else by address) over what detection found.
fn find(cfg: &Config, path: &std::path::Path, name: &str, addr: IpAddr) -> Findings {
    let d = detect::detect(cfg);
    let mut found = Findings {
        platform: d.platform.to_string(),
        layers: d.layers,
        warnings: d.warnings,
    };
    match file::load(path) {
        Ok(Some(f)) => {
            let labels = f.labels_for(name, &[addr]);
            if !labels.is_empty() {
                found.layers.push((Source::File, labels));
            }
        }
        Ok(None) => {}
        Err(e) => found.warnings.push(format!(
            "{}: {e}; its labels are not used until it is fixed (then run `pxd topology refresh`)",
            path.display()
        )),
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::Domain;

    #[test]
    fn the_file_entry_joins_detection_and_a_broken_file_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::system("box-1");
        cfg.dmi_dir = dir.path().join("no-dmi");
        let path = dir.path().join("topology.yaml");
        let addr: IpAddr = "10.0.0.7".parse().unwrap();

        let none = find(&cfg, &path, "n1", addr);
        assert_eq!(none.platform, "other");
        assert_eq!(
            none.layers,
            [(Source::BareMetal, "host=box-1".parse().unwrap())]
        );
        assert!(none.warnings.is_empty(), "{:?}", none.warnings);

        std::fs::write(&path, "nodes:\n  10.0.0.7: {rack: r2}\n  n2: {rack: r9}\n").unwrap();
        let by_ip = find(&cfg, &path, "n1", addr);
        assert_eq!(by_ip.layers[1].0, Source::File);
        assert_eq!(by_ip.layers[1].1.get(Domain::Rack), Some("r2"));

        std::fs::write(&path, "nodes: [unclosed\n").unwrap();
        let broken = find(&cfg, &path, "n1", addr);
        assert_eq!(broken.layers.len(), 1);
        assert_eq!(broken.warnings.len(), 1);
        assert!(
            broken.warnings[0].contains("topology.yaml") && broken.warnings[0].contains("line"),
            "{:?}",
            broken.warnings
        );
    }
}
