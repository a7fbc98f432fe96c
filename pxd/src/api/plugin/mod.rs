//! The Docker volume plugin (DESIGN §8): what Docker, and Mesos through dvdcli, call to
//! create, mount and remove pxd volumes. Every call is an HTTP POST of JSON on the plugin
//! socket (`/run/docker/plugins/pxd.sock`), served from the daemon's start.
//!
//! | endpoint | answers |
//! |---|---|
//! | `/Plugin.Activate` | `{"Implements": ["VolumeDriver"]}` |
//! | `/VolumeDriver.Create` `{Name, Opts}` | `{Err}`; an existing volume is success |
//! | `/VolumeDriver.Remove` `{Name}` | `{Err}`; refused while mounted |
//! | `/VolumeDriver.Mount` `{Name, ID}` | `{Mountpoint, Err}`: attached here and mounted |
//! | `/VolumeDriver.Unmount` `{Name, ID}` | `{Err}`; the last reference unmounts (and detaches) |
//! | `/VolumeDriver.Path` `{Name}` | `{Mountpoint, Err}` |
//! | `/VolumeDriver.Get` `{Name}` | `{Volume: {Name, Mountpoint, Status}, Err}` |
//! | `/VolumeDriver.List` | `{Volumes: [{Name, Mountpoint}], Err}` |
//! | `/VolumeDriver.Capabilities` | `{"Capabilities": {"Scope": "global"}}` |
//!
//! `Name` may be a plain volume name or the whole inline spec (`size=1G,repl=2,name=db`);
//! every endpoint takes the volume's name out of it. `Opts` use the CLI's keys (size, repl,
//! fs, io_priority, max_iops, max_bandwidth, secure, label, nodes, ...) and
//! `secret_key_file`, a file on this node holding the volume's passphrase (Docker shows a
//! volume's options to anyone who may inspect it, so the passphrase itself is never one).
//! A volume created with no size gets [`DEFAULT_SIZE`]. Errors are `{"Err": "..."}` with
//! status 200, as Docker's plugin helpers expect.

pub mod refs;

use super::volumes::{self, CreateRequest, MountRequest, VolumeView};
use super::{AppState, JsonBody, Path};
use crate::store::types::{Fs, Secret};
use crate::volume::spec::check_name;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use refs::{Refs, RefsFile};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Mutex;

/// The size of a volume Docker or dvdcli creates without one.
pub const DEFAULT_SIZE: &str = "1G";

/// The media type Docker's plugin client sends and expects.
const MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// What the plugin's handlers share: the API's state, and the mount references, changed one
/// call at a time.
#[derive(Clone)]
pub struct PluginState {
    api: AppState,
    refs: Arc<Mutex<(Refs, RefsFile)>>,
}

impl PluginState {
    /// The plugin over `api`, with the references saved in `data_dir`.
    pub fn new(api: AppState, data_dir: &std::path::Path) -> Result<PluginState, refs::RefsError> {
        let file = RefsFile::new(data_dir);
        let refs = match file.load() {
            Ok(r) => r,
            // Never a reason not to serve storage: with no counts, an Unmount leaves a
            // volume mounted rather than unmounting it under a running container.
            Err(e @ refs::RefsError::Decode { .. }) => {
                tracing::warn!(error = %e, "the Docker plugin's mount counts are unreadable; starting from none");
                Refs::default()
            }
            Err(e) => return Err(e),
        };
        Ok(PluginState {
            api,
            refs: Arc::new(Mutex::new((refs, file))),
        })
    }
}

/// The fields Docker and dvdcli send; any may be missing (dvdcli sends no `ID`).
#[derive(Debug, Default, Deserialize)]
struct Request {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
    #[serde(rename = "ID", default)]
    id: String,
}

/// The calls that name a volume (or list them), each answered by [`call`].
const CALLS: [&str; 7] = [
    "Create", "Remove", "Mount", "Unmount", "Path", "Get", "List",
];

