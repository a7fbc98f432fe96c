//! One reconcile pass over a node state kept in a JSON file, for the crash tests: a separate
//! process, so `PXD_FAIL_AT_STEP=N` can abort it at step N as a crash would, and the next run
//! (like a restarted daemon) must finish the job. The state file is replaced atomically after
//! every change, as the cluster store records it in the daemon.
//!
//! Usage: `pxd-test-reconcile STATE.json CLUSTER.key`

use pxd::crypt::ClusterKey;
use pxd::kernel::dm::KernelDm;
use pxd::reconcile::{desired::NodeState, reconcile};
use std::io::Write;
use std::path::{Path, PathBuf};

fn save(path: &Path, state: &NodeState) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [state_path, key_path] = args.as_slice() else {
        eprintln!("usage: pxd-test-reconcile STATE.json CLUSTER.key");
        std::process::exit(2);
    };
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let mut state: NodeState = serde_json::from_slice(&std::fs::read(state_path)?)?;
        let dm = KernelDm::open()?;
        let key = ClusterKey::load_or_create(key_path)?;
        let steps = reconcile(&dm, Some(&key), &mut state, &mut |s| save(state_path, s))?;
        println!("{} steps", steps.len());
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("pxd-test-reconcile: {e}");
        std::process::exit(1);
    }
}
