//! The per-message path: from a delivery to an acknowledged, retried or poisoned message.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::context::{Context, HandlerScope};
use crate::envelope::{Message, Metadata, headers, parse_rfc3339};
use crate::error::{HandlerError, TransportError};
use crate::event::DecodeError;
use crate::handler::{ErasedHandler, HandlerFuture, StateMap};
use crate::idempotency::{Claim, IdempotencyStore};
use crate::metrics::HandlerMetrics;
use crate::observe::{Observation, Observer, Outcome};
use crate::retry::RetryPolicy;
use crate::transport::{Consumer, Delivery, Failure, FailureKind, Retry, Transport};

/// How long a message whose key another run holds waits before it is requeued, when the
/// retry policy has no delayed tier to park it in.
const DEFER_PAUSE: Duration = Duration::from_millis(100);

/// Everything one handler's consumer needs, fixed at start-up.
pub(super) struct HandlerRuntime<T, S> {
    pub(super) transport: T,
    pub(super) store: Arc<S>,
    pub(super) state: Arc<StateMap>,
    pub(super) observers: Arc<[Arc<dyn Observer>]>,
    pub(super) handler: Arc<dyn ErasedHandler>,
    pub(super) scope: Arc<HandlerScope>,
    pub(super) event_name: &'static str,
    pub(super) reads: &'static [u32],
    pub(super) retry: RetryPolicy,
    pub(super) timeout: Duration,
    pub(super) max_body: usize,
    pub(super) exchange: String,
    pub(super) metrics: HandlerMetrics,
}

pub(super) async fn consume_loop<T: Transport, S: IdempotencyStore>(
    runtime: Arc<HandlerRuntime<T, S>>,
    consumer: T::Consumer,
    concurrency: usize,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    // `concurrency` long-lived workers, no task per message. Each has a consumer of its own
    // when the transport can fork one; otherwise they take turns at the one consumer.
    let forks: Option<Vec<T::Consumer>> = (1..concurrency).map(|_| consumer.fork()).collect();
    let mut workers = tokio::task::JoinSet::new();
    let shared = match forks {
        Some(forks) => {
            for consumer in std::iter::once(consumer).chain(forks) {
                workers.spawn(consume_worker(
                    Arc::clone(&runtime),
                    Source::Own(consumer),
                    stop.clone(),
                    hard_stop.clone(),
                ));
            }
            None
        }
        None => {
            let consumer = Arc::new(tokio::sync::Mutex::new(consumer));
            for _ in 0..concurrency {
                workers.spawn(consume_worker(
                    Arc::clone(&runtime),
                    Source::Shared(Arc::clone(&consumer)),
                    stop.clone(),
                    hard_stop.clone(),
                ));
            }
            Some(consumer)
        }
    };
    let all_done = async { while workers.join_next().await.is_some() {} };
    let mut all_done = std::pin::pin!(all_done);
    let finished = tokio::select! {
        () = stop.cancelled() => false,
        () = &mut all_done => true,
    };
    // Stop deliveries at once; workers finish (or, past the grace period, return) what they
    // hold. Workers with a consumer of their own cancel it as they stop.
    if let Some(consumer) = shared {
        consumer.lock().await.cancel().await;
    }
    if !finished {
        all_done.await;
    }
}

/// Where a worker takes its deliveries from.
enum Source<C> {
    /// A consumer of its own.
    Own(C),
    /// The handler's one consumer, in turns with the other workers.
    Shared(Arc<tokio::sync::Mutex<C>>),
}

impl<C: Consumer> Source<C> {
    /// The next delivery, or `None` once the consumer has ended or `stop` is cancelled.
    async fn next(
        &mut self,
        stop: &CancellationToken,
    ) -> Option<Option<Result<C::Delivery, TransportError>>> {
        match self {
            Self::Own(consumer) => tokio::select! {
                biased;
                next = consumer.next() => Some(next),
                () = stop.cancelled() => None,
            },
            Self::Shared(consumer) => {
                let mut consumer = match consumer.try_lock() {
                    Ok(consumer) => consumer,
                    Err(_) => tokio::select! {
                        biased;
                        () = stop.cancelled() => return None,
                        consumer = consumer.lock() => consumer,
                    },
                };
                tokio::select! {
                    biased;
                    next = consumer.next() => Some(next),
                    () = stop.cancelled() => None,
                }
            }
        }
    }
}

