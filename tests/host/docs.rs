//! Host tier: what the operator docs (README.md and docs/) tell people to run is what pxd
//! takes. Every `pxd` command line in a shell block parses with the CLI; every
//! `docker volume create -d pxd` and `dvdcli` line names options and specs the plugin
//! accepts; every JSON and YAML block parses, a Marathon app's pxd volumes included; and the
//! systemd unit passes `systemd-analyze verify`. Needs no root and no daemon. Run with
//! `cargo test -p pxd-tests --test host_docs`.

use clap::Parser;
use pxd::volume::spec::{inline_pairs, VolumeSpec};
use pxd_tests::daemon::pxd_binary;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

/// README.md and every docs/*.md, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let mut paths = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a document");
            (p, text)
        })
        .collect()
}

/// The fenced blocks of `text` tagged `lang`, each as its lines (list indentation removed).
fn blocks(text: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match (&mut current, t.strip_prefix("```")) {
            (None, Some(tag)) if tag.trim() == lang => current = Some(Vec::new()),
            (Some(_), Some("")) => out.extend(current.take()),
            (Some(lines), _) => lines.push(t.to_owned()),
            (None, _) => {}
        }
    }
    out
}

/// The commands of a shell block: continuations joined, comments dropped, split at `;`,
/// `&&` and `|`, `sudo` taken off.
fn commands(block: &[String]) -> Vec<String> {
    let mut joined = Vec::new();
    let mut acc = String::new();
    for line in block {
        match line.strip_suffix('\\') {
            Some(part) => acc.push_str(part),
            None => {
                acc.push_str(line);
                joined.push(std::mem::take(&mut acc));
            }
        }
    }
    joined
        .iter()
        .map(|l| l.split(" #").next().unwrap_or_default())
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split([';', '|']).flat_map(|c| c.split("&&")))
        .map(|c| c.trim().trim_start_matches("sudo ").trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Shell words, with single and double quotes.
fn words(command: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut any = false;
    for c in command.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// Every command line of every shell block of the docs, with where it is.
fn shell_commands() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (path, text) in documents() {
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        for block in blocks(&text, "sh") {
            for c in commands(&block) {
                out.push((name.clone(), words(&c)));
            }
        }
    }
    out
}

#[test]
fn every_pxd_command_in_the_docs_parses() {
    let mut seen = 0;
    for (doc, words) in shell_commands() {
        if words.first().map(String::as_str) != Some("pxd") {
            continue;
        }
        if let Err(e) = pxd::cli::Cli::try_parse_from(&words) {
            use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
            assert!(
                matches!(e.kind(), DisplayHelp | DisplayVersion),
                "{doc}: `{}`: {e}",
                words.join(" ")
            );
        }
        seen += 1;
    }
    assert!(seen > 20, "only {seen} pxd commands found in the docs");
}

/// The volume options a `docker volume create -d pxd` line gives the plugin: its `--opt`s,
/// and the name (or the inline spec given as the name).
fn docker_create_options(words: &[String]) -> Vec<(String, String)> {
    let mut opts = Vec::new();
    let mut name = None;
    let mut i = 3;
    while i < words.len() {
        match words[i].as_str() {
            "-d" | "--driver" => i += 1,
            "-o" | "--opt" => {
                let (k, v) = words[i + 1].split_once('=').expect("--opt KEY=VALUE");
                opts.push((k.to_owned(), v.to_owned()));
                i += 1;
            }
            w => name = Some(w.to_owned()),
        }
        i += 1;
    }
    let name = name.expect("a volume name");
    match name.contains('=') {
        true => opts.extend(
            inline_pairs(&name)
                .expect("an inline spec")
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        ),
        false => opts.push(("name".to_owned(), name)),
    }
    opts
}

/// Whether the plugin would create a volume from `opts` (its default size when none).
fn plugin_takes(opts: &[(String, String)]) -> Result<VolumeSpec, String> {
    let mut pairs: Vec<(&str, &str)> = opts
        .iter()
        .filter(|(k, _)| k != "secret_key_file")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if !pairs.iter().any(|(k, _)| *k == "size") {
        pairs.push(("size", pxd::api::plugin::DEFAULT_SIZE));
    }
    VolumeSpec::from_options(pairs).map_err(|e| e.to_string())
}

#[test]
fn docker_and_dvdcli_lines_name_what_the_plugin_takes() {
    let (mut docker, mut dvdcli) = (0, 0);
    for (doc, words) in shell_commands() {
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        if w.starts_with(&["docker", "volume", "create"]) {
            assert!(
                w.contains(&"pxd"),
                "{doc}: `{}` uses another driver",
                w.join(" ")
            );
            let opts = docker_create_options(&words);
            if let Err(e) = plugin_takes(&opts) {
                panic!("{doc}: `{}`: {e}", w.join(" "));
            }
            docker += 1;
        }
        if w.first() == Some(&"dvdcli") {
            assert!(w.contains(&"--volumedriver=pxd"), "{doc}: {w:?}");
            let name = w
                .iter()
                .find_map(|a| a.strip_prefix("--volumename="))
                .expect("--volumename=");
            if name.contains('=') {
                let spec = VolumeSpec::parse_inline(name);
                assert!(spec.is_ok(), "{doc}: {name}: {spec:?}");
            }
            dvdcli += 1;
        }
    }
    assert!(
        docker >= 2 && dvdcli >= 2,
        "docker {docker}, dvdcli {dvdcli}"
    );
}

#[test]
fn json_and_yaml_blocks_parse_and_a_marathon_app_names_a_pxd_volume() {
    let mut volumes = 0;
    let mut yaml = 0;
    for (path, text) in documents() {
        for block in blocks(&text, "json") {
            let v: serde_json::Value = serde_json::from_str(&block.join("\n"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let Some(vols) = v["container"]["volumes"].as_array() else {
                continue;
            };
            for vol in vols.iter().filter(|v| v.get("external").is_some()) {
                let ext = &vol["external"];
                assert_eq!(ext["provider"], "dvdi", "{}", path.display());
                assert_eq!(ext["options"]["dvdi/driver"], "pxd", "{}", path.display());
                let name = ext["name"].as_str().expect("a volume name");
                let spec = VolumeSpec::parse_inline(name);
                assert!(spec.is_ok(), "{}: {name}: {spec:?}", path.display());
                volumes += 1;
            }
        }
        for block in blocks(&text, "yaml") {
            let parsed: Result<serde_yaml_ng::Value, _> =
                serde_yaml_ng::from_str(&block.join("\n"));
            assert!(parsed.is_ok(), "{}: {parsed:?}", path.display());
            yaml += 1;
        }
    }
    assert!(volumes >= 1 && yaml >= 2, "volumes {volumes}, yaml {yaml}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(root().join("pxd/packaging/pxd.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/pxd daemon"));
    // Verify checks that ExecStart's binary exists: point it at the one built.
    let dir = std::env::temp_dir().join(format!("pxdt-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let path = dir.join("pxd.service");
    let built = pxd_binary().display().to_string();
    std::fs::write(&path, unit.replace("/usr/local/bin/pxd", &built)).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Warnings (unknown keys, bad values) do not fail the command: none may name the unit.
    assert!(!err.contains("pxd.service"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
