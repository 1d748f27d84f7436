//! Typed event contracts.
//!
//! An event is a plain struct that derives [`Event`](derive@crate::Event) together with serde's
//! `Serialize` and `Deserialize` and schemars' `JsonSchema`. The derive gives it a name, a
//! version, a routing key, an optional business key and a JSON Schema, and records it in a
//! process-wide [catalog].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed, versioned event contract.
///
/// Implement it with `#[derive(Event)]`; the derive checks the name and version at compile
/// time and records the type in the [catalog].
///
/// ```
/// use choreo::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[choreo(name = "orders.order-placed", version = 1)]
/// pub struct OrderPlaced {
///     #[choreo(key)]
///     pub order_id: String,
///     pub total_cents: u64,
/// }
///
/// assert_eq!(OrderPlaced::NAME, "orders.order-placed");
/// assert_eq!(OrderPlaced::DOMAIN, "orders");
/// assert_eq!(OrderPlaced::ROUTING_KEY, "orders.order-placed.v1");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a choreo event",
    label = "not an event",
    note = "add `#[derive(choreo::Event)]` and `#[choreo(name = \"<domain>.<event>\", version = <n>)]` to `{Self}`"
)]
pub trait Event:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// The event's name, `<domain>.<event>` in lower kebab-case segments.
    const NAME: &'static str;
    /// The contract's version, starting at 1.
    const VERSION: u32;
    /// The domain (bounded context) that owns the event: the first segment of the name.
    const DOMAIN: &'static str;
    /// The routing key on the wire: `<name>.v<version>`.
    const ROUTING_KEY: &'static str;
    /// The field marked `#[choreo(key)]`, if any.
    const KEY_FIELD: Option<&'static str> = None;
    /// Every version of this event's name that [`Event::decode`] accepts, its own included.
    const READS: &'static [u32] = &[Self::VERSION];

    /// The business idempotency key of this event, from the field marked `#[choreo(key)]`.
    ///
    /// `None` means the message id serves as the key.
    fn key(&self) -> Option<String> {
        None
    }

    /// Appends the business key to `out`, as [`Event::key`] gives it; `false`, appending
    /// nothing, when the event has none.
    ///
    /// The runtime reads every message's key this way, into a buffer it reuses; the derive
    /// writes the key in place. The default goes through [`Event::key`].
    fn write_key(&self, out: &mut String) -> bool {
        append_key(out, self.key())
    }

    /// Decodes a message body written as version `version` of this event's name.
    ///
    /// The default reads only [`Event::VERSION`]; newer versions override it to upcast older
    /// bodies.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownVersion`] for a version this type cannot read, and
    /// [`DecodeError::Body`] when the body is not JSON or does not match the event.
    fn decode(version: u32, body: &[u8]) -> Result<Self, DecodeError> {
        if version != Self::VERSION {
            return Err(DecodeError::UnknownVersion {
                name: Self::NAME,
                version,
            });
        }
        serde_json::from_slice(body).map_err(DecodeError::Body)
    }

    /// The name and version of this event as a value.
    fn event_type() -> EventType {
        EventType {
            name: Self::NAME,
            version: Self::VERSION,
        }
    }
}

/// The name and version of an event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType {
    /// `<domain>.<event>`.
    pub name: &'static str,
    /// The contract's version.
    pub version: u32,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// Why a message body could not become an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No handler of this name reads this version.
    #[error("no handler reads version {version} of `{name}`")]
    UnknownVersion {
        /// The event name.
        name: &'static str,
        /// The version the message carried.
        version: u32,
    },
    /// The body is not JSON or does not match the event's shape.
    #[error("body does not match the event: {0}")]
    Body(#[source] serde_json::Error),
}

/// A value that can serve as an event's business key.
///
/// Implemented for strings, integers, `Uuid`, `Option` and references to them; implement it
/// for your own key types (usually through their `Display`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an event key",
    label = "marked `#[choreo(key)]` here",
    note = "keys are strings, integers or UUIDs; implement `choreo::EventKey` for `{Self}` to use it as a key"
)]
pub trait EventKey {
    /// The key as text, `None` when absent.
    fn to_key(&self) -> Option<String>;

