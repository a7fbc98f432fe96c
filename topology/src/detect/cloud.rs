//! The clouds' instance metadata services: each names the region and zone an instance runs
//! in, and Azure its fault domain too. Each answer is checked like any label; a service that
//! is down, slow or says something odd costs a warning, never the node's start.

use super::http::{Client, Failure};
use super::shown;
use crate::{Domain, Labels};
use ureq::http::Method;

/// Sets one label, or says why not.
fn put(l: &mut Labels, d: Domain, value: &str, what: &str, src: &str, warnings: &mut Vec<String>) {
    if let Err(e) = l.set(d, value) {
        warnings.push(format!("{src}: {what} {}: {e}", shown(value)));
    }
}

/// AWS IMDSv2: a session token from a PUT, then the placement with the token.
///
/// The token answer is limited to one network hop by default; a container behind a bridge
/// is two hops from the service, so its PUT is dropped and times out until the instance's
/// `HttpPutResponseHopLimit` is 2 or more (`aws ec2 modify-instance-metadata-options
/// --http-put-response-hop-limit 2`). The warning on a token timeout says so.
pub(super) fn aws(client: &Client, base: &str, warnings: &mut Vec<String>) -> Labels {
    let base = base.trim_end_matches('/');
    let mut l = Labels::default();
    let step = "PUT /latest/api/token";
    let token = match client.send(
        Method::PUT,
        &format!("{base}/latest/api/token"),
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        None,
    ) {
        Ok(r) => r.body.trim().to_owned(),
        Err(e @ Failure::Timeout(_)) => {
            warnings.push(format!(
                "aws: {step}: {e}; in a container behind a bridge the IMDSv2 token needs \
                 a hop limit of 2 or more (HttpPutResponseHopLimit, set with \
                 `aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2`)"
            ));
            return l;
        }
        Err(e) => {
            warnings.push(format!("aws: {step}: {e}"));
            return l;
        }
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        warnings.push(format!("aws: {step}: not a token: {}", shown(&token)));
        return l;
    }
    for (d, leaf) in [
        (Domain::Region, "region"),
        (Domain::Zone, "availability-zone"),
    ] {
        let path = format!("/latest/meta-data/placement/{leaf}");
        match client.get(
            &format!("{base}{path}"),
            &[("X-aws-ec2-metadata-token", &token)],
        ) {
            Ok(r) => put(&mut l, d, r.body.trim(), leaf, "aws", warnings),
            Err(e) => warnings.push(format!("aws: GET {path}: {e}")),
        }
    }
    l
}

/// GCP: the zone as `projects/NUM/zones/ZONE`; the region is the zone less its last `-x`.
/// An answer without the `Metadata-Flavor: Google` header did not come from the metadata
/// server (a captive portal or proxy, say) and is ignored.
pub(super) fn gcp(client: &Client, base: &str, warnings: &mut Vec<String>) -> Labels {
    let base = base.trim_end_matches('/');
    let mut l = Labels::default();
    let path = "/computeMetadata/v1/instance/zone";
    let r = match client.get(&format!("{base}{path}"), &[("Metadata-Flavor", "Google")]) {
        Ok(r) => r,
        Err(e) => {
            warnings.push(format!("gcp: GET {path}: {e}"));
            return l;
        }
    };
    let flavor = r.headers.get("metadata-flavor").map(|v| v.as_bytes());
    if flavor != Some(b"Google".as_slice()) {
        warnings.push(format!(
            "gcp: GET {path}: answer lacks the Metadata-Flavor: Google header; ignored"
        ));
        return l;
    }
    let full = r.body.trim();
    let zone = full.rsplit('/').next().unwrap_or_default();
    match zone.rsplit_once('-') {
        Some((region, suffix)) if !region.is_empty() && !suffix.is_empty() => {
            let mut z = Labels::default();
            if let (Ok(()), Ok(())) = (z.set(Domain::Zone, zone), z.set(Domain::Region, region)) {
                l = z;
            } else {
                warnings.push(format!("gcp: GET {path}: not a zone: {}", shown(full)));
            }
        }
        _ => warnings.push(format!("gcp: GET {path}: not a zone: {}", shown(full))),
    }
    l
}

/// Azure IMDS: `location` is the region; `zone` (an availability zone number, empty outside
/// zones) becomes `{location}-{zone}` so that zone 1 of two regions differ; and
/// `platformFaultDomain` becomes the rack as `fd-{n}`, since an Azure fault domain is a set
/// of racks sharing power and a switch: a rack-level domain.
pub(super) fn azure(client: &Client, base: &str, warnings: &mut Vec<String>) -> Labels {
    let base = base.trim_end_matches('/');
    let mut l = Labels::default();
    let path = "/metadata/instance/compute?api-version=2021-02-01";
    let r = match client.get(&format!("{base}{path}"), &[("Metadata", "true")]) {
        Ok(r) => r,
        Err(e) => {
            warnings.push(format!("azure: GET {path}: {e}"));
            return l;
        }
    };
    let doc: serde_json::Value = match serde_json::from_str(&r.body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            warnings.push(format!(
                "azure: GET {path}: not a JSON object: {}",
                shown(&r.body)
            ));
            return l;
        }
    };
    // Strings in practice; numbers are taken too.
    let text = |k: &str| match doc.get(k) {
        Some(serde_json::Value::String(s)) => Some(s.trim().to_owned()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let Some(location) = text("location").filter(|s| !s.is_empty()) else {
        warnings.push(format!("azure: GET {path}: no location in the answer"));
        return l;
    };
    put(
        &mut l,
        Domain::Region,
        &location,
        "location",
        "azure",
        warnings,
    );
    if let Some(zone) = text("zone").filter(|s| !s.is_empty()) {
        put(
            &mut l,
            Domain::Zone,
            &format!("{location}-{zone}"),
            "zone",
            "azure",
            warnings,
        );
    }
    if let Some(fd) = text("platformFaultDomain").filter(|s| !s.is_empty()) {
        put(
            &mut l,
            Domain::Rack,
            &format!("fd-{fd}"),
            "platformFaultDomain",
            "azure",
            warnings,
        );
    }
    l
}
