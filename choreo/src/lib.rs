//! Typed event contracts, handlers and reliable choreography for event-driven services.
//!
//! Services declare their events as plain structs with [`#[derive(Event)]`](derive@Event),
//! write handlers as `async fn`s with [`#[handler]`](macro@handler), and run them on a
//! [`Transport`]: the in-process [`MemoryTransport`] for tests and local runs, RabbitMQ
//! through `choreo-amqp` in production. Retries, idempotency and poison-message routing
//! come with every handler and behave the same on both.
//!
//! ```
//! use choreo::{handler, Context, Event, HandlerError, Service};
//! use choreo::testing::TestHarness;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[choreo(name = "orders.order-placed", version = 1)]
//! pub struct OrderPlaced {
//!     #[choreo(key)]
//!     pub order_id: u64,
//!     pub total_cents: u64,
//! }
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[choreo(name = "billing.payment-captured", version = 1)]
//! pub struct PaymentCaptured {
//!     #[choreo(key)]
//!     pub order_id: u64,
//! }
//!
//! #[handler(emits(PaymentCaptured))]
//! async fn charge_card(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     ctx.publish(&PaymentCaptured { order_id: order.order_id })?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut harness = TestHarness::new();
//! harness.start(Service::new("billing").handler(charge_card)).await?;
//! harness.publish(&OrderPlaced { order_id: 42, total_cents: 1999 }).await?;
//! harness.settle().await?;
//!
//! assert_eq!(harness.handled("billing.charge-card"), 1);
//! let captured = harness.published::<PaymentCaptured>();
//! assert_eq!(captured[0].order_id, 42);
//! harness.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `macros` (default): `#[derive(Event)]` and `#[handler]`.
//! - `opentelemetry`: with a `tracing-opentelemetry` 0.34 layer installed, a `choreo.handle`
//!   span's OpenTelemetry parent is the span that published its message, and published
//!   messages carry the current span's context ([`trace`]).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod context;
pub mod envelope;
mod error;
pub mod event;
pub mod handler;
pub mod idempotency;
pub mod memory;
pub mod metrics;
pub mod observe;
mod publisher;
pub mod retry;
pub mod schema;
mod service;
pub mod testing;
pub mod trace;
pub mod transport;

pub use context::Context;
pub use envelope::{Headers, Message, Metadata};
pub use error::{
    BoxError, Error, HandlerError, HandlerErrorKind, PublishError, Result, ResultExt,
    TransportError,
};
pub use event::{DecodeError, Event, EventKey, EventType, catalog};
pub use handler::{Handler, HandlerInfo, State};
pub use idempotency::{Claim, IdempotencyStore, MemoryIdempotencyStore};
pub use memory::{MemoryTransport, Unroutable};
pub use observe::{Observation, Observer, Outcome};
pub use publisher::{PublishOptions, Publisher};
pub use retry::RetryPolicy;
pub use service::{
    DEFAULT_CONCURRENCY, DEFAULT_MAX_BODY, DEFAULT_SHUTDOWN_GRACE, DEFAULT_TIMEOUT, Health,
    RunningService, Service,
};
pub use transport::{Failure, FailureKind, Transport};

