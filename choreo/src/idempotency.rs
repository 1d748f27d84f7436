//! Idempotency: exactly-once effects per handler on top of at-least-once delivery.
//!
//! Before a handler runs, the service claims `(handler, key)` in an [`IdempotencyStore`]. The
//! key is the event's business key (`#[choreo(key)]`) or else the message id. A key that is
//! already done is acknowledged without running the handler; a failed run releases its claim
//! so a retry can take it.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::BoxError;

/// The outcome of claiming a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: run the handler.
    Claimed,
    /// A run with this key already succeeded: skip it.
    Done,
    /// Another run holds the key right now (another instance, or a concurrent duplicate):
    /// try again later.
    InProgress,
}

/// Where handlers record which keys they have handled.
///
/// The in-memory [`MemoryIdempotencyStore`] serves one process; several instances of a
/// service need a shared store so that a redelivery to another instance is still caught.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `handler` for at most `lease`; a claim not completed or released by
    /// then may be taken by another run.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached; the message is then retried.
    fn claim(
        &self,
        handler: &str,
        key: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, BoxError>> + Send;

    /// Marks a claimed key done.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached; the message is then retried.
    fn complete(
        &self,
        handler: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Gives up a claim after a failed run.
    ///
    /// # Errors
    ///
    /// When the store cannot be reached; the claim then lapses with its lease.
    fn release(
        &self,
        handler: &str,
        key: &str,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// A bounded in-process [`IdempotencyStore`].
///
/// Remembers completed keys for `ttl` (default one hour), at most `capacity` per handler
/// (default 100,000); the oldest are forgotten first. Cloning shares the store.
#[derive(Clone, Debug)]
pub struct MemoryIdempotencyStore {
    inner: Arc<Mutex<Handlers>>,
    seeds: (RandomState, RandomState),
    /// Times are kept as milliseconds since this instant: 8 bytes where an `Instant` takes 16.
    epoch: Instant,
    ttl: u64,
    capacity: usize,
}

/// Each handler's keys. A service has a handful of handlers: a scan beats hashing the name.
type Handlers = Vec<(Box<str>, Keys)>;

#[derive(Debug, Default)]
struct Keys {
    entries: HashMap<KeyId, Entry, BuildHasherDefault<KeyIdHasher>>,
    /// Keys in the order they were first claimed, with when: the oldest go first.
    order: VecDeque<(KeyId, u64)>,
}

/// A key as 128 bits of two keyed SipHashes: no allocation, no pointer to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KeyId(u64, u64);

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already random: one half is hash enough.
        state.write_u64(self.1);
    }
}

/// Hashes a [`KeyId`] to its low half.
#[derive(Default)]
struct KeyIdHasher(u64);

impl Hasher for KeyIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One claimed key, in milliseconds since the store's epoch: 32 bytes a key with its id, so
/// that a full store of 100,000 keys stays within a few megabytes.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When the key was first claimed.
    since: u64,
    /// When the claim's lease ends; [`DONE`] once a run succeeded.
    until: u64,
}

