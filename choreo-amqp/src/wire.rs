//! The envelope on the wire: AMQP properties and headers (DESIGN §8).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use choreo::envelope::{Headers, Rfc3339, headers, parse_rfc3339};
use choreo::trace::TraceContext;
use choreo::{Message, Metadata};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use uuid::Uuid;

const CONTENT_TYPE: &str = "application/json";
const PERSISTENT: u8 = 2;

/// The AMQP properties and headers that carry `message`'s envelope (DESIGN §8): what choreo
/// publishes with its body.
///
/// For producers that publish with lapin directly and want their messages read by choreo
/// services (and by anyone who reads choreo's envelope), publish `message.body` with these
/// properties, persistent and `mandatory`, to the domain's exchange under
/// `<name>.v<version>`.
pub fn envelope_properties(message: &Message) -> BasicProperties {
    let meta = &message.meta;
    let mut id = Uuid::encode_buffer();
    let id = meta.id.hyphenated().encode_lower(&mut id);
    let mut correlation = Uuid::encode_buffer();
    let correlation = meta
        .correlation_id
        .hyphenated()
        .encode_lower(&mut correlation);

    let mut table = FieldTable::default();
    put_str(&mut table, headers::SPEC_VERSION, "1.0");
    put_str(&mut table, headers::ID, id);
    put_str(&mut table, headers::TYPE, &meta.name);
    put_str(&mut table, headers::SOURCE, &meta.source);
    table.insert(headers::TIME.into(), string(Rfc3339(meta.time).to_string()));
    table.insert(headers::VERSION.into(), AMQPValue::LongUInt(meta.version));
    put_str(&mut table, headers::CORRELATION_ID, correlation);
    if let Some(causation) = meta.causation_id {
        let mut buffer = Uuid::encode_buffer();
        put_str(
            &mut table,
            headers::CAUSATION_ID,
            causation.hyphenated().encode_lower(&mut buffer),
        );
    }
    if let Some(key) = &meta.key {
        put_str(&mut table, headers::KEY, key);
    }
    if meta.attempt > 0 {
        table.insert(headers::ATTEMPT.into(), AMQPValue::LongUInt(meta.attempt));
    }
    if meta.retry_tier > 0 {
        table.insert(
            headers::RETRY_TIER.into(),
            AMQPValue::LongUInt(meta.retry_tier),
        );
    }
    if let Some(trace) = &meta.trace {
        table.insert(headers::TRACEPARENT.into(), string(trace.traceparent()));
    }
    for (name, value) in meta.headers.iter() {
        if let Ok(name) = ShortString::try_new(name) {
            table.insert(name, AMQPValue::LongString(value.into()));
        }
    }

    let timestamp = meta
        .time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_message_id((&*id).into())
        .with_correlation_id((&*correlation).into())
        .with_timestamp(timestamp)
        .with_headers(table);
    if let Ok(kind) = ShortString::try_new(&*meta.name) {
        properties = properties.with_type(kind);
    }
    if let Ok(app_id) = ShortString::try_new(&*meta.source) {
        properties = properties.with_app_id(app_id);
    }
    properties
}

fn put_str(table: &mut FieldTable, name: &'static str, value: &str) {
    table.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
}

/// Sets or replaces string headers on a copy of `properties`, keeping everything else.
pub(crate) fn with_headers<'a>(
    properties: &BasicProperties,
    set: impl IntoIterator<Item = (&'a str, AMQPValue)>,
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in set {
        table.insert(name.into(), value);
    }
    properties.clone().with_headers(table)
}