    /// Appends the key to `out`; `false`, appending nothing, when absent.
    ///
    /// The default goes through [`EventKey::to_key`]; a type that can write its key in place
    /// saves an allocation per message by overriding it.
    fn write_key(&self, out: &mut String) -> bool {
        append_key(out, self.to_key())
    }
}

/// Appends `key`, if any, to `out`; whether there was one.
fn append_key(out: &mut String, key: Option<String>) -> bool {
    key.is_some_and(|key| {
        out.push_str(&key);
        true
    })
}

macro_rules! key_via_to_string {
    ($($t:ty),* $(,)?) => {$(
        impl EventKey for $t {
            fn to_key(&self) -> Option<String> {
                Some(self.to_string())
            }

            fn write_key(&self, out: &mut String) -> bool {
                use std::fmt::Write as _;
                // Writing into a `String` does not fail.
                let _ = write!(out, "{self}");
                true
            }
        }
    )*};
}

key_via_to_string!(
    String,
    str,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    uuid::Uuid
);

impl<T: EventKey + ?Sized> EventKey for &T {
    fn to_key(&self) -> Option<String> {
        (**self).to_key()
    }

    fn write_key(&self, out: &mut String) -> bool {
        (**self).write_key(out)
    }
}

impl<T: EventKey> EventKey for Option<T> {
    fn to_key(&self) -> Option<String> {
        self.as_ref().and_then(EventKey::to_key)
    }

    fn write_key(&self, out: &mut String) -> bool {
        self.as_ref().is_some_and(|key| key.write_key(out))
    }
}

impl<T: EventKey + ?Sized> EventKey for Box<T> {
    fn to_key(&self) -> Option<String> {
        (**self).to_key()
    }

    fn write_key(&self, out: &mut String) -> bool {
        (**self).write_key(out)
    }
}

/// One event type known to this binary, as recorded by `#[derive(Event)]`.
#[derive(Clone, Copy)]
pub struct EventDescriptor {
    /// The event's name.
    pub name: &'static str,
    /// The contract's version.
    pub version: u32,
    /// The owning domain.
    pub domain: &'static str,
    /// The routing key.
    pub routing_key: &'static str,
    /// The field that carries the business key, if any.
    pub key_field: Option<&'static str>,
    rust_type: fn() -> &'static str,
    schema: fn() -> schemars::Schema,
}

impl EventDescriptor {
    /// The descriptor of `E`.
    pub const fn of<E: Event>() -> Self {
        Self {
            name: E::NAME,
            version: E::VERSION,
            domain: E::DOMAIN,
            routing_key: E::ROUTING_KEY,
            key_field: E::KEY_FIELD,
            rust_type: std::any::type_name::<E>,
            schema: schema_of::<E>,
        }
    }

    /// The Rust type's path, for messages.
    pub fn rust_type(&self) -> &'static str {
        (self.rust_type)()
    }

    /// The event's JSON Schema (draft 2020-12).
    pub fn json_schema(&self) -> schemars::Schema {
        (self.schema)()
    }

    /// The name and version as one value.
    pub fn event_type(&self) -> EventType {
        EventType {
            name: self.name,
            version: self.version,
        }
    }
}

impl fmt::Debug for EventDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventDescriptor")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("key_field", &self.key_field)
            .field("rust_type", &self.rust_type())
            .finish_non_exhaustive()
    }
}

/// The JSON Schema (draft 2020-12) of `E`.
pub fn schema_of<E: Event>() -> schemars::Schema {
    schemars::SchemaGenerator::default().into_root_schema_for::<E>()
}

inventory::collect!(EventDescriptor);

/// Every event type this binary knows, sorted by name and version.
///
/// Each `#[derive(Event)]` records its type here, so one call sees every contract a binary
/// links, whichever crate declared it.
pub fn catalog() -> Vec<EventDescriptor> {
    let mut all: Vec<EventDescriptor> = inventory::iter::<EventDescriptor>
        .into_iter()
        .copied()
        .collect();
    all.sort_by_key(|d| (d.name, d.version));
    all.dedup_by_key(|d| (d.name, d.version));
    all
}

/// The catalog entry of one name and version, if this binary knows it.
pub fn lookup(name: &str, version: u32) -> Option<EventDescriptor> {
    inventory::iter::<EventDescriptor>
        .into_iter()
        .find(|d| d.name == name && d.version == version)
        .copied()
}