/// Derives [`Event`](trait@Event) for a struct.
///
/// ```
/// # use choreo::Event;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[choreo(name = "billing.payment-captured", version = 2)]
/// pub struct PaymentCaptured {
///     #[choreo(key)]
///     pub payment_id: String,
///     pub amount_cents: u64,
/// }
/// ```
///
/// Container attributes, in `#[choreo(...)]`:
///
/// - `name = "<domain>.<event>"` (required): lower kebab-case segments separated by dots;
///   the first segment is the owning domain.
/// - `version = N` (required): a positive integer.
/// - `upcast_from(OlderV1, OlderV2, ...)`: older versions of the same event this type also
///   reads, each converted with `From`. A handler of this type consumes them all, and its
///   queue is bound to every version's routing key.
/// - `crate = "path"`: where to find `choreo` when it is re-exported under another name.
///
/// ```
/// # use choreo::Event;
/// # use serde::{Deserialize, Serialize};
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[choreo(name = "orders.order-placed", version = 1)]
/// pub struct OrderPlacedV1 {
///     pub order_id: u64,
///     pub total_cents: u64,
/// }
///
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[choreo(name = "orders.order-placed", version = 2, upcast_from(OrderPlacedV1))]
/// pub struct OrderPlaced {
///     pub order_id: u64,
///     pub total_cents: u64,
///     pub currency: String,
/// }
///
/// impl From<OrderPlacedV1> for OrderPlaced {
///     fn from(v1: OrderPlacedV1) -> Self {
///         Self { order_id: v1.order_id, total_cents: v1.total_cents, currency: "EUR".into() }
///     }
/// }
///
/// assert_eq!(OrderPlaced::READS, &[2, 1]);
/// ```
///
/// Field attributes: `#[choreo(key)]` on at most one field marks the business idempotency
/// key; its type must implement [`EventKey`].
///
/// The type must also derive `serde::Serialize`, `serde::Deserialize` and
/// `schemars::JsonSchema`, and may not be generic. Only structs are events; model each case
/// of an enum as its own event.
#[cfg(feature = "macros")]
pub use choreo_macros::Event;

/// Turns an `async fn` into a [`Handler`].
///
/// ```
/// # use choreo::{handler, Context, Event, HandlerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// # #[choreo(name = "orders.order-placed", version = 1)]
/// # struct OrderPlaced { order_id: u64 }
/// # #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// # #[choreo(name = "billing.payment-captured", version = 1)]
/// # struct PaymentCaptured { order_id: u64 }
/// #[handler(emits(PaymentCaptured), timeout = "5s", concurrency = 4)]
/// async fn charge_card(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
///     ctx.publish(&PaymentCaptured { order_id: order.order_id })?;
///     Ok(())
/// }
/// ```
///
/// The first argument is the event consumed. Later arguments are a [`Context`] and any
/// number of [`State<T>`](State). The function returns `Result<(), E>` for any `E` that
/// converts into [`HandlerError`], or `()`.
///
/// Attributes:
///
/// - `emits(A, B, ...)`: the events the handler may publish.
/// - `name = "..."`: the handler's name (default: the function's name in kebab-case); its
///   queue is `<service>.<name>`.
/// - `retry = <expr>`: a [`RetryPolicy`] for this handler.
/// - `timeout = "30s"`: this handler's timeout (`ms`, `s`, `m` or `h`).
/// - `concurrency = N`: how many messages it works on at once.
/// - `crate = "path"`: where to find `choreo`.
///
/// The function becomes a unit struct of the same name that implements [`Handler`]; pass
/// it to [`Service::handler`].
#[cfg(feature = "macros")]
pub use choreo_macros::handler;

#[doc(hidden)]
pub mod __private {
    //! Support for generated code. Not public API.
    //!
    //! Each check the macros emit goes through one item here, so that a mistake is reported
    //! once, on the user's token, in choreo's words (`#[diagnostic::on_unimplemented]`).

    pub use ::core;
    pub use ::inventory;
    pub use ::std;

    pub use crate::event::{EventDescriptor, EventKey};
    pub use crate::handler::{HandlerInfo, StateMap, StateRequirement};

    use crate::error::HandlerError;
    use crate::event::{Event, EventType};
    use crate::handler::{Handler, State};

