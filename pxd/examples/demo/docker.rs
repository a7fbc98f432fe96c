//! Demo step: Docker Engine (Debian's docker.io, run in a scratch directory) creates a pxd
//! volume through the plugin socket; one container writes to it, a second reads it back,
//! and `docker volume rm` deletes it.

use super::Node;
use anyhow::{ensure, Result};
use pxd::api::volumes::VolumeView;
use std::path::Path;

/// The harness the VM tests drive Docker with, included as it is.
#[allow(dead_code)] // the tests use more of it
#[path = "../../../tests/support/docker.rs"]
mod engine;

/// Where Docker looks for a plugin named `pxd`.
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/pxd.sock";

pub fn run(node: &Node) -> Result<()> {
    let docker = engine::Docker::start(Path::new("/tmp/pxd-demo-docker"));
    docker.import_busybox();
    let create = [
        "volume",
        "create",
        "-d",
        "pxd",
        "--opt",
        "size=256M",
        "--opt",
        "io_priority=high",
        "web",
    ];
    println!("      $ docker {}", create.join(" "));
    docker.run(&create);
    let in_container = |cmd: &str| {
        let args = [
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "web:/data",
            engine::BUSYBOX,
            "sh",
            "-c",
            cmd,
        ];
        println!(
            "      $ docker run --rm -v web:/data {} sh -c \"{cmd}\"",
            engine::BUSYBOX
        );
        docker.run(&args)
    };
    let wrote = in_container(
        "echo 'written in a container, kept by pxd' > /data/note && sync && sha256sum /data/note",
    );
    println!("        {wrote}");
    let read = in_container("cat /data/note && sha256sum /data/note");
    println!("        {}", read.replace('\n', "\n        "));
    ensure!(read.ends_with(&wrote), "the second container read {read:?}");
    let v: VolumeView = node.json(&["volume", "inspect", "web"])?;
    println!(
        "      pxd's view: {} on the {} pool, stack {}",
        v.name,
        v.io_priority,
        v.stack.join(" <- ")
    );
    docker.run(&["volume", "rm", "web"]);
    let left: Vec<VolumeView> = node.json(&["volume", "list"])?;
    ensure!(left.iter().all(|v| v.name != "web"), "web is still there");
    println!("      $ docker volume rm web: the volume and its thin device are gone");
    Ok(())
}
