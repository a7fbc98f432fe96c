//! vCenter, through the vSphere Automation REST API (`/api`, vSphere 7.0 U2 and later):
//! which ESXi host runs this VM (the hypervisor label), and the region, zone and rack tags
//! on that host and on its cluster. Host tags beat cluster tags, and guestinfo beats both.
//!
//! The hypervisor label is the host's name in vCenter when that is a valid label value, else
//! its first DNS label (`esx-03` of a name too long to be one); a name that is neither is
//! left out with a warning rather than rewritten, so a label always reads back as a name an
//! administrator can find in vCenter.

use super::http::{encode, Client, Failure};
use super::shown;
use super::VCenter;
use crate::{Domain, Labels};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;
use ureq::http::Method;

/// The login, read from the credentials file. `Debug` hides the password.
struct Credentials {
    user: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// `user=NAME` and `password=SECRET` lines; blank lines and `#` comments are skipped.
    /// Errors never quote the file's text, which holds the password.
    fn read(path: &Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("credentials file {}: {e}", path.display()))?;
        let (mut user, mut password) = (None, None);
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((k, v)) if k.trim() == "user" => user = Some(v.trim().to_owned()),
                Some((k, v)) if k.trim() == "password" => {
                    password = Some(v.trim_end_matches('\r').to_owned())
                }
                _ => {}
            }
        }
        match (user, password) {
            (Some(user), Some(password)) if !user.is_empty() => Ok(Credentials { user, password }),
            _ => Err(format!(
                "credentials file {}: needs a user=NAME and a password=SECRET line",
                path.display()
            )),
        }
    }
}

#[derive(Deserialize)]
struct Vm {
    vm: String,
}

#[derive(Deserialize)]
struct Host {
    host: String,
    name: String,
}

#[derive(Deserialize)]
struct Cluster {
    cluster: String,
}

#[derive(Deserialize)]
struct Tag {
    name: String,
    category_id: String,
}

#[derive(Deserialize)]
struct Category {
    name: String,
}

/// A logged-in session.
struct Api<'a> {
    client: &'a Client,
    base: &'a str,
    session: String,
}

impl Api<'_> {
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<T, String> {
        let step = format!("{method} {path}");
        let r = self
            .client
            .send(
                method,
                &format!("{}{path}", self.base),
                &[("vmware-api-session-id", &self.session)],
                body,
            )
            .map_err(|e| format!("{step}: {e}"))?;
        serde_json::from_str(&r.body)
            .map_err(|e| format!("{step}: unexpected answer ({e}): {}", shown(&r.body)))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.call(Method::GET, path, None)
    }

    /// The region, zone and rack tags on one object; `category_names` caches categories.
    fn tags(
        &self,
        kind: &str,
        id: &str,
        category_names: &mut BTreeMap<String, String>,
        warnings: &mut Vec<String>,
    ) -> Labels {
        let mut l = Labels::default();
        let body = serde_json::json!({ "object_id": { "id": id, "type": kind } }).to_string();
        let ids: Vec<String> = match self.call(
            Method::POST,
            "/api/cis/tagging/tag-association?action=list-attached-tags",
            Some(&body),
        ) {
            Ok(ids) => ids,
            Err(e) => {
                warnings.push(format!("vcenter: tags of {kind} {id}: {e}"));
                return l;
            }
        };
        for tag_id in ids {
            let tag: Tag = match self.get(&format!("/api/cis/tagging/tag/{}", encode(&tag_id))) {
                Ok(t) => t,
                Err(e) => {
                    warnings.push(format!("vcenter: {e}"));
                    continue;
                }
            };
            let category = match category_names.get(&tag.category_id) {
                Some(c) => c.clone(),
                None => {
                    let path = format!("/api/cis/tagging/category/{}", encode(&tag.category_id));
                    match self.get::<Category>(&path) {
                        Ok(c) => {
                            category_names.insert(tag.category_id.clone(), c.name.clone());
                            c.name
                        }
                        Err(e) => {
                            warnings.push(format!("vcenter: {e}"));
                            continue;
                        }
                    }
                }
            };
            if let Some(d) = domain_of(&category) {
                if let Err(e) = l.set(d, &tag.name) {
                    warnings.push(format!(
                        "vcenter: tag {} in category {category:?} on {kind} {id}: {e}",
                        shown(&tag.name)
                    ));
                }
            }
        }
        l
    }

    /// Everything vCenter knows of the VM's place, with a warning for each step that failed.
    fn labels(&self, vm_name: &str, warnings: &mut Vec<String>) -> Result<Labels, String> {
        let mut out = Labels::default();
        let name = encode(vm_name);
        let vms: Vec<Vm> = self.get(&format!("/api/vcenter/vm?names={name}"))?;
        let Some(vm) = vms.into_iter().next() else {
            return Err(format!("no VM named {vm_name:?}"));
        };
        let hosts: Vec<Host> = self.get("/api/vcenter/host")?;
        let mut found = None;
        for h in hosts {
            let on: Vec<Vm> = self.get(&format!(
                "/api/vcenter/vm?names={name}&hosts={}",
                encode(&h.host)
            ))?;
            if on.iter().any(|v| v.vm == vm.vm) {
                found = Some(h);
                break;
            }
        }
        let Some(host) = found else {
            return Err(format!("VM {vm_name:?} ({}) is on no host listed", vm.vm));
        };
        let short = host.name.split('.').next().unwrap_or_default();
        if out.set(Domain::Hypervisor, &host.name).is_err()
            && out.set(Domain::Hypervisor, short).is_err()
        {
            warnings.push(format!(
                "vcenter: host name {} is not a valid label value; no hypervisor label",
                shown(&host.name)
            ));
        }
        let mut categories = BTreeMap::new();
        match self.cluster_of(&host.host) {
            Ok(Some(c)) => {
                out.overlay(&self.tags("ClusterComputeResource", &c, &mut categories, warnings))
            }
            Ok(None) => {}
            Err(e) => warnings.push(format!("vcenter: cluster of {}: {e}", host.host)),
        }
        out.overlay(&self.tags("HostSystem", &host.host, &mut categories, warnings));
        Ok(out)
    }

    /// The cluster holding `host`, if any: a standalone host has none.
    fn cluster_of(&self, host: &str) -> Result<Option<String>, String> {
        let clusters: Vec<Cluster> = self.get("/api/vcenter/cluster")?;
        for c in clusters {
            let members: Vec<Host> = self.get(&format!(
                "/api/vcenter/host?clusters={}",
                encode(&c.cluster)
            ))?;
            if members.iter().any(|h| h.host == host) {
                return Ok(Some(c.cluster));
            }
        }
        Ok(None)
    }
}

