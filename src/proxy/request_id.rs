//! `X-Request-Id`: one id per request, kept from a trusted proxy in front
//! (an ingress that set it) or made here, sent upstream, put on the answer
//! and written to the access log, so that a request can be followed from the
//! ingress through scopegate to the app, refusals included.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header's name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id kept from a proxy in front (Envoy's and nginx's are 32 to
/// 36 characters); a longer one is replaced.
const MAX_KEPT_LEN: usize = 128;

/// Makes request ids: a random prefix per gateway and a counter, so ids are
/// unique within a process and, by the 64 random bits, across replicas,
/// without drawing randomness per request.
#[derive(Debug)]
pub struct RequestIds {
    prefix: [u8; 16],
    next: AtomicU64,
}

/// One request's id, as sent upstream and on the answer: made once, and
/// shared by every copy (a reference count, no further allocation).
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestIds {
    /// A generator with a fresh random prefix.
    pub fn new() -> Result<Self, String> {
        use aws_lc_rs::rand::SecureRandom as _;
        let mut seed = [0u8; 8];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| "no randomness for request ids".to_owned())?;
        let mut prefix = [0u8; 16];
        hex_into(u64::from_be_bytes(seed), &mut prefix);
        Ok(Self {
            prefix,
            next: AtomicU64::new(0),
        })
    }

    /// The id of a request with `headers`: the one `X-Request-Id` it
    /// carries if it comes from a trusted proxy (`trusted` is asked only
    /// then) and the id is 1 to 128 visible ASCII characters; else a new one.
    pub fn assign(&self, headers: &HeaderMap, trusted: impl FnOnce() -> bool) -> RequestId {
        let mut sent = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(id), None) = (sent.next(), sent.next()) {
            let fits = (1..=MAX_KEPT_LEN).contains(&id.len())
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic());
            if fits && trusted() {
                return RequestId(id.clone());
            }
        }
        let mut made = [0u8; 32];
        let (prefix, counter) = made.split_at_mut(16);
        prefix.copy_from_slice(&self.prefix);
        hex_into(self.next.fetch_add(1, Ordering::Relaxed), counter);
        // Hex digits are a valid value.
        let id = HeaderValue::from_maybe_shared(Bytes::from_owner(made))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        RequestId(id)
    }
}

impl RequestId {
    /// As a header value.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }

    /// As text, for the access log.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("-")
    }
}

/// Writes `value` as 16 lower-case hex digits.
fn hex_into(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out.iter_mut().take(16).enumerate() {
        let nibble = (value >> (60 - 4 * i)) & 0xf;
        *slot = DIGITS.get(nibble as usize).copied().unwrap_or(b'0');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ids: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for id in ids {
            map.append(
                &X_REQUEST_ID,
                HeaderValue::from_bytes(id.as_bytes()).unwrap(),
            );
        }
        map
    }

    #[test]
    fn made_ids_are_hex_and_differ() {
        let ids = RequestIds::new().unwrap();
        let a = ids.assign(&headers(&[]), || true);
        let b = ids.assign(&headers(&[]), || true);
        for id in [&a, &b] {
            assert_eq!(id.as_str().len(), 32);
            assert!(id
                .as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert_eq!(id.header(), id.as_str());
        }
        assert_ne!(a.as_str(), b.as_str());
        // Same gateway, same prefix; another gateway, another one.
        assert_eq!(a.as_str()[..16], b.as_str()[..16]);
        let other = RequestIds::new().unwrap().assign(&headers(&[]), || true);
        assert_ne!(other.as_str()[..16], a.as_str()[..16]);
        assert!(a.as_str().ends_with("0000000000000000"));
        assert!(b.as_str().ends_with("0000000000000001"));
    }

    #[test]
    fn only_a_trusted_proxys_fitting_id_is_kept() {
        let ids = RequestIds::new().unwrap();
        let long = "a".repeat(MAX_KEPT_LEN);
        let kept = |sent: &[&str], trusted: bool| {
            let id = ids.assign(&headers(sent), || trusted);
            sent.first().is_some_and(|s| id.as_str() == *s)
        };
        assert!(kept(&["abc-123"], true));
        assert!(kept(&[&long], true));
        assert_eq!(ids.assign(&headers(&[&long]), || true).as_str(), long);
        assert!(!kept(&["abc-123"], false));
        assert!(!kept(&[&format!("{long}a")], true));
        assert!(!kept(&[""], true));
        assert!(!kept(&["a b"], true));
        assert!(!kept(&["a", "b"], true));
        assert!(!kept(&["é"], true));
    }

    #[test]
    fn trust_is_asked_only_of_a_fitting_id() {
        let ids = RequestIds::new().unwrap();
        for sent in [&[][..], &["a b"], &["a", "b"]] {
            ids.assign(&headers(sent), || panic!("asked for {sent:?}"));
        }
    }
}
