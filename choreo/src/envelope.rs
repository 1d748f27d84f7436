//! The envelope every event travels in: a JSON body and its metadata.
//!
//! The header names in [`headers`] are a contract with other teams: non-Rust consumers read
//! them, and the failure headers describe every poisoned message.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

use crate::event::Event;
use crate::trace::TraceContext;

/// Header and property names on the wire.
///
/// Envelope attributes follow CloudEvents 1.0 with the `ce-` prefix of its AMQP binding;
/// everything choreo adds is prefixed `choreo-`.
pub mod headers {
    /// CloudEvents spec version, always `1.0`.
    pub const SPEC_VERSION: &str = "ce-specversion";
    /// Message id (UUID v7), also the `message_id` property.
    pub const ID: &str = "ce-id";
    /// Event name, also the `type` property.
    pub const TYPE: &str = "ce-type";
    /// Source service, also the `app_id` property.
    pub const SOURCE: &str = "ce-source";
    /// Publication time, RFC 3339 in UTC; also the `timestamp` property.
    pub const TIME: &str = "ce-time";
    /// Event version.
    pub const VERSION: &str = "choreo-version";
    /// Correlation id of the business flow, also the `correlation_id` property.
    pub const CORRELATION_ID: &str = "choreo-correlation-id";
    /// Id of the message whose handling published this one.
    pub const CAUSATION_ID: &str = "choreo-causation-id";
    /// Business idempotency key.
    pub const KEY: &str = "choreo-key";
    /// Handler runs that failed before this delivery.
    pub const ATTEMPT: &str = "choreo-attempt";
    /// Delayed retry tiers this message has passed through.
    pub const RETRY_TIER: &str = "choreo-retry-tier";
    /// When the first failed run happened, RFC 3339 UTC; carried through retry tiers.
    pub const FIRST_FAILURE: &str = "choreo-first-failure";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";

    /// Failure headers, added to a message when it is moved to a poison queue.
    pub mod failure {
        /// The handler (queue) that gave up on the message.
        pub const HANDLER: &str = "choreo-failure-handler";
        /// Why: see [`FailureKind`](crate::FailureKind).
        pub const KIND: &str = "choreo-failure-kind";
        /// The last error, at most 1024 bytes.
        pub const MESSAGE: &str = "choreo-failure-message";
        /// How many runs of the handler failed: 0 when the message never reached it
        /// (`decode`, `unknown-version`, `too-large`, `malformed`).
        pub const ATTEMPTS: &str = "choreo-failure-attempts";
        /// First failure, RFC 3339 UTC.
        pub const FIRST_AT: &str = "choreo-failure-first-at";
        /// Last failure, RFC 3339 UTC.
        pub const LAST_AT: &str = "choreo-failure-last-at";
        /// The exchange the message was first published to.
        pub const EXCHANGE: &str = "choreo-failure-exchange";
        /// The routing key the message was first published with.
        pub const ROUTING_KEY: &str = "choreo-failure-routing-key";

        /// Every failure header, in the order they are written.
        pub const ALL: [&str; 8] = [
            HANDLER,
            KIND,
            MESSAGE,
            ATTEMPTS,
            FIRST_AT,
            LAST_AT,
            EXCHANGE,
            ROUTING_KEY,
        ];
    }
}

/// A message: metadata and a JSON body.
#[derive(Clone, Debug)]
pub struct Message {
    /// The envelope attributes.
    pub meta: Metadata,
    /// The event, exactly as serde wrote it.
    pub body: Bytes,
}

impl Message {
    /// Encodes `event` into a new message from `source`, starting a new correlation.
    ///
    /// # Errors
    ///
    /// When the event cannot be serialized (a map with non-string keys, a failing custom
    /// `Serialize`).
    pub fn encode<E: Event>(event: &E, source: Arc<str>) -> Result<Self, serde_json::Error> {
        let body = encode_body(event)?;
        let id = new_id();
        Ok(Self {
            meta: Metadata {
                id,
                name: Cow::Borrowed(E::NAME),
                version: E::VERSION,
                source,
                time: SystemTime::now(),
                correlation_id: id,
                causation_id: None,
                key: event.key(),
                attempt: 0,
                retry_tier: 0,
                trace: None,
                headers: Headers::new(),
            },
            body,
        })
    }

