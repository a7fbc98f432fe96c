//! Host tier: the cluster control plane with real daemons, each in its own network namespace
//! (DESIGN §10.2). Needs root for `ip netns`. The tests take turns (one lock), so their
//! timing does not depend on how many run at once on a small machine.
//!
//! `cargo test -p pxd-tests --test host_cluster` (after `cargo build -p pxd --bins`).

mod harness;

use harness::{Daemon, TestCluster};
use pxd::api::client::ClientError;
use pxd::api::topology::{NodeTopologyView, RefreshView, TagRequest};
use pxd::api::RemoveRequest;
use pxd::cluster::gossip::Liveness;
use pxd::cluster::transport::{KeyPair, Transport};
use pxd::cluster::view::Status;
use pxd::store::types::Role;
use pxd_tests::netns::in_netns;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use topology::Domain;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn code(e: &ClientError) -> &str {
    e.code().unwrap_or("(no API error code)")
}

/// The members of the cluster as node `n` sees them.
fn members(n: &Daemon) -> BTreeSet<String> {
    n.status()
        .members
        .iter()
        .map(|m| m.id.to_string())
        .collect()
}

#[test]
fn three_nodes_form_one_cluster() {
    let _turn = serial();
    let c = TestCluster::formed(&["storage", "storage", "storage"]);
    // The three answers are read one after the other; read again if an election fell in
    // between.
    let mut statuses = Vec::new();
    c.wait_until(
        "the same view on all three nodes",
        Duration::from_secs(30),
        || {
            statuses = c.nodes.iter().map(Daemon::status).collect::<Vec<_>>();
            statuses
                .iter()
                .all(|s| s.leader.is_some() && s.leader == statuses[0].leader)
        },
    );
    let leader = statuses[0].leader.expect("a leader");
    let id = statuses[0].cluster_id.clone().expect("a cluster id");
    for s in &statuses {
        assert_eq!(s.cluster_id.as_deref(), Some(id.as_str()));
        assert_eq!(s.members.len(), 3, "{s:?}");
        assert!(s.members.iter().all(|m| m.voter));
        assert_eq!((s.quorum.voters, s.quorum.needed), (3, 2));
    }
    // Heartbeats: every node sees every node online.
    c.wait_until(
        "all nodes online everywhere",
        Duration::from_secs(15),
        || {
            c.nodes.iter().all(|n| {
                n.nodes()
                    .iter()
                    .filter(|v| v.liveness == Liveness::Online)
                    .count()
                    == 3
            })
        },
    );
    // The CLI is a client of the same API.
    let out = std::process::Command::new(harness::pxd_binary())
        .arg("--socket")
        .arg(c.nodes[1].socket())
        .args(["cluster", "status"])
        .output()
        .expect("run pxd cluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&id) && text.contains("members:  3"), "{text}");
    assert!(text.contains("leader:   "), "{text}");

    // The TCP API, from another node's namespace: the token is required, and a write that
    // reaches a follower is forwarded to the leader.
    let token: pxd::api::TokenResponse = c.nodes[0]
        .client()
        .get("/v1/cluster/api-token")
        .expect("the API token");
    let follower = (c.index_of(leader) + 1) % 3;
    let addr: std::net::SocketAddr = format!("{}:9010", harness::Net::addr(follower))
        .parse()
        .expect("an address");
    let ns = c.nodes[(follower + 1) % 3].ns.clone();
    let (denied, written) = in_netns(&ns, move || {
        let tcp = |token: &str| {
            pxd::api::client::BlockingClient::new(pxd::api::client::Target::Tcp {
                addr,
                token: token.to_owned(),
            })
            .expect("client")
        };
        let denied = tcp("wrong")
            .get::<Status>("/v1/cluster/status")
            .expect_err("a wrong token must be refused");
        let written = tcp(&token.token)
            .put::<_, pxd::api::Applied>("/v1/kv/tcp/k", &pxd::api::KvValue { value: "v".into() });
        (
            denied.code().map(str::to_owned),
            written.map_err(|e| e.to_string()),
        )
    });
    assert_eq!(denied.as_deref(), Some("unauthorized"));
    written.expect("a write over TCP at a follower");
    c.wait_until(
        "the TCP write on every node",
        Duration::from_secs(10),
        || {
            c.nodes
                .iter()
                .all(|n| n.kv("tcp").get("k").map(String::as_str) == Some("v"))
        },
    );
}

#[test]
fn the_daemon_notifies_systemd_stops_cleanly_and_restarts_as_itself() {
    let _turn = serial();
    let path = std::env::temp_dir().join(format!("pxdt-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let notify = std::os::unix::net::UnixDatagram::bind(&path).expect("bind a notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    let socket_env = path.to_string_lossy().into_owned();
    let mut c = TestCluster::start_with(&["storage"], |_| {
        vec![
            ("NOTIFY_SOCKET".to_owned(), socket_env.clone()),
            ("WATCHDOG_USEC".to_owned(), "2000000".to_owned()),
        ]
    });
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("a READY notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // READY comes once the API answers and the plugin's socket is there.
    let _ = c.nodes[0].status();
    assert!(c.nodes[0].dir.join("plugin.sock").exists());
    // Then keep-alives, twice per watchdog period.
    let n = notify.recv(&mut buf).expect("a WATCHDOG keep-alive");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
    let node = &c.nodes[0];
    let _: pxd::api::InitResponse = node
        .client()
        .post(
            "/v1/cluster/init",
            &pxd::api::InitRequest { name: "one".into() },
        )
        .expect("init a one-node cluster");
    node.put("keep", "k", "v").expect("a write");
    let before = node.status();

    let status = c.nodes[0].terminate();
    assert!(status.success(), "pxd exited with {status}");
    // Keep-alives may come first.
    let stopping = (0..20).any(|_| {
        let n = notify.recv(&mut buf).expect("a STOPPING notification");
        String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1")
    });
    assert!(stopping, "no STOPPING=1");

    // A restart keeps the identity, the cluster and what was applied, and leads again.
    c.nodes[0].start();
    let node = &c.nodes[0];
    let after = node.status();
    assert_eq!(
        (after.node, &after.cluster_id),
        (before.node, &before.cluster_id)
    );
    assert_eq!(node.kv("keep").get("k").map(String::as_str), Some("v"));
    c.wait_until(
        "the restarted node to lead",
        Duration::from_secs(20),
        || node.status().leader == Some(before.node),
    );
    node.put("keep", "k2", "v2")
        .expect("a write after the restart");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn writes_survive_killing_the_leader() {
    let _turn = serial();
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 500;
    let mut c = TestCluster::formed(&["storage", "storage", "storage"]);
    c.agreed_leader(&[0, 1, 2]);
    let sockets: Vec<_> = c.nodes.iter().map(Daemon::socket).collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (sockets, acked) = (sockets.clone(), acked.clone());
            std::thread::spawn(move || {
                let clients: Vec<_> = sockets
                    .iter()
                    .map(|s| {
                        pxd::api::client::BlockingClient::new(pxd::api::client::Target::Unix(
                            s.clone(),
                        ))
                        .expect("client")
                    })
                    .collect();
                let mut done = BTreeMap::new();
                let mut target = w;
                for j in 0..PER_WRITER {
                    let (key, value) = (format!("w{w}-{j}"), format!("value-{w}-{j}"));
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let r: Result<pxd::api::Applied, _> = clients[target % clients.len()].put(
                            &format!("/v1/kv/load/{key}"),
                            &pxd::api::KvValue {
                                value: value.clone(),
                            },
                        );
                        match r {
                            Ok(_) => break,
                            // A refused connection (the killed node) or no quorum during the
                            // election: try the next node.
                            Err(e) => {
                                assert!(Instant::now() < deadline, "write {key}: {e}");
                                target += 1;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    done.insert(key, value);
                    target += 1;
                }
                done
            })
        })
        .collect();
    c.wait_until("a quarter of the writes", Duration::from_secs(60), || {
        acked.load(Ordering::Relaxed) >= WRITERS * PER_WRITER / 4
    });
    let leader = c.agreed_leader(&[0, 1, 2]);
    let victim = c.index_of(leader);
    c.nodes[victim].kill();
    let killed_at = Instant::now();
    let rest: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let mut new_leader = None;
    c.wait_until("a new leader", Duration::from_secs(30), || {
        let l: Vec<_> = rest
            .iter()
            .map(|&i| c.nodes[i].try_status().and_then(|s| s.leader))
            .collect();
        new_leader = l[0];
        l[0].is_some() && l[0] != Some(leader) && l.iter().all(|x| *x == l[0])
    });
    eprintln!(
        "leader {leader} killed after {} acked writes; new leader {} after {:?}",
        acked.load(Ordering::Relaxed),
        new_leader.map(|l| l.to_string()).unwrap_or_default(),
        killed_at.elapsed()
    );
    let written: BTreeMap<String, String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("a writer thread"))
        .collect();
    eprintln!(
        "{} writes acknowledged in {:?}",
        written.len(),
        started.elapsed()
    );
    assert_eq!(written.len(), WRITERS * PER_WRITER);
    c.nodes[victim].start();
    // Same identity after the restart.
    assert_eq!(c.nodes[victim].id(), leader);
    c.wait_until(
        "every acknowledged write on all three nodes",
        Duration::from_secs(60),
        || c.nodes.iter().all(|n| n.kv("load") == written),
    );
}

/// A one-node cluster is a quorum by itself. Writes that queue up behind each other, or that
/// wait while the node gets no CPU, are slow, never "no quorum", and a write that was
/// applied is answered as applied: every one of a burst of parallel writes succeeds and
/// reads back, also when the daemon is frozen for longer than a write may wait for a quorum.
#[test]
fn a_one_node_cluster_answers_every_parallel_write() {
    let _turn = serial();
    let c = TestCluster::formed(&["storage"]);
    let node = &c.nodes[0];
    // Large values give each apply some work, so the writes queue behind each other.
    let value = "v".repeat(32 * 1024);
    for (ns, freeze) in [("burst", None), ("frozen", Some(Duration::from_secs(7)))] {
        const WRITES: usize = 50;
        let started = Instant::now();
        let answers: Vec<(String, Result<(), ClientError>)> = std::thread::scope(|s| {
            let writers: Vec<_> = (0..WRITES)
                .map(|i| {
                    let value = &value;
                    s.spawn(move || {
                        let key = format!("k{i}");
                        let answer = node.put(ns, &key, value);
                        (key, answer)
                    })
                })
                .collect();
            if let Some(d) = freeze {
                // While the writes are in flight: longer than the 5 s a write waits for a
                // quorum, so every timer in the daemon has run out when it goes on.
                std::thread::sleep(Duration::from_millis(150));
                node.pause(d);
                // Its own beat is late now, but a node is online to itself.
                let status = node.status();
                assert!(
                    status.quorum.ok,
                    "a one-node cluster without a quorum: {status:?}"
                );
            }
            writers
                .into_iter()
                .map(|w| w.join().expect("a writer thread"))
                .collect()
        });
        eprintln!(
            "{WRITES} parallel writes ({ns}) answered in {:?}",
            started.elapsed()
        );
        let stored = node.kv(ns);
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|(key, r)| {
                let applied = if stored.contains_key(key) {
                    " (applied)"
                } else {
                    ""
                };
                r.as_ref()
                    .err()
                    .map(|e| format!("{key}{applied}: [{}] {e}", code(e)))
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {WRITES} writes ({ns}) failed on a one-node cluster:\n{}\n{}",
            failed.len(),
            failed.join("\n"),
            node.log_tail()
        );
        for (key, _) in &answers {
            assert_eq!(
                stored.get(key),
                Some(&value),
                "{ns}/{key} does not read back"
            );
        }
    }
}

#[test]
fn a_cut_off_node_refuses_writes_and_converges_after_healing() {
    let _turn = serial();
    let c = TestCluster::formed(&["storage", "storage", "storage"]);
    let leader = c.index_of(c.agreed_leader(&[0, 1, 2]));
    let cut = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let cut_id = c.nodes[cut].id().to_string();
    c.nodes[leader]
        .put("p", "before", "1")
        .expect("a write before the cut");
    c.net.set_link(cut, false);

    // The majority goes on; the leader may change if the cut node disrupts it, so retry.
    for (i, n) in [leader, other].iter().enumerate() {
        let key = format!("during{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = c.nodes[*n].put("p", &key, "2") {
            assert!(Instant::now() < deadline, "majority write {key}: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let err = c.nodes[cut]
        .put("p", "cut", "3")
        .expect_err("the cut-off node must refuse writes");
    assert_eq!(code(&err), "no_quorum", "{err}");
    assert!(err.to_string().contains("no quorum"), "{err}");

    // Heartbeats stop: the others see it offline, in the node list and in the metrics.
    c.wait_until("the cut node offline", Duration::from_secs(15), || {
        c.nodes[leader]
            .nodes()
            .iter()
            .any(|n| n.id.to_string() == cut_id && n.liveness == Liveness::Offline)
    });
    let (_, metrics) = c.nodes[leader]
        .client()
        .raw(hyper_method_get(), "/metrics")
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    let line = format!("pxd_node_online{{name=\"node{cut}\",node=\"{cut_id}\"}} 0");
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");

    c.net.set_link(cut, true);
    let expect: BTreeMap<String, String> = [("before", "1"), ("during0", "2"), ("during1", "2")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The cut node forwarded its write to the leader it still knew, and gave up when that
    // leader stepped down; its error says the write may have been applied, and it may: the
    // request can sit in a TCP send queue until the link is back and still reach the leader
    // in time. Then every node holds it; otherwise none does.
    let may_land = err.to_string().contains("may have been applied");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<BTreeMap<String, String>> = c.nodes.iter().map(|n| n.kv("p")).collect();
        let mut agreed = seen[0].clone();
        if may_land && agreed.get("cut").is_some_and(|v| v == "3") {
            agreed.remove("cut");
        }
        if agreed == expect && seen.iter().all(|kv| *kv == seen[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not converge on {expect:?} within 60 s (the cut write was refused \
             with: {err}); they hold {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.agreed_leader(&[0, 1, 2]);
    c.wait_until(
        "the healed node online again",
        Duration::from_secs(15),
        || {
            c.nodes[other]
                .nodes()
                .iter()
                .all(|n| n.liveness == Liveness::Online)
        },
    );
}

fn hyper_method_get() -> pxd::api::client::Method {
    pxd::api::client::Method::GET
}

#[test]
fn bad_joins_and_removals_are_refused_and_change_nothing() {
    let _turn = serial();
    let mut c = TestCluster::start(&["storage", "storage", "storage"]);
    let init: pxd::api::InitResponse = c.nodes[0]
        .client()
        .post(
            "/v1/cluster/init",
            &pxd::api::InitRequest {
                name: "bad-input".into(),
            },
        )
        .expect("init");
    let remove = |n: &Daemon, node: &str| {
        n.client()
            .post::<_, pxd::api::RemoveResponse>(
                "/v1/cluster/remove",
                &RemoveRequest { node: node.into() },
            )
            .expect_err("the removal must be refused")
    };
    let e = remove(&c.nodes[0], "00000000000000ff");
    assert_eq!(code(&e), "unknown_node", "{e}");
    let e = remove(&c.nodes[0], &c.nodes[0].id().to_string());
    assert_eq!(code(&e), "last_member", "{e}");
    assert_eq!(c.nodes[0].status().members.len(), 1);

    c.nodes[1].join(&init.token).expect("a valid join");
    let before = members(&c.nodes[0]);
    assert_eq!(before.len(), 2);

    // Garbled, relabeled (wrong cluster id) and forged tokens.
    let parsed = pxd::cluster::token::JoinToken::decode(&init.token).expect("a token");
    let mut relabeled = parsed.clone();
    relabeled.cluster_id = "0123456789abcdef0123456789abcdef".into();
    let forged = pxd::cluster::token::JoinToken::issue(
        "not-the-secret",
        &parsed.cluster_id,
        &parsed.addr,
        &parsed.public_key,
        parsed.expires,
    );
    // A real token that lived one second, used once that second is over.
    let short: pxd::api::TokenResponse = c.nodes[0]
        .client()
        .get("/v1/cluster/token?ttl=1")
        .expect("a short-lived token");
    let expires = pxd::cluster::token::JoinToken::decode(&short.token)
        .expect("a token")
        .expires;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    for (token, want, says) in [
        (short.token.clone(), "join_refused", "expired"),
        ("pxd1.bm90IGEgdG9rZW4".to_owned(), "bad_token", "garbled"),
        ("hello".to_owned(), "bad_token", "garbled"),
        (relabeled.encode(), "join_refused", "is for cluster"),
        (
            forged.encode(),
            "join_refused",
            "not issued by this cluster",
        ),
    ] {
        let e = c.nodes[2].join(&token).expect_err("a bad token must fail");
        assert_eq!(code(&e), want, "{e}");
        assert!(e.to_string().contains(says), "{e}");
        assert_eq!(members(&c.nodes[0]), before);
        assert_eq!(c.nodes[2].status().cluster_id, None);
    }

    // A ZeroMQ client that does not know the node's server key gets no answer at all; one
    // that does gets an answer (a refusal of the junk it sent).
    let endpoint = parsed.addr.clone();
    let right_key = parsed.public_key.clone();
    let ns = c.nodes[2].ns.clone();
    let (wrong, right) = in_netns(&ns, move || {
        let t = Transport::new(KeyPair::generate().expect("keys")).expect("transport");
        let stranger = KeyPair::generate().expect("keys").public;
        let wrong = t.call_blocking(&endpoint, &stranger, b"junk", Duration::from_secs(2));
        let right = t.call_blocking(&endpoint, &right_key, b"junk", Duration::from_secs(5));
        (
            wrong.map_err(|e| e.to_string()),
            right.map_err(|e| e.to_string()),
        )
    });
    let wrong = wrong.expect_err("no answer without the server key");
    assert!(wrong.contains("no answer"), "{wrong}");
    let right = right.expect("an answer with the server key");
    assert!(String::from_utf8_lossy(&right).contains("malformed"));

    // No quorum: with one of two members down, a join is refused and nothing changes.
    c.nodes[1].kill();
    let e = c.nodes[2]
        .join(&init.token)
        .expect_err("a join without quorum must fail");
    assert_eq!(code(&e), "no_quorum", "{e}");
    assert_eq!(members(&c.nodes[0]), before);
    assert_eq!(c.nodes[2].status().cluster_id, None);
}

#[test]
fn a_storageless_node_joins_with_its_role() {
    let _turn = serial();
    let c = TestCluster::formed(&["storage", "storage", "storageless"]);
    let id = c.nodes[2].id();
    c.wait_until(
        "the node list on every node",
        Duration::from_secs(15),
        || {
            c.nodes.iter().all(|n| {
                let nodes = n.nodes();
                nodes.len() == 3
                    && nodes.iter().any(|v| {
                        v.id == id && v.role == Role::Storageless && v.liveness == Liveness::Online
                    })
                    && nodes.iter().filter(|v| v.role == Role::Storage).count() == 2
            })
        },
    );
    let out = std::process::Command::new(harness::pxd_binary())
        .arg("--socket")
        .arg(c.nodes[0].socket())
        .args(["node", "list"])
        .output()
        .expect("run pxd node list");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("{id} not in\n{text}"));
    assert!(
        line.contains("storageless") && line.contains("online"),
        "{text}"
    );
}

#[test]
fn five_nodes_remove_one_and_the_rest_agree() {
    let _turn = serial();
    let mut c = TestCluster::formed(&["storage"; 5]);
    c.agreed_leader(&[0, 1, 2, 3, 4]);
    let gone = c.nodes[4].id();
    // Ask a node that may not lead: the removal is forwarded to the leader.
    let r: pxd::api::RemoveResponse = c.nodes[1]
        .client()
        .post(
            "/v1/cluster/remove",
            &RemoveRequest {
                node: "node4".into(),
            },
        )
        .expect("remove node4");
    assert_eq!(r.removed, gone.to_string());
    c.nodes[4].kill();
    let rest = [0, 1, 2, 3];
    c.wait_until("four members everywhere", Duration::from_secs(30), || {
        let sets: Vec<_> = rest.iter().map(|&i| members(&c.nodes[i])).collect();
        sets[0].len() == 4
            && !sets[0].contains(&gone.to_string())
            && sets.iter().all(|s| *s == sets[0])
            && rest.iter().all(|&i| c.nodes[i].nodes().len() == 4)
    });
    c.agreed_leader(&rest);
    let e = c.nodes[0]
        .client()
        .post::<_, pxd::api::RemoveResponse>(
            "/v1/cluster/remove",
            &RemoveRequest {
                node: gone.to_string(),
            },
        )
        .expect_err("it is gone");
    assert_eq!(code(&e), "unknown_node", "{e}");
}

#[test]
fn every_member_holds_the_one_cluster_key_and_never_shows_it() {
    let _turn = serial();
    let c = TestCluster::formed(&["storage", "storage"]);
    let prints: Vec<Option<String>> = c
        .nodes
        .iter()
        .map(|n| n.status().cluster_key_fingerprint)
        .collect();
    assert!(prints[0].is_some(), "node 0 shows no key fingerprint");
    assert_eq!(prints[0], prints[1], "the fingerprints differ");

    // The key files: one key, owner-only, on both nodes.
    let files: Vec<std::path::PathBuf> = c
        .nodes
        .iter()
        .map(|n| n.dir.join("data").join(pxd::cluster::CLUSTER_KEY_FILE))
        .collect();
    for f in &files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let keys: Vec<pxd::crypt::ClusterKey> = files
        .iter()
        .map(|f| pxd::crypt::ClusterKey::load(f).unwrap().unwrap())
        .collect();
    assert_eq!(Some(keys[1].fingerprint()), prints[1]);

    // A volume key wrapped with one node's key unwraps with the other's, and only for the
    // volume it was sealed for.
    let volume_key = pxd::crypt::VolumeKey::generate().unwrap();
    let wrapped = keys[0].wrap(&volume_key, "v1").unwrap();
    let unwrapped = keys[1].unwrap(&wrapped, "v1").unwrap();
    assert_eq!(unwrapped.bytes(), volume_key.bytes());
    assert!(keys[1].unwrap(&wrapped, "v2").is_err());

    // The key itself appears in no log, no API answer and no command line.
    let hex: String = keys[0]
        .expose()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut seen = String::new();
    for n in &c.nodes {
        seen.push_str(&std::fs::read_to_string(n.dir.join("daemon.log")).unwrap_or_default());
        for path in ["/v1/cluster/status", "/v1/nodes", "/v1/pools", "/metrics"] {
            if let Ok((_, body)) = n.client().raw(hyper_method_get(), path) {
                seen.push_str(&String::from_utf8_lossy(&body));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            seen.push_str(&String::from_utf8_lossy(&cmdline));
        }
    }
    assert!(!seen.is_empty());
    assert!(!seen.contains(&hex), "the cluster key leaked");
    assert!(
        !seen
            .as_bytes()
            .windows(keys[0].expose().len())
            .any(|w| w == keys[0].expose()),
        "the raw cluster key leaked"
    );
}

/// Node `n`'s labels as node `from` sees them: (label, value, source).
fn labels_seen(from: &Daemon, n: &str) -> Vec<(String, String, String)> {
    let v: Vec<NodeTopologyView> = from
        .client()
        .get(&format!("/v1/topology?node={n}"))
        .unwrap_or_else(|e| panic!("topology of {n} from node {}: {e}", from.index));
    v[0].labels
        .iter()
        .map(|l| (l.label.to_string(), l.value.clone(), l.source.to_string()))
        .collect()
}

fn label(l: &str, v: &str, s: &str) -> (String, String, String) {
    (l.into(), v.into(), s.into())
}

fn tag(
    d: &Daemon,
    node: Option<&str>,
    set: &[(&str, &str)],
    clear: &[&str],
) -> Result<NodeTopologyView, ClientError> {
    d.client().post(
        "/v1/topology/tag",
        &TagRequest {
            node: node.map(str::to_owned),
            set: set
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            clear: clear.iter().map(|c| (*c).into()).collect(),
        },
    )
}

#[test]
fn topology_tags_reach_every_node_outrank_the_file_and_survive_a_restart() {
    let _one = serial();
    let mut c = TestCluster::formed(&["storage", "storage", "storageless"]);
    // Node 1's file puts it in zone z-file and rack r-file; a refresh reads it.
    std::fs::write(
        c.nodes[1].topology_file(),
        "default:\n  region: eu\nnodes:\n  node1: {zone: z-file, rack: r-file}\n",
    )
    .unwrap();
    let r: RefreshView = c.nodes[1]
        .client()
        .post("/v1/topology/refresh", &serde_json::json!({}))
        .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // A tag made on node 0 for node 1 outranks the file, and every node sees it.
    tag(
        &c.nodes[0],
        Some("node1"),
        &[("rack", "r1"), ("hypervisor", "esx-1")],
        &[],
    )
    .unwrap();
    let want = vec![
        label("region", "eu", "file"),
        label("zone", "z-file", "file"),
        label("rack", "r1", "manual"),
        label("hypervisor", "esx-1", "manual"),
    ];
    let without_host = |v: Vec<(String, String, String)>| -> Vec<(String, String, String)> {
        v.into_iter().filter(|l| l.0 != "host").collect()
    };
    c.wait_until(
        "node 1's tags on every node",
        Duration::from_secs(60),
        || {
            c.nodes
                .iter()
                .all(|from| without_host(labels_seen(from, "node1")) == want)
        },
    );
    // The bare host is detected too (all three share this machine).
    assert!(labels_seen(&c.nodes[2], "node1")
        .iter()
        .any(|l| l.0 == "host" && l.2 == "bare-metal"));
    // `node list --labels` shows the resolved labels.
    let nodes = c.nodes[2].nodes();
    let n1 = nodes.iter().find(|n| n.name == "node1").unwrap();
    assert_eq!(n1.labels.get(Domain::Rack), Some("r1"));

    // Tags survive a restart of the tagged node and of the node that tagged.
    c.nodes[1].terminate();
    c.nodes[1].start();
    c.nodes[0].terminate();
    c.nodes[0].start();
    c.wait_until("tags after restarts", Duration::from_secs(60), || {
        [0, 1, 2]
            .iter()
            .all(|i| without_host(labels_seen(&c.nodes[*i], "node1")) == want)
    });

    // Clearing the manual rack lets the file's rack show again.
    tag(&c.nodes[2], Some("node1"), &[], &["rack"]).unwrap();
    c.wait_until("the file's rack again", Duration::from_secs(60), || {
        labels_seen(&c.nodes[1], "node1").contains(&label("rack", "r-file", "file"))
    });

    // Bad input names the field and changes nothing.
    let long = "x".repeat(64);
    for (node, set, clear, status, words) in [
        (
            Some("node1"),
            vec![("rack", long.as_str())],
            vec![],
            400,
            "set: value of rack is 64 bytes; the limit is 63",
        ),
        (
            Some("node1"),
            vec![("rack", "r 1")],
            vec![],
            400,
            "set: value of rack \"r 1\" may hold only [A-Za-z0-9._-]",
        ),
        (
            Some("node1"),
            vec![("shelf", "s1")],
            vec![],
            400,
            "set: unknown fault domain \"shelf\"",
        ),
        (
            Some("node1"),
            vec![],
            vec!["shelf"],
            400,
            "clear: unknown fault domain \"shelf\"",
        ),
        (
            Some("nobody"),
            vec![("rack", "r1")],
            vec![],
            404,
            "node \"nobody\" is not a member",
        ),
    ] {
        let e = tag(&c.nodes[0], node, &set, &clear).unwrap_err();
        let ClientError::Api {
            status: got,
            message,
            ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(got.as_u16(), status, "{message}");
        assert!(message.contains(words), "{message}");
    }
    assert!(labels_seen(&c.nodes[0], "node1").contains(&label("rack", "r-file", "file")));

    // A topology file that does not parse: the daemon starts anyway and says why.
    std::fs::write(c.nodes[2].topology_file(), "nodes: [node2\n").unwrap();
    c.nodes[2].terminate();
    c.nodes[2].start();
    let r: RefreshView = c.nodes[2]
        .client()
        .post("/v1/topology/refresh", &serde_json::json!({}))
        .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("topology.yaml") && r.warnings[0].contains("line"),
        "{:?}",
        r.warnings
    );

    // With the daemon down, `pxd topology tag` writes the local file instead, and says so.
    c.nodes[2].terminate();
    let tag_offline = || {
        std::process::Command::new(harness::pxd_binary())
            .arg("--socket")
            .arg(c.nodes[2].socket())
            .args([
                "topology",
                "tag",
                "--node",
                "node2",
                "--zone",
                "z2",
                "--topology-file",
            ])
            .arg(c.nodes[2].topology_file())
            .output()
            .unwrap()
    };
    let out = tag_offline();
    // The broken file is refused rather than overwritten.
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line"),
        "{out:?}"
    );
    std::fs::remove_file(c.nodes[2].topology_file()).unwrap();
    let out = tag_offline();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("the daemon is not running"),
        "{out:?}"
    );
    c.nodes[2].start();
    c.wait_until(
        "the offline tag, from the file",
        Duration::from_secs(60),
        || labels_seen(&c.nodes[0], "node2").contains(&label("zone", "z2", "file")),
    );
}