/// A string header value.
pub(crate) fn string(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A delivery whose envelope could not be read, with its body as it came.
#[derive(Debug)]
pub(crate) struct Malformed {
    pub(crate) reason: String,
    pub(crate) body: Vec<u8>,
}

/// What a consumer's deliveries repeat, kept so that reading one allocates less: the names of
/// the events this binary knows, and the last source service seen.
#[derive(Default)]
pub(crate) struct Interned {
    names: Vec<&'static str>,
    source: Option<Arc<str>>,
}

impl Interned {
    /// Knows the events of `choreo::catalog()`.
    pub(crate) fn with_catalog() -> Self {
        let mut names: Vec<&'static str> = choreo::catalog().iter().map(|e| e.name).collect();
        names.dedup();
        Self {
            names,
            source: None,
        }
    }

    fn name(&self, name: &str) -> Cow<'static, str> {
        match self.names.iter().find(|known| **known == name) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(name.to_owned()),
        }
    }

    fn source(&mut self, source: &str) -> Arc<str> {
        match &self.source {
            Some(last) if **last == *source => Arc::clone(last),
            _ => Arc::clone(self.source.insert(source.into())),
        }
    }
}

/// Reads the envelope of a delivery.
///
/// Missing attributes get defaults where that is safe: the correlation id defaults to the
/// message id, the source to `unknown`, the time to now, attempts to zero. A message without
/// an id gets one derived from its body and routing key, so that redeliveries of it still
/// deduplicate. Without a readable event name and version the message is malformed.
pub(crate) fn decode(
    properties: &BasicProperties,
    routing_key: &str,
    body: Vec<u8>,
    interned: &mut Interned,
) -> Result<Message, Malformed> {
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let header = |name: &str| table.inner().get(name);
    let malformed = |reason: String, body: Vec<u8>| Malformed { reason, body };

    let (name, version) = match event_type(properties, table, routing_key) {
        Ok(found) => found,
        Err(reason) => return Err(malformed(reason.to_owned(), body)),
    };
    let id = match properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str())
        .or_else(|| header(headers::ID).and_then(as_str))
    {
        Some(text) => match Uuid::parse_str(text) {
            Ok(id) => id,
            Err(_) => {
                return Err(malformed(
                    format!("message id `{text}` is not a UUID"),
                    body,
                ));
            }
        },
        None => content_id(routing_key, &body),
    };
    let correlation_id = properties
        .correlation_id()
        .as_ref()
        .and_then(|s| Uuid::parse_str(s.as_str()).ok())
        .or_else(|| {
            header(headers::CORRELATION_ID)
                .and_then(as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
        })
        .unwrap_or(id);
    let source = interned.source(
        properties
            .app_id()
            .as_ref()
            .map(|s| s.as_str())
            .or_else(|| header(headers::SOURCE).and_then(as_str))
            .unwrap_or("unknown"),
    );
    let time = header(headers::TIME)
        .and_then(as_str)
        .and_then(parse_rfc3339)
        .or_else(|| {
            properties
                .timestamp()
                .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
        })
        .unwrap_or_else(SystemTime::now);

    let mut extra = Headers::new();
    let mut causation_id = None;
    let mut key = None;
    let mut attempt = 0;
    let mut retry_tier = 0;
    let mut trace = None;
    for (name, value) in table.inner() {
        match name.as_str() {
            headers::CAUSATION_ID => {
                causation_id = as_str(value).and_then(|s| Uuid::parse_str(s).ok());
            }
            headers::KEY => key = as_str(value).map(str::to_owned),
            headers::ATTEMPT => attempt = as_u32(value).unwrap_or(0),
            headers::RETRY_TIER => retry_tier = as_u32(value).unwrap_or(0),
            headers::TRACEPARENT => {
                let text = as_str(value);
                match text.and_then(TraceContext::parse) {
                    Some(parsed) => trace = Some(parsed),
                    // One that does not parse stays a header, as it came.
                    None => {
                        if let Some(text) = text {
                            extra.insert(headers::TRACEPARENT, text);
                        }
                    }
                }
            }
            headers::SPEC_VERSION
            | headers::ID
            | headers::TYPE
            | headers::SOURCE
            | headers::TIME
            | headers::VERSION
            | headers::CORRELATION_ID => {}
            other => {
                if let Some(text) = as_str(value) {
                    extra.insert(other, text);
                }
            }
        }
    }
    Ok(Message {
        meta: Metadata {
            id,
            name: interned.name(name),
            version,
            source,
            time,
            correlation_id,
            causation_id,
            key,
            attempt,
            retry_tier,
            trace,
            headers: extra,
        },
        body: Bytes::from(body),
    })
}