pub fn routes(state: PluginState) -> Router {
    let mut r = Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Capabilities", post(capabilities));
    for name in CALLS {
        r = r.route(
            &format!("/VolumeDriver.{name}"),
            post(move |State(p): State<PluginState>, body: Bytes| call(p, name, body)),
        );
    }
    r.with_state(state)
}

/// A JSON answer with Docker's plugin media type.
fn answer(body: Value) -> Response {
    ([(header::CONTENT_TYPE, MEDIA_TYPE)], body.to_string()).into_response()
}

fn err(msg: impl std::fmt::Display) -> Response {
    answer(json!({ "Err": msg.to_string() }))
}

async fn activate() -> Response {
    answer(json!({ "Implements": ["VolumeDriver"] }))
}

async fn capabilities() -> Response {
    answer(json!({ "Capabilities": { "Scope": "global" } }))
}

async fn call(p: PluginState, call: &'static str, body: Bytes) -> Response {
    let req: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return err(format!(
                    "the request is not the plugin protocol's JSON: {e}"
                ))
            }
        }
    };
    let result = match call {
        "Create" => Box::pin(create(&p, &req)).await,
        "Remove" => Box::pin(remove(&p, &req)).await,
        "Mount" => Box::pin(mount(&p, &req)).await,
        "Unmount" => Box::pin(unmount(&p, &req)).await,
        "Path" => path(&p, &req).await,
        "Get" => get(&p, &req).await,
        "List" => list(&p).await,
        other => Err(format!("{other} is not a VolumeDriver call")),
    };
    match result {
        Ok(body) => answer(body),
        Err(e) => {
            tracing::info!(call = %call, name = %req.name, error = %e, "docker plugin call refused");
            err(e)
        }
    }
}

/// The inline spec's `key=value` pairs, or none for a plain name.
fn inline_pairs(name: &str) -> Result<Option<Vec<(String, String)>>, String> {
    if !name.contains('=') {
        return Ok(None);
    }
    let pairs = crate::volume::spec::inline_pairs(name).map_err(|e| format!("Name: {e}"))?;
    Ok(Some(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    ))
}

/// The pxd volume a request's `Name` means: the name itself, or the inline spec's `name=`.
fn volume_name(name: &str) -> Result<String, String> {
    let name = match inline_pairs(name)? {
        None => name.to_owned(),
        Some(pairs) => pairs
            .into_iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v)
            .ok_or_else(|| format!("Name: the inline spec {name:?} has no name=..."))?,
    };
    check_name(&name).map_err(|e| format!("Name: {e}"))?;
    Ok(name)
}

/// The create options: the inline spec's, then `Opts` (a key in both must agree), the
/// passphrase out of `secret_key_file`, and the default size.
fn create_options(req: &Request) -> Result<(BTreeMap<String, String>, Option<Secret>), String> {
    let mut options = BTreeMap::new();
    for (k, v) in inline_pairs(&req.name)?.unwrap_or_default() {
        options.insert(k, v);
    }
    options.insert("name".to_owned(), volume_name(&req.name)?);
    let mut secret = None;
    for (k, v) in req.opts.iter().flatten() {
        if k == "secret_key_file" {
            let text = std::fs::read_to_string(v)
                .map_err(|e| format!("secret_key_file: cannot read {v}: {e}"))?;
            let pass = text.trim_end_matches(['\r', '\n']).to_owned();
            secret = Some(Secret::new(pass));
            continue;
        }
        match options.get(k) {
            Some(was) if was != v => {
                return Err(format!(
                    "{k}: the inline spec says {was:?} and Opts say {v:?}"
                ))
            }
            _ => {
                options.insert(k.clone(), v.clone());
            }
        }
    }
    options
        .entry("size".to_owned())
        .or_insert_with(|| DEFAULT_SIZE.to_owned());
    if options.get("fs").is_some_and(|f| f == "raw") {
        return Err(
            "fs: a raw volume has no filesystem for Docker to mount; use ext4 or xfs".to_owned(),
        );
    }
    Ok((options, secret))
}

