//! Signed peer requests: how a node proves to another that it holds the cluster key,
//! without the key (or anything replayable) ever travelling.
//!
//! Every `/internal/` request carries `x-kvs-signature: v1 <ts_ms> <nonce> <from> <mac>`
//! where `mac` is a keyed BLAKE3 over the method, the path with its query, the
//! timestamp, the nonce, the sender's node id and the BLAKE3 hash of the body. The
//! receiver refuses a timestamp more than [`WINDOW_MS`] away from its clock and any
//! `mac` it has already accepted within the window, so a captured request cannot be
//! replayed, changed or sent to another route. Replies are signed too (over the
//! request's `mac`, the status and the body), so a node that answers in the peer's
//! place cannot plant records. Keys for requests and replies are derived from the
//! cluster key with separate contexts; MACs compare in constant time (`blake3::Hash`).
//!
//! Pure: no HTTP types. `http::internal` verifies, `peer.rs` signs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use uuid::Uuid;

pub const SIGNATURE_HEADER: &str = "x-kvs-signature";
/// The sender's node id, on every peer request (inside the signature when there is one).
pub const FROM_HEADER: &str = "x-kvs-from";
pub const REPLY_SIGNATURE_HEADER: &str = "x-kvs-reply-signature";

/// How far a request's timestamp may be from the receiver's clock, either way.
pub const WINDOW_MS: u64 = 30_000;

/// At most this many accepted MACs are remembered (a window's worth at ~30,000
/// requests/s); past it the oldest are dropped first.
const REPLAY_CAPACITY: usize = 1 << 20;

/// The 32 secret bytes of a cluster key as configured. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// The keys derived from the cluster secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ClusterKey {
    request: [u8; 32],
    reply: [u8; 32],
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(redacted)")
    }
}

/// How a node treats requests to its peer routes.
pub enum PeerAuth {
    /// A cluster key is configured: signed requests only, each accepted once.
    Signed { key: ClusterKey, replays: ReplayGuard },
    /// No key, on loopback or with `cluster.insecure`: anyone who can connect may call.
    Open,
    /// No key and listening beyond loopback without `cluster.insecure`: nobody may.
    Closed,
}

impl PeerAuth {
    pub fn signed(key: ClusterKey) -> PeerAuth {
        PeerAuth::Signed { key, replays: ReplayGuard::default() }
    }

    /// How `/health/info` names it.
    pub fn describe(&self) -> &'static str {
        match self {
            PeerAuth::Signed { .. } => "signed",
            PeerAuth::Open => "open",
            PeerAuth::Closed => "closed",
        }
    }
}

/// What a signature header says (the MAC not yet checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    pub ts_ms: u64,
    pub nonce: u64,
    pub from: Uuid,
    pub mac: blake3::Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing {SIGNATURE_HEADER} header (is the peer configured with the cluster key?)")]
    Missing,
    #[error("malformed signature header")]
    Malformed,
    #[error("signature timestamp {skew_ms} ms away from our clock (allowed: {WINDOW_MS} ms)")]
    OutsideWindow { skew_ms: u64 },
    #[error("bad signature (a different cluster key?)")]
    BadMac,
    #[error("request replayed")]
    Replayed,
}

impl ClusterKey {
    pub fn new(secret: &[u8; 32]) -> ClusterKey {
        let derive = |context| {
            let mut hasher = blake3::Hasher::new_derive_key(context);
            hasher.update(secret);
            *hasher.finalize().as_bytes()
        };
        ClusterKey {
            request: derive("kvs 2026 peer request signature v1"),
            reply: derive("kvs 2026 peer reply signature v1"),
        }
    }