fn event_type<'a>(
    properties: &'a BasicProperties,
    table: &'a FieldTable,
    routing_key: &'a str,
) -> Result<(&'a str, u32), &'static str> {
    let from_key = routing_key
        .rsplit_once(".v")
        .and_then(|(name, v)| Some((name, v.parse::<u32>().ok()?)));
    let name = properties
        .kind()
        .as_ref()
        .map(|s| s.as_str())
        .or_else(|| table.inner().get(headers::TYPE).and_then(as_str))
        .or(from_key.map(|(name, _)| name))
        .ok_or("no event name: neither the `type` property, the `ce-type` header nor the routing key names it")?;
    let version = table
        .inner()
        .get(headers::VERSION)
        .and_then(as_u32)
        .or(from_key.filter(|(n, _)| *n == name).map(|(_, v)| v))
        .ok_or(
            "no event version: neither the `choreo-version` header nor the routing key gives it",
        )?;
    Ok((name, version))
}

/// A stable id for a message that came without one.
fn content_id(routing_key: &str, body: &[u8]) -> Uuid {
    choreo::envelope::content_id(&[routing_key.as_bytes(), body])
}

fn as_str(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

fn as_u32(value: &AMQPValue) -> Option<u32> {
    match value {
        AMQPValue::ShortShortUInt(v) => Some(u32::from(*v)),
        AMQPValue::ShortUInt(v) => Some(u32::from(*v)),
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::ShortShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
        other => as_str(other).and_then(|s| s.parse().ok()),
    }
}

/// A header as text.
#[cfg(test)]
pub(crate) fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    as_str(value)
        .map(str::to_owned)
        .or_else(|| as_u32(value).map(|v| v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo::envelope::new_id;

    fn message() -> Message {
        let mut m = Message {
            meta: Metadata {
                id: new_id(),
                name: "orders.order-placed".into(),
                version: 2,
                source: "orders".into(),
                time: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
                correlation_id: new_id(),
                causation_id: Some(new_id()),
                key: Some("o-1".into()),
                attempt: 3,
                retry_tier: 1,
                trace: TraceContext::parse(
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                headers: Headers::new(),
            },
            body: Bytes::from_static(br#"{"order_id":"o-1"}"#),
        };
        m.meta.headers.insert(headers::TRACESTATE, "vendor=abc");
        m
    }

    #[test]
    fn envelope_round_trips() {
        let original = message();
        let props = envelope_properties(&original);
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            original.meta.id.to_string()
        );
        assert_eq!(
            props.kind().as_ref().unwrap().as_str(),
            "orders.order-placed"
        );
        assert_eq!(props.app_id().as_ref().unwrap().as_str(), "orders");
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            header_text(&props, headers::TIME).unwrap(),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(header_text(&props, headers::SPEC_VERSION).unwrap(), "1.0");

        let decoded = decode(
            &props,
            "orders.order-placed.v2",
            original.body.to_vec(),
            &mut Interned::default(),
        )
        .unwrap();
        let (a, b) = (&decoded.meta, &original.meta);
        assert_eq!(a.id, b.id);
        assert_eq!(a.name, b.name);
        assert_eq!(a.version, 2);
        assert_eq!(a.source, b.source);
        assert_eq!(a.time, b.time);
        assert_eq!(a.correlation_id, b.correlation_id);
        assert_eq!(a.causation_id, b.causation_id);
        assert_eq!(a.key, b.key);
        assert_eq!((a.attempt, a.retry_tier), (3, 1));
        assert!(b.trace.is_some());
        assert_eq!(a.trace, b.trace);
        assert_eq!(
            header_text(&props, headers::TRACEPARENT).unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(a.headers, b.headers);
        assert_eq!(decoded.body, original.body);
    }

    #[test]
    fn known_names_and_repeated_sources_are_shared() {
        let props = envelope_properties(&message());
        let mut interned = Interned {
            names: vec!["orders.order-placed"],
            source: None,
        };
        let body = || b"{}".to_vec();
        let a = decode(&props, "orders.order-placed.v2", body(), &mut interned).unwrap();
        let b = decode(&props, "orders.order-placed.v2", body(), &mut interned).unwrap();
        assert!(matches!(a.meta.name, Cow::Borrowed("orders.order-placed")));
        assert!(Arc::ptr_eq(&a.meta.source, &b.meta.source));
        let other =
            envelope_properties(&Message::raw("billing.refunded", 1, "billing".into(), "{}"));
        let c = decode(&other, "billing.refunded.v1", body(), &mut interned).unwrap();
        assert!(matches!(c.meta.name, Cow::Owned(ref n) if n == "billing.refunded"));
        assert_eq!(&*c.meta.source, "billing");
    }

    #[test]
    fn missing_metadata_gets_safe_defaults() {
        let body = br#"{"order_id":"o-1"}"#.to_vec();
        let bare = BasicProperties::default();
        let a = decode(
            &bare,
            "orders.order-placed.v1",
            body.clone(),
            &mut Interned::default(),
        )
        .unwrap();
        let b = decode(
            &bare,
            "orders.order-placed.v1",
            body,
            &mut Interned::default(),
        )
        .unwrap();
        assert_eq!(a.meta.name, "orders.order-placed");
        assert_eq!(a.meta.version, 1);
        assert_eq!(a.meta.id, b.meta.id, "redeliveries keep one id");
        assert_eq!(a.meta.correlation_id, a.meta.id);
        assert_eq!(&*a.meta.source, "unknown");
        assert_eq!((a.meta.attempt, a.meta.retry_tier), (0, 0));
    }

    #[test]
    fn a_traceparent_that_does_not_parse_stays_a_header() {
        let mut table = FieldTable::default();
        put_str(&mut table, headers::TRACEPARENT, "00-abc-def-01");
        let props = BasicProperties::default().with_headers(table);
        let decoded = decode(
            &props,
            "orders.order-placed.v1",
            b"{}".to_vec(),
            &mut Interned::default(),
        )
        .unwrap();
        assert_eq!(decoded.meta.trace, None);
        assert_eq!(
            decoded.meta.headers.get(headers::TRACEPARENT),
            Some("00-abc-def-01")
        );
        // Sent on as it came.
        let again = envelope_properties(&decoded);
        assert_eq!(
            header_text(&again, headers::TRACEPARENT).unwrap(),
            "00-abc-def-01"
        );
    }

    #[test]
    fn unreadable_metadata_is_malformed() {
        let bare = BasicProperties::default();
        let error = decode(
            &bare,
            "not-a-routing-key",
            b"kept".to_vec(),
            &mut Interned::default(),
        )
        .unwrap_err();
        assert!(error.reason.starts_with("no event name"), "{error:?}");
        assert_eq!(error.body, b"kept", "the body is kept for the poison queue");
        let typed = BasicProperties::default().with_type("orders.order-placed".into());
        let error = decode(
            &typed,
            "something-else",
            Vec::new(),
            &mut Interned::default(),
        )
        .unwrap_err();
        assert!(error.reason.starts_with("no event version"), "{error:?}");
        let bad_id = BasicProperties::default().with_message_id("42".into());
        let error = decode(
            &bad_id,
            "orders.order-placed.v1",
            Vec::new(),
            &mut Interned::default(),
        )
        .unwrap_err();
        assert_eq!(error.reason, "message id `42` is not a UUID");
    }
}
