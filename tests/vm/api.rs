//! VM tier: the REST API against its own OpenAPI document.
//!
//! A one-node cluster on a loop device, holding a volume with a snapshot and a metadata key,
//! serves `/openapi.json` over TCP. The document must validate (openapi-spec-validator), and
//! schemathesis, run against the live API with the cluster's token, must find no 5xx, no
//! answer outside the document's schemas and no wrong content type. Both tools come from
//! PyPI, in the venv `cargo xtask setup` makes under `target/pxd-vm/python`.
//!
//! Left out of the fuzzing: the operations that claim, measure or give up this node's disks,
//! or remove it, which would take the test's own pool or node away from under it.

use pxd::api::error::ErrorBody;
use pxd::kernel::loop_device::LoopDevice;
use pxd_tests::daemon::Daemon;
use pxd_tests::EMULATOR_CLASSES;
use std::path::PathBuf;
use std::process::Command;

const PORT: u16 = 9790;

/// Operations schemathesis does not call (see the module's doc).
const NOT_FUZZED: &[&str] = &[
    "drive_add",
    "drive_benchmark",
    "drive_remove",
    "drive_replace",
    "cluster_remove",
];

/// Schemathesis's settings: the token from the environment, and the objects made above for
/// the operations that read or change one, so that they answer more than 404.
const SCHEMATHESIS_CONFIG: &str = r#"
headers = { Authorization = "Bearer ${PXD_API_TOKEN}" }

[[operations]]
include-operation-id-regex = "^(volume_inspect|volume_stats|volume_resize|volume_set_limits|volume_set_replica_timeout|snapshot_list|snapshot_create)$"
parameters = { vol = "v1" }

[[operations]]
include-operation-id-regex = "^(kv_get|kv_put)$"
parameters = { ns = "app", key = "k" }

[[operations]]
include-operation-id = "kv_list"
parameters = { ns = "app" }
"#;

/// The venv's `bin` directory, beside the test binary's target directory.
fn venv_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/<test>-<hash>
    let target = exe.ancestors().nth(3).expect("a target directory");
    let bin = target.join("pxd-vm/python/bin");
    assert!(
        bin.join("st").exists(),
        "{} has no schemathesis: run `cargo xtask setup`",
        bin.display()
    );
    bin
}

/// One request with curl: the status and the body. The token reaches curl on its stdin
/// (`-H @-`), never on a command line.
fn curl(method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "-w", "\n%{http_code}", "-H", "@-"])
        .arg(format!("http://127.0.0.1:{PORT}{path}"));
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(t) = token {
        writeln!(stdin, "Authorization: Bearer {t}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (status.trim().parse().expect("a status"), body.to_owned())
}

fn error(body: &str) -> ErrorBody {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: not an error body: {e}"))
}

#[test]
fn the_api_keeps_to_its_openapi_document() {
    let backing = PathBuf::from("/tmp/pxd-api.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(2 << 30))
        .unwrap();
    let disk = LoopDevice::attach(&backing).unwrap();
    let mut d = Daemon::new("api", PORT, &EMULATOR_CLASSES);
    d.start_cluster();
    d.ok(&["drive", "add", disk.path().to_str().unwrap()]);
    d.ok(&["volume", "create", "v1", "--size", "64M", "--fs", "raw"]);
    d.ok(&["volume", "snapshot", "create", "v1", "--name", "s1"]);
    d.ok(&["kv", "put", "app", "k", "v"]);
    let token: pxd::api::TokenResponse = d.json(&["cluster", "api-token"]);
    let token = token.token;

    // The document needs no token; every other route does, and says so in the error body.
    let (status, doc) = curl("GET", "/openapi.json", None, None);
    assert_eq!(status, 200, "{doc}");
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let (status, body) = curl("GET", "/v1/nodes", None, None);
    assert_eq!((status, error(&body).code.as_str()), (401, "unauthorized"));

    // Errors: the class's status, a code, and the field at fault.
    let (status, body) = curl(
        "POST",
        "/v1/volumes",
        Some(&token),
        Some(r#"{"options": {"name": "bad", "size": "1G", "repl": "9"}}"#),
    );
    let e = error(&body);
    assert_eq!((status, e.field.as_deref()), (400, Some("repl")), "{body}");
    let (status, body) = curl("GET", "/v1/volumes/nothing-here", Some(&token), None);
    assert_eq!((status, error(&body).code.as_str()), (404, "not_found"));
    let (status, body) = curl("GET", "/v1/no-such-route", Some(&token), None);
    assert_eq!((status, error(&body).code.as_str()), (404, "not_found"));
    let (status, body) = curl("PATCH", "/v1/nodes", Some(&token), None);
    assert_eq!(
        (status, error(&body).code.as_str()),
        (405, "method_not_allowed")
    );
    let (status, body) = curl("GET", "/v1/cluster/token?ttl=x", Some(&token), None);
    assert_eq!((status, error(&body).code.as_str()), (400, "bad_request"));

    let bin = venv_bin();
    let spec = std::env::temp_dir().join("pxd-openapi.json");
    std::fs::write(&spec, doc.to_string()).unwrap();
    let out = Command::new(bin.join("openapi-spec-validator"))
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the document does not validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = std::env::temp_dir();
    let (config, report) = (dir.join("pxd-st.toml"), dir.join("pxd-st-report.json"));
    std::fs::write(&config, SCHEMATHESIS_CONFIG).unwrap();
    let mut st = Command::new(bin.join("st"));
    st.arg("--config-file")
        .arg(&config)
        .args(["run", &format!("http://127.0.0.1:{PORT}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "10", "--seed", "1", "--workers", "1"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--request-timeout", "120", "--report", "json"])
        .arg("--report-json-path")
        .arg(&report)
        // The config's header reads the token from here: it is on no command line.
        .env("PXD_API_TOKEN", &token);
    for op in NOT_FUZZED {
        st.args(["--exclude-operation-id", op]);
    }
    let out = st.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("schemathesis's report")).unwrap();
    let ops = &report["operations"];
    assert_eq!(ops["tested"], ops["selected"], "{ops}");
    assert_eq!(
        ops["tested"],
        doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>()
            - NOT_FUZZED.len(),
        "{ops}"
    );
    let cases = &report["test_cases"];
    assert!(cases["generated"].as_u64().unwrap() > 200, "{cases}");
    assert_eq!(report["failures"], serde_json::json!([]), "{text}");
    assert_eq!(report["errors"], serde_json::json!([]), "{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // The volume it was given to work on is still whole, with its snapshot.
    let v: pxd::api::volumes::VolumeView = d.json(&["volume", "inspect", "v1"]);
    assert_eq!(v.snapshots.first().map(|s| s.name.as_str()), Some("s1"));
    d.kill();
}
