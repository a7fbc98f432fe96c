//! `cargo xtask bench cluster`: Raft metadata commits on three real daemons, each in its own
//! network namespace. Prints commits per second and p50/p99 commit latency for one client
//! and for eight; asserts nothing about them (DESIGN §11). Needs root for `ip netns`.

// The benchmark uses only part of the test harness.
#[allow(dead_code)]
mod harness;

use harness::TestCluster;
use std::time::{Duration, Instant};

/// `cargo xtask bench cluster`: metadata commits per second and commit latency on three
/// nodes. Reports; asserts nothing about the numbers.
#[test]
fn bench_cluster_commits() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 250;
    let c = TestCluster::formed(&["storage", "storage", "storage"]);
    let leader = c.index_of(c.agreed_leader(&[0, 1, 2]));
    let socket = c.nodes[leader].socket();
    for (label, clients) in [("1 client", 1), ("8 clients", CLIENTS)] {
        let started = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|t| {
                let socket = socket.clone();
                std::thread::spawn(move || {
                    let client = pxd::api::client::BlockingClient::new(
                        pxd::api::client::Target::Unix(socket),
                    )
                    .expect("client");
                    (0..PER_CLIENT)
                        .map(|i| {
                            let t0 = Instant::now();
                            let _: pxd::api::Applied = client
                                .put(
                                    &format!("/v1/kv/bench/c{t}-{i}"),
                                    &pxd::api::KvValue {
                                        value: format!("{i:08}"),
                                    },
                                )
                                .expect("a benchmark write");
                            t0.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut lat: Vec<Duration> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("a bench thread"))
            .collect();
        let elapsed = started.elapsed();
        lat.sort();
        let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
        println!(
            "cluster bench (3 nodes, {label}): {} commits in {:.2} s = {:.0} commits/s; \
             commit latency p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            elapsed.as_secs_f64(),
            lat.len() as f64 / elapsed.as_secs_f64(),
            pct(50).as_secs_f64() * 1e3,
            pct(99).as_secs_f64() * 1e3,
        );
    }
}