    fn request_mac(
        &self,
        method: &str,
        path_and_query: &str,
        ts_ms: u64,
        nonce: u64,
        from: Uuid,
        body: &[u8],
    ) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.request);
        for field in [method.as_bytes(), path_and_query.as_bytes()] {
            hasher.update(&(field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.update(&ts_ms.to_be_bytes());
        hasher.update(&nonce.to_be_bytes());
        hasher.update(from.as_bytes());
        hasher.update(blake3::hash(body).as_bytes());
        hasher.finalize()
    }

    /// The signature header for a request from node `from`.
    pub fn sign_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        from: Uuid,
        now_ms: u64,
    ) -> (String, blake3::Hash) {
        let nonce: u64 = rand::random();
        let mac = self.request_mac(method, path_and_query, now_ms, nonce, from, body);
        (format!("v1 {now_ms} {nonce:016x} {} {}", from.simple(), mac.to_hex()), mac)
    }

    /// Checks a request's signature header (MAC and window; replays are the
    /// [`ReplayGuard`]'s job).
    pub fn verify_request(
        &self,
        method: &str,
        path_and_query: &str,
        header: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Signed, AuthError> {
        let signed = precheck(header, now_ms)?;
        self.check_mac(&signed, method, path_and_query, body)?;
        Ok(signed)
    }

    /// Checks the MAC of a header that passed [`precheck`] against the request it came
    /// with.
    pub fn check_mac(
        &self,
        signed: &Signed,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let expected =
            self.request_mac(method, path_and_query, signed.ts_ms, signed.nonce, signed.from, body);
        // blake3::Hash's == is constant-time.
        if expected == signed.mac {
            Ok(())
        } else {
            Err(AuthError::BadMac)
        }
    }

    fn reply_mac(&self, request_mac: &blake3::Hash, status: u16, body: &[u8]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.reply);
        hasher.update(request_mac.as_bytes());
        hasher.update(&status.to_be_bytes());
        hasher.update(blake3::hash(body).as_bytes());
        hasher.finalize()
    }

    /// The reply signature header for a reply to the request that carried `request_mac`.
    pub fn sign_reply(&self, request_mac: &blake3::Hash, status: u16, body: &[u8]) -> String {
        self.reply_mac(request_mac, status, body).to_hex().to_string()
    }

    pub fn verify_reply(
        &self,
        request_mac: &blake3::Hash,
        status: u16,
        header: Option<&str>,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let presented = blake3::Hash::from_hex(header.ok_or(AuthError::Missing)?.trim())
            .map_err(|_| AuthError::Malformed)?;
        if self.reply_mac(request_mac, status, body) == presented {
            Ok(())
        } else {
            Err(AuthError::BadMac)
        }
    }
}

/// What can be checked before the body is read: the header is there, parses, and its
/// timestamp is within the window. Lets a node refuse junk without buffering its body.
pub fn precheck(header: Option<&str>, now_ms: u64) -> Result<Signed, AuthError> {
    let signed = parse(header.ok_or(AuthError::Missing)?)?;
    let skew_ms = now_ms.abs_diff(signed.ts_ms);
    if skew_ms > WINDOW_MS {
        return Err(AuthError::OutsideWindow { skew_ms });
    }
    Ok(signed)
}

fn parse(header: &str) -> Result<Signed, AuthError> {
    let mut parts = header.split(' ');
    let mut next = || parts.next().ok_or(AuthError::Malformed);
    if next()? != "v1" {
        return Err(AuthError::Malformed);
    }
    let ts_ms = next()?.parse().map_err(|_| AuthError::Malformed)?;
    let nonce = u64::from_str_radix(next()?, 16).map_err(|_| AuthError::Malformed)?;
    let from = Uuid::try_parse(next()?).map_err(|_| AuthError::Malformed)?;
    let mac = blake3::Hash::from_hex(next()?).map_err(|_| AuthError::Malformed)?;
    if parts.next().is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(Signed { ts_ms, nonce, from, mac })
}

/// Remembers the MACs accepted within the window, so each signed request is accepted
/// once.
#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<blake3::Hash, u64>>,
}

