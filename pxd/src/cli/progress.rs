//! Progress on long operations while a person watches (stdout and stderr are terminals and
//! no `--json`): a spinner while one long call runs, a bar while a copy or a resync runs. It
//! draws on stderr and is cleared when done; piped, nothing but the answer is printed.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Whether a person watches the command.
pub fn watched(json: bool) -> bool {
    !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// Runs `call` with a spinner saying `what`, and the time so far, when watched.
pub fn while_running<T>(json: bool, what: &str, call: impl FnOnce() -> T) -> T {
    if !watched(json) {
        return call();
    }
    let spinner = ProgressBar::new_spinner().with_message(what.to_owned());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        spinner.set_style(style);
    }
    spinner.enable_steady_tick(Duration::from_millis(120));
    let out = call();
    spinner.finish_and_clear();
    out
}

/// A bar of bytes done of a total, with a message, for [`watched`] commands.
pub struct Bar(ProgressBar);

impl Default for Bar {
    fn default() -> Bar {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg}\n[{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }
}

impl Bar {
    pub fn show(&self, done: u64, total: u64, msg: String) {
        self.0.set_length(total);
        self.0.set_position(done.min(total));
        self.0.set_message(msg);
    }

    pub fn clear(&self) {
        self.0.finish_and_clear();
    }
}
