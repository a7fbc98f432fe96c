//! The one HTTP client the detectors share: blocking, one deadline per request (connect and
//! the whole exchange), no proxy (metadata services are link-local, and a proxy from the
//! environment would answer for the wrong machine), no redirects, TLS by rustls.

use std::fmt;
use std::time::Duration;
use ureq::http::{HeaderMap, Method, Request};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Metadata answers are small; a body past this is not one.
const MAX_BODY: u64 = 1 << 20;

/// Why a request gave nothing usable.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No full answer within the deadline (connect, send, or read).
    Timeout(Duration),
    /// An answer, but not a 2xx one.
    Status(u16),
    /// Anything else: refused, reset, bad TLS, bad HTTP.
    Transport(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(t) => write!(f, "no answer within {t:?}"),
            Failure::Status(s) => write!(f, "HTTP {s}"),
            Failure::Transport(e) => f.write_str(e),
        }
    }
}

/// A 2xx answer.
pub(crate) struct Reply {
    pub headers: HeaderMap,
    pub body: String,
}

pub(crate) struct Client {
    agent: ureq::Agent,
    timeout: Duration,
}

impl Client {
    /// A client trusting the public web roots and, when given, the PEM certificates in
    /// `extra_ca` too (a vCenter's own VMCA root, typically).
    pub fn new(timeout: Duration, extra_ca: Option<&[u8]>) -> Result<Client, String> {
        let mut tls = TlsConfig::builder();
        if let Some(pem) = extra_ca {
            let mut certs: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()))
                .collect();
            let public = certs.len();
            for item in ureq::tls::parse_pem(pem) {
                match item {
                    Ok(PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => return Err(format!("not PEM: {e}")),
                }
            }
            if certs.len() == public {
                return Err("no PEM certificate in it".into());
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .tls_config(tls.build())
            .build();
        Ok(Client {
            agent: ureq::Agent::new_with_config(config),
            timeout,
        })
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, Failure> {
        self.send(Method::GET, url, headers, None)
    }

    /// One request; only a 2xx answer with a readable body is a `Reply`.
    pub fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, Failure> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.unwrap_or_default().to_owned())
            .map_err(|e| Failure::Transport(format!("bad request for {url}: {e}")))?;
        let mut resp = self.agent.run(req).map_err(|e| self.failure(e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(Failure::Status(status));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.failure(e))?;
        Ok(Reply {
            headers: resp.headers().clone(),
            body,
        })
    }

    fn failure(&self, e: ureq::Error) -> Failure {
        match e {
            ureq::Error::Timeout(_) => Failure::Timeout(self.timeout),
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Failure::Timeout(self.timeout)
            }
            e => Failure::Transport(e.to_string()),
        }
    }
}

/// Percent-encodes one URL path segment or query value (RFC 3986 unreserved bytes stay).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encode_keeps_unreserved_bytes_only() {
        assert_eq!(super::encode("vm 1/ü:x"), "vm%201%2F%C3%BC%3Ax");
        assert_eq!(super::encode("esx-03.lab_~"), "esx-03.lab_~");
    }
}
