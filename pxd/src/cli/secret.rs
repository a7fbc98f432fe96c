//! Secrets the CLI sends (a volume passphrase, the TCP API token) come from a file, from
//! stdin or from an environment variable, never from a command-line value: every process's
//! `/proc/PID/cmdline` is world-readable, and shells keep histories.

use super::CliError;
use std::io::Read;
use zeroize::Zeroizing;

/// What `--secret_key` and `--token` take.
pub const SOURCES: &str = "FILE (its contents), - (standard input) or env:NAME (the variable NAME)";

/// The longest secret read, in bytes.
const MAX_SECRET: usize = 4096;

/// Reads the secret `source` names for `field`: a file's contents, standard input (`-`) or an
/// environment variable (`env:NAME`). One trailing newline is dropped; an empty secret is
/// refused.
pub fn read(field: &str, source: &str) -> Result<Zeroizing<String>, CliError> {
    let usage = |why: String| CliError::Usage(format!("{field}: {why}"));
    let mut text = Zeroizing::new(String::new());
    if source == "-" {
        std::io::stdin()
            .take(MAX_SECRET as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("reading standard input: {e}")))?;
    } else if let Some(name) = source.strip_prefix("env:") {
        *text = std::env::var(name)
            .map_err(|_| usage(format!("the environment variable {name} is not set")))?;
    } else {
        let file = std::fs::File::open(source)
            .map_err(|e| usage(format!("{source}: {e} (give {SOURCES})")))?;
        file.take(MAX_SECRET as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("{source}: {e}")))?;
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() || text.len() > MAX_SECRET {
        return Err(usage(format!(
            "the secret must be 1 to {MAX_SECRET} bytes, got {}",
            text.len()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "horse battery\n").unwrap();
        assert_eq!(
            read("secret_key", f.to_str().unwrap()).unwrap().as_str(),
            "horse battery"
        );
        std::fs::write(&f, "").unwrap();
        let e = read("secret_key", f.to_str().unwrap()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("secret_key: the secret must be 1 to"),
            "{e}"
        );
        let e = read("token", "env:PXD_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            e.to_string(),
            "token: the environment variable PXD_TEST_SURELY_UNSET is not set"
        );
        let e = read("secret_key", "my passphrase").unwrap_err();
        assert!(e.to_string().contains("give FILE"), "{e}");
    }
}
