//! Host tier: the CLI's shell completions load in bash and complete pxd's own commands, and
//! every shell clap knows gets a script; every read command's `--json` parses, against a
//! one-node cluster on this host. Run as root with `cargo test -p pxd-tests --test host_cli`.

use pxd_tests::daemon::pxd_binary;
use std::process::Command;

/// What bash completes for the words `words` (the last one being typed), with pxd's script.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <('{}' completions bash) && COMP_WORDS=({}) && COMP_CWORD={} && \
         _pxd pxd '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        pxd_binary().display(),
        words.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_load_in_bash_and_complete_pxd_s_commands() {
    assert_eq!(bash_completes(&["pxd", "vol"]), ["volume"]);
    assert_eq!(bash_completes(&["pxd", "volume", "cr"]), ["create"]);
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(pxd_binary())
            .args(["completions", shell])
            .output()
            .expect("pxd");
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }
    let out = Command::new(pxd_binary())
        .args(["completions", "tcsh"])
        .output()
        .expect("pxd");
    assert!(!out.status.success(), "an unknown shell is refused");
}

/// Every leaf command of the CLI, as its words after `pxd`.
fn leaves(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|c| c.get_name() != "help")
        .collect();
    if subs.is_empty() && !path.is_empty() {
        out.push(path);
        return;
    }
    for s in subs {
        let mut p = path.clone();
        p.push(s.get_name().to_owned());
        leaves(s, p, out);
    }
}

/// Read commands run here, on a one-node cluster with no pools, with their arguments.
const READ_HERE: &[&[&str]] = &[
    &["cluster", "status"],
    &["cluster", "members"],
    &["cluster", "options"],
    &["cluster", "provision-status"],
    &["node", "list"],
    &["kv", "list", "docs"],
    &["kv", "get", "docs", "k"],
    &["drive", "list"],
    &["volume", "list"],
    &["volume", "stats"],
    &["pool", "list"],
    &["topology", "show"],
];

/// Read commands that need a volume: the VM tier reads their `--json` (vm_volume,
/// vm_replication, vm_rebuild).
const READ_IN_VM: &[&str] = &[
    "volume inspect",
    "volume rebuild-status",
    "volume snapshot list",
];

/// Everything else changes something, prints a secret, or runs a process.
const NOT_READS: &[&str] = &[
    "daemon",
    "completions",
    "cluster init",
    "cluster join",
    "cluster token",
    "cluster api-token",
    "cluster remove",
    "kv put",
    "kv delete",
    "drive add",
    "drive remove",
    "drive replace",
    "drive benchmark",
    "volume create",
    "volume update",
    "volume ha-update",
    "volume delete",
    "volume mount",
    "volume unmount",
    "volume attach",
    "volume detach",
    "volume check",
    "volume snapshot create",
    "volume snapshot delete",
    "volume clone",
    "volume restore",
    "topology tag",
    "topology refresh",
];

#[test]
fn every_read_command_prints_json_that_parses() {
    use clap::CommandFactory;
    let mut all = Vec::new();
    leaves(&pxd::cli::Cli::command(), Vec::new(), &mut all);
    let here: Vec<String> = READ_HERE.iter().map(|c| c[..2].join(" ")).collect();
    for leaf in &all {
        let name = leaf.join(" ");
        let places = [
            here.contains(&name),
            READ_IN_VM.contains(&name.as_str()),
            NOT_READS.contains(&name.as_str()),
        ];
        assert_eq!(
            places.iter().filter(|p| **p).count(),
            1,
            "`pxd {name}`: list it once, as a read command (with its --json checked) or not"
        );
    }
    assert_eq!(
        all.len(),
        READ_HERE.len() + READ_IN_VM.len() + NOT_READS.len()
    );

    use pxd::cli::exit;
    let code = |d: &pxd_tests::daemon::Daemon, args: &[&str]| d.cli(args).status.code();
    let mut d = pxd_tests::daemon::Daemon::new("host-json", 9720, &[]);
    d.start();
    // Not in a cluster yet: a write is refused at once, not after a Raft timeout.
    assert_eq!(
        code(&d, &["kv", "delete", "docs", "k"]),
        Some(exit::CONFLICT)
    );
    d.ok(&["cluster", "init", "--name", "json"]);
    d.ok(&["kv", "put", "docs", "k", "v"]);
    for args in READ_HERE {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = d.ok(&all);
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
        assert!(parsed.is_ok(), "pxd {}: {text:?}", args.join(" "));
    }

    // The documented exit codes, by what went wrong.
    assert_eq!(code(&d, &["cluster", "status"]), Some(exit::OK));
    assert_eq!(code(&d, &["volume", "frobnicate"]), Some(exit::USAGE));
    assert_eq!(
        code(&d, &["kv", "get", "docs", "BAD KEY"]),
        Some(exit::USAGE)
    );
    assert_eq!(
        code(&d, &["kv", "get", "docs", "missing"]),
        Some(exit::NOT_FOUND)
    );
    assert_eq!(code(&d, &["cluster", "init"]), Some(exit::CONFLICT));
    d.terminate();
    assert_eq!(code(&d, &["cluster", "status"]), Some(exit::UNAVAILABLE));
}
