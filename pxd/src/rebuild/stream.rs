//! The block stream of a rebuild (DESIGN §5, "A new replica"): the node holding a healthy
//! leg reads the byte ranges its thin device maps, past the page cache, and sends them in
//! [`frame`](super::frame)s over the node transport to the node building the new leg, whose
//! [`Sink`] writes them to the new thin device. Only mapped ranges travel, so the new thin
//! device maps no more than the source does; a few frames are in flight at a time, and an
//! optional rate limit keeps the copy from starving the volume's own I/O.

use super::frame::{self, BlockWrite, ALIGN, MAX_DATA};
use crate::cluster::rpc::{self, Reply};
use crate::cluster::transport::{Lane, Transport, TransportError};
use crate::kernel::block::DirectFile;
use crate::plan::thin_map::BlockRange;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Frames on their way at once: the copy is bound by round trips more than by bandwidth,
/// and each frame writes a range of its own, so their order does not matter.
const IN_FLIGHT: usize = 4;

/// How long one frame may take to be written and answered.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte range of a device: what the source reads and the frames carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// Thin-pool block ranges (of `block_sectors` each) as byte ranges, cut at `size` bytes
/// (a device's last block can reach past its end).
pub fn byte_ranges(ranges: &[BlockRange], block_sectors: u64, size: u64) -> Vec<ByteRange> {
    let block = block_sectors * 512;
    ranges
        .iter()
        .filter_map(|r| {
            let offset = r.begin.saturating_mul(block);
            let end = r.end().saturating_mul(block).min(size);
            (end > offset).then(|| ByteRange {
                offset,
                len: end - offset,
            })
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the source {what} at byte {offset}: {source}")]
    Read {
        what: String,
        offset: u64,
        source: std::io::Error,
    },
    #[error("sending to the building node: {0}")]
    Transport(#[from] TransportError),
    #[error("the building node refused block data at byte {offset}: {why}")]
    Refused { offset: u64, why: String },
    #[error("byte range at {offset} (+{len}) is not in whole {ALIGN}-byte blocks")]
    Unaligned { offset: u64, len: u64 },
    #[error("the copy task stopped: {0}")]
    Task(String),
}

/// The node a stream goes to: its bulk lane's endpoint and the CURVE key it must prove.
#[derive(Debug, Clone)]
pub struct Peer {
    pub endpoint: String,
    pub public_key: String,
}

/// What a stream sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub frames: u64,
}

/// Sends `ranges` of `source` to build `build` on `peer`, at most `rate` bytes a second
/// when given; `progress` hears the bytes sent so far after every frame.
pub async fn send_ranges(
    transport: &Arc<Transport>,
    peer: &Peer,
    build: &str,
    source: &Path,
    ranges: &[ByteRange],
    rate: Option<u64>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Sent, StreamError> {
    if let Some(r) = ranges
        .iter()
        .find(|r| !r.offset.is_multiple_of(ALIGN) || !r.len.is_multiple_of(ALIGN))
    {
        return Err(StreamError::Unaligned {
            offset: r.offset,
            len: r.len,
        });
    }
    let what = source.display().to_string();
    let file = {
        let path = source.to_owned();
        let opened = tokio::task::spawn_blocking(move || DirectFile::open_read(&path))
            .await
            .map_err(|e| StreamError::Task(e.to_string()))?;
        Arc::new(opened.map_err(|source| StreamError::Read {
            what: what.clone(),
            offset: 0,
            source,
        })?)
    };
    let started = Instant::now();
    let mut sent = Sent::default();
    let mut todo = ranges.iter().flat_map(|r| chunks(*r));
    let mut flying = tokio::task::JoinSet::new();
    loop {
        while flying.len() < IN_FLIGHT {
            let Some(chunk) = todo.next() else { break };
            let (file, transport, peer) = (file.clone(), transport.clone(), peer.clone());
            let (build, what) = (build.to_owned(), what.clone());
            flying.spawn(async move {
                let len = chunk.len as usize;
                let data = tokio::task::spawn_blocking(move || file.read_at(chunk.offset, len))
                    .await
                    .map_err(|e| StreamError::Task(e.to_string()))?
                    .map_err(|source| StreamError::Read {
                        what,
                        offset: chunk.offset,
                        source,
                    })?;
                let to = BlockWrite {
                    build,
                    offset: chunk.offset,
                    discard: None,
                };
                let frame = frame::encode(&to, &data);
                let reply = transport
                    .call_on(
                        Lane::Bulk,
                        &peer.endpoint,
                        &peer.public_key,
                        frame,
                        FRAME_TIMEOUT,
                    )
                    .await?;
                acknowledged(&reply, chunk.offset)?;
                Ok::<u64, StreamError>(chunk.len)
            });
        }
        // A failed frame ends the stream; the frames still in flight are dropped with it.
        let Some(done) = flying.join_next().await else {
            break;
        };
        sent.bytes += done.map_err(|e| StreamError::Task(e.to_string()))??;
        sent.frames += 1;
        progress(sent.bytes);
        if let Some(wait) = rate.and_then(|r| behind_rate(sent.bytes, r, started.elapsed())) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(sent)
}

/// Has build `build` on `peer` discard `ranges`: blocks the source unmapped since the last
/// round, which read as zeros there and must on the new leg too.
pub async fn send_discards(
    transport: &Arc<Transport>,
    peer: &Peer,
    build: &str,
    ranges: &[ByteRange],
) -> Result<Sent, StreamError> {
    let mut sent = Sent::default();
    for r in ranges {
        if !r.offset.is_multiple_of(ALIGN) || !r.len.is_multiple_of(ALIGN) {
            return Err(StreamError::Unaligned {
                offset: r.offset,
                len: r.len,
            });
        }
        let to = BlockWrite {
            build: build.to_owned(),
            offset: r.offset,
            discard: Some(r.len),
        };
        let reply = transport
            .call_on(
                Lane::Bulk,
                &peer.endpoint,
                &peer.public_key,
                frame::encode(&to, &[]),
                FRAME_TIMEOUT,
            )
            .await?;
        acknowledged(&reply, r.offset)?;
        sent.frames += 1;
    }
    Ok(sent)
}

/// The building node's answer to the frame at `offset`: anything but an ack stops the stream.
fn acknowledged(reply: &[u8], offset: u64) -> Result<(), StreamError> {
    match rpc::decode::<Reply>(reply) {
        Ok(Reply::Ack) => Ok(()),
        Ok(Reply::Refused(why)) => Err(StreamError::Refused { offset, why }),
        other => Err(StreamError::Refused {
            offset,
            why: format!("unexpected answer {other:?}"),
        }),
    }
}

/// A range cut into frames of at most [`MAX_DATA`] bytes.
fn chunks(r: ByteRange) -> impl Iterator<Item = ByteRange> {
    let end = r.offset + r.len;
    (r.offset..end)
        .step_by(MAX_DATA)
        .map(move |offset| ByteRange {
            offset,
            len: (end - offset).min(MAX_DATA as u64),
        })
}

/// How long to pause so that `bytes` sent over `elapsed` stay within `rate` bytes a second.
fn behind_rate(bytes: u64, rate: u64, elapsed: Duration) -> Option<Duration> {
    let due = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    due.checked_sub(elapsed).filter(|d| !d.is_zero())
}

/// The receiving end: the builds this node has open, each writing to its new thin device.
/// Frames for a build that is not open are refused, so nothing reaches a device that the
/// store does not say is being built here.
#[derive(Default)]
pub struct Sink {
    open: Mutex<HashMap<String, Arc<DirectFile>>>,
}

impl Sink {
    /// Takes frames for `build` from now on, writing them to `device`.
    pub fn open(&self, build: &str, device: &Path) -> std::io::Result<()> {
        let file = Arc::new(DirectFile::open_write(device)?);
        self.lock().insert(build.to_owned(), file);
        Ok(())
    }

    /// Stops taking frames for `build` and makes what it wrote durable.
    pub fn close(&self, build: &str) -> std::io::Result<()> {
        match self.lock().remove(build) {
            Some(file) => file.sync(),
            None => Ok(()),
        }
    }

    /// Closes every build but those in `keep`.
    pub fn close_all_but(&self, keep: &std::collections::BTreeSet<String>) {
        let gone: Vec<String> = self
            .lock()
            .keys()
            .filter(|b| !keep.contains(*b))
            .cloned()
            .collect();
        for b in gone {
            if let Err(e) = self.close(&b) {
                tracing::warn!(build = %b, error = %e, "could not flush a new leg's copy");
            }
        }
    }

    pub fn is_open(&self, build: &str) -> bool {
        self.lock().contains_key(build)
    }

    /// Writes the block frame `body` (blocking: call it off the async runtime); `None` when
    /// `body` is no block frame.
    pub fn take(&self, body: &[u8]) -> Option<Reply> {
        Some(match frame::decode(body)? {
            Ok((to, data)) => self.write(&to, data),
            Err(e) => Reply::Refused(e.to_string()),
        })
    }

    /// [`Sink::take`] off the async runtime, for a node port's request handler; anything
    /// but a block frame is refused.
    pub async fn take_frame(self: Arc<Self>, body: Vec<u8>) -> Reply {
        tokio::task::spawn_blocking(move || self.take(&body))
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| Reply::Refused("not a block frame, or its writer stopped".into()))
    }

    fn write(&self, to: &BlockWrite, data: &[u8]) -> Reply {
        let Some(file) = self.lock().get(&to.build).cloned() else {
            return Reply::Refused(format!("no build {} is open on this node", to.build));
        };
        if let Some(len) = to.discard {
            return match file.discard(to.offset, len) {
                Ok(()) => Reply::Ack,
                Err(e) => Reply::Refused(format!(
                    "discarding {len} bytes at {} for build {}: {e}",
                    to.offset, to.build
                )),
            };
        }
        match file.write_at(to.offset, data) {
            Ok(()) => Reply::Ack,
            Err(e) => Reply::Refused(format!(
                "writing {} bytes at {} for build {}: {e}",
                data.len(),
                to.offset,
                to.build
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<DirectFile>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves block frames into `sink` at `endpoint` (`tcp://IP:PORT`) on the bulk lane, and
/// nothing else: a receiver of its own, for a node that does not run the daemon. The
/// daemon's bulk port takes block frames from members only.
pub fn serve_sink(
    transport: &Transport,
    endpoint: &str,
    rt: tokio::runtime::Handle,
    sink: Arc<Sink>,
) -> Result<Peer, TransportError> {
    let handler: crate::cluster::transport::Handler = Arc::new(move |_key, body: Vec<u8>| {
        let sink = sink.clone();
        Box::pin(async move { rpc::encode(&sink.take_frame(body).await) })
    });
    transport.serve_on(Lane::Bulk, endpoint, rt, handler)?;
    Ok(Peer {
        endpoint: endpoint.to_owned(),
        public_key: transport.public_key().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::transport::KeyPair;

    const MIB: u64 = 1 << 20;

    /// A node whose transport hands block frames to `sink`, as a daemon's does.
    fn receiver(rt: &tokio::runtime::Runtime, sink: Arc<Sink>) -> (Arc<Transport>, Peer) {
        let server = Transport::new(KeyPair::generate().unwrap()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("tcp://127.0.0.1:{port}");
        let peer = serve_sink(&server, &endpoint, rt.handle().clone(), sink).unwrap();
        (server, peer)
    }

    #[test]
    fn mapped_ranges_stream_to_an_open_build_and_nothing_else_is_written() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // O_DIRECT needs a real filesystem; the build directory is on one.
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        let data: Vec<u8> = (0..8 * MIB).map(|i| (i % 253) as u8 | 1).collect();
        std::fs::write(&source, &data).unwrap();
        std::fs::File::create(&target)
            .unwrap()
            .set_len(8 * MIB)
            .unwrap();
        let ranges = [
            ByteRange {
                offset: 0,
                len: 64 * 1024,
            },
            // Crosses frame boundaries.
            ByteRange {
                offset: MIB,
                len: 5 * MIB / 2,
            },
            ByteRange {
                offset: 7 * MIB,
                len: MIB,
            },
        ];
        let sink = Arc::new(Sink::default());
        let (_server, peer) = receiver(&rt, sink.clone());
        let client = Transport::new(KeyPair::generate().unwrap()).unwrap();
        let send = |build: &str| {
            let mut seen = Vec::new();
            let r = rt.block_on(send_ranges(
                &client,
                &peer,
                build,
                &source,
                &ranges,
                Some(1 << 30),
                &mut |b| seen.push(b),
            ));
            (r, seen)
        };

        let (r, _) = send("not-open");
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no build not-open is open"), "{e}");

        sink.open("b1", &target).unwrap();
        let (sent, seen) = send("b1");
        let sent = sent.unwrap();
        sink.close("b1").unwrap();
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        assert_eq!(
            sent,
            Sent {
                bytes: total,
                frames: 5
            }
        );
        assert_eq!(seen.last(), Some(&total));
        let got = std::fs::read(&target).unwrap();
        for (i, (g, d)) in got.iter().zip(&data).enumerate() {
            let i = i as u64;
            let inside = ranges
                .iter()
                .any(|r| (r.offset..r.offset + r.len).contains(&i));
            assert_eq!(*g, if inside { *d } else { 0 }, "byte {i}");
        }
        // Closed, the build takes nothing more.
        let (r, _) = send("b1");
        assert!(r.is_err());
    }

    #[test]
    fn block_ranges_become_byte_ranges_cut_at_the_device_end() {
        let r = |begin, len| BlockRange { begin, len };
        // 64 KiB blocks; a 200 KiB device ends inside block 3.
        let got = byte_ranges(&[r(0, 1), r(2, 2)], 128, 200 * 1024);
        assert_eq!(
            got,
            vec![
                ByteRange {
                    offset: 0,
                    len: 65536
                },
                ByteRange {
                    offset: 131072,
                    len: 200 * 1024 - 131072
                },
            ]
        );
        assert!(byte_ranges(&[r(10, 1)], 128, 200 * 1024).is_empty());
    }

    #[test]
    fn ranges_are_cut_into_frames_and_the_rate_is_kept() {
        let got: Vec<ByteRange> = chunks(ByteRange {
            offset: 4096,
            len: MAX_DATA as u64 + 8192,
        })
        .collect();
        assert_eq!(
            got,
            vec![
                ByteRange {
                    offset: 4096,
                    len: MAX_DATA as u64
                },
                ByteRange {
                    offset: 4096 + MAX_DATA as u64,
                    len: 8192
                },
            ]
        );
        // 10 MB at 10 MB/s after 0.5 s: half a second early.
        assert_eq!(
            behind_rate(10_000_000, 10_000_000, Duration::from_millis(500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            behind_rate(10_000_000, 10_000_000, Duration::from_secs(2)),
            None
        );
    }
}
