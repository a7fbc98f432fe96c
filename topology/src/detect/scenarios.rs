//! `detect` end to end: a DMI fixture tree picks the platform, loopback servers speak each
//! metadata protocol (and fail in each way), and the result is checked label by label and
//! warning by warning. No assertion is on timing.

use super::testserver::{
    ok, refused_url, script, serve, serve_tls, status, Answer, Seen, Server, FORKS,
};
use super::*;
use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn dmi(p: Platform) -> tempfile::TempDir {
    let files: &[(&str, &str)] = match p {
        Platform::VSphere => &[
            ("sys_vendor", "VMware, Inc."),
            ("product_name", "VMware7,1"),
        ],
        Platform::Aws => &[("sys_vendor", "Amazon EC2")],
        Platform::Gcp => &[("product_name", "Google Compute Engine")],
        Platform::Azure => &[
            ("sys_vendor", "Microsoft Corporation"),
            ("product_name", "Virtual Machine"),
        ],
        Platform::Other => &[("sys_vendor", "Dell Inc.")],
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), format!("{text}\n")).unwrap();
    }
    dir
}

/// A config for `dir` whose every service refuses connections and which has no tools.
fn config(dir: &tempfile::TempDir) -> Config {
    let nowhere = refused_url();
    Config {
        dmi_dir: dir.path().to_owned(),
        hostname: "node-a".into(),
        guestinfo_tools: Vec::new(),
        aws_url: nowhere.clone(),
        gcp_url: nowhere.clone(),
        azure_url: nowhere,
        vcenter: None,
        // Generous: a loaded test machine must not turn a success into a timeout.
        timeout: Duration::from_secs(2),
    }
}

fn labels(s: &str) -> Labels {
    s.parse().unwrap()
}

fn layer(d: &Detected, source: Source) -> Option<&Labels> {
    d.layers.iter().find(|(s, _)| *s == source).map(|(_, l)| l)
}

fn one_warning<'a>(d: &'a Detected, needle: &str) -> &'a str {
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(d.warnings[0].contains(needle), "{:?}", d.warnings);
    &d.warnings[0]
}

#[test]
fn bare_metal_is_its_own_host() {
    let dir = dmi(Platform::Other);
    let d = detect(&config(&dir));
    assert_eq!(d.platform, Platform::Other);
    assert_eq!(d.layers, [(Source::BareMetal, labels("host=node-a"))]);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn odd_hostnames_fall_back_to_the_short_name_or_warn() {
    let dir = dmi(Platform::Other);
    let mut cfg = config(&dir);
    cfg.hostname = format!("node-b.{}.example", "x".repeat(60));
    let d = detect(&cfg);
    assert_eq!(d.layers, [(Source::BareMetal, labels("host=node-b"))]);
    assert!(d.warnings.is_empty());

    cfg.hostname = "bad host".into();
    let d = detect(&cfg);
    assert_eq!(d.layers, [(Source::BareMetal, Labels::default())]);
    one_warning(&d, "\"bad host\" is not a valid label value");
}

// ---- AWS IMDSv2 ----

const TOKEN: &str = "AQAEAFsRtok==";

/// IMDSv2: a token for a PUT with a TTL, and metadata only for GETs carrying it.
fn imds(zone: &'static str) -> Server {
    serve(
        move |r: &Seen| match (r.method.as_str(), r.target.as_str()) {
            ("PUT", "/latest/api/token") => {
                match r.header("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => ok(TOKEN),
                    None => status(400, ""),
                }
            }
            ("GET", _) if r.header("x-aws-ec2-metadata-token") != Some(TOKEN) => status(401, ""),
            ("GET", "/latest/meta-data/placement/availability-zone") => ok(zone),
            ("GET", "/latest/meta-data/placement/region") => ok("eu-west-1"),
            _ => status(404, ""),
        },
    )
}

#[test]
fn aws_imdsv2_gives_region_and_zone_with_the_token() {
    let dir = dmi(Platform::Aws);
    let server = imds("eu-west-1a");
    let mut cfg = config(&dir);
    cfg.aws_url = format!("{}/", server.url);
    let d = detect(&cfg);
    assert_eq!(d.platform, Platform::Aws);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(
        d.layers,
        [
            (Source::BareMetal, Labels::default()),
            (Source::Cloud, labels("region=eu-west-1,zone=eu-west-1a")),
        ]
    );
    let seen = server.seen();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(
        seen[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("60")
    );
    let gets: Vec<_> = seen.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 2);
    assert!(gets
        .iter()
        .all(|r| r.header("x-aws-ec2-metadata-token") == Some(TOKEN)));
}

#[test]
fn aws_bad_zone_value_is_skipped_and_region_kept() {
    let dir = dmi(Platform::Aws);
    let server = imds("eu west 1a");
    let mut cfg = config(&dir);
    cfg.aws_url = server.url.clone();
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::Cloud), Some(&labels("region=eu-west-1")));
    one_warning(&d, "aws: availability-zone \"eu west 1a\": value of zone");
}

