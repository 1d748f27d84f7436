//! Services: a named set of handlers run on a transport.

mod runtime;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::runtime::{HandlerRuntime, consume_loop};
use crate::context::HandlerScope;
use crate::envelope::domain_of;
use crate::error::{Error, Result};
use crate::event::{Event, EventDescriptor};
use crate::handler::{Erased, ErasedHandler, Handler, HandlerInfo, StateMap};
use crate::idempotency::{IdempotencyStore, MemoryIdempotencyStore};
use crate::metrics::HandlerMetrics;
use crate::observe::Observer;
use crate::retry::RetryPolicy;
use crate::transport::{Binding, QueueSpec, Topology, Transport};

/// The default handler timeout: well under RabbitMQ's 30-minute consumer timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of messages one handler works on at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// The default largest body a handler accepts: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// The default time in-flight handlers get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A named set of handlers with their settings, ready to run on a [`Transport`].
///
/// ```
/// use choreo::{handler, Context, Event, HandlerError, MemoryTransport, Service};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
/// #[choreo(name = "orders.order-placed", version = 1)]
/// struct OrderPlaced { order_id: u64 }
///
/// #[handler]
/// async fn reserve_stock(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
///     println!("reserving for order {} (flow {})", order.order_id, ctx.correlation_id());
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> choreo::Result<()> {
/// let transport = MemoryTransport::new();
/// let running = Service::new("inventory")
///     .handler(reserve_stock)
///     .start(&transport)
///     .await?;
/// assert_eq!(transport.queues(), ["inventory.reserve-stock"]);
/// running.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct Service<S = MemoryIdempotencyStore> {
    name: String,
    handlers: Vec<Registration>,
    retry: RetryPolicy,
    timeout: Duration,
    concurrency: usize,
    max_body: usize,
    grace: Duration,
    store: S,
    state: StateMap,
    observers: Vec<Arc<dyn Observer>>,
    published: Vec<EventDescriptor>,
}

struct Registration {
    info: HandlerInfo,
    handler: Arc<dyn ErasedHandler>,
}

impl Service<MemoryIdempotencyStore> {
    /// A service named `name` (lower kebab-case, e.g. `billing`) with default settings and an
    /// in-memory idempotency store.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            handlers: Vec::new(),
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            max_body: DEFAULT_MAX_BODY,
            grace: DEFAULT_SHUTDOWN_GRACE,
            store: MemoryIdempotencyStore::new(),
            state: StateMap::default(),
            observers: Vec::new(),
            published: Vec::new(),
        }
    }
}

impl<S: IdempotencyStore> Service<S> {
    /// Registers a handler written with [`#[handler]`](macro@crate::handler).
    #[must_use]
    pub fn handler<H: Handler>(mut self, handler: H) -> Self {
        self.handlers.push(Registration {
            info: handler.info(),
            handler: Arc::new(Erased(handler)),
        });
        self
    }

    /// Adds shared state that handlers take as [`State<T>`](crate::State) arguments.
    #[must_use]
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Sets the retry policy of handlers that do not set their own.
    #[must_use]
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Sets the timeout of handlers that do not set their own; a run past it is a transient
    /// failure. Default: 30 s.
    #[must_use]
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many messages each handler works on at once, unless it sets its own.
    /// Default: 16.
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Sets the largest body a handler accepts; larger ones are poisoned as `too-large`.
    /// Default: 1 MiB.
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets how long [`RunningService::shutdown`] waits for in-flight handlers before it
    /// returns their messages to the broker. Default: 30 s.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Replaces the idempotency store, e.g. with one shared by several instances.
    #[must_use]
    pub fn idempotency<S2: IdempotencyStore>(self, store: S2) -> Service<S2> {
        Service {
            name: self.name,
            handlers: self.handlers,
            retry: self.retry,
            timeout: self.timeout,
            concurrency: self.concurrency,
            max_body: self.max_body,
            grace: self.grace,
            store,
            state: self.state,
            observers: self.observers,
            published: self.published,
        }
    }

