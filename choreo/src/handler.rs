//! Handlers: what a service runs for each event it consumes.
//!
//! Write handlers as `async fn`s with [`#[handler]`](macro@crate::handler); the macro turns
//! the function into a unit struct of the same name that implements [`Handler`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::context::Context;
use crate::envelope::Message;
use crate::error::HandlerError;
use crate::event::{DecodeError, Event, EventType};
use crate::retry::RetryPolicy;

/// A handler of one event type.
///
/// Implemented by [`#[handler]`](macro@crate::handler); implement it by hand only when a
/// macro will not do.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a choreo handler",
    label = "not a handler",
    note = "annotate an `async fn` with `#[choreo::handler]` and pass the function's name"
)]
pub trait Handler: Send + Sync + 'static {
    /// The event this handler consumes.
    type Event: Event;

    /// The handler's name, what it emits and its own settings.
    fn info(&self) -> HandlerInfo;

    /// Runs the handler for one event.
    fn call(
        &self,
        event: Self::Event,
        ctx: Context,
        state: &StateMap,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'static;
}

/// What a handler declares about itself.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HandlerInfo {
    /// The handler's name, kebab-case; its queue is `<service>.<name>`.
    pub name: &'static str,
    /// The event it consumes.
    pub event: EventType,
    /// Every version of that event's name it reads.
    pub reads: &'static [u32],
    /// The events it may publish.
    pub emits: &'static [EventType],
    /// The shared state it takes, through [`State`].
    pub state: &'static [StateRequirement],
    /// Its own retry policy, overriding the service's.
    pub retry: Option<RetryPolicy>,
    /// Its own timeout, overriding the service's.
    pub timeout: Option<Duration>,
    /// Its own concurrency, overriding the service's.
    pub concurrency: Option<usize>,
}

impl HandlerInfo {
    /// The declaration of a handler named `name` consuming `E`, emitting `emits`.
    pub fn new<E: Event>(name: &'static str, emits: &'static [EventType]) -> Self {
        Self {
            name,
            event: E::event_type(),
            reads: E::READS,
            emits,
            state: &[],
            retry: None,
            timeout: None,
            concurrency: None,
        }
    }

    /// Declares the shared state the handler takes.
    #[must_use]
    pub fn state(mut self, state: &'static [StateRequirement]) -> Self {
        self.state = state;
        self
    }

    /// Sets the handler's own retry policy.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sets the handler's own timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the handler's own concurrency.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = Some(concurrency);
        self
    }
}

/// Shared state a handler takes as an argument, registered with
/// [`Service::state`](crate::Service::state).
///
/// ```
/// # use choreo::{handler, Context, Event, HandlerError, State};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// # #[choreo(name = "orders.order-placed", version = 1)]
/// # struct OrderPlaced { order_id: u64 }
/// #[derive(Clone)]
/// struct Ledger(std::sync::Arc<std::sync::Mutex<Vec<u64>>>);
///
/// #[handler]
/// async fn record(order: OrderPlaced, State(ledger): State<Ledger>) -> Result<(), HandlerError> {
///     ledger.0.lock().unwrap().push(order.order_id);
///     Ok(())
/// }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct State<T>(pub T);

/// A state type a handler needs, checked when its service starts.
#[derive(Clone, Copy)]
pub struct StateRequirement {
    type_name: fn() -> &'static str,
    type_id: fn() -> TypeId,
}

impl StateRequirement {
    /// The requirement of a `State<T>` argument.
    pub const fn of<T: Clone + Send + Sync + 'static>() -> Self {
        Self {
            type_name: std::any::type_name::<T>,
            type_id: TypeId::of::<T>,
        }
    }

    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    pub(crate) fn type_id(&self) -> TypeId {
        (self.type_id)()
    }
}

impl fmt::Debug for StateRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// The shared state of a service, one value per type.
#[derive(Default)]
pub struct StateMap {
    values: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The value of type `T`, if the service has one.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get(&TypeId::of::<T>())?.downcast_ref()
    }

    pub(crate) fn contains(&self, requirement: &StateRequirement) -> bool {
        self.values.contains_key(&requirement.type_id())
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMap")
            .field("len", &self.values.len())
            .finish()
    }
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

/// A decoded message, ready to run.
pub(crate) struct Invocation {
    /// Whether the event has a business key, written where [`ErasedHandler::invoke`] was
    /// asked to.
    pub(crate) has_key: bool,
    pub(crate) future: HandlerFuture,
}

/// A handler with its event type erased, so one service holds many.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    /// Decodes `message` and starts the handler on it; writes the event's business key into
    /// `key`, cleared first, when given one.
    fn invoke(
        &self,
        message: &Message,
        ctx: Context,
        state: &StateMap,
        key: Option<&mut String>,
    ) -> Result<Invocation, DecodeError>;
}

pub(crate) struct Erased<H>(pub(crate) H);

impl<H: Handler> ErasedHandler for Erased<H> {
    fn invoke(
        &self,
        message: &Message,
        ctx: Context,
        state: &StateMap,
        key: Option<&mut String>,
    ) -> Result<Invocation, DecodeError> {
        let event = <H::Event as Event>::decode(message.meta.version, &message.body)?;
        let has_key = key.is_some_and(|key| {
            key.clear();
            event.write_key(key)
        });
        Ok(Invocation {
            has_key,
            future: Box::pin(self.0.call(event, ctx, state)),
        })
    }
}