#[test]
fn aws_token_timeout_warns_about_the_hop_limit() {
    let dir = dmi(Platform::Aws);
    let server = serve(|_: &Seen| Answer::Hang);
    let mut cfg = config(&dir);
    cfg.aws_url = server.url.clone();
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::Cloud), None);
    let w = one_warning(&d, "PUT /latest/api/token: no answer within");
    assert!(w.contains("HttpPutResponseHopLimit"), "{w}");
}

#[test]
fn aws_404_and_refused_connections_are_warnings() {
    let dir = dmi(Platform::Aws);
    let server = serve(|r: &Seen| match r.method.as_str() {
        "PUT" => ok(TOKEN),
        _ => status(404, "Not Found"),
    });
    let mut cfg = config(&dir);
    cfg.aws_url = server.url.clone();
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::Cloud), None);
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    assert!(d.warnings.iter().all(|w| w.contains("HTTP 404")));
    assert!(d.warnings[0].contains("GET /latest/meta-data/placement/region"));

    // The default config here points at a port nobody listens on.
    let d = detect(&config(&dir));
    assert_eq!(d.layers.len(), 1);
    one_warning(&d, "aws: PUT /latest/api/token");
}

#[test]
fn aws_garbage_token_is_refused() {
    let dir = dmi(Platform::Aws);
    let server = serve(|_: &Seen| ok("<html>\n<body>portal</body>"));
    let mut cfg = config(&dir);
    cfg.aws_url = server.url.clone();
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::Cloud), None);
    one_warning(&d, "not a token");
}

// ---- GCP ----

fn gce(flavor: bool, body: &'static str) -> Server {
    serve(move |r: &Seen| {
        if r.header("metadata-flavor") != Some("Google") {
            return status(403, "");
        }
        match r.target.as_str() {
            "/computeMetadata/v1/instance/zone" => Answer::Reply {
                status: 200,
                headers: if flavor {
                    vec![("Metadata-Flavor", "Google".into())]
                } else {
                    Vec::new()
                },
                body: body.into(),
            },
            _ => status(404, ""),
        }
    })
}

#[test]
fn gcp_zone_and_its_region() {
    let dir = dmi(Platform::Gcp);
    let server = gce(true, "projects/123/zones/europe-west1-b");
    let mut cfg = config(&dir);
    cfg.gcp_url = server.url.clone();
    let d = detect(&cfg);
    assert_eq!(d.platform, Platform::Gcp);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(
        layer(&d, Source::Cloud),
        Some(&labels("region=europe-west1,zone=europe-west1-b"))
    );
}

#[test]
fn gcp_answer_without_the_flavor_header_is_garbage() {
    let dir = dmi(Platform::Gcp);
    let server = gce(false, "projects/123/zones/europe-west1-b");
    let mut cfg = config(&dir);
    cfg.gcp_url = server.url.clone();
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::Cloud), None);
    one_warning(&d, "lacks the Metadata-Flavor: Google header");
}

