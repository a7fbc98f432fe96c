//! A small client of the REST API, over the unix socket or TCP with a token. The CLI and the
//! integration tests use it; [`BlockingClient`] wraps it for code without a runtime.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to the pxd API at {target}: {source} (is `pxd daemon` running?)")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("{method} {path} at {target}: {reason}")]
    Http {
        method: Method,
        path: String,
        target: String,
        reason: String,
    },
    #[error("{method} {path} at {target} took longer than {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        target: String,
        timeout: Duration,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("start a runtime for the API client: {0}")]
    Runtime(std::io::Error),
}

impl ClientError {
    /// The API's error code (`no_quorum`, `unknown_node`, ...) if the daemon sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp { addr: SocketAddr, token: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Tcp { addr, .. } => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub target: Target,
    pub timeout: Duration,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client {
            target,
            // A join waits for the new node to catch up; allow it that long and a bit more.
            timeout: crate::cluster::JOIN_TIMEOUT + Duration::from_secs(10),
        }
    }

    /// Sends a request and decodes the JSON answer; an error status becomes
    /// [`ClientError::Api`] with the daemon's message.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method.clone(), path, body).await?;
        let http = |reason: String| ClientError::Http {
            method: method.clone(),
            path: path.to_owned(),
            target: self.target.to_string(),
            reason,
        };
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Api {
                status,
                code: v["code"].as_str().unwrap_or("").to_owned(),
                // `error` is where a node before the `{code, message, field}` body put it.
                message: v["message"]
                    .as_str()
                    .or_else(|| v["error"].as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{status}: {}", String::from_utf8_lossy(&bytes))),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| http(format!("undecodable answer: {e}")))
    }

    /// Sends a request; returns the status and body as they are.
    pub async fn raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let target = self.target.to_string();
        let fut = self.exchange(method.clone(), path, body);
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                method,
                path: path.to_owned(),
                target,
                timeout: self.timeout,
            })?
    }

    async fn exchange<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let http = |reason: String| ClientError::Http {
            method: method.clone(),
            path: path.to_owned(),
            target: self.target.to_string(),
            reason,
        };
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| http(e.to_string()))?,
            None => Vec::new(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "pxd")
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Target::Tcp { token, .. } = &self.target {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| http(e.to_string()))?;
        let connect = |source| ClientError::Connect {
            target: self.target.to_string(),
            source,
        };
        let resp = match &self.target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(connect)?;
                send(TokioIo::new(s), req).await
            }
            Target::Tcp { addr, .. } => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(connect)?;
                send(TokioIo::new(s), req).await
            }
        }
        .map_err(http)?;
        Ok(resp)
    }
}

async fn send<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// [`Client`] with its own single-threaded runtime, for the CLI and for tests.
pub struct BlockingClient {
    inner: Client,
    rt: tokio::runtime::Runtime,
}

impl BlockingClient {
    pub fn new(target: Target) -> Result<BlockingClient, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(BlockingClient {
            inner: Client::new(target),
            rt,
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.inner.timeout = timeout;
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.rt
            .block_on(self.inner.call::<(), T>(Method::GET, path, None))
    }

    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.rt.block_on(self.inner.call(method, path, Some(body)))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, body)
    }

    /// [`Self::post`], allowing `timeout` for the answer: for calls that wait on other
    /// nodes, such as an attach.
    pub fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut client = self.inner.clone();
        client.timeout = timeout;
        self.rt
            .block_on(client.call(Method::POST, path, Some(body)))
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::PUT, path, body)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.rt
            .block_on(self.inner.call::<(), T>(Method::DELETE, path, None))
    }

    pub fn raw(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        self.rt.block_on(self.inner.raw::<()>(method, path, None))
    }
}
