//! ZeroMQ transport between daemons (DESIGN §5): request/reply over CURVE-encrypted and
//! CURVE-authenticated sockets.
//!
//! - Server: one ROUTER socket per node, served by a thread; requests are handed to tokio
//!   and replies come back to that thread over an inproc socket, so a slow request never
//!   holds up the others.
//! - Client: DEALER sockets per peer, kept idle between calls and used one call at a time.
//!   A call that times out throws its socket away, so a late reply can never be taken for
//!   the answer to a later call.
//! - A ZAP handler accepts every CURVE client but stamps its public key on each message,
//!   so handlers decide what each key may do. A client that does not know the server's
//!   public key never completes the handshake and gets no answer at all.
//! - Two [`Lane`]s, each a ZeroMQ context with an I/O thread of its own: control (Raft,
//!   heartbeats, requests) and bulk (rebuild block streams, on the node port + 1). libzmq
//!   encrypts and decrypts a whole message at once in its I/O thread, so on one thread a
//!   heartbeat waits behind every block frame queued before it. Measured in the test VM
//!   (TCG), 4 streams of 1 MiB frames beside a 100 ms ping: ping p50 92 ms, max 791 ms on
//!   one context; p50 2.4 ms, max 149 ms on two. On one, a copy under load starved Raft
//!   and heartbeats past the attach lease.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// ZAP's well-known endpoint (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// Idle sockets kept per peer.
const IDLE_PER_PEER: usize = 8;
/// Largest message the node port takes: a Raft snapshot chunk (3 MiB, larger once encoded)
/// fits with room to spare; anything bigger is dropped by libzmq before it is read.
pub const MAX_MESSAGE: i64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("this libzmq has no CURVE support (install libzmq built with libsodium)")]
    NoCurve,
    #[error("CURVE key {what} is not a valid Z85 key of 32 bytes")]
    BadKey { what: &'static str },
    #[error("{op} {endpoint}: {source}")]
    Zmq {
        op: &'static str,
        endpoint: String,
        source: zmq::Error,
    },
    #[error("no answer from {endpoint} within {timeout:?} (down, unreachable, or not the server key the caller expects)")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("the transport worker for {endpoint} stopped: {reason}")]
    Worker { endpoint: String, reason: String },
}

/// A node's CURVE key pair, Z85 encoded. `Debug` never shows the secret.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyPair {
    pub public: String,
    pub secret: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    pub fn generate() -> Result<KeyPair, TransportError> {
        let pair = zmq::CurveKeyPair::new().map_err(|source| TransportError::Zmq {
            op: "generate a CURVE key pair",
            endpoint: String::new(),
            source,
        })?;
        let enc = |k: &[u8]| zmq::z85_encode(k).map_err(|_| TransportError::BadKey { what: "new" });
        Ok(KeyPair {
            public: enc(&pair.public_key)?,
            secret: enc(&pair.secret_key)?,
        })
    }
}

/// Decodes a Z85 CURVE key to its 32 bytes.
pub fn decode_key(z85: &str, what: &'static str) -> Result<Vec<u8>, TransportError> {
    match zmq::z85_decode(z85) {
        Ok(k) if k.len() == 32 => Ok(k),
        _ => Err(TransportError::BadKey { what }),
    }
}

/// Serves one request: the caller's public key (Z85) and the request bytes, to reply bytes.
pub type Handler =
    Arc<dyn Fn(String, Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> + Send + Sync>;

/// Which of a node's two ports, and I/O threads, a message travels on (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Raft, heartbeats and requests: small messages that must arrive in time.
    Control = 0,
    /// Block streams: large frames, throughput over latency.
    Bulk = 1,
}

/// The bulk lane's endpoint of the node whose node port is `endpoint` (`tcp://HOST:PORT`):
/// the same host, the next port.
pub fn bulk_endpoint(endpoint: &str) -> Option<String> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{}", port.checked_add(1)?))
}

pub struct Transport {
    /// One context per [`Lane`], indexed by it.
    lanes: [zmq::Context; 2],
    /// Whether a lane's ZAP handler runs (one per context, bound on first serve).
    zap: Mutex<[bool; 2]>,
    keys: KeyPair,
    public: Vec<u8>,
    secret: Vec<u8>,
    idle: Mutex<HashMap<String, Vec<zmq::Socket>>>,
    next_id: AtomicU64,
}