/// The volume called `name`, as the API shows it, if there is one.
async fn find(p: &PluginState, name: &str) -> Result<Option<VolumeView>, String> {
    match volumes::inspect(State(p.api.clone()), Path(name.to_owned())).await {
        Ok(v) => Ok(Some(v.0)),
        Err(super::ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Where `v` is mounted on this node, if it is.
fn mounted_here(p: &PluginState, v: &VolumeView) -> Option<String> {
    let me = p.api.cluster.id();
    let here = match v.repl {
        1 => v.node == Some(me),
        _ => v.attachment.as_ref().is_some_and(|a| a.node == me),
    };
    v.mountpoint.clone().filter(|_| here)
}

async fn create(p: &PluginState, req: &Request) -> Result<Value, String> {
    let (options, secret_key) = create_options(req)?;
    let name = &options["name"];
    if find(p, name).await?.is_some() {
        return Ok(json!({ "Err": "" }));
    }
    let req = CreateRequest {
        options,
        secret_key,
    };
    let _created = Box::pin(volumes::create(State(p.api.clone()), JsonBody(req)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(json!({ "Err": "" }))
}

async fn remove(p: &PluginState, req: &Request) -> Result<Value, String> {
    let name = volume_name(&req.name)?;
    let mut guard = p.refs.lock().await;
    let refs = guard.0.of(&name);
    if refs.count() > 0 {
        return Err(format!(
            "volume {name} is in use: mounted for {} container(s); stop them first",
            refs.count()
        ));
    }
    if find(p, &name).await?.is_none() {
        return Ok(json!({ "Err": "" }));
    }
    let _deleted = Box::pin(volumes::delete(State(p.api.clone()), Path(name.clone())))
        .await
        .map_err(|e| e.to_string())?;
    guard.0.forget(&name);
    guard.1.save(&guard.0).map_err(|e| e.to_string())?;
    Ok(json!({ "Err": "" }))
}

async fn mount(p: &PluginState, req: &Request) -> Result<Value, String> {
    let name = volume_name(&req.name)?;
    let mut guard = p.refs.lock().await;
    let v = find(p, &name)
        .await?
        .ok_or_else(|| format!("no volume called {name:?}"))?;
    if v.fs == Fs::Raw {
        return Err(format!(
            "volume {name} is raw: there is no filesystem for Docker to mount"
        ));
    }
    let before = guard.0.of(&name);
    guard.0.add(&name, &req.id);
    guard.1.save(&guard.0).map_err(|e| e.to_string())?;
    let mounted = match mounted_here(p, &v) {
        Some(at) => Ok(at),
        None => Box::pin(volumes::mount(
            State(p.api.clone()),
            Path(name.clone()),
            JsonBody(MountRequest::default()),
        ))
        .await
        .map_err(|e| e.to_string())
        .and_then(|v| {
            v.0.mountpoint
                .clone()
                .ok_or_else(|| format!("volume {name} shows no mountpoint after its mount"))
        }),
    };
    match mounted {
        Ok(at) => Ok(json!({ "Mountpoint": at, "Err": "" })),
        Err(e) => {
            guard.0.restore(&name, before);
            let _ = guard.1.save(&guard.0);
            Err(e)
        }
    }
}

async fn unmount(p: &PluginState, req: &Request) -> Result<Value, String> {
    let name = volume_name(&req.name)?;
    let mut guard = p.refs.lock().await;
    let before = guard.0.of(&name);
    let left = guard.0.remove(&name, &req.id);
    guard.1.save(&guard.0).map_err(|e| e.to_string())?;
    if left > 0 || before.count() == 0 {
        return Ok(json!({ "Err": "" }));
    }
    let Some(v) = find(p, &name).await? else {
        return Ok(json!({ "Err": "" }));
    };
    if mounted_here(p, &v).is_none() {
        return Ok(json!({ "Err": "" }));
    }
    if let Err(e) = Box::pin(volumes::unmount(State(p.api.clone()), Path(name.clone()))).await {
        guard.0.restore(&name, before);
        let _ = guard.1.save(&guard.0);
        return Err(e.to_string());
    }
    Ok(json!({ "Err": "" }))
}

async fn path(p: &PluginState, req: &Request) -> Result<Value, String> {
    let name = volume_name(&req.name)?;
    let v = find(p, &name)
        .await?
        .ok_or_else(|| format!("no volume called {name:?}"))?;
    let at = mounted_here(p, &v).unwrap_or_default();
    Ok(json!({ "Mountpoint": at, "Err": "" }))
}

async fn get(p: &PluginState, req: &Request) -> Result<Value, String> {
    let name = volume_name(&req.name)?;
    let v = find(p, &name)
        .await?
        .ok_or_else(|| format!("no volume called {name:?}"))?;
    let refs = p.refs.lock().await.0.of(&name).count();
    Ok(json!({
        "Volume": {
            // As asked: Docker knows a volume made from an inline spec by the whole spec.
            "Name": req.name,
            "Mountpoint": mounted_here(p, &v).unwrap_or_default(),
            "Status": {
                "id": v.id,
                "size": v.size,
                "fs": v.fs.to_string(),
                "repl": v.repl,
                "encrypted": v.encrypted,
                "attached_on": v.attachment.as_ref().map(|a| a.node_name.clone()),
                "docker_mounts": refs,
            },
        },
        "Err": "",
    }))
}

async fn list(p: &PluginState) -> Result<Value, String> {
    let all = volumes::list(State(p.api.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let vols: Vec<Value> = all
        .0
        .iter()
        .map(|v| json!({ "Name": v.name, "Mountpoint": mounted_here(p, v).unwrap_or_default() }))
        .collect();
    Ok(json!({ "Volumes": vols, "Err": "" }))
}

/// Serves the plugin on `path` (mode 0660, replacing a stale socket), where Docker looks
/// for plugins by name.
pub async fn serve(state: PluginState, path: &std::path::Path) -> Result<(), super::ServeError> {
    let listener = super::bind_unix(path)?;
    let app = routes(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the Docker plugin socket stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, opts: &[(&str, &str)]) -> Request {
        Request {
            name: name.to_owned(),
            opts: Some(
                opts.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            id: String::new(),
        }
    }

    #[test]
    fn the_name_comes_out_of_an_inline_spec_and_options_merge() {
        assert_eq!(volume_name("db").unwrap(), "db");
        assert_eq!(volume_name("size=1G,repl=2,name=db").unwrap(), "db");
        assert_eq!(volume_name("size=1G, name=db").unwrap(), "db");
        assert!(volume_name("size=1G").unwrap_err().contains("no name="));
        assert!(volume_name("size=1G,bad")
            .unwrap_err()
            .contains("key=value"));
        assert!(volume_name("a/b").unwrap_err().starts_with("Name:"));

        let (o, s) = create_options(&req("size=2G,name=v2", &[("repl", "2")])).unwrap();
        assert_eq!(
            (o["name"].as_str(), o["size"].as_str(), o["repl"].as_str()),
            ("v2", "2G", "2")
        );
        assert!(s.is_none());
        let (o, _) = create_options(&req("v1", &[("io_priority", "high")])).unwrap();
        assert_eq!(o["size"], DEFAULT_SIZE);
        let e = create_options(&req("size=2G,name=v", &[("size", "3G")])).unwrap_err();
        assert!(e.starts_with("size:"), "{e}");
        let e = create_options(&req("v", &[("fs", "raw")])).unwrap_err();
        assert!(e.starts_with("fs:"), "{e}");
        let e = create_options(&req("v", &[("secret_key_file", "/nonexistent/pxd")])).unwrap_err();
        assert!(e.starts_with("secret_key_file:"), "{e}");
    }

    #[test]
    fn requests_parse_with_or_without_an_id() {
        let r: Request = serde_json::from_str(r#"{"Name":"db","Opts":{}}"#).unwrap();
        assert_eq!((r.name.as_str(), r.id.as_str()), ("db", ""));
        let r: Request = serde_json::from_str(r#"{"Name":"db","ID":"abc","Opts":null}"#).unwrap();
        assert_eq!(r.id, "abc");
        assert!(r.opts.is_none());
    }
}