/// The label a tag category sets: `region`, `zone` or `rack`, in any case, optionally with a
/// `pxd-` or `pxd.` prefix so a site can keep its own categories of the same name apart.
fn domain_of(category: &str) -> Option<Domain> {
    let c = category.trim().to_ascii_lowercase();
    let c = c
        .strip_prefix("pxd-")
        .or_else(|| c.strip_prefix("pxd."))
        .unwrap_or(&c);
    match c {
        "region" => Some(Domain::Region),
        "zone" => Some(Domain::Zone),
        "rack" => Some(Domain::Rack),
        _ => None,
    }
}

/// Logs in, asks, logs out. Every failure is a warning naming the step; the password is
/// sent in one Authorization header and appears nowhere else.
pub(super) fn detect(vc: &VCenter, timeout: Duration, warnings: &mut Vec<String>) -> Labels {
    let creds = match Credentials::read(&vc.credentials_file) {
        Ok(c) => c,
        Err(e) => {
            warnings.push(format!("vcenter: {e}"));
            return Labels::default();
        }
    };
    let ca = match &vc.ca_file {
        Some(p) => match std::fs::read(p) {
            Ok(pem) => Some(pem),
            Err(e) => {
                warnings.push(format!("vcenter: ca_file {}: {e}", p.display()));
                return Labels::default();
            }
        },
        None => None,
    };
    let client = match Client::new(timeout, ca.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let file = vc.ca_file.as_deref().unwrap_or(Path::new("-"));
            warnings.push(format!("vcenter: ca_file {}: {e}", file.display()));
            return Labels::default();
        }
    };
    let base = vc.url.trim_end_matches('/');
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.user, creds.password));
    let login = client.send(
        Method::POST,
        &format!("{base}/api/session"),
        &[("authorization", &format!("Basic {basic}"))],
        None,
    );
    let session = match login {
        Ok(r) => match serde_json::from_str::<String>(&r.body) {
            Ok(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => s,
            _ => {
                warnings.push(format!(
                    "vcenter: POST /api/session: not a session id: {}",
                    shown(&r.body)
                ));
                return Labels::default();
            }
        },
        Err(e) => {
            let hint = match e {
                Failure::Status(401) => " (check the user and password in the credentials file)",
                _ => "",
            };
            warnings.push(format!("vcenter: POST /api/session: {e}{hint}"));
            return Labels::default();
        }
    };
    let api = Api {
        client: &client,
        base,
        session,
    };
    let out = match api.labels(&vc.vm_name, warnings) {
        Ok(l) => l,
        Err(e) => {
            warnings.push(format!("vcenter: {e}"));
            Labels::default()
        }
    };
    if let Err(e) = client.send(
        Method::DELETE,
        &format!("{base}/api/session"),
        &[("vmware-api-session-id", &api.session)],
        None,
    ) {
        warnings.push(format!("vcenter: DELETE /api/session: {e}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_map_to_domains() {
        assert_eq!(domain_of("rack"), Some(Domain::Rack));
        assert_eq!(domain_of("Zone"), Some(Domain::Zone));
        assert_eq!(domain_of("PXD-Region"), Some(Domain::Region));
        assert_eq!(domain_of("pxd.rack"), Some(Domain::Rack));
        assert_eq!(domain_of("owner"), None);
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "# vCenter\nuser=pxd@vsphere.local\npassword= s3cret=x\n",
        )
        .unwrap();
        let c = Credentials::read(&path).unwrap();
        assert_eq!(c.user, "pxd@vsphere.local");
        assert_eq!(c.password, " s3cret=x");
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::write(&path, "password=s3cret\n").unwrap();
        let e = Credentials::read(&path).unwrap_err();
        assert!(e.contains("needs a user=NAME"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
