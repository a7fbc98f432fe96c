//! Host tier: the CLI's shell completions load in bash and complete pxd's own commands, and
//! every shell clap knows gets a script. Needs no root and no daemon. Run with
//! `cargo test -p pxd-tests --test host_cli`.

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
