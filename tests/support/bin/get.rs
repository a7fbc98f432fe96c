//! Prints what a GET of one path on a daemon's unix socket answers, for tests that drive the
//! guest from a shell (the `/metrics` a scraper would read).
//!
//! Usage: `pxd-test-get SOCKET PATH`

use pxd::api::client::{BlockingClient, Method, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, path] = args.as_slice() else {
        eprintln!("usage: pxd-test-get SOCKET PATH");
        std::process::exit(2);
    };
    let got =
        BlockingClient::new(Target::Unix(socket.into())).and_then(|c| c.raw(Method::GET, path));
    match got {
        Ok((status, body)) if status.is_success() => {
            print!("{}", String::from_utf8_lossy(&body));
        }
        Ok((status, body)) => {
            eprintln!("{status}: {}", String::from_utf8_lossy(&body));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("pxd-test-get: {e}");
            std::process::exit(1);
        }
    }
}
