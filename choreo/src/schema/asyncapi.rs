//! The AsyncAPI 3.0 document of a service.
//!
//! - One channel per event version: its exchange (topic, durable) and routing key.
//! - One channel per handler queue, holding every version the handler reads, and one per
//!   poison queue, holding the same messages with the failure headers.
//! - A `send` operation for each event a handler emits and each event the service publishes
//!   from outside its handlers; a `receive` operation for each handler.
//! - Payloads are the exported JSON Schemas, their `$defs` moved to `components.schemas`;
//!   headers are the envelope of DESIGN §8 (and, on poison queues, the failure headers).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Contracts, EventSchema};
use crate::envelope::headers;
use crate::transport::{FailureKind, MAX_FAILURE_MESSAGE};

/// The AsyncAPI version written.
pub(super) const ASYNCAPI_VERSION: &str = "3.0.0";
const AMQP_BINDING: &str = "0.3.0";
const ENVELOPE_HEADERS: &str = "choreo.envelope-headers";
const FAILURE_HEADERS: &str = "choreo.failure-headers";

pub(super) fn document(contracts: &Contracts) -> Value {
    let description = contracts.description();
    let mut schemas = Map::new();
    let mut messages = Map::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut hoister = Hoister::default();

    schemas.insert(ENVELOPE_HEADERS.into(), envelope_headers());
    schemas.insert(FAILURE_HEADERS.into(), failure_headers());

    let consumed: Vec<(&str, u32)> = description
        .handlers
        .iter()
        .flat_map(|h| h.reads.iter().map(|v| (h.event.as_str(), *v)))
        .collect();

    for event in contracts.events() {
        let id = message_id(event);
        let payload = hoister.convert(&mut schemas, &id, &event.schema);
        schemas.insert(id.clone(), payload);
        messages.insert(id.clone(), message(event, false));
        if consumed.contains(&(event.name.as_str(), event.version)) {
            messages.insert(poisoned_id(&id), message(event, true));
        }
        channels.insert(
            id.clone(),
            json!({
                "address": event.routing_key,
                "title": format!("{} v{}", event.name, event.version),
                "description": format!(
                    "`{}` v{} on the wire: published to the topic exchange `{}` with routing key `{}`.",
                    event.name, event.version, contracts.exchange(&event.domain), event.routing_key
                ),
                "messages": { id.clone(): { "$ref": format!("#/components/messages/{id}") } },
                "bindings": { "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": contracts.exchange(&event.domain),
                        "type": "topic",
                        "durable": true,
                        "autoDelete": false,
                    },
                    "bindingVersion": AMQP_BINDING,
                }},
            }),
        );
    }

    for handler in &description.handlers {
        let read: Vec<String> = handler
            .reads
            .iter()
            .map(|v| format!("{}.v{v}", handler.event))
            .collect();
        let routing_keys = handler
            .bindings
            .iter()
            .map(|b| format!("`{}`", b.routing_key))
            .collect::<Vec<_>>()
            .join(", ");
        let exchange = handler
            .bindings
            .first()
            .map(|b| b.exchange.clone())
            .unwrap_or_default();
        let retry = if handler.retry_queues.is_empty() {
            "It has no delayed retry tiers".to_owned()
        } else {
            format!(
                "Failed runs wait in the retry queues {}, each of which dead-letters back here",
                handler
                    .retry_queues
                    .iter()
                    .map(|q| format!("`{q}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        channels.insert(
            handler.queue.clone(),
            json!({
                "address": handler.queue,
                "title": format!("queue of {}", handler.name),
                "description": format!(
                    "The queue of handler `{}`, bound to the topic exchange `{exchange}` with routing keys {routing_keys}. {retry}; messages it cannot handle go to `{}`.",
                    handler.name, handler.poison_queue
                ),
                "messages": refs_map(&read, |id| format!("#/components/messages/{id}")),
                "bindings": { "amqp": queue_binding(&handler.queue) },
                "x-choreo-bindings": handler.bindings,
                "x-choreo-retry-queues": handler.retry_queues,
                "x-choreo-poison-queue": handler.poison_queue,
            }),
        );
        let poisoned: Vec<String> = read.iter().map(|id| poisoned_id(id)).collect();
        channels.insert(
            handler.poison_queue.clone(),
            json!({
                "address": handler.poison_queue,
                "title": format!("poison queue of {}", handler.name),
                "description": format!(
                    "Messages handler `{}` gave up on: body and headers exactly as they arrived, plus the failure headers (`choreo-failure-*`), which say which handler failed, why, how often, when, and where the message was first published. Operators list, inspect, replay and purge them with the `choreo` command.",
                    handler.name
                ),
                "messages": refs_map(&poisoned, |id| format!("#/components/messages/{id}")),
                "bindings": { "amqp": queue_binding(&handler.poison_queue) },
            }),
        );

        operations.insert(
            format!("{}.receive", handler.queue),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{}", handler.queue) },
                "title": handler.name,
                "summary": format!(
                    "Handler `{}` consumes `{}`, versions {}.",
                    handler.name, handler.event, versions(&handler.reads)
                ),
                "messages": read.iter().map(|id| json!({
                    "$ref": format!("#/channels/{}/messages/{id}", handler.queue)
                })).collect::<Vec<_>>(),
                "bindings": { "amqp": { "ack": true, "bindingVersion": AMQP_BINDING } },
                "x-choreo-handler": handler.name,
                "x-choreo-emits": handler.emits,
            }),
        );
        for emitted in &handler.emits {
            let id = format!("{}.v{}", emitted.name, emitted.version);
            operations.insert(
                format!("{}.send.{id}", handler.queue),
                send_operation(
                    &id,
                    &format!(
                        "Handler `{}` publishes `{}` v{}.",
                        handler.name, emitted.name, emitted.version
                    ),
                    Some(&handler.name),
                ),
            );
        }
    }

    for published in &description.publishes {
        let id = format!("{}.v{}", published.name, published.version);
        operations.insert(
            format!("{}.publish.{id}", description.service),
            send_operation(
                &id,
                &format!(
                    "The `{}` service publishes `{}` v{} from outside its handlers.",
                    description.service, published.name, published.version
                ),
                None,
            ),
        );
    }

    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": description.service,
            "version": contracts.version,
            "description": info_description(&description.service),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
        },
    })
}