async fn consume_worker<T: Transport, S: IdempotencyStore>(
    runtime: Arc<HandlerRuntime<T, S>>,
    mut source: Source<T::Consumer>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    // The business key of the message at hand, in a buffer the worker keeps.
    let mut key = String::new();
    loop {
        if key.capacity() > 1024 {
            key = String::new();
        }
        // Polling `stop.cancelled()` registers a waiter on the token (a lock, and another to
        // unregister): check the flag, and wait on the token only when we must wait.
        if stop.is_cancelled() {
            break;
        }
        let Some(next) = source.next(&stop).await else {
            break;
        };
        match next {
            None => break,
            Some(Err(error)) => {
                tracing::warn!(queue = %runtime.scope.queue, %error, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(Ok(delivery)) => {
                tokio::select! {
                    biased;
                    () = runtime.process(delivery, &mut key) => {}
                    // Dropping the unsettled delivery returns it to the broker.
                    () = hard_stop.cancelled() => {}
                }
            }
        }
    }
    if let Source::Own(mut consumer) = source {
        consumer.cancel().await;
    }
}

impl<T: Transport, S: IdempotencyStore> HandlerRuntime<T, S> {
    async fn process<D: Delivery>(&self, delivery: D, key: &mut String) {
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
            trace_id = tracing::field::Empty,
        );
        if !span.is_disabled() {
            if let Some(trace) = message.meta.trace {
                span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
                crate::trace::set_parent(&span, trace, &message.meta.headers);
            }
        }
        self.handle(delivery, started, key).instrument(span).await;
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

    async fn handle<D: Delivery>(&self, delivery: D, started: Instant, key: &mut String) {
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
        // The claimed key: the event's business key, written into `key`, or else the
        // message id. `claimed` says which, once the key is ours.
        let mut id_buffer = Uuid::encode_buffer();
        let id_key: &str = message.meta.id.hyphenated().encode_lower(&mut id_buffer);
        let mut claimed: Option<bool> = None;
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
            // Until the key is claimed, each run reads it again from the event.
            let key_out = claimed.is_none().then_some(&mut *key);
            let invocation = match self
                .handler
                .invoke(message, ctx.clone(), &self.state, key_out)
            {
                Ok(invocation) => invocation,
                Err(error) => {
                    self.release(claimed, key, id_key).await;
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
                let has_key = invocation.has_key;
                let claim = claim_key(has_key, key, id_key);
                match self
                    .store
                    .claim(&self.scope.queue, claim, self.lease())
                    .await
                {
                    Ok(Claim::Claimed) => claimed = Some(has_key),
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
                    // A broker's publish is a large future: box it, and only when there is
                    // something to publish, so that the common path stays small.
                    let published_all = if outbox.messages.is_empty() {
                        Ok(())
                    } else {
                        let publishing = Instant::now();
                        let published = Box::pin(self.transport.publish_all(outbox.messages)).await;
                        self.metrics.published(publishing.elapsed());
                        published
                    };
                    match published_all {
                        Ok(()) => {
                            self.complete(claimed, key, id_key).await;
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
                    self.release(claimed, key, id_key).await;
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

        self.release(claimed, key, id_key).await;
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
                self.settle(
                    Some(meta),
                    outcome,
                    Box::pin(delivery.retry(retry)),
                    started,
                )
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
        let mut run = CatchUnwind(future);
        // Most handlers finish in their first poll: start the timeout's timer only for those
        // that wait.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut run).poll(cx))).await;
        let outcome = match first {
            Poll::Ready(outcome) => Ok(outcome),
            Poll::Pending => tokio::time::timeout(self.timeout, run).await,
        };
        match outcome {
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

    async fn pause_before_retry(&self, meta: &Metadata, failures: &FailureLog, started: Instant) {
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
        meta: &Metadata,
        failures: &FailureLog,
        started: Instant,
    ) {
        let Some(&delay) = self.retry.tiers().first() else {
            // No delayed tier to wait in: pause, so as not to spin on the key, and hand the
            // message back for a later delivery.
            tokio::time::sleep(DEFER_PAUSE).await;
            let outcome = Outcome::Deferred { delay: DEFER_PAUSE };
            self.settle(Some(meta), outcome, Box::pin(delivery.requeue()), started)
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
            Box::pin(delivery.retry(retry)),
            started,
        )
        .await;
    }

    async fn release(&self, claimed: Option<bool>, key: &str, id_key: &str) {
        if let Some(has_key) = claimed {
            let key = claim_key(has_key, key, id_key);
            if let Err(error) = self.store.release(&self.scope.queue, key).await {
                tracing::warn!(%error, "idempotency store did not release a claim; it lapses with its lease");
            }
        }
    }

    async fn complete(&self, claimed: Option<bool>, key: &str, id_key: &str) {
        if let Some(has_key) = claimed {
            let key = claim_key(has_key, key, id_key);
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
        meta: Option<&Metadata>,
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
        if let Err(error) = Box::pin(delivery.poison(failure)).await {
            self.settle_failed(meta, &error, started);
        }
    }

    /// Tells the observers, then settles the message with the broker.
    ///
    /// Callers box the rare settlements — retry, poison, requeue —: on a broker each is a
    /// publish, a large future, and the future of every message would carry its size.
    ///
    /// Observers hear first so that whoever waits for the queue to drain has seen every
    /// outcome by then; a failed settle follows as [`Outcome::SettleFailed`].
    async fn settle(
        &self,
        meta: Option<&Metadata>,
        outcome: Outcome<'_>,
        settle: impl Future<Output = Result<(), TransportError>>,
        started: Instant,
    ) {
        self.emit(meta, outcome, started);
        if let Err(error) = settle.await {
            self.settle_failed(meta, &error, started);
        }
    }

    fn settle_failed(&self, meta: Option<&Metadata>, error: &TransportError, started: Instant) {
        tracing::error!(%error, "could not settle message; the broker will redeliver it");
        let error = error.to_string();
        self.emit(meta, Outcome::SettleFailed { error: &error }, started);
    }

    fn emit(&self, meta: Option<&Metadata>, outcome: Outcome<'_>, started: Instant) {
        let elapsed = started.elapsed();
        self.metrics.record(&outcome, elapsed);
        if self.observers.is_empty() {
            return;
        }
        let observation = Observation {
            service: &self.scope.service,
            queue: &self.scope.queue,
            meta,
            outcome,
            elapsed,
        };
        for observer in self.observers.iter() {
            observer.observe(&observation);
        }
    }
}

/// The idempotency key: the event's business `key` when it has one, else the message id.
fn claim_key<'k>(has_key: bool, key: &'k str, id_key: &'k str) -> &'k str {
    if has_key { key } else { id_key }
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
