//! The verified-token cache: SHA-256 digests of tokens to verified results,
//! bounded in size, and no entry outlives its token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use crate::auth::VerifiedToken;

/// A token digest: the cache key (raw tokens are never stored).
pub type TokenDigest = [u8; 32];

/// SHA-256 of a token (or of another secret kept only by digest).
pub fn digest(token: impl AsRef<[u8]>) -> TokenDigest {
    digest_of(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_ref(),
    ))
}

/// A finished SHA-256 as a fixed-size array.
pub fn digest_of(d: aws_lc_rs::digest::Digest) -> TokenDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Verified tokens by digest.
#[derive(Clone)]
pub struct TokenCache {
    inner: Cache<TokenDigest, Arc<VerifiedToken>>,
}

struct UntilTokenExpiry;

impl Expiry<TokenDigest, Arc<VerifiedToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &Arc<VerifiedToken>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.cache_until.saturating_duration_since(created_at))
    }
}

impl TokenCache {
    /// A cache holding at most `max_entries` tokens.
    pub fn new(max_entries: u64) -> Self {
        Self {
            inner: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilTokenExpiry)
                .build(),
        }
    }

    /// A cached, still-valid verification result.
    pub async fn get(&self, key: &TokenDigest) -> Option<Arc<VerifiedToken>> {
        let hit = self.inner.get(key).await?;
        // moka expires lazily but never returns an expired entry; check anyway
        // so a clock edge cannot serve a token past its expiry. `cache_until`
        // was counted on the monotonic clock from the wall clock's reading
        // then: a wall clock set forward since (an NTP step) is caught by
        // reading `exp` against it again.
        (hit.cache_until > Instant::now()
            && !crate::auth::jwt::time_until(hit.expires_at).is_zero())
        .then_some(hit)
    }

    /// Stores a result unless it is already at its expiry.
    pub async fn insert(&self, key: TokenDigest, token: Arc<VerifiedToken>) {
        if token.cache_until > Instant::now() {
            self.inner.insert(key, token).await;
        }
    }

    /// Entries currently held (approximate, for tests and metrics).
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Runs pending evictions (tests and benchmarks want exact counts).
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry the monotonic clock would keep, for a token whose `exp` the
    /// wall clock has passed (as after the wall clock was set forward), is
    /// not served.
    #[tokio::test]
    async fn a_hit_past_exp_by_the_wall_clock_is_not_served() {
        let cache = TokenCache::new(16);
        let claims = serde_json::Map::new();
        let now = crate::auth::jwt::now_unix();
        for (expires_at, served) in [(now - 1, false), (now + 3600, true)] {
            let token = crate::auth::build_verified(
                0,
                &claims,
                crate::auth::scope::Scopes::default(),
                expires_at,
                0,
                Instant::now() + std::time::Duration::from_secs(3600),
                &[],
            );
            let key = digest(expires_at.to_string());
            cache.insert(key, Arc::new(token)).await;
            assert_eq!(cache.get(&key).await.is_some(), served, "{expires_at}");
        }
    }
}