    /// A message of event `name` and `version` with `body` as it is, from `source`, starting
    /// a new correlation. For bodies no `Event` type would write: foreign producers, tests of
    /// bad input.
    pub fn raw(
        name: impl Into<Cow<'static, str>>,
        version: u32,
        source: Arc<str>,
        body: impl Into<Bytes>,
    ) -> Self {
        let id = new_id();
        Self {
            meta: Metadata {
                id,
                name: name.into(),
                version,
                source,
                time: SystemTime::now(),
                correlation_id: id,
                causation_id: None,
                key: None,
                attempt: 0,
                retry_tier: 0,
                trace: None,
                headers: Headers::new(),
            },
            body: body.into(),
        }
    }

    /// The exchange this message is published to: the domain, the name's first segment.
    pub fn exchange(&self) -> &str {
        self.meta.domain()
    }
}

/// Envelope attributes of a message.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// Message id, a UUID v7.
    pub id: Uuid,
    /// Event name, `<domain>.<event>`.
    pub name: Cow<'static, str>,
    /// Event version.
    pub version: u32,
    /// The service that published the message.
    pub source: Arc<str>,
    /// When the message was published.
    pub time: SystemTime,
    /// The business flow this message belongs to; the first message's id.
    pub correlation_id: Uuid,
    /// The message whose handling published this one.
    pub causation_id: Option<Uuid>,
    /// The business idempotency key, when the event declares one.
    pub key: Option<String>,
    /// Handler runs that failed before this delivery.
    pub attempt: u32,
    /// Delayed retry tiers this message has passed through.
    pub retry_tier: u32,
    /// The W3C trace context the message continues: its `traceparent` header on the wire.
    pub trace: Option<TraceContext>,
    /// Every other header (`tracestate`, failure headers, foreign headers).
    pub headers: Headers,
}

impl Metadata {
    /// The domain: the event name's first segment.
    pub fn domain(&self) -> &str {
        domain_of(&self.name)
    }

    /// The routing key, `<name>.v<version>`.
    pub fn routing_key(&self) -> String {
        format!("{}.v{}", self.name, self.version)
    }
}

/// The domain of an event name: its first segment.
pub fn domain_of(name: &str) -> &str {
    name.split_once('.').map_or(name, |(domain, _)| domain)
}

/// Extra headers, in insertion order. Empty headers do not allocate; clones share the list
/// until one of them changes it.
#[derive(Clone, Default)]
pub struct Headers(Option<Arc<Vec<(String, String)>>>);

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(None)
    }

    fn list(&self) -> &[(String, String)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.list()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, replacing an earlier value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        let list = Arc::make_mut(self.0.get_or_insert_with(Arc::default));
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => list.push((name, value)),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.list().iter().position(|(n, _)| n == name)?;
        let list = Arc::make_mut(self.0.as_mut()?);
        Some(list.remove(index).1)
    }

    /// Every header in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list().iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Self::new();
        for (k, v) in iter {
            headers.insert(k, v);
        }
        headers
    }
}

/// `value` as JSON in a buffer of its exact size.
///
/// Serde writes into a scratch buffer kept per thread, so a body costs one allocation: no
/// growing as the JSON gets longer, and no separate reference count for the `Bytes`.
pub(crate) fn encode_body<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<Bytes, serde_json::Error> {
    /// Scratch buffers that grew past this are let go rather than kept for the thread's life.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        // A `Serialize` impl that itself encodes a body finds the buffer taken.
        let Ok(mut buffer) = scratch.try_borrow_mut() else {
            return serde_json::to_vec(value).map(Bytes::from);
        };
        buffer.clear();
        let written = serde_json::to_writer(&mut *buffer, value);
        let body = written.map(|()| Bytes::copy_from_slice(&buffer));
        if buffer.capacity() > KEEP {
            *buffer = Vec::new();
        }
        body
    })
}

/// A new message id: a UUID v7 (milliseconds since the epoch, then random bits).
pub fn new_id() -> Uuid {
    let random = fastrand::u128(..);
    v7(unix_millis(SystemTime::now()), random)
}