impl ReplayGuard {
    /// Accepts `signed` unless its MAC was accepted before; forgets MACs whose timestamp
    /// left the window (they would be refused as outside it anyway).
    pub fn accept(&self, signed: &Signed, now_ms: u64) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains_key(&signed.mac) {
            return Err(AuthError::Replayed);
        }
        if seen.len() >= REPLAY_CAPACITY / 2 {
            let oldest_allowed = now_ms.saturating_sub(WINDOW_MS);
            seen.retain(|_, ts| *ts >= oldest_allowed);
            if seen.len() >= REPLAY_CAPACITY {
                // Still full of fresh entries: drop the oldest half.
                let mut stamps: Vec<u64> = seen.values().copied().collect();
                let middle = stamps.len() / 2;
                let (_, cut, _) = stamps.select_nth_unstable(middle);
                let cut = *cut;
                seen.retain(|_, ts| *ts > cut);
            }
        }
        seen.insert(signed.mac, signed.ts_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key_of(byte: u8) -> ClusterKey {
        ClusterKey::new(&[byte; 32])
    }

    fn node() -> Uuid {
        Uuid::from_u128(42)
    }

    #[test]
    fn a_signed_request_verifies_once_and_only_as_sent() {
        let key = key_of(1);
        let (header, mac) = key.sign_request("POST", "/internal/v1/records", b"body", node(), NOW);
        let verify = |method, path, body: &[u8], now| {
            key.verify_request(method, path, Some(&header), body, now)
        };
        let signed = verify("POST", "/internal/v1/records", b"body", NOW + 1).unwrap();
        assert_eq!((signed.from, signed.mac), (node(), mac));
        assert_eq!(verify("GET", "/internal/v1/records", b"body", NOW), Err(AuthError::BadMac));
        assert_eq!(verify("POST", "/internal/v1/gossip", b"body", NOW), Err(AuthError::BadMac));
        assert_eq!(verify("POST", "/internal/v1/records", b"bodY", NOW), Err(AuthError::BadMac));
        assert_eq!(
            verify("POST", "/internal/v1/records", b"body", NOW + WINDOW_MS + 1),
            Err(AuthError::OutsideWindow { skew_ms: WINDOW_MS + 1 })
        );
        assert_eq!(
            key_of(2).verify_request("POST", "/internal/v1/records", Some(&header), b"body", NOW),
            Err(AuthError::BadMac)
        );
        let guard = ReplayGuard::default();
        assert_eq!(guard.accept(&signed, NOW), Ok(()));
        assert_eq!(guard.accept(&signed, NOW), Err(AuthError::Replayed));
    }

    #[test]
    fn the_query_is_signed() {
        let key = key_of(1);
        let (header, _) = key.sign_request("POST", "/internal/v1/sync?peer=a:1", b"", node(), NOW);
        let moved =
            key.verify_request("POST", "/internal/v1/sync?peer=b:1", Some(&header), b"", NOW);
        assert_eq!(moved, Err(AuthError::BadMac));
    }

    #[test]
    fn a_reply_verifies_only_for_its_request_status_and_body() {
        let key = key_of(3);
        let (_, mac) = key.sign_request("POST", "/internal/v1/root", b"q", node(), NOW);
        let (_, other) = key.sign_request("POST", "/internal/v1/root", b"q", node(), NOW);
        let header = key.sign_reply(&mac, 200, b"answer");
        assert_eq!(key.verify_reply(&mac, 200, Some(&header), b"answer"), Ok(()));
        assert_eq!(key.verify_reply(&other, 200, Some(&header), b"answer"), Err(AuthError::BadMac));
        assert_eq!(key.verify_reply(&mac, 400, Some(&header), b"answer"), Err(AuthError::BadMac));
        assert_eq!(key.verify_reply(&mac, 200, Some(&header), b"answeR"), Err(AuthError::BadMac));
        assert_eq!(key.verify_reply(&mac, 200, None, b"answer"), Err(AuthError::Missing));
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let shown = format!("{:?}", ClusterKey::new(&[0xab; 32]));
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab"), "{shown}");
    }

    proptest! {
        /// Any header a peer sends is refused or parsed, never a panic.
        #[test]
        fn garbage_headers_are_refused(header in ".{0,200}") {
            let result = key_of(1).verify_request("POST", "/x", Some(&header), b"", NOW);
            prop_assert!(result.is_err());
        }

        /// Flipping any byte of a valid header breaks it.
        #[test]
        fn a_changed_header_never_verifies(at in 0usize..200, byte in any::<u8>()) {
            let key = key_of(1);
            let (header, _) = key.sign_request("POST", "/x", b"b", node(), NOW);
            let mut bytes = header.clone().into_bytes();
            let at = at % bytes.len();
            prop_assume!(bytes[at] != byte);
            bytes[at] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                let result = key.verify_request("POST", "/x", Some(&changed), b"b", NOW);
                // Only a change that parses to the same values (e.g. hex case) may pass.
                if let Ok(signed) = result {
                    let original = key.verify_request("POST", "/x", Some(&header), b"b", NOW);
                    prop_assert_eq!(Ok(signed), original);
                }
            }
        }
    }
}
