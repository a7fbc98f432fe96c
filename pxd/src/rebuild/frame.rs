//! Block frames: how a rebuild's data crosses the node transport (ZeroMQ with CURVE, DESIGN
//! §5). Requests are JSON, where a byte array would travel as a list of numbers, three to
//! four times its size; a block frame is a tag byte, the length of a small JSON header, the
//! header, and the raw bytes.

use serde::{Deserialize, Serialize};

/// The first byte of a block frame. A JSON request starts with `{` or `"`, never with it.
pub const TAG: u8 = 0x01;
/// The most data one frame carries: large enough to keep a stream busy, small enough that
/// a retried frame costs little (and far below the transport's message limit).
pub const MAX_DATA: usize = 1 << 20;
/// Offsets and lengths are whole 4 KiB blocks, as O_DIRECT on both ends needs.
pub const ALIGN: u64 = 4096;

/// Where a frame's data goes: `build` names the new leg being built (the receiving node
/// takes frames only for builds it has open), `offset` is in bytes from its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockWrite {
    pub build: String,
    pub offset: u64,
    /// Set on a frame without data: discard this many bytes from `offset` instead (blocks
    /// the source unmapped between two rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("block frame: truncated ({0} bytes)")]
    Truncated(usize),
    #[error("block frame: bad header: {0}")]
    Header(String),
    #[error("block frame: offset {offset} and length {len} must be multiples of {ALIGN}, the length at most {MAX_DATA}")]
    Unaligned { offset: u64, len: usize },
}

/// The frame carrying `data` to `to`.
pub fn encode(to: &BlockWrite, data: &[u8]) -> Vec<u8> {
    // A struct of a string and a number always serializes.
    let head = serde_json::to_vec(to).unwrap_or_default();
    let mut out = Vec::with_capacity(5 + head.len() + data.len());
    out.push(TAG);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(data);
    out
}

/// `None` when `body` is no block frame (a JSON request); else the frame's target and data,
/// or why the frame is unusable.
pub fn decode(body: &[u8]) -> Option<Result<(BlockWrite, &[u8]), FrameError>> {
    if body.first() != Some(&TAG) {
        return None;
    }
    Some(parse(body))
}

fn parse(body: &[u8]) -> Result<(BlockWrite, &[u8]), FrameError> {
    let len = body
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| u32::from_le_bytes(b) as usize)
        .ok_or(FrameError::Truncated(body.len()))?;
    let head = body
        .get(5..5 + len)
        .ok_or(FrameError::Truncated(body.len()))?;
    let to: BlockWrite =
        serde_json::from_slice(head).map_err(|e| FrameError::Header(e.to_string()))?;
    let data = &body[5 + len..];
    let discard_ok = to
        .discard
        .is_none_or(|d| data.is_empty() && d.is_multiple_of(ALIGN));
    if !to.offset.is_multiple_of(ALIGN)
        || !(data.len() as u64).is_multiple_of(ALIGN)
        || data.len() > MAX_DATA
        || !discard_ok
    {
        return Err(FrameError::Unaligned {
            offset: to.offset,
            len: data.len(),
        });
    }
    Ok((to, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(offset: u64) -> BlockWrite {
        BlockWrite {
            build: "v1-n2".into(),
            offset,
            discard: None,
        }
    }

    #[test]
    fn a_frame_round_trips_and_json_is_no_frame() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let frame = encode(&to(1 << 30), &data);
        assert!(frame.len() < data.len() + 64, "{}", frame.len());
        let (got, bytes) = decode(&frame).unwrap().unwrap();
        assert_eq!((got, bytes), (to(1 << 30), &data[..]));
        assert!(decode(br#"{"Heartbeat":{}}"#).is_none());
        assert!(decode(b"\"Ack\"").is_none());
    }

    #[test]
    fn truncated_bad_or_unaligned_frames_are_refused() {
        let frame = encode(&to(0), &[7u8; 4096]);
        assert_eq!(
            decode(&frame[..3]).unwrap().unwrap_err(),
            FrameError::Truncated(3)
        );
        assert!(matches!(
            decode(&frame[..8]).unwrap().unwrap_err(),
            FrameError::Truncated(_)
        ));
        let mut bad = frame.clone();
        bad[5] = b'x';
        assert!(matches!(
            decode(&bad).unwrap().unwrap_err(),
            FrameError::Header(_)
        ));
        for (offset, len) in [(512, 4096), (0, 512), (0, MAX_DATA + 4096)] {
            let e = decode(&encode(&to(offset), &vec![0u8; len]))
                .unwrap()
                .unwrap_err();
            assert_eq!(e, FrameError::Unaligned { offset, len });
        }
        // A discard carries no data, and whole blocks only.
        let discard = |len, data: &[u8]| {
            let mut t = to(0);
            t.discard = Some(len);
            decode(&encode(&t, data)).unwrap().map(drop)
        };
        assert!(discard(1 << 20, &[]).is_ok());
        assert!(discard(1 << 20, &[0u8; 4096]).is_err());
        assert!(discard(512, &[]).is_err());
    }
}
