//! Services: a named set of handlers run on a transport.

use std::any::Any;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::context::{Context, HandlerScope};
use crate::envelope::{Message, domain_of, headers, parse_rfc3339};
use crate::error::{Error, HandlerError, Result, TransportError};
use crate::event::DecodeError;
use crate::handler::{Erased, ErasedHandler, Handler, HandlerFuture, HandlerInfo, StateMap};
use crate::idempotency::{Claim, IdempotencyStore, MemoryIdempotencyStore};
use crate::observe::{Observation, Observer, Outcome};
use crate::retry::RetryPolicy;
use crate::transport::{
    Binding, Consumer, Delivery, Failure, FailureKind, QueueSpec, Retry, Topology, Transport,
};

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
        }
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
        let mut exchanges = BTreeSet::new();
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
        Ok(Topology {
            service: Arc::from(self.name.as_str()),
            exchanges: exchanges.into_iter().collect(),
            queues,
        })
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
        Ok(RunningService {
            name: service,
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

/// How long a message whose key another run holds waits before it is requeued, when the
/// retry policy has no delayed tier to park it in.
const DEFER_PAUSE: Duration = Duration::from_millis(100);

/// A started service. Drop it or call [`RunningService::shutdown`] to stop.
#[must_use = "a service stops when its handle is dropped; call `shutdown` to stop it gracefully"]
pub struct RunningService {
    name: Arc<str>,
    loops: Vec<HandlerLoop>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    grace: Duration,
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

/// Everything one handler's consumer needs, fixed at start-up.
struct HandlerRuntime<T, S> {
    transport: T,
    store: Arc<S>,
    state: Arc<StateMap>,
    observers: Arc<[Arc<dyn Observer>]>,
    handler: Arc<dyn ErasedHandler>,
    scope: Arc<HandlerScope>,
    event_name: &'static str,
    reads: &'static [u32],
    retry: RetryPolicy,
    timeout: Duration,
    max_body: usize,
    exchange: String,
}

async fn consume_loop<T: Transport, S: IdempotencyStore>(
    runtime: Arc<HandlerRuntime<T, S>>,
    mut consumer: T::Consumer,
    concurrency: usize,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    loop {
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        match next {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(queue = %runtime.scope.queue, %error, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(Ok(delivery)) => {
                let runtime = Arc::clone(&runtime);
                let hard_stop = hard_stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        biased;
                        () = runtime.process(delivery) => {}
                        // Dropping the unsettled delivery returns it to the broker.
                        () = hard_stop.cancelled() => {}
                    }
                    drop(permit);
                });
            }
        }
    }
    consumer.cancel().await;
    // Every permit back means every in-flight message is settled or returned.
    let _all = permits.acquire_many(concurrency as u32).await;
}

impl<T: Transport, S: IdempotencyStore> HandlerRuntime<T, S> {
    async fn process<D: Delivery>(&self, delivery: D) {
        let started = Instant::now();
        let message = match delivery.message() {
            Ok(message) => message,
            Err(reason) => {
                let failure = self.failure(
                    None,
                    FailureKind::Malformed,
                    format!("unreadable envelope: {reason}"),
                    0,
                    None,
                );
                self.settle_poison(delivery, None, failure, started).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "choreo.handle",
            handler = %self.scope.queue,
            event = %message.meta.name,
            version = message.meta.version,
            message_id = %message.meta.id,
            correlation_id = %message.meta.correlation_id,
            attempt = message.meta.attempt + 1,
        );
        self.handle(delivery, started).instrument(span).await;
    }

    /// Why a message cannot reach the handler at all, before anything is decoded.
    fn precheck(&self, message: &Message) -> Option<(FailureKind, String)> {
        let meta = &message.meta;
        if message.body.len() > self.max_body {
            Some((
                FailureKind::TooLarge,
                format!(
                    "body of {} bytes is over the limit of {} bytes",
                    message.body.len(),
                    self.max_body
                ),
            ))
        } else if meta.name != self.event_name || !self.reads.contains(&meta.version) {
            Some((
                FailureKind::UnknownVersion,
                format!(
                    "handler reads `{}` version {:?}, message is `{}` version {}",
                    self.event_name, self.reads, meta.name, meta.version
                ),
            ))
        } else {
            None
        }
    }

    async fn handle<D: Delivery>(&self, delivery: D, started: Instant) {
        let Ok(message) = delivery.message() else {
            return;
        };
        if let Some((kind, reason)) = self.precheck(message) {
            let failure = self.failure(Some(message), kind, reason, message.meta.attempt, None);
            let meta = message.meta.clone();
            self.settle_poison(delivery, Some(&meta), failure, started)
                .await;
            return;
        }

        let mut failures = FailureLog {
            attempt: message.meta.attempt,
            first: message
                .meta
                .headers
                .get(headers::FIRST_FAILURE)
                .and_then(parse_rfc3339),
            last_error: String::new(),
        };
        // The claimed key: the event's business key, or else the message id.
        let mut id_buffer = Uuid::encode_buffer();
        let id_key: &str = message.meta.id.hyphenated().encode_lower(&mut id_buffer);
        let mut claimed: Option<Option<String>> = None;
        let runs = self.retry.immediate_retries() + 1;
        let mut ctx = Context::new(
            message.meta.clone(),
            failures.attempt + 1,
            Arc::clone(&self.scope),
        );

        for run in 0..runs {
            if run > 0 {
                ctx = Context::new(
                    message.meta.clone(),
                    failures.attempt + 1,
                    Arc::clone(&self.scope),
                );
            }
            let invocation = match self.handler.invoke(message, ctx.clone(), &self.state) {
                Ok(invocation) => invocation,
                Err(error) => {
                    self.release(claimed.as_ref(), id_key).await;
                    let kind = match error {
                        DecodeError::UnknownVersion { .. } => FailureKind::UnknownVersion,
                        _ => FailureKind::Decode,
                    };
                    let failure = self.failure(
                        Some(message),
                        kind,
                        error.to_string(),
                        failures.attempt,
                        None,
                    );
                    self.settle_poison(delivery, Some(ctx.meta()), failure, started)
                        .await;
                    return;
                }
            };

            if claimed.is_none() {
                let key = invocation.key.as_deref().unwrap_or(id_key);
                match self.store.claim(&self.scope.queue, key, self.lease()).await {
                    Ok(Claim::Claimed) => claimed = Some(invocation.key),
                    Ok(Claim::Done) => {
                        drop(invocation.future);
                        self.settle(
                            Some(ctx.meta()),
                            Outcome::Duplicate,
                            delivery.ack(),
                            started,
                        )
                        .await;
                        return;
                    }
                    Ok(Claim::InProgress) => {
                        drop(invocation.future);
                        self.defer(delivery, ctx.meta(), &failures, started).await;
                        return;
                    }
                    Err(error) => {
                        drop(invocation.future);
                        failures.record(format!("idempotency store: {error}"));
                        if run + 1 < runs {
                            self.pause_before_retry(ctx.meta(), &failures, started)
                                .await;
                        }
                        continue;
                    }
                }
            }

            let result = self.run(invocation.future).await;
            let outbox = ctx.finish();
            // Publishing an undeclared event is a bug in the handler, not bad luck: the run
            // fails permanently whatever the handler made of the error.
            let result = match outbox.undeclared {
                Some(undeclared) => Err(HandlerError::permanent(undeclared)),
                None => result,
            };
            match result {
                Ok(()) => {
                    let published = if self.observers.is_empty() {
                        Vec::new()
                    } else {
                        outbox.messages.clone()
                    };
                    match self.transport.publish_all(outbox.messages).await {
                        Ok(()) => {
                            self.complete(claimed.as_ref(), id_key).await;
                            let outcome = Outcome::Handled {
                                published: &published,
                            };
                            self.settle(Some(ctx.meta()), outcome, delivery.ack(), started)
                                .await;
                            return;
                        }
                        Err(error) => {
                            failures.record(format!("publishing follow-up events failed: {error}"));
                        }
                    }
                }
                Err(error) if error.is_permanent() => {
                    failures.record(error.to_string());
                    self.release(claimed.as_ref(), id_key).await;
                    let failure = self.failure(
                        Some(message),
                        FailureKind::Permanent,
                        failures.last_error.clone(),
                        failures.attempt,
                        failures.first,
                    );
                    self.settle_poison(delivery, Some(ctx.meta()), failure, started)
                        .await;
                    return;
                }
                Err(error) => failures.record(error.to_string()),
            }
            if run + 1 < runs {
                self.pause_before_retry(ctx.meta(), &failures, started)
                    .await;
            }
        }

        self.release(claimed.as_ref(), id_key).await;
        let meta = ctx.meta();
        let tier = meta.retry_tier as usize;
        match self.retry.tiers().get(tier) {
            Some(&delay) => {
                let retry = Retry {
                    tier,
                    delay,
                    attempt: failures.attempt,
                    tiers_passed: meta.retry_tier + 1,
                    first_failure: failures.first.unwrap_or_else(SystemTime::now),
                };
                let outcome = Outcome::Retrying {
                    attempt: failures.attempt,
                    error: &failures.last_error,
                    tier: Some(tier),
                    delay,
                };
                self.settle(Some(meta), outcome, delivery.retry(retry), started)
                    .await;
            }
            None => {
                let failure = self.failure(
                    Some(message),
                    FailureKind::RetriesExhausted,
                    failures.last_error.clone(),
                    failures.attempt,
                    failures.first,
                );
                self.settle_poison(delivery, Some(meta), failure, started)
                    .await;
            }
        }
    }

    async fn run(&self, future: HandlerFuture) -> Result<(), HandlerError> {
        match tokio::time::timeout(self.timeout, CatchUnwind(future)).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(HandlerError::msg(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            ))),
            Err(_) => Err(HandlerError::msg(format!(
                "handler timed out after {:?}",
                self.timeout
            ))),
        }
    }

    async fn pause_before_retry(
        &self,
        meta: &crate::envelope::Metadata,
        failures: &FailureLog,
        started: Instant,
    ) {
        let pause = self.retry.jittered_pause();
        self.emit(
            Some(meta),
            Outcome::Retrying {
                attempt: failures.attempt,
                error: &failures.last_error,
                tier: None,
                delay: pause,
            },
            started,
        );
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }

    /// Another run holds the key: wait in the first tier without counting an attempt.
    async fn defer<D: Delivery>(
        &self,
        delivery: D,
        meta: &crate::envelope::Metadata,
        failures: &FailureLog,
        started: Instant,
    ) {
        let Some(&delay) = self.retry.tiers().first() else {
            // No delayed tier to wait in: pause, so as not to spin on the key, and hand the
            // message back for a later delivery.
            tokio::time::sleep(DEFER_PAUSE).await;
            let outcome = Outcome::Deferred { delay: DEFER_PAUSE };
            self.settle(Some(meta), outcome, delivery.requeue(), started)
                .await;
            return;
        };
        let retry = Retry {
            tier: 0,
            delay,
            attempt: failures.attempt,
            tiers_passed: meta.retry_tier,
            first_failure: failures.first.unwrap_or_else(SystemTime::now),
        };
        self.settle(
            Some(meta),
            Outcome::Deferred { delay },
            delivery.retry(retry),
            started,
        )
        .await;
    }

    async fn release(&self, claimed: Option<&Option<String>>, id_key: &str) {
        if let Some(key) = claimed {
            let key = key.as_deref().unwrap_or(id_key);
            if let Err(error) = self.store.release(&self.scope.queue, key).await {
                tracing::warn!(%error, "idempotency store did not release a claim; it lapses with its lease");
            }
        }
    }

    async fn complete(&self, claimed: Option<&Option<String>>, id_key: &str) {
        if let Some(key) = claimed {
            let key = key.as_deref().unwrap_or(id_key);
            if let Err(error) = self.store.complete(&self.scope.queue, key).await {
                tracing::warn!(%error, "idempotency store did not record completion; a redelivery would run again");
            }
        }
    }

    fn lease(&self) -> Duration {
        let runs = self.retry.immediate_retries() + 1;
        self.timeout * runs + Duration::from_secs(30)
    }

    fn failure(
        &self,
        message: Option<&Message>,
        kind: FailureKind,
        error: String,
        attempts: u32,
        first: Option<SystemTime>,
    ) -> Failure {
        let now = SystemTime::now();
        Failure {
            handler: self.scope.queue.clone(),
            kind,
            message: Failure::bounded_message(error),
            attempts,
            first_failed_at: first.unwrap_or(now),
            last_failed_at: now,
            exchange: message.map_or_else(|| self.exchange.clone(), |m| m.exchange().to_owned()),
            routing_key: message.map_or_else(String::new, |m| m.meta.routing_key()),
        }
    }

    async fn settle_poison<D: Delivery>(
        &self,
        delivery: D,
        meta: Option<&crate::envelope::Metadata>,
        failure: Failure,
        started: Instant,
    ) {
        tracing::warn!(
            kind = failure.kind.as_str(),
            attempts = failure.attempts,
            error = %failure.message,
            "message poisoned"
        );
        self.emit(meta, Outcome::Poisoned(&failure), started);
        if let Err(error) = delivery.poison(failure).await {
            self.settle_failed(meta, &error, started);
        }
    }

    /// Tells the observers, then settles the message with the broker.
    ///
    /// Observers hear first so that whoever waits for the queue to drain has seen every
    /// outcome by then; a failed settle follows as [`Outcome::SettleFailed`].
    async fn settle(
        &self,
        meta: Option<&crate::envelope::Metadata>,
        outcome: Outcome<'_>,
        settle: impl Future<Output = Result<(), TransportError>>,
        started: Instant,
    ) {
        self.emit(meta, outcome, started);
        if let Err(error) = settle.await {
            self.settle_failed(meta, &error, started);
        }
    }

    fn settle_failed(
        &self,
        meta: Option<&crate::envelope::Metadata>,
        error: &TransportError,
        started: Instant,
    ) {
        tracing::error!(%error, "could not settle message; the broker will redeliver it");
        let error = error.to_string();
        self.emit(meta, Outcome::SettleFailed { error: &error }, started);
    }

    fn emit(
        &self,
        meta: Option<&crate::envelope::Metadata>,
        outcome: Outcome<'_>,
        started: Instant,
    ) {
        if self.observers.is_empty() {
            return;
        }
        let observation = Observation {
            service: &self.scope.service,
            queue: &self.scope.queue,
            meta,
            outcome,
            elapsed: started.elapsed(),
        };
        for observer in self.observers.iter() {
            observer.observe(&observation);
        }
    }
}

struct FailureLog {
    attempt: u32,
    first: Option<SystemTime>,
    last_error: String,
}

impl FailureLog {
    fn record(&mut self, error: String) {
        self.attempt += 1;
        self.first.get_or_insert_with(SystemTime::now);
        tracing::debug!(attempt = self.attempt, %error, "handler run failed");
        self.last_error = error;
    }
}

/// Polls a handler's future, turning a panic into an error.
struct CatchUnwind(HandlerFuture);

impl Future for CatchUnwind {
    type Output = Result<Result<(), HandlerError>, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