    /// Declares an event the service publishes from outside its handlers, e.g. from its API
    /// through a [`Publisher`](crate::Publisher). It feeds the service's exported contracts
    /// ([`schema`](crate::schema)) and its topology: the event's exchange is declared at start.
    #[must_use]
    pub fn publishes<E: Event>(mut self) -> Self {
        let descriptor = EventDescriptor::of::<E>();
        if !self
            .published
            .iter()
            .any(|d| d.event_type() == descriptor.event_type())
        {
            self.published.push(descriptor);
        }
        self
    }

    /// What each registered handler declares about itself, in registration order.
    pub fn handlers(&self) -> impl ExactSizeIterator<Item = &HandlerInfo> {
        self.handlers.iter().map(|r| &r.info)
    }

    /// The events declared with [`Service::publishes`].
    pub fn published(&self) -> &[EventDescriptor] {
        &self.published
    }

    /// Adds an observer told of every message's outcome.
    #[must_use]
    pub fn observe(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology this service needs: its exchanges and one queue per handler.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] or [`Error::Startup`] when the service's settings are invalid.
    pub fn topology(&self) -> Result<Topology> {
        self.validate()?;
        Ok(self.layout())
    }

    /// The topology without checking the settings: exported contracts describe the queues
    /// of a service whose shared state (a database pool) is not at hand.
    pub(crate) fn layout(&self) -> Topology {
        let mut exchanges: BTreeSet<String> =
            self.published.iter().map(|d| d.domain.to_owned()).collect();
        let queues = self
            .handlers
            .iter()
            .map(|r| {
                exchanges.insert(domain_of(r.info.event.name).to_owned());
                for emitted in r.info.emits {
                    exchanges.insert(domain_of(emitted.name).to_owned());
                }
                self.queue_spec(&r.info)
            })
            .collect();
        Topology {
            service: Arc::from(self.name.as_str()),
            exchanges: exchanges.into_iter().collect(),
            queues,
        }
    }

