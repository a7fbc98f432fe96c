//! Loopback HTTP/1.1 servers for the detector tests: one connection per request
//! (`Connection: close`), a handler deciding each answer, and a log of what was asked.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the server saw it. Header names are lowercase.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub enum Answer {
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// Read the request, say nothing, and wait for the client to give up.
    Hang,
}

pub fn ok(body: &str) -> Answer {
    status(200, body)
}

pub fn status(status: u16, body: &str) -> Answer {
    Answer::Reply {
        status,
        headers: Vec::new(),
        body: body.to_owned(),
    }
}

pub struct Server {
    pub url: String,
    pub log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// Serves plain HTTP on 127.0.0.1 until the test process ends; each connection on its own
/// thread.
pub fn serve(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Server {
    listen("http", Arc::new(handler), |s, handler, log| {
        connection(s, handler, log)
    })
}

/// Serves HTTPS with the certificate in `testdata/` (for 127.0.0.1, issued by
/// `testdata/ca.pem`, valid 2000 to 2126).
pub fn serve_tls(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Server {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(include_bytes!("testdata/server.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    listen("https", Arc::new(handler), move |s, handler, log| {
        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        connection(rustls::StreamOwned::new(conn, s), handler, log)
    })
}

/// What a connection thread does with its socket.
type Serve = dyn Fn(TcpStream, &Handler, &Mutex<Vec<Seen>>) + Send + Sync;

fn listen(
    scheme: &str,
    handler: Arc<Handler>,
    serve: impl Fn(TcpStream, &Handler, &Mutex<Vec<Seen>>) + Send + Sync + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let serve: Arc<Serve> = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            // Bounds a thread whose client went away without closing.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let (handler, log, serve) = (handler.clone(), log2.clone(), serve.clone());
            std::thread::spawn(move || serve(stream, &*handler, &log));
        }
    });
    Server { url, log }
}

fn connection(mut s: impl Read + Write, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let seen = Seen {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    log.lock().unwrap().push(seen.clone());
    match handler(&seen) {
        Answer::Hang => {
            // Until the client closes or the read timeout ends it.
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
            }
        }
        Answer::Reply {
            status,
            headers,
            body,
        } => {
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let _ = s.write_all(out.as_bytes());
            let _ = s.flush();
        }
    }
}

/// A port on which nothing listens: connections to it are refused.
pub fn refused_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Tests that write tool scripts and run them hold this lock: a fork in another test thread
/// while a script is open for writing would make its exec fail with "text file busy".
pub static FORKS: Mutex<()> = Mutex::new(());

/// An executable shell script `name` in `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