/// [`Entry::until`] of a done key.
const DONE: u64 = u64::MAX;

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryIdempotencyStore {
    /// A store with the default TTL (one hour) and capacity (100,000 keys per handler).
    pub fn new() -> Self {
        Self::with_limits(Duration::from_secs(3600), 100_000)
    }

    /// A store that remembers done keys for `ttl`, at most `capacity` per handler.
    pub fn with_limits(ttl: Duration, capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            seeds: (RandomState::new(), RandomState::new()),
            epoch: Instant::now(),
            ttl: millis_ceil(ttl),
            capacity: capacity.max(1),
        }
    }

    /// How many keys `handler` has claimed or completed and not yet forgotten.
    pub fn len(&self, handler: &str) -> usize {
        let all = self.lock();
        all.iter()
            .find(|(name, _)| **name == *handler)
            .map_or(0, |(_, keys)| keys.entries.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Handlers> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key_id(&self, key: &str) -> KeyId {
        KeyId(self.seeds.0.hash_one(key), self.seeds.1.hash_one(key))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn claim_now(&self, handler: &str, key: &str, lease: Duration) -> Claim {
        let id = self.key_id(key);
        let now = self.now();
        let until = now.saturating_add(millis_ceil(lease)).min(DONE - 1);
        let mut all = self.lock();
        let at = match all.iter().position(|(name, _)| **name == *handler) {
            Some(at) => at,
            None => {
                all.push((handler.into(), Keys::default()));
                all.len() - 1
            }
        };
        let keys = &mut all[at].1;
        keys.evict(now, self.ttl, self.capacity);
        match keys.entries.entry(id) {
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if entry.until == DONE {
                    Claim::Done
                } else if entry.until > now {
                    Claim::InProgress
                } else {
                    entry.until = until;
                    Claim::Claimed
                }
            }
            MapEntry::Vacant(vacant) => {
                vacant.insert(Entry { since: now, until });
                keys.order.push_back((id, now));
                Claim::Claimed
            }
        }
    }

    fn settle(&self, handler: &str, key: &str, done: bool) {
        let id = self.key_id(key);
        let mut all = self.lock();
        let Some((_, keys)) = all.iter_mut().find(|(name, _)| **name == *handler) else {
            return;
        };
        if done {
            if let Some(entry) = keys.entries.get_mut(&id) {
                entry.until = DONE;
            }
        } else {
            keys.entries.remove(&id);
        }
    }
}

/// `duration` in whole milliseconds, rounded up: a lease or TTL is never cut short.
fn millis_ceil(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

impl Keys {
    fn evict(&mut self, now: u64, ttl: u64, capacity: usize) {
        while let Some(&(key, since)) = self.order.front() {
            let full = self.entries.len() >= capacity;
            // Younger than the TTL and room to spare: nothing to forget yet, and no need to
            // look the key up.
            if !full && now.saturating_sub(since) < ttl {
                break;
            }
            // Otherwise the slot is stale: released, and maybe claimed again since.
            if let MapEntry::Occupied(live) = self.entries.entry(key) {
                if live.get().since == since {
                    // A key still in its lease stays past the TTL: forgetting it would let
                    // a duplicate run alongside. Only a full store takes it.
                    let until = live.get().until;
                    if !full && until != DONE && until > now {
                        break;
                    }
                    live.remove();
                }
            }
            self.order.pop_front();
        }
        if self.order.len() > capacity.saturating_mul(2) {
            let entries = &self.entries;
            self.order
                .retain(|(key, since)| entries.get(key).is_some_and(|e| e.since == *since));
        }
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(&self, handler: &str, key: &str, lease: Duration) -> Result<Claim, BoxError> {
        Ok(self.claim_now(handler, key, lease))
    }

    async fn complete(&self, handler: &str, key: &str) -> Result<(), BoxError> {
        self.settle(handler, key, true);
        Ok(())
    }

    async fn release(&self, handler: &str, key: &str) -> Result<(), BoxError> {
        self.settle(handler, key, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn claim_complete_release() {
        let store = MemoryIdempotencyStore::new();
        assert_eq!(store.claim_now("h", "k", LEASE), Claim::Claimed);
        assert_eq!(store.claim_now("h", "k", LEASE), Claim::InProgress);
        assert_eq!(store.claim_now("other", "k", LEASE), Claim::Claimed);
        store.settle("h", "k", false);
        assert_eq!(store.claim_now("h", "k", LEASE), Claim::Claimed);
        store.settle("h", "k", true);
        assert_eq!(store.claim_now("h", "k", LEASE), Claim::Done);
    }

    #[test]
    fn expired_lease_can_be_reclaimed() {
        let store = MemoryIdempotencyStore::new();
        assert_eq!(store.claim_now("h", "k", Duration::ZERO), Claim::Claimed);
        assert_eq!(store.claim_now("h", "k", LEASE), Claim::Claimed);
    }

    #[test]
    fn capacity_bounds_memory() {
        let store = MemoryIdempotencyStore::with_limits(Duration::from_secs(3600), 10);
        for i in 0..1000 {
            let key = i.to_string();
            assert_eq!(store.claim_now("h", &key, LEASE), Claim::Claimed);
            store.settle("h", &key, true);
        }
        assert!(store.len("h") <= 10);
        assert_eq!(store.claim_now("h", "999", LEASE), Claim::Done);
        assert_eq!(store.claim_now("h", "0", LEASE), Claim::Claimed);
    }

    #[test]
    fn ttl_forgets_done_keys() {
        let store = MemoryIdempotencyStore::with_limits(Duration::ZERO, 10);
        store.claim_now("h", "k", LEASE);
        store.settle("h", "k", true);
        assert_eq!(store.claim_now("h", "k", LEASE), Claim::Claimed);
    }

    #[test]
    fn released_and_reclaimed_keys_do_not_grow_without_bound() {
        let store = MemoryIdempotencyStore::with_limits(Duration::from_secs(3600), 4);
        for _ in 0..100 {
            store.claim_now("h", "k", LEASE);
            store.settle("h", "k", false);
        }
        let all = store.lock();
        let (_, keys) = all.iter().find(|(name, _)| &**name == "h").unwrap();
        assert!(keys.order.len() <= 8);
    }
}
