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
    /// A cache holding at most `max_entries` tokens of up to 1 KiB each
    /// (see [`VerifiedToken::cache_weight`]).
    pub fn new(max_entries: u64) -> Self {
        Self {
            inner: Cache::builder()
                .max_capacity(max_entries)
                .weigher(move |_, token: &Arc<VerifiedToken>| token.cache_weight(max_entries))
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

    /// The entries' total weight (at most `max_entries` once evictions ran).
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }

    /// Runs pending evictions (tests and benchmarks want exact counts).
    pub async fn run_pending_tasks(&self) {
        self.inner.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries count towards `max_entries` by their memory: ten tokens of
    /// 4 000 scopes each (about 165 KiB apiece) do not all fit in a cache of
    /// 1 000 entries (eight would, each weighing its cap of an eighth),
    /// where ten small ones do, even in a cache of 16; and a cache of 16
    /// still takes such tokens.
    #[tokio::test]
    async fn large_entries_count_by_their_memory() {
        let claims = serde_json::Map::new();
        let until = Instant::now() + std::time::Duration::from_secs(3600);
        let expires_at = crate::auth::jwt::now_unix() + 3600;
        let many: Vec<String> = (0..4000).map(|n| format!("scope-{n}")).collect();
        let many = many.join(" ");
        for (scopes, max_entries, most) in [
            ("orders:read", 1000, 10),
            // A usual token is one entry's weight: ten fit in a cache of 16.
            ("openid profile orders:read orders:write", 16, 10),
            (many.as_str(), 1000, 8),
            (many.as_str(), 16, 8),
        ] {
            let cache = TokenCache::new(max_entries);
            for n in 0..10u32 {
                let token = crate::auth::build_verified(
                    0,
                    &claims,
                    crate::auth::scope::Scopes::from_space_separated(scopes),
                    expires_at,
                    0,
                    until,
                    &[],
                );
                cache.insert(digest(n.to_string()), Arc::new(token)).await;
                cache.run_pending_tasks().await;
            }
            assert!(
                cache.weighted_size() <= max_entries,
                "{}",
                cache.weighted_size()
            );
            let all_fit = most == 10;
            assert!(
                (1..=most).contains(&cache.entry_count())
                    && (!all_fit || cache.entry_count() == 10),
                "{} entries of {} bytes of scopes",
                cache.entry_count(),
                scopes.len()
            );
        }
    }

    /// An entry leaves the cache at its token's end, not only when others
    /// crowd it out: expired tokens do not keep holding memory.
    #[tokio::test]
    async fn an_entry_is_dropped_at_its_tokens_end() {
        let cache = TokenCache::new(16);
        let claims = serde_json::Map::new();
        let now = crate::auth::jwt::now_unix();
        for (n, lasts) in [
            (0u32, Duration::from_millis(1)),
            (1, Duration::from_secs(3600)),
        ] {
            let token = crate::auth::build_verified(
                0,
                &claims,
                crate::auth::scope::Scopes::default(),
                now + 3600,
                0,
                Instant::now() + lasts,
                &[],
            );
            cache.insert(digest(n.to_string()), Arc::new(token)).await;
        }
        // Past the first one's end, and past the second of moka's timer
        // wheel's finest level (about 1.07 s), whatever the host's speed.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cache.run_pending_tasks().await;
        assert_eq!(cache.entry_count(), 1, "the expired entry is still held");
        assert!(cache.get(&digest("1")).await.is_some());
    }

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