    fn queue_spec(&self, info: &HandlerInfo) -> QueueSpec {
        let retry = info.retry.as_ref().unwrap_or(&self.retry);
        let concurrency = info.concurrency.unwrap_or(self.concurrency);
        QueueSpec {
            name: format!("{}.{}", self.name, info.name),
            handler: info.name.to_owned(),
            bindings: info
                .reads
                .iter()
                .map(|version| Binding {
                    exchange: domain_of(info.event.name).to_owned(),
                    routing_key: format!("{}.v{}", info.event.name, version),
                })
                .collect(),
            retry_tiers: retry.tiers().to_vec(),
            prefetch: u16::try_from(concurrency).unwrap_or(u16::MAX),
            max_attempts: retry.max_attempts(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !is_kebab_name(&self.name) {
            return Err(Error::config(
                "service name",
                format!(
                    "`{}` is not lower kebab-case (letters, digits and single dashes, starting with a letter), e.g. `billing`",
                    self.name
                ),
            ));
        }
        check_settings("service", &self.retry, self.timeout, self.concurrency)?;
        if self.max_body == 0 {
            return Err(Error::config("max body size", "must be at least 1 byte"));
        }
        let mut names = HashSet::new();
        for r in &self.handlers {
            let info = &r.info;
            if !names.insert(info.name) {
                return Err(Error::Startup {
                    service: self.name.clone(),
                    reason: format!(
                        "two handlers are named `{}`; rename one with `#[handler(name = \"...\")]`",
                        info.name
                    ),
                });
            }
            let what = format!("handler `{}`", info.name);
            check_settings(
                &what,
                info.retry.as_ref().unwrap_or(&self.retry),
                info.timeout.unwrap_or(self.timeout),
                info.concurrency.unwrap_or(self.concurrency),
            )?;
            if let Some(missing) = info.state.iter().find(|s| !self.state.contains(s)) {
                return Err(Error::Startup {
                    service: self.name.clone(),
                    reason: format!(
                        "handler `{}` takes `State<{}>`, but the service has no such state; add `.state(...)` with a value of that type",
                        info.name,
                        missing.type_name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Declares the topology, starts one consumer per handler and returns the running service.
    ///
    /// Before anything reaches the broker the service checks its settings: the service name,
    /// unique handler names, timeouts, concurrency, retry tiers and that every `State<T>` a
    /// handler takes was provided. After starting it checks that it runs exactly the handlers
    /// it was given.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid setting, [`Error::Startup`] when a handler cannot run,
    /// and [`Error::Transport`] when the broker refuses the topology or a consumer.
    pub async fn start<T: Transport>(self, transport: &T) -> Result<RunningService> {
        let topology = self.topology()?;
        transport.declare(&topology).await?;

        let service: Arc<str> = topology.service.clone();
        let store = Arc::new(self.store);
        let state = Arc::new(self.state);
        let observers: Arc<[Arc<dyn Observer>]> = self.observers.into();
        let stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let mut loops = Vec::with_capacity(self.handlers.len());

        for (registration, spec) in self.handlers.into_iter().zip(&topology.queues) {
            let info = registration.info;
            let consumer = match transport.consume(spec).await {
                Ok(consumer) => consumer,
                Err(error) => {
                    stop.cancel();
                    hard_stop.cancel();
                    return Err(error.into());
                }
            };
            let concurrency = info.concurrency.unwrap_or(self.concurrency);
            let runtime = Arc::new(HandlerRuntime {
                transport: transport.clone(),
                store: Arc::clone(&store),
                state: Arc::clone(&state),
                observers: Arc::clone(&observers),
                handler: registration.handler,
                scope: Arc::new(HandlerScope {
                    service: service.clone(),
                    queue: spec.name.clone(),
                    handler: info.name,
                    emits: info.emits,
                }),
                event_name: info.event.name,
                reads: info.reads,
                retry: info.retry.unwrap_or_else(|| self.retry.clone()),
                timeout: info.timeout.unwrap_or(self.timeout),
                max_body: self.max_body,
                exchange: domain_of(info.event.name).to_owned(),
                metrics: HandlerMetrics::new(&service, info.name),
            });
            tracing::debug!(
                service = %service,
                queue = %spec.name,
                event = %info.event,
                concurrency,
                "consumer started"
            );
            loops.push(HandlerLoop {
                queue: spec.name.clone(),
                task: tokio::spawn(consume_loop(
                    runtime,
                    consumer,
                    concurrency,
                    stop.clone(),
                    hard_stop.clone(),
                )),
            });
        }

        if loops.len() != topology.queues.len() {
            stop.cancel();
            return Err(Error::Startup {
                service: service.to_string(),
                reason: format!(
                    "{} handlers were registered but {} consumers started",
                    topology.queues.len(),
                    loops.len()
                ),
            });
        }
        tracing::info!(service = %service, handlers = loops.len(), "service started");
        let probe = transport.clone();
        Ok(RunningService {
            name: service,
            connected: Box::new(move || probe.is_connected()),
            loops,
            stop,
            hard_stop,
            grace: self.grace,
        })
    }

    /// Starts the service and runs it until Ctrl-C or, on Unix, `SIGTERM`; then shuts it down
    /// gracefully.
    ///
    /// ```no_run
    /// # async fn run(service: choreo::Service, transport: choreo::MemoryTransport) -> choreo::Result<()> {
    /// service.run(&transport).await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Service::start`] and [`RunningService::shutdown`].
    pub async fn run<T: Transport>(self, transport: &T) -> Result<()> {
        self.run_until(transport, shutdown_signal()).await
    }

    /// Starts the service and runs it until `shutdown` resolves, then shuts it down gracefully.
    ///
    /// ```no_run
    /// # async fn run(service: choreo::Service, transport: choreo::MemoryTransport) -> choreo::Result<()> {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # drop(stop);
    /// service.run_until(&transport, stopped).await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Service::start`] and [`RunningService::shutdown`].
    pub async fn run_until<T: Transport, F: Future + Send>(
        self,
        transport: &T,
        shutdown: F,
    ) -> Result<()> {
        let running = self.start(transport).await?;
        shutdown.await;
        running.shutdown().await
    }
}

impl<S> fmt::Debug for Service<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field(
                "handlers",
                &self
                    .handlers
                    .iter()
                    .map(|r| r.info.name)
                    .collect::<Vec<_>>(),
            )
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Resolves on Ctrl-C or, on Unix, `SIGTERM`: what process managers send to stop a service.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}

fn check_settings(
    what: &str,
    retry: &RetryPolicy,
    timeout: Duration,
    concurrency: usize,
) -> Result<()> {
    if concurrency == 0 || concurrency > usize::from(u16::MAX) {
        return Err(Error::config(
            format!("{what}: concurrency"),
            format!("{concurrency} is out of range; allowed: 1 to 65535"),
        ));
    }
    if timeout.is_zero() {
        return Err(Error::config(
            format!("{what}: timeout"),
            "must be longer than zero",
        ));
    }
    retry
        .validate()
        .map_err(|reason| Error::config(format!("{what}: retry policy"), reason))
}

pub(crate) fn is_kebab_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A started service. Drop it or call [`RunningService::shutdown`] to stop.
#[must_use = "a service stops when its handle is dropped; call `shutdown` to stop it gracefully"]
pub struct RunningService {
    name: Arc<str>,
    connected: Box<dyn Fn() -> bool + Send + Sync>,
    loops: Vec<HandlerLoop>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    grace: Duration,
}

/// A service's health, as [`RunningService::health`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Every consumer is running: restart the process if not.
    pub live: bool,
    /// Live, connected to the broker and not stopping: send it traffic.
    pub ready: bool,
    /// The transport is connected right now.
    pub connected: bool,
    /// Consumers running.
    pub consumers_running: usize,
    /// Consumers the service started, one per handler.
    pub consumers_expected: usize,
    /// The topology was declared (it is declared again after every reconnection).
    pub topology_declared: bool,
}

struct HandlerLoop {
    queue: String,
    task: JoinHandle<()>,
}

impl RunningService {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the service is alive and ready to take messages, to back a health endpoint.
    pub fn health(&self) -> Health {
        let running = self.loops.iter().filter(|l| !l.task.is_finished()).count();
        let connected = (self.connected)();
        let stopping = self.stop.is_cancelled();
        let live = running == self.loops.len();
        Health {
            live,
            ready: live && connected && !stopping,
            connected,
            consumers_running: running,
            consumers_expected: self.loops.len(),
            topology_declared: true,
        }
    }

    /// The handler queues it consumes.
    pub fn queues(&self) -> Vec<&str> {
        self.loops.iter().map(|l| l.queue.as_str()).collect()
    }

    /// Stops taking messages, lets in-flight handlers finish within the grace period, and
    /// returns the messages of handlers still running after it to the broker.
    ///
    /// # Errors
    ///
    /// [`Error::Crashed`] naming the queue when a consumer task had crashed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops waiting: handlers still running are cancelled and their
    /// messages returned to the broker.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.cancel();
        let loops = std::mem::take(&mut self.loops);
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut crashed = None;
        for handler_loop in loops {
            let mut task = handler_loop.task;
            let joined = match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    tracing::warn!(
                        service = %self.name,
                        queue = %handler_loop.queue,
                        "shutdown grace period over; returning in-flight messages"
                    );
                    self.hard_stop.cancel();
                    task.await
                }
            };
            if joined.is_err() && crashed.is_none() {
                crashed = Some(handler_loop.queue);
            }
        }
        tracing::info!(service = %self.name, "service stopped");
        match crashed {
            Some(queue) => Err(Error::Crashed {
                service: self.name.to_string(),
                queue,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.stop.cancel();
        self.hard_stop.cancel();
    }
}

impl fmt::Debug for RunningService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningService")
            .field("name", &self.name)
            .field("queues", &self.queues())
            .finish_non_exhaustive()
    }
}
