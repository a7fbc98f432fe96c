//! Join tokens. A token names the cluster and one member (its ZeroMQ endpoint and CURVE
//! public key), sealed with an HMAC-SHA256 under the cluster's join secret. The joining node
//! uses the key to reach the member over CURVE, so it can only talk to the real member; the
//! member checks the MAC, so only a token minted by a member lets a node in. A token expires
//! (24 hours by default), so one left in a shell history or a ticket stops opening the door.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const PREFIX: &str = "pxd1.";
/// How long a join token is valid unless asked otherwise.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
/// The longest validity a token may be given: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// Longest token accepted, in bytes: far above a real one, small enough to refuse junk early.
pub const MAX_TOKEN_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is garbled: {0}")]
    Garbled(String),
    #[error("the join token is for cluster {token}, but this is cluster {ours}")]
    WrongCluster { token: String, ours: String },
    #[error("the join token was not issued by this cluster (its seal does not verify)")]
    Forged,
    #[error("the join token expired {ago} s ago; get a new one with `pxd cluster token`")]
    Expired { ago: u64 },
}

/// The readable part of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub cluster_id: String,
    /// ZeroMQ endpoint of the member that issued it.
    pub addr: String,
    /// CURVE public key of that member, Z85.
    pub public_key: String,
    /// Unix seconds after which it is refused.
    #[serde(default)]
    pub expires: u64,
    /// Hex HMAC-SHA256 over the fields above.
    pub mac: String,
}

fn mac_of(secret: &str, t: &JoinToken) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    let expires = t.expires.to_string();
    for part in [
        "pxd-join-v2",
        &t.cluster_id,
        &t.addr,
        &t.public_key,
        &expires,
    ] {
        mac.update(&(part.len() as u64).to_le_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

impl JoinToken {
    /// A token for the member at `addr` with `public_key`, valid until unix second
    /// `expires`, sealed with the join secret.
    pub fn issue(
        secret: &str,
        cluster_id: &str,
        addr: &str,
        public_key: &str,
        expires: u64,
    ) -> JoinToken {
        let mut t = JoinToken {
            cluster_id: cluster_id.to_owned(),
            addr: addr.to_owned(),
            public_key: public_key.to_owned(),
            expires,
            mac: String::new(),
        };
        let tag = mac_of(secret, &t).finalize().into_bytes();
        t.mac = tag.iter().map(|b| format!("{b:02x}")).collect();
        t
    }

    pub fn encode(&self) -> String {
        // Serializing four strings cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(token: &str) -> Result<JoinToken, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Garbled(format!(
                "it is {} bytes, the limit is {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let body = token
            .strip_prefix(PREFIX)
            .ok_or_else(|| TokenError::Garbled(format!("it does not start with {PREFIX:?}")))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Garbled(format!("not base64url: {e}")))?;
        serde_json::from_slice(&json).map_err(|e| TokenError::Garbled(format!("not a token: {e}")))
    }

    /// Checks the token against this cluster's id and join secret, in constant time, and
    /// that it has not expired at unix second `now`.
    pub fn verify(&self, cluster_id: &str, secret: &str, now: u64) -> Result<(), TokenError> {
        if self.cluster_id != cluster_id {
            return Err(TokenError::WrongCluster {
                token: self.cluster_id.clone(),
                ours: cluster_id.to_owned(),
            });
        }
        let tag = hex_bytes(&self.mac).ok_or(TokenError::Forged)?;
        mac_of(secret, self)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        if now > self.expires {
            return Err(TokenError::Expired {
                ago: now - self.expires,
            });
        }
        Ok(())
    }
}

pub(super) fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret";

    #[test]
    fn issued_tokens_round_trip_and_verify() {
        let t = JoinToken::issue(SECRET, "c1", "tcp://10.0.0.1:9011", "key", 1000);
        let back = JoinToken::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        back.verify("c1", SECRET, 1000).unwrap();
    }

    #[test]
    fn altered_tokens_fail() {
        let t = JoinToken::issue(SECRET, "c1", "tcp://10.0.0.1:9011", "key", 1000);
        assert_eq!(
            t.verify("c2", SECRET, 0),
            Err(TokenError::WrongCluster {
                token: "c1".into(),
                ours: "c2".into()
            })
        );
        assert_eq!(t.verify("c1", "other", 0), Err(TokenError::Forged));
        let mut moved = t.clone();
        moved.addr = "tcp://10.0.0.9:9011".into();
        assert_eq!(moved.verify("c1", SECRET, 0), Err(TokenError::Forged));
        let mut relabeled = t.clone();
        relabeled.cluster_id = "c2".into();
        assert_eq!(relabeled.verify("c2", SECRET, 0), Err(TokenError::Forged));
        let mut later = t.clone();
        later.expires += 3600;
        assert_eq!(later.verify("c1", SECRET, 0), Err(TokenError::Forged));
        assert_eq!(
            t.verify("c1", SECRET, 1001),
            Err(TokenError::Expired { ago: 1 })
        );
        let mut junk = t;
        junk.mac = "zz".into();
        assert_eq!(junk.verify("c1", SECRET, 0), Err(TokenError::Forged));
    }

    #[test]
    fn garbled_tokens_are_named_so() {
        for bad in ["", "hello", "pxd1.!!!", "pxd1.aGVsbG8"] {
            assert!(
                matches!(JoinToken::decode(bad), Err(TokenError::Garbled(_))),
                "{bad}"
            );
        }
        let long = format!("pxd1.{}", "a".repeat(MAX_TOKEN_LEN));
        assert!(matches!(
            JoinToken::decode(&long),
            Err(TokenError::Garbled(_))
        ));
    }
}