#[test]
fn gcp_garbage_zone_is_a_warning() {
    let dir = dmi(Platform::Gcp);
    for body in ["nonsense", "projects/1/zones/", "projects/1/zones/a b-c"] {
        let server = gce(true, body);
        let mut cfg = config(&dir);
        cfg.gcp_url = server.url.clone();
        let d = detect(&cfg);
        assert_eq!(layer(&d, Source::Cloud), None, "{body}");
        one_warning(&d, "gcp: GET /computeMetadata/v1/instance/zone: not a zone");
    }
}

// ---- Azure ----

fn azure_imds(status_code: u16, body: &'static str) -> Server {
    serve(move |r: &Seen| {
        if r.header("metadata") != Some("true")
            || r.target != "/metadata/instance/compute?api-version=2021-02-01"
        {
            return status(400, "");
        }
        status(status_code, body)
    })
}

fn azure_detect(status_code: u16, body: &'static str) -> Detected {
    let dir = dmi(Platform::Azure);
    let server = azure_imds(status_code, body);
    let mut cfg = config(&dir);
    cfg.azure_url = server.url.clone();
    detect(&cfg)
}

#[test]
fn azure_location_zone_and_fault_domain() {
    let d = azure_detect(
        200,
        r#"{"location":"westeurope","zone":"2","platformFaultDomain":"1","vmSize":"D4"}"#,
    );
    assert_eq!(d.platform, Platform::Azure);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(
        layer(&d, Source::Cloud),
        Some(&labels("region=westeurope,zone=westeurope-2,rack=fd-1"))
    );

    // Outside availability zones the zone is empty and left unknown.
    let d = azure_detect(
        200,
        r#"{"location":"westeurope","zone":"","platformFaultDomain":0}"#,
    );
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(
        layer(&d, Source::Cloud),
        Some(&labels("region=westeurope,rack=fd-0"))
    );
}