    /// The results a handler function may return.
    #[diagnostic::on_unimplemented(
        message = "a choreo handler must return `Result<(), E>` where `E: Into<HandlerError>`, or `()`",
        label = "this return type is not allowed",
        note = "in `Result<(), E>`, `E` must be `HandlerError` or implement `std::error::Error + Send + Sync + 'static`"
    )]
    pub trait IntoHandlerResult {
        /// Converts the function's result.
        fn into_handler_result(self) -> Result<(), HandlerError>;
    }

    #[diagnostic::do_not_recommend]
    impl IntoHandlerResult for () {
        fn into_handler_result(self) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[diagnostic::do_not_recommend]
    impl<E: Into<HandlerError>> IntoHandlerResult for Result<(), E> {
        fn into_handler_result(self) -> Result<(), HandlerError> {
            self.map_err(Into::into)
        }
    }

    /// A type a handler may take as `State<T>`.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be shared handler state",
        label = "`State<{Self}>` needs `{Self}: Clone + Send + Sync + 'static`",
        note = "every call takes its own clone of the state: derive `Clone`, or share the value through an `Arc`"
    )]
    pub trait StateType: Clone + Send + Sync + 'static {}
    impl<T: Clone + Send + Sync + 'static> StateType for T {}

    /// One `State<T>` argument of a handler: what the service must provide, and how to take it.
    pub struct StateSlot<T> {
        /// Checked by the service at start-up.
        pub requirement: StateRequirement,
        /// Takes the value out of the service's state for one call.
        pub take: fn(&StateMap) -> State<T>,
    }

    /// The slot of a `State<T>` argument; the only place its type is checked.
    pub const fn state_slot<T: StateType>() -> StateSlot<T> {
        StateSlot {
            requirement: StateRequirement::of::<T>(),
            take: state::<T>,
        }
    }

    /// Decodes a JSON body into `E`.
    pub fn decode_json<E: crate::Event>(body: &[u8]) -> Result<E, crate::DecodeError> {
        serde_json::from_slice(body).map_err(crate::DecodeError::Body)
    }

    /// Whether two strings are equal, in a constant.
    pub const fn same_str(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Takes a `State<T>` argument from the service's state.
    ///
    /// The service checks at start-up that every state a handler takes is present.
    pub fn state<T: Clone + Send + Sync + 'static>(state: &StateMap) -> State<T> {
        match state.get::<T>() {
            Some(value) => State(value.clone()),
            None => panic!(
                "state `{}` missing: the service checks this at start-up",
                std::any::type_name::<T>()
            ),
        }
    }

    /// A handler's declaration, with its event type taken from the impl, where it is checked.
    pub fn handler_info<H: Handler>(
        name: &'static str,
        emits: &'static [EventType],
    ) -> HandlerInfo {
        HandlerInfo::new::<H::Event>(name, emits)
    }

    /// Proves a type is `Serialize`, in choreo's words.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement `Serialize` to be a choreo event",
        label = "add `#[derive(serde::Serialize)]` to this type",
        note = "events travel as JSON written by serde"
    )]
    pub trait EventSerialize: ::serde::Serialize {}
    impl<T: ::serde::Serialize> EventSerialize for T {}

    /// Proves a type is `Deserialize`, in choreo's words.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement `Deserialize` to be a choreo event",
        label = "add `#[derive(serde::Deserialize)]` to this type",
        note = "events travel as JSON read by serde"
    )]
    pub trait EventDeserialize: ::serde::de::DeserializeOwned {}
    impl<T: ::serde::de::DeserializeOwned> EventDeserialize for T {}

    /// Proves a type is `JsonSchema`, in choreo's words.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` must implement `JsonSchema` to be a choreo event",
        label = "add `#[derive(schemars::JsonSchema)]` to this type",
        note = "every event publishes its JSON Schema as a contract for other teams"
    )]
    pub trait EventJsonSchema: ::schemars::JsonSchema {}
    impl<T: ::schemars::JsonSchema> EventJsonSchema for T {}

    /// The catalog entry of a derived event, and the one place its derives are checked.
    ///
    /// The derived `Event` impl states the same three bounds as a where clause, so a missing
    /// derive is reported here, once, in the words above, and not again by the impl.
    pub const fn descriptor<T>() -> EventDescriptor
    where
        T: EventSerialize + EventDeserialize + EventJsonSchema + Event,
    {
        EventDescriptor::of::<T>()
    }

    /// Checks a handler's future can move between threads. Named for the note rustc shows
    /// under its own message, which it words itself for futures.
    pub fn handler_future_must_be_send<F: Send>(_: &F) {}
}