fn info_description(service: &str) -> String {
    format!(
        "The events the `{service}` service consumes and publishes on RabbitMQ (AMQP 0-9-1).\n\n\
         Each event version travels on its domain's topic exchange with routing key \
         `<name>.v<version>`. The body is the event as JSON (`application/json`); the metadata \
         is in AMQP properties (`message_id`, `type` = event name, `app_id` = source service, \
         `timestamp`, `correlation_id`, `content_type`, `delivery_mode` 2) and in headers that \
         follow CloudEvents 1.0 with the `ce-` prefix (see `{ENVELOPE_HEADERS}`). Every handler \
         has its own queue `<service>.<handler>`, delayed retry queues \
         `<queue>.retry.<delay>` and a poison queue `<queue>.poison`, whose messages carry the \
         failure headers (see `{FAILURE_HEADERS}`)."
    )
}

fn message_id(event: &EventSchema) -> String {
    format!("{}.v{}", event.name, event.version)
}

fn poisoned_id(id: &str) -> String {
    format!("{id}.poisoned")
}

fn versions(reads: &[u32]) -> String {
    let mut sorted = reads.to_vec();
    sorted.sort_unstable();
    sorted
        .iter()
        .map(|v| format!("v{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn refs_map(ids: &[String], target: impl Fn(&str) -> String) -> Value {
    let mut map = Map::new();
    for id in ids {
        map.insert(id.clone(), json!({ "$ref": target(id) }));
    }
    Value::Object(map)
}

fn queue_binding(name: &str) -> Value {
    json!({
        "is": "queue",
        "queue": {
            "name": name,
            "durable": true,
            "exclusive": false,
            "autoDelete": false,
        },
        "bindingVersion": AMQP_BINDING,
    })
}

fn send_operation(channel: &str, summary: &str, handler: Option<&str>) -> Value {
    let mut operation = json!({
        "action": "send",
        "channel": { "$ref": format!("#/channels/{channel}") },
        "summary": summary,
        "messages": [ { "$ref": format!("#/channels/{channel}/messages/{channel}") } ],
        "bindings": { "amqp": {
            "deliveryMode": 2,
            "mandatory": true,
            "timestamp": true,
            "bindingVersion": AMQP_BINDING,
        }},
    });
    if let (Some(handler), Some(object)) = (handler, operation.as_object_mut()) {
        object.insert("x-choreo-handler".into(), json!(handler));
    }
    operation
}

fn message(event: &EventSchema, poisoned: bool) -> Value {
    let id = message_id(event);
    let mut header_parts =
        vec![json!({ "$ref": format!("#/components/schemas/{ENVELOPE_HEADERS}") })];
    if poisoned {
        header_parts.push(json!({ "$ref": format!("#/components/schemas/{FAILURE_HEADERS}") }));
    }
    header_parts.push(json!({
        "type": "object",
        "properties": {
            headers::TYPE: { "type": "string", "const": event.name },
            headers::VERSION: { "type": "integer", "const": event.version },
        },
    }));
    let summary = event
        .schema
        .get("description")
        .and_then(Value::as_str)
        .and_then(|d| d.lines().next())
        .unwrap_or("")
        .to_owned();
    let (title, description) = if poisoned {
        (
            format!("{} v{} (poisoned)", event.name, event.version),
            "The message as it arrived, plus the failure headers of the handler that gave up on it."
                .to_owned(),
        )
    } else {
        (
            format!("{} v{}", event.name, event.version),
            format!(
                "Routing key `{}`. JSON Schema: `{}`.",
                event.routing_key,
                event.file()
            ),
        )
    };
    let mut message = json!({
        "name": event.name,
        "title": title,
        "description": description,
        "contentType": "application/json",
        "headers": { "type": "object", "allOf": header_parts },
        "payload": { "$ref": format!("#/components/schemas/{id}") },
        "correlationId": {
            "description": "The business flow: the id of the flow's first message.",
            "location": format!("$message.header#/{}", headers::CORRELATION_ID),
        },
        "bindings": { "amqp": {
            "messageType": event.name,
            "bindingVersion": AMQP_BINDING,
        }},
        "x-choreo-version": event.version,
        "x-choreo-routing-key": event.routing_key,
        "x-choreo-json-schema": event.file(),
    });
    if let Some(object) = message.as_object_mut() {
        if !summary.is_empty() {
            object.insert("summary".into(), json!(summary));
        }
        if let Some(key) = &event.key {
            object.insert("x-choreo-key".into(), json!(key));
        }
    }
    message
}

fn envelope_headers() -> Value {
    let uuid = |description: &str| json!({ "type": "string", "format": "uuid", "description": description });
    let time = |description: &str| json!({ "type": "string", "format": "date-time", "description": description });
    let count =
        |description: &str| json!({ "type": "integer", "minimum": 0, "description": description });
    json!({
        "type": "object",
        "title": "choreo envelope headers",
        "description": "AMQP headers of every choreo message: CloudEvents 1.0 attributes with the `ce-` prefix, and choreo's own. Other headers may be present and are kept.",
        "properties": {
            headers::SPEC_VERSION: { "type": "string", "const": "1.0", "description": "CloudEvents spec version." },
            headers::ID: uuid("Message id (UUID v7); also the `message_id` property."),
            headers::TYPE: { "type": "string", "description": "Event name; also the `type` property." },
            headers::SOURCE: { "type": "string", "description": "The publishing service; also the `app_id` property." },
            headers::TIME: time("Publication time, RFC 3339 in UTC; also the `timestamp` property, in seconds."),
            headers::VERSION: { "type": "integer", "minimum": 1, "description": "Event version, an AMQP unsigned 32-bit integer." },
            headers::CORRELATION_ID: uuid("The business flow: the id of its first message; also the `correlation_id` property."),
            headers::CAUSATION_ID: uuid("The message whose handling published this one."),
            headers::KEY: { "type": "string", "description": "The business idempotency key, when the event declares one." },
            headers::ATTEMPT: count("Handler runs that failed before this delivery; absent means 0."),
            headers::RETRY_TIER: count("Delayed retry tiers this message passed through; absent means 0."),
            headers::FIRST_FAILURE: time("When the first failed run happened, RFC 3339 in UTC."),
            headers::TRACEPARENT: {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "W3C trace context.",
            },
            headers::TRACESTATE: { "type": "string", "description": "W3C trace state." },
        },
        "required": [
            headers::SPEC_VERSION,
            headers::ID,
            headers::TYPE,
            headers::SOURCE,
            headers::TIME,
            headers::VERSION,
            headers::CORRELATION_ID,
        ],
    })
}

fn failure_headers() -> Value {
    use headers::failure as h;
    let time = |description: &str| json!({ "type": "string", "format": "date-time", "description": description });
    let kinds: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
    json!({
        "type": "object",
        "title": "choreo failure headers",
        "description": "Added to a message when it is moved to a poison queue; its body and other headers stay as they were.",
        "properties": {
            h::HANDLER: { "type": "string", "description": "The handler queue that gave up on the message, `<service>.<handler>`." },
            h::KIND: {
                "type": "string",
                "enum": kinds,
                "description": "Why: `permanent` (the handler said so), `retries-exhausted`, `decode` (the body does not match the event), `unknown-version`, `too-large`, `malformed` (the envelope could not be read).",
            },
            h::MESSAGE: { "type": "string", "description": format!("The last error, at most {MAX_FAILURE_MESSAGE} bytes of UTF-8.") },
            h::ATTEMPTS: {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "How many runs of the handler failed, in decimal: 0 when the message never reached it (`decode`, `unknown-version`, `too-large`, `malformed`).",
            },
            h::FIRST_AT: time("First failure, RFC 3339 in UTC."),
            h::LAST_AT: time("Last failure, RFC 3339 in UTC."),
            h::EXCHANGE: { "type": "string", "description": "The exchange the message was first published to." },
            h::ROUTING_KEY: { "type": "string", "description": "The routing key the message was first published with." },
        },
        "required": h::ALL,
    })
}

/// Moves the `$defs` of exported schemas into `components.schemas`, sharing identical ones,
/// and rewrites what the AsyncAPI schema format (JSON Schema draft 07) reads differently.
#[derive(Default)]
struct Hoister {
    /// The original definition behind each component it added.
    originals: BTreeMap<String, Value>,
}

impl Hoister {
    fn convert(
        &mut self,
        components: &mut Map<String, Value>,
        owner: &str,
        schema: &Value,
    ) -> Value {
        let mut root = schema.clone();
        let defs = root
            .as_object_mut()
            .and_then(|o| o.remove("$defs"))
            .and_then(|d| match d {
                Value::Object(defs) => Some(defs),
                _ => None,
            })
            .unwrap_or_default();
        let mut renames = BTreeMap::new();
        for (name, definition) in &defs {
            let base = component_key(name);
            let key = match self.originals.get(&base) {
                None if !components.contains_key(&base) => base,
                Some(original) if original == definition => base,
                _ => format!("{owner}.{base}"),
            };
            renames.insert(name.clone(), key);
        }
        for (name, definition) in &defs {
            let key = &renames[name];
            if !components.contains_key(key) {
                components.insert(key.clone(), rewrite(definition, owner, &renames));
                self.originals.insert(key.clone(), definition.clone());
            }
        }
        rewrite(&root, owner, &renames)
    }
}

/// A component key (`^[\w\d.\-_]+$`) for a definition name.
fn component_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn rewrite(value: &Value, owner: &str, renames: &BTreeMap<String, String>) -> Value {
    let Value::Object(object) = value else {
        return match value {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| rewrite(item, owner, renames))
                    .collect(),
            ),
            other => other.clone(),
        };
    };
    let mut out = Map::new();
    for (key, item) in object {
        match key.as_str() {
            "$schema" | "$id" => {}
            "$ref" => {
                let target = item.as_str().unwrap_or("");
                let new_target = if target == "#" {
                    format!("#/components/schemas/{owner}")
                } else if let Some(name) = target.strip_prefix("#/$defs/") {
                    let name = name.replace("~1", "/").replace("~0", "~");
                    match renames.get(&name) {
                        Some(key) => format!("#/components/schemas/{key}"),
                        None => target.to_owned(),
                    }
                } else {
                    target.to_owned()
                };
                out.insert(key.clone(), Value::String(new_target));
            }
            // Data, not schemas: copied as they are.
            "enum" | "const" | "default" | "examples" => {
                out.insert(key.clone(), item.clone());
            }
            // Draft 07 writes tuples as an array of `items` and the rest as
            // `additionalItems`.
            "prefixItems" => {
                out.insert("items".into(), rewrite(item, owner, renames));
                if let Some(rest) = object.get("items") {
                    out.insert("additionalItems".into(), rewrite(rest, owner, renames));
                }
            }
            "items" if object.contains_key("prefixItems") => {}
            keyword if super::is_schema_map(keyword) => {
                let schemas = match item {
                    Value::Object(schemas) => Value::Object(
                        schemas
                            .iter()
                            .map(|(name, s)| (name.clone(), rewrite(s, owner, renames)))
                            .collect(),
                    ),
                    other => other.clone(),
                };
                out.insert(key.clone(), schemas);
            }
            _ => {
                out.insert(key.clone(), rewrite(item, owner, renames));
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defs_move_to_components_and_refs_follow() {
        let mut components = Map::new();
        let mut hoister = Hoister::default();
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:x",
            "type": "object",
            "properties": {
                "line": { "$ref": "#/$defs/Line" },
                "pair": { "type": "array", "prefixItems": [{ "type": "string" }], "items": false },
                "tag": { "const": { "$ref": "#/$defs/Line" } },
            },
            "$defs": { "Line": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Line" } } } },
        });
        let converted = hoister.convert(&mut components, "a.b.v1", &schema);
        assert_eq!(
            converted["properties"]["line"]["$ref"],
            "#/components/schemas/Line"
        );
        assert_eq!(
            components["Line"]["properties"]["next"]["$ref"],
            "#/components/schemas/Line"
        );
        assert_eq!(
            converted["properties"]["pair"]["items"],
            json!([{ "type": "string" }])
        );
        assert_eq!(
            converted["properties"]["pair"]["additionalItems"],
            json!(false)
        );
        assert_eq!(
            converted["properties"]["tag"]["const"]["$ref"],
            "#/$defs/Line"
        );
        assert!(converted.get("$schema").is_none() && converted.get("$id").is_none());

        // The same definition is shared; a different one of the same name gets its own key.
        let same = hoister.convert(&mut components, "a.c.v1", &schema);
        assert_eq!(
            same["properties"]["line"]["$ref"],
            "#/components/schemas/Line"
        );
        let other = json!({
            "properties": { "line": { "$ref": "#/$defs/Line" } },
            "$defs": { "Line": { "type": "string" } },
        });
        let other = hoister.convert(&mut components, "a.d.v1", &other);
        assert_eq!(
            other["properties"]["line"]["$ref"],
            "#/components/schemas/a.d.v1.Line"
        );
        assert_eq!(components["a.d.v1.Line"], json!({ "type": "string" }));
    }

    #[test]
    fn every_failure_kind_is_documented() {
        let kinds = failure_headers()["properties"][headers::failure::KIND]["enum"].clone();
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::parse(kind.as_str()), Some(kind));
            // A new kind fails to compile here until it is added to `FailureKind::ALL`.
            match kind {
                FailureKind::Permanent
                | FailureKind::RetriesExhausted
                | FailureKind::Decode
                | FailureKind::UnknownVersion
                | FailureKind::TooLarge
                | FailureKind::Malformed => {}
            }
        }
        assert_eq!(kinds.as_array().map(Vec::len), Some(FailureKind::ALL.len()));
    }
}