/// A UUID v7 whose random bits are derived from `parent`, `scope` and `seq`, with `parent`'s
/// timestamp.
///
/// Follow-up events get such ids: if a handler's run is repeated after its events were
/// published but before its message was acknowledged, the repeat publishes under the same
/// ids and consumers' idempotency absorbs it.
pub(crate) fn derived_id(parent: Uuid, scope: &[&str], seq: u32) -> Uuid {
    let millis = (parent.as_u128() >> 80) as u64;
    let mut hash = Fnv128::new();
    hash.write(parent.as_bytes());
    for part in scope {
        hash.write(part.as_bytes());
        hash.write(&[0]);
    }
    hash.write(&seq.to_le_bytes());
    v7(millis, hash.finish())
}

/// A stable id for content that came without one: the same `parts` give the same id.
///
/// A v7 UUID with a zero timestamp and bits hashed from `parts`; transports use it for
/// messages published without a message id, so that redeliveries still deduplicate.
pub fn content_id(parts: &[&[u8]]) -> Uuid {
    let mut hash = Fnv128::new();
    for part in parts {
        hash.write(part);
        hash.write(&[0]);
    }
    v7(0, hash.finish())
}

fn v7(millis: u64, random: u128) -> Uuid {
    let ts = u128::from(millis & 0xFFFF_FFFF_FFFF) << 80;
    let ver = 0x7u128 << 76;
    let rand_a = (random & 0xFFF) << 64;
    let var = 0b10u128 << 62;
    let rand_b = (random >> 12) & ((1u128 << 62) - 1);
    Uuid::from_u128(ts | ver | rand_a | var | rand_b)
}

/// 128-bit FNV-1a: stable across builds and platforms.
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u128::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u128 {
        self.0
    }
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A time formatted as RFC 3339 in UTC with millisecond precision,
/// e.g. `2026-11-26T05:31:43.123Z`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

impl fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses the RFC 3339 UTC form [`Rfc3339`] writes (fractional seconds optional).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let y: i64 = date_parts.next()?.parse().ok()?;
    let m: u32 = date_parts.next()?.parse().ok()?;
    let d: u32 = date_parts.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut hms_parts = hms.splitn(3, ':');
    let hh: u64 = hms_parts.next()?.parse().ok()?;
    let mm: u64 = hms_parts.next()?.parse().ok()?;
    let ss: u64 = hms_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let value: u32 = digits.parse().ok()?;
        value * 10u32.pow(9 - digits.len() as u32)
    };
    let days = days_from_civil(y, m, d);
    let secs = u64::try_from(days).ok()? * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_exact_and_encoding_nests() {
        struct Nested;
        impl serde::Serialize for Nested {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // Encodes a body while the outer one holds the scratch buffer.
                let inner = encode_body(&[1, 2, 3]).map_err(serde::ser::Error::custom)?;
                s.serialize_str(std::str::from_utf8(&inner).map_err(serde::ser::Error::custom)?)
            }
        }
        let body = encode_body(&("a", Nested)).unwrap();
        assert_eq!(&body[..], br#"["a","[1,2,3]"]"#);
        let big = "x".repeat(100_000);
        assert_eq!(encode_body(&big).unwrap().len(), 100_002);
        assert_eq!(&encode_body(&7).unwrap()[..], b"7");
    }

    #[test]
    fn ids_are_v7_and_ordered_by_time() {
        let a = new_id();
        std::thread::sleep(Duration::from_millis(2));
        let b = new_id();
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert!(a < b);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let parent = new_id();
        let scope = ["billing.charge-card", "payments.captured"];
        let x = derived_id(parent, &scope, 0);
        assert_eq!(x, derived_id(parent, &scope, 0));
        assert_ne!(x, derived_id(parent, &scope, 1));
        assert_ne!(
            x,
            derived_id(parent, &["billing.other", "payments.captured"], 0)
        );
        assert_eq!(x.get_version_num(), 7);
        assert_eq!(x.as_u128() >> 80, parent.as_u128() >> 80);
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let text = Rfc3339(t).to_string();
        assert_eq!(text, "2026-11-18T11:06:40.123Z");
        assert_eq!(parse_rfc3339(&text), Some(t));
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339("2000-02-29T23:59:59Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_799))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
    }

    #[test]
    fn headers_replace_and_remove() {
        let mut h = Headers::new();
        h.insert("a", "1");
        h.insert("b", "2");
        h.insert("a", "3");
        assert_eq!(h.get("a"), Some("3"));
        assert_eq!(h.len(), 2);
        assert_eq!(h.remove("a"), Some("3".to_owned()));
        assert_eq!(h.get("a"), None);
    }
}