#[test]
fn azure_failures_are_warnings() {
    let cases = [
        (500, "{}", "HTTP 500"),
        (200, "<html>", "not a JSON object"),
        (200, "[1, 2]", "not a JSON object"),
        (200, r#"{"zone":"1"}"#, "no location"),
    ];
    for (code, body, needle) in cases {
        let d = azure_detect(code, body);
        assert_eq!(layer(&d, Source::Cloud), None, "{body}");
        one_warning(&d, needle);
        assert!(d.warnings[0].starts_with("azure: "));
    }
    // A bad location keeps what else is good: nothing, as the zone is built from it.
    let d = azure_detect(
        200,
        r#"{"location":"west europe","zone":"","platformFaultDomain":"3"}"#,
    );
    assert_eq!(layer(&d, Source::Cloud), Some(&labels("rack=fd-3")));
    one_warning(&d, "azure: location \"west europe\": value of region");
}

// ---- vSphere: guestinfo and vCenter ----

const USER: &str = "pxd@vsphere.local";
const PASSWORD: &str = "s3cret-Pa55";
const SESSION: &str = "b00a2b7c9a1f";

/// A fault to inject: answer this instead when the request's target starts with the prefix.
type Fault = Option<(&'static str, fn() -> Answer)>;

/// vCenter with two hosts; the VM `node-a` runs on `host-10` (`esx-03.lab`) in cluster
/// `domain-c7`. The host is tagged rack r1; the cluster zone z1, rack r-cluster, and an
/// `owner` tag that is no fault domain.
fn vcenter_server(fault: Fault) -> (Server, Arc<AtomicUsize>) {
    vcenter_on(fault, false)
}

fn vcenter_server_tls() -> (Server, Arc<AtomicUsize>) {
    vcenter_on(None, true)
}

fn vcenter_on(fault: Fault, tls: bool) -> (Server, Arc<AtomicUsize>) {
    let category_gets = Arc::new(AtomicUsize::new(0));
    let counter = category_gets.clone();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let handler = move |r: &Seen| {
        if let Some((prefix, answer)) = fault {
            if r.target.starts_with(prefix) {
                return answer();
            }
        }
        let t = r.target.as_str();
        if t == "/api/session" && r.method == "POST" {
            return if r.header("authorization") == Some(&format!("Basic {basic}")) {
                status(201, &format!("\"{SESSION}\""))
            } else {
                status(401, r#"{"error_type":"UNAUTHENTICATED"}"#)
            };
        }
        if r.header("vmware-api-session-id") != Some(SESSION) {
            return status(401, "");
        }
        let object = serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["object_id"]["id"].as_str().map(str::to_owned));
        match (r.method.as_str(), t) {
            ("DELETE", "/api/session") => status(204, ""),
            ("GET", "/api/vcenter/vm?names=node-a") => ok(r#"[{"vm":"vm-42","name":"node-a"}]"#),
            ("GET", "/api/vcenter/host") => ok(
                r#"[{"host":"host-9","name":"esx-01.lab","connection_state":"CONNECTED"},
                    {"host":"host-10","name":"esx-03.lab","connection_state":"CONNECTED"}]"#,
            ),
            ("GET", "/api/vcenter/vm?names=node-a&hosts=host-9") => ok("[]"),
            ("GET", "/api/vcenter/vm?names=node-a&hosts=host-10") => {
                ok(r#"[{"vm":"vm-42","name":"node-a"}]"#)
            }
            // vCenter lists no VM of a name it does not know.
            ("GET", p) if p.starts_with("/api/vcenter/vm?") => ok("[]"),
            ("GET", "/api/vcenter/cluster") => ok(r#"[{"cluster":"domain-c7","name":"c1"}]"#),
            ("GET", "/api/vcenter/host?clusters=domain-c7") => {
                ok(r#"[{"host":"host-10","name":"esx-03.lab"}]"#)
            }
            ("POST", "/api/cis/tagging/tag-association?action=list-attached-tags") => {
                match object.as_deref() {
                    Some("host-10") => ok(r#"["t-rack"]"#),
                    Some("domain-c7") => ok(r#"["t-zone","t-rack-c","t-owner"]"#),
                    _ => ok("[]"),
                }
            }
            ("GET", "/api/cis/tagging/tag/t-rack") => ok(r#"{"name":"r1","category_id":"c-rack"}"#),
            ("GET", "/api/cis/tagging/tag/t-rack-c") => {
                ok(r#"{"name":"r-cluster","category_id":"c-rack"}"#)
            }
            ("GET", "/api/cis/tagging/tag/t-zone") => ok(r#"{"name":"z1","category_id":"c-zone"}"#),
            ("GET", "/api/cis/tagging/tag/t-owner") => {
                ok(r#"{"name":"team a","category_id":"c-owner"}"#)
            }
            ("GET", p) if p.starts_with("/api/cis/tagging/category/") => {
                counter.fetch_add(1, Ordering::SeqCst);
                match &p["/api/cis/tagging/category/".len()..] {
                    "c-rack" => ok(r#"{"name":"Rack","cardinality":"SINGLE"}"#),
                    "c-zone" => ok(r#"{"name":"pxd-zone"}"#),
                    "c-owner" => ok(r#"{"name":"owner"}"#),
                    _ => status(404, ""),
                }
            }
            _ => status(404, ""),
        }
    };
    let server = if tls {
        serve_tls(handler)
    } else {
        serve(handler)
    };
    (server, category_gets)
}

fn vsphere_config(dir: &tempfile::TempDir, server: &Server, password: &str) -> Config {
    let creds = dir.path().join("vcenter.credentials");
    std::fs::write(&creds, format!("user={USER}\npassword={password}\n")).unwrap();
    let mut cfg = config(dir);
    cfg.guestinfo_tools = vec![dir.path().join("no-vmware-rpctool")];
    cfg.vcenter = Some(VCenter {
        url: server.url.clone(),
        credentials_file: creds,
        ca_file: None,
        vm_name: "node-a".into(),
    });
    cfg
}

/// The guestinfo warning every vSphere test without tools gets.
fn without_guestinfo_warning(d: &Detected) -> Vec<&str> {
    d.warnings
        .iter()
        .map(String::as_str)
        .filter(|w| !w.contains("no VMware tools found"))
        .collect()
}

#[test]
fn vcenter_gives_hypervisor_and_tags_host_over_cluster() {
    let dir = dmi(Platform::VSphere);
    let (server, category_gets) = vcenter_server(None);
    let d = detect(&vsphere_config(&dir, &server, PASSWORD));
    assert_eq!(d.platform, Platform::VSphere);
    assert_eq!(
        layer(&d, Source::VSphere),
        Some(&labels("zone=z1,rack=r1,hypervisor=esx-03.lab"))
    );
    // The `owner` tag ("team a", no valid label) is of no fault domain: ignored, no warning.
    assert_eq!(without_guestinfo_warning(&d), Vec::<&str>::new());
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    let seen = server.seen();
    assert_eq!(seen.last().map(|r| r.method.as_str()), Some("DELETE"));
    assert_eq!(
        category_gets.load(Ordering::SeqCst),
        3,
        "categories are cached"
    );
    for r in &seen {
        assert!(!r.target.contains(PASSWORD) && !r.body.contains(PASSWORD));
        assert!(r.headers.iter().all(|(_, v)| !v.contains(PASSWORD)));
    }
}

#[test]
fn guestinfo_beats_vcenter() {
    let _g = FORKS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dmi(Platform::VSphere);
    let (server, _) = vcenter_server(None);
    let mut cfg = vsphere_config(&dir, &server, PASSWORD);
    cfg.guestinfo_tools = vec![script(
        dir.path(),
        "vmware-rpctool",
        r#"[ "$1" = "info-get guestinfo.pxd.rack" ] && echo r7 && exit 0
exit 1"#,
    )];
    let d = detect(&cfg);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    assert_eq!(
        d.layers,
        [
            (Source::BareMetal, Labels::default()),
            (
                Source::VSphere,
                labels("zone=z1,rack=r7,hypervisor=esx-03.lab")
            ),
        ]
    );
}

#[test]
fn vcenter_wrong_password_is_a_warning_without_the_password() {
    let dir = dmi(Platform::VSphere);
    let (server, _) = vcenter_server(None);
    let d = detect(&vsphere_config(&dir, &server, "wrong-Pa55"));
    assert_eq!(layer(&d, Source::VSphere), None);
    let w = without_guestinfo_warning(&d);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("POST /api/session: HTTP 401"), "{w:?}");
    assert!(!w[0].contains("wrong-Pa55"));
    assert!(!format!("{d:?}").contains("wrong-Pa55"));
}

#[test]
fn vcenter_failures_name_the_step_and_keep_what_worked() {
    let dir = dmi(Platform::VSphere);
    let cases: [(Fault, Option<&str>, &str); 5] = [
        // A category lookup failing costs that tag only.
        (
            Some(("/api/cis/tagging/category/c-zone", || status(500, "oops"))),
            Some("rack=r1,hypervisor=esx-03.lab"),
            "GET /api/cis/tagging/category/c-zone: HTTP 500",
        ),
        // No cluster list: host tags still count.
        (
            Some(("/api/vcenter/cluster", || status(503, ""))),
            Some("rack=r1,hypervisor=esx-03.lab"),
            "cluster of host-10: GET /api/vcenter/cluster: HTTP 503",
        ),
        // A host list that never comes.
        (
            Some(("/api/vcenter/host", || Answer::Hang)),
            None,
            "GET /api/vcenter/host: no answer within",
        ),
        // Garbage where the VM list should be.
        (
            Some(("/api/vcenter/vm?names=node-a", || ok("{\"vm\": 42"))),
            None,
            "GET /api/vcenter/vm?names=node-a: unexpected answer",
        ),
        // A bad tag value is skipped; the others stay.
        (
            Some(("/api/cis/tagging/tag/t-zone", || {
                ok(r#"{"name":"zone one","category_id":"c-zone"}"#)
            })),
            Some("rack=r1,hypervisor=esx-03.lab"),
            "tag \"zone one\" in category \"pxd-zone\" on ClusterComputeResource domain-c7",
        ),
    ];
    for (fault, want, needle) in cases {
        let (server, _) = vcenter_server(fault);
        let d = detect(&vsphere_config(&dir, &server, PASSWORD));
        assert_eq!(
            layer(&d, Source::VSphere),
            want.map(labels).as_ref(),
            "{needle}"
        );
        let w = without_guestinfo_warning(&d);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("vcenter: "), "{w:?}");
        assert!(w[0].contains(needle), "{w:?}");
        // The session is closed whatever happened.
        assert!(
            server.seen().iter().any(|r| r.method == "DELETE"),
            "{needle}"
        );
    }
}

#[test]
fn vcenter_unknown_vm_and_bad_tls_setup_are_warnings() {
    let dir = dmi(Platform::VSphere);
    let (server, _) = vcenter_server(None);
    let mut cfg = vsphere_config(&dir, &server, PASSWORD);
    if let Some(vc) = cfg.vcenter.as_mut() {
        vc.vm_name = "node-z".into();
    }
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::VSphere), None);
    assert_eq!(
        without_guestinfo_warning(&d),
        ["vcenter: no VM named \"node-z\""]
    );

    // A CA file that holds no certificate.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let mut cfg = vsphere_config(&dir, &server, PASSWORD);
    if let Some(vc) = cfg.vcenter.as_mut() {
        vc.ca_file = Some(ca);
    }
    let d = detect(&cfg);
    let w = without_guestinfo_warning(&d);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("ca.pem: no PEM certificate"), "{w:?}");

    // HTTPS to a server speaking plain HTTP fails the handshake, with a warning.
    let mut cfg = vsphere_config(&dir, &server, PASSWORD);
    if let Some(vc) = cfg.vcenter.as_mut() {
        vc.url = server.url.replace("http://", "https://");
    }
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::VSphere), None);
    let w = without_guestinfo_warning(&d);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("vcenter: POST /api/session: "), "{w:?}");

    // A missing credentials file.
    let mut cfg = vsphere_config(&dir, &server, PASSWORD);
    if let Some(vc) = cfg.vcenter.as_mut() {
        vc.credentials_file = dir.path().join("missing");
    }
    let d = detect(&cfg);
    let w = without_guestinfo_warning(&d);
    assert!(w[0].contains("credentials file"), "{w:?}");
}

#[test]
fn vcenter_is_ignored_off_vmware() {
    let dir = dmi(Platform::Other);
    let (server, _) = vcenter_server(None);
    let d = detect(&vsphere_config(&dir, &server, PASSWORD));
    assert_eq!(d.layers, [(Source::BareMetal, labels("host=node-a"))]);
    one_warning(&d, "DMI says this is other, not a VMware VM");
    assert!(server.seen().is_empty());
}

#[test]
fn vsphere_without_tools_or_vcenter_says_what_to_do() {
    let dir = dmi(Platform::VSphere);
    let d = detect(&config(&dir));
    assert_eq!(d.layers, [(Source::BareMetal, Labels::default())]);
    one_warning(&d, "install open-vm-tools");
}

#[test]
fn vcenter_over_https_trusts_the_ca_file_beside_the_public_roots() {
    let dir = dmi(Platform::VSphere);
    let ca = dir.path().join("vcenter-ca.pem");
    std::fs::write(&ca, include_str!("testdata/ca.pem")).unwrap();
    let (server, _) = vcenter_server_tls();
    let mut cfg = vsphere_config(&dir, &server, PASSWORD);
    if let Some(vc) = cfg.vcenter.as_mut() {
        vc.ca_file = Some(ca);
    }
    let d = detect(&cfg);
    assert_eq!(without_guestinfo_warning(&d), Vec::<&str>::new());
    assert_eq!(
        layer(&d, Source::VSphere),
        Some(&labels("zone=z1,rack=r1,hypervisor=esx-03.lab"))
    );
    let asked = server.seen().len();

    // Without it the certificate is unknown: a warning, no labels, and no login was sent.
    if let Some(vc) = cfg.vcenter.as_mut() {
        vc.ca_file = None;
    }
    let d = detect(&cfg);
    assert_eq!(layer(&d, Source::VSphere), None);
    let w = without_guestinfo_warning(&d);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("vcenter: POST /api/session: "), "{w:?}");
    assert!(w[0].contains("certificate"), "{w:?}");
    assert_eq!(server.seen().len(), asked, "no request got through");
}