fn zmq_err<'a>(
    op: &'static str,
    endpoint: &'a str,
) -> impl FnOnce(zmq::Error) -> TransportError + 'a {
    move |source| TransportError::Zmq {
        op,
        endpoint: endpoint.to_owned(),
        source,
    }
}

impl Transport {
    pub fn new(keys: KeyPair) -> Result<Arc<Transport>, TransportError> {
        if zmq::has("curve") != Some(true) {
            return Err(TransportError::NoCurve);
        }
        let public = decode_key(&keys.public, "public")?;
        let secret = decode_key(&keys.secret, "secret")?;
        Ok(Arc::new(Transport {
            lanes: [zmq::Context::new(), zmq::Context::new()],
            zap: Mutex::new([false; 2]),
            keys,
            public,
            secret,
            idle: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn public_key(&self) -> &str {
        &self.keys.public
    }

    /// Binds `endpoint` (`tcp://IP:PORT`) as a CURVE server on the control lane and serves
    /// requests with `handler` on `rt`, from threads that live as long as the process.
    pub fn serve(
        &self,
        endpoint: &str,
        rt: tokio::runtime::Handle,
        handler: Handler,
    ) -> Result<(), TransportError> {
        self.serve_on(Lane::Control, endpoint, rt, handler)
    }

    /// [`Transport::serve`] on `lane`.
    pub fn serve_on(
        &self,
        lane: Lane,
        endpoint: &str,
        rt: tokio::runtime::Handle,
        handler: Handler,
    ) -> Result<(), TransportError> {
        self.start_zap(lane)?;
        let ctx = &self.lanes[lane as usize];
        let router = ctx
            .socket(zmq::ROUTER)
            .map_err(zmq_err("create the server socket for", endpoint))?;
        let setup = || -> Result<(), zmq::Error> {
            router.set_curve_server(true)?;
            router.set_maxmsgsize(MAX_MESSAGE)?;
            router.set_curve_secretkey(&self.secret)?;
            router.set_zap_domain("pxd")?;
            router.set_linger(0)?;
            router.bind(endpoint)
        };
        setup().map_err(zmq_err("bind the node port", endpoint))?;
        let replies = format!(
            "inproc://pxd-replies-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let pull = ctx
            .socket(zmq::PULL)
            .and_then(|s| s.bind(&replies).map(|()| s))
            .map_err(zmq_err("bind the reply queue of", endpoint))?;
        let push = ctx
            .socket(zmq::PUSH)
            .and_then(|s| s.connect(&replies).map(|()| s))
            .map_err(zmq_err("connect the reply queue of", endpoint))?;
        let push = Arc::new(Mutex::new(push));
        let name = endpoint.to_owned();
        std::thread::Builder::new()
            .name("pxd-zmq-server".into())
            .spawn(move || serve_loop(&name, &router, &pull, &push, &rt, &handler))
            .map_err(|e| TransportError::Worker {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// `lane`'s ZAP handler, unless it runs already: accepts every CURVE client and names it
    /// by its public key.
    fn start_zap(&self, lane: Lane) -> Result<(), TransportError> {
        let mut started = self.zap.lock().unwrap_or_else(|p| p.into_inner());
        if started[lane as usize] {
            return Ok(());
        }
        let rep = self.lanes[lane as usize]
            .socket(zmq::REP)
            .and_then(|s| s.bind(ZAP_ENDPOINT).map(|()| s))
            .map_err(zmq_err("bind the ZAP handler", ZAP_ENDPOINT))?;
        std::thread::Builder::new()
            .name("pxd-zmq-zap".into())
            .spawn(move || loop {
                let Ok(frames) = rep.recv_multipart(0) else {
                    return;
                };
                // version, request id, domain, address, identity, mechanism, credentials...
                let version = frames.first().cloned().unwrap_or_default();
                let request_id = frames.get(1).cloned().unwrap_or_default();
                let user = frames
                    .get(6)
                    .filter(|k| k.len() == 32)
                    .and_then(|k| zmq::z85_encode(k).ok());
                let (code, text, user) = match user {
                    Some(u) => ("200", "OK", u),
                    None => ("400", "a CURVE client key is required", String::new()),
                };
                let reply: [&[u8]; 6] = [
                    &version,
                    &request_id,
                    code.as_bytes(),
                    text.as_bytes(),
                    user.as_bytes(),
                    b"",
                ];
                if rep.send_multipart(reply, 0).is_err() {
                    return;
                }
            })
            .map_err(|e| TransportError::Worker {
                endpoint: ZAP_ENDPOINT.to_owned(),
                reason: e.to_string(),
            })?;
        started[lane as usize] = true;
        Ok(())
    }

    /// Sends `body` to the server at `endpoint` that must prove `server_key`, and waits up to
    /// `timeout` for its reply. Blocking; see [`Transport::call`] for async callers.
    pub fn call_blocking(
        &self,
        endpoint: &str,
        server_key: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        self.call_blocking_on(Lane::Control, endpoint, server_key, body, timeout)
    }

    /// [`Transport::call_blocking`] on `lane`: `endpoint` is then a port served on that lane.
    pub fn call_blocking_on(
        &self,
        lane: Lane,
        endpoint: &str,
        server_key: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let pool_key = format!("{lane:?}|{endpoint}|{server_key}");
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&pool_key)
            .and_then(Vec::pop);
        let socket = match idle {
            Some(s) => s,
            None => self.connect(lane, endpoint, server_key)?,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        let deadline = Instant::now() + timeout;
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
        socket
            .set_sndtimeo(ms(timeout))
            .and_then(|()| socket.send_multipart([&id[..], body], 0))
            .map_err(|e| match e {
                zmq::Error::EAGAIN => TransportError::Timeout {
                    endpoint: endpoint.to_owned(),
                    timeout,
                },
                source => zmq_err("send to", endpoint)(source),
            })?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TransportError::Timeout {
                    endpoint: endpoint.to_owned(),
                    timeout,
                });
            }
            socket
                .set_rcvtimeo(ms(left))
                .map_err(zmq_err("set the receive timeout for", endpoint))?;
            let frames = match socket.recv_multipart(0) {
                Ok(f) => f,
                Err(zmq::Error::EAGAIN) => continue,
                Err(source) => return Err(zmq_err("receive from", endpoint)(source)),
            };
            // A reply to an earlier call that timed out cannot be here (its socket was
            // dropped), but check the id anyway.
            if let [rid, reply] = frames.as_slice() {
                if rid.as_slice() == id {
                    let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                    let sockets = idle.entry(pool_key).or_default();
                    if sockets.len() < IDLE_PER_PEER {
                        sockets.push(socket);
                    }
                    return Ok(reply.clone());
                }
            }
        }
    }

    /// [`Transport::call_blocking`] on tokio's blocking pool.
    pub async fn call(
        self: &Arc<Self>,
        endpoint: &str,
        server_key: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        self.call_on(Lane::Control, endpoint, server_key, body, timeout)
            .await
    }

    /// [`Transport::call`] on `lane`.
    pub async fn call_on(
        self: &Arc<Self>,
        lane: Lane,
        endpoint: &str,
        server_key: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let this = self.clone();
        let (e, k) = (endpoint.to_owned(), server_key.to_owned());
        tokio::task::spawn_blocking(move || this.call_blocking_on(lane, &e, &k, &body, timeout))
            .await
            .map_err(|err| TransportError::Worker {
                endpoint: endpoint.to_owned(),
                reason: err.to_string(),
            })?
    }

    fn connect(
        &self,
        lane: Lane,
        endpoint: &str,
        server_key: &str,
    ) -> Result<zmq::Socket, TransportError> {
        let server = decode_key(server_key, "of the server")?;
        let s = self.lanes[lane as usize]
            .socket(zmq::DEALER)
            .map_err(zmq_err("create a client socket for", endpoint))?;
        let setup = || -> Result<(), zmq::Error> {
            s.set_curve_serverkey(&server)?;
            s.set_curve_publickey(&self.public)?;
            s.set_curve_secretkey(&self.secret)?;
            s.set_linger(0)?;
            s.connect(endpoint)
        };
        setup().map_err(zmq_err("connect to", endpoint))?;
        Ok(s)
    }
}

fn serve_loop(
    endpoint: &str,
    router: &zmq::Socket,
    pull: &zmq::Socket,
    push: &Arc<Mutex<zmq::Socket>>,
    rt: &tokio::runtime::Handle,
    handler: &Handler,
) {
    loop {
        let mut items = [
            router.as_poll_item(zmq::POLLIN),
            pull.as_poll_item(zmq::POLLIN),
        ];
        if let Err(e) = zmq::poll(&mut items, -1) {
            tracing::error!(endpoint, error = %e, "the node port stopped serving");
            return;
        }
        let (request, reply) = (items[0].is_readable(), items[1].is_readable());
        if request {
            if let Some(Incoming {
                identity,
                user,
                id,
                body,
            }) = receive_request(router)
            {
                let (push, handler) = (push.clone(), handler.clone());
                rt.spawn(async move {
                    let out = handler(user, body).await;
                    let push = push.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = push.send_multipart([identity, id, out], 0) {
                        tracing::warn!(error = %e, "a reply could not be queued");
                    }
                });
            }
        }
        if reply {
            match pull.recv_multipart(0) {
                // The peer may be gone; ROUTER then drops the reply, which is what we want.
                Ok(frames) => {
                    let _ = router.send_multipart(frames, 0);
                }
                Err(e) => tracing::warn!(error = %e, "a reply could not be taken off the queue"),
            }
        }
    }
}

/// A request as it came off the ROUTER socket.
struct Incoming {
    /// ROUTER's routing frame, to send the reply back on.
    identity: Vec<u8>,
    /// The client's CURVE public key, Z85.
    user: String,
    /// The caller's call id, echoed in the reply.
    id: Vec<u8>,
    body: Vec<u8>,
}

/// One request: routing identity, the client's key, the call id and the body. Malformed
/// messages are dropped. The key comes from the ZAP handler as the frames' `User-Id`, which
/// is on the frames the client sent (not on the identity frame ROUTER adds).
fn receive_request(router: &zmq::Socket) -> Option<Incoming> {
    let identity = router.recv_bytes(0).ok()?;
    let mut rest = Vec::new();
    while router.get_rcvmore().unwrap_or(false) {
        rest.push(router.recv_msg(0).ok()?);
    }
    let [id, mut body]: [zmq::Message; 2] = rest.try_into().ok()?;
    let user = body.gets("User-Id").unwrap_or_default().to_owned();
    if user.is_empty() {
        return None;
    }
    Some(Incoming {
        identity,
        user,
        id: id.to_vec(),
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn the_bulk_lane_is_the_next_port() {
        assert_eq!(
            bulk_endpoint("tcp://10.0.0.1:9011").as_deref(),
            Some("tcp://10.0.0.1:9012")
        );
        assert_eq!(bulk_endpoint("tcp://10.0.0.1:65535"), None);
        assert_eq!(bulk_endpoint("tcp://10.0.0.1"), None);
    }

    #[test]
    fn curve_calls_answer_only_clients_that_know_the_server_key() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = Transport::new(KeyPair::generate().unwrap()).unwrap();
        let endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let handler: Handler = Arc::new(|user, body: Vec<u8>| {
            Box::pin(async move {
                let mut out = user.into_bytes();
                out.extend_from_slice(&body);
                out
            })
        });
        server
            .serve(&endpoint, rt.handle().clone(), handler)
            .unwrap();

        let client = Transport::new(KeyPair::generate().unwrap()).unwrap();
        let reply = client
            .call_blocking(&endpoint, server.public_key(), b"!", Duration::from_secs(5))
            .unwrap();
        // The server sees the client's public key.
        assert_eq!(reply, format!("{}!", client.public_key()).into_bytes());
        // Again, over the idle socket.
        client
            .call_blocking(&endpoint, server.public_key(), b"?", Duration::from_secs(5))
            .unwrap();

        // The bulk lane: a port and ZAP handler of its own, the same keys.
        let bulk = format!("tcp://127.0.0.1:{}", free_port());
        let echo: Handler = Arc::new(|_user, body: Vec<u8>| Box::pin(async move { body }));
        server
            .serve_on(Lane::Bulk, &bulk, rt.handle().clone(), echo)
            .unwrap();
        let reply = client
            .call_blocking_on(
                Lane::Bulk,
                &bulk,
                server.public_key(),
                b"blocks",
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(reply, b"blocks");

        let stranger = KeyPair::generate().unwrap();
        let err = client
            .call_blocking(
                &endpoint,
                &stranger.public,
                b"!",
                Duration::from_millis(500),
            )
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    }
}
