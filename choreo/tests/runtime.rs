//! Behaviour of services on the in-memory transport: retries, poison, idempotency, follow-up
//! events, panics, timeouts, start-up checks and shutdown.

mod common;

use std::time::Duration;

use choreo::envelope::headers;
use choreo::testing::{RecordedOutcome, TestHarness};
use choreo::{
    Context, Error, FailureKind, HandlerError, Message, PublishError, PublishOptions, RetryPolicy,
    Service, State, handler,
};
use common::{Calls, Counter, InvoiceSent, OrderPlaced, PaymentCaptured, order};

const QUEUE: &str = "billing.charge";

fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .immediate(2)
        .pause(Duration::from_millis(1))
}

/// Fails the first `fail_first` runs for each order, transiently; then captures payment.
#[handler(name = "charge", emits(PaymentCaptured))]
async fn flaky_charge(
    order: OrderPlaced,
    ctx: Context,
    State(calls): State<Calls>,
    State(fail_first): State<u32>,
) -> Result<(), HandlerError> {
    let call = calls.hit(order.order_id);
    if call <= fail_first {
        return Err(HandlerError::msg(format!(
            "gateway unavailable (call {call})"
        )));
    }
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

/// A harness running `billing` with `handler`, a [`Calls`] record as its state and fast
/// retries.
async fn billing_with(handler: impl choreo::Handler) -> (TestHarness, Calls) {
    let mut h = TestHarness::new();
    let calls = Calls::default();
    h.start(
        Service::new("billing")
            .handler(handler)
            .state(calls.clone())
            .retry_policy(fast_retries()),
    )
    .await
    .unwrap();
    (h, calls)
}

fn billing(fail_first: u32) -> (Service, Calls) {
    let calls = Calls::default();
    let service = Service::new("billing")
        .handler(flaky_charge)
        .state(calls.clone())
        .state(fail_first)
        .retry_policy(fast_retries());
    (service, calls)
}

#[tokio::test]
async fn transient_failure_is_retried_then_handled() {
    let mut h = TestHarness::new();
    let (service, calls) = billing(2);
    h.start(service).await.unwrap();

    h.publish(&order(1)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(calls.of(1), 3, "two failed runs and one success");
    assert_eq!(h.handled(QUEUE), 1);
    assert_eq!(h.retries(QUEUE), 2);
    assert!(h.poisoned(QUEUE).is_empty());
    assert_eq!(
        h.published::<PaymentCaptured>(),
        [PaymentCaptured { order_id: 1 }]
    );
    let stats = h.stats(QUEUE).unwrap();
    assert_eq!((stats.acked, stats.outstanding), (1, 0));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn delayed_tiers_run_on_the_clock_with_attempt_headers() {
    let mut h = TestHarness::new();
    // Three runs per delivery fail; the first delayed retry then succeeds.
    let (service, calls) = billing(3);
    h.start(service).await.unwrap();

    h.publish(&order(7)).await.unwrap();
    h.drain().await.unwrap();
    assert_eq!(calls.of(7), 3);
    let stats = h.stats(QUEUE).unwrap();
    assert_eq!((stats.retrying, stats.acked), (1, 0));
    assert_eq!(
        h.transport().next_retry_in(),
        Some(Duration::from_secs(1)),
        "first tier is 1 s"
    );

    h.advance(Duration::from_millis(999));
    h.drain().await.unwrap();
    assert_eq!(calls.of(7), 3, "not due before its delay");

    h.advance(Duration::from_millis(1));
    h.settle().await.unwrap();
    assert_eq!(calls.of(7), 4);
    assert_eq!(h.handled(QUEUE), 1);
    let tiers: Vec<_> = h
        .records()
        .into_iter()
        .filter_map(|r| match r.outcome {
            RecordedOutcome::Retrying { attempt, tier, .. } => Some((attempt, tier)),
            _ => None,
        })
        .collect();
    assert_eq!(tiers, [(1, None), (2, None), (3, Some(0))]);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_delayed_retry_does_not_delay_other_messages() {
    let mut h = TestHarness::new();
    let (service, calls) = billing(3);
    h.start(service).await.unwrap();

    h.publish(&order(1)).await.unwrap();
    h.drain().await.unwrap();
    assert_eq!(h.stats(QUEUE).unwrap().retrying, 1);

    // Order 2 fails three times too, but order 1's wait must not hold it up: both run
    // their first delivery with order 1 still parked in its tier.
    for id in 2..=5 {
        h.publish(&order(id)).await.unwrap();
    }
    h.drain().await.unwrap();
    for id in 2..=5 {
        assert_eq!(calls.of(id), 3, "order {id} ran while order 1 waited");
    }
    assert_eq!(calls.of(1), 3, "order 1 is still waiting");
    assert_eq!(h.stats(QUEUE).unwrap().retrying, 5);

    h.settle().await.unwrap();
    assert_eq!(h.handled(QUEUE), 5);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn exhausted_retries_poison_with_failure_metadata() {
    let mut h = TestHarness::new();
    let (service, calls) = billing(u32::MAX);
    h.start(service).await.unwrap();

    let id = h.publish(&order(9)).await.unwrap();
    h.settle().await.unwrap();

    let max = fast_retries().max_attempts();
    assert_eq!(max, 12);
    assert_eq!(calls.of(9), max);
    assert_eq!(h.handled(QUEUE), 0);
    let poisoned = h.poisoned(QUEUE);
    assert_eq!(poisoned.len(), 1);
    let p = &poisoned[0];
    assert_eq!(p.message.meta.id, id);
    assert_eq!(p.failure.kind, FailureKind::RetriesExhausted);
    assert_eq!(p.failure.attempts, max);
    assert_eq!(p.failure.handler, QUEUE);
    assert_eq!(p.failure.exchange, "orders");
    assert_eq!(p.failure.routing_key, "orders.order-placed.v1");
    assert!(p.failure.message.contains("gateway unavailable (call 12)"));
    assert!(p.failure.first_failed_at <= p.failure.last_failed_at);
    assert_eq!(
        p.message.body,
        serde_json::to_vec(&order(9)).unwrap(),
        "body kept byte for byte"
    );
    let headers: Vec<&str> = p.failure_headers().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        headers,
        [
            headers::failure::HANDLER,
            headers::failure::KIND,
            headers::failure::MESSAGE,
            headers::failure::ATTEMPTS,
            headers::failure::FIRST_AT,
            headers::failure::LAST_AT,
            headers::failure::EXCHANGE,
            headers::failure::ROUTING_KEY,
        ]
    );
    let stats = h.stats(QUEUE).unwrap();
    assert_eq!((stats.outstanding, stats.poisoned, stats.acked), (0, 1, 0));
    h.shutdown().await.unwrap();
}

#[handler(name = "charge")]
async fn reject_large(order: OrderPlaced, State(calls): State<Calls>) -> Result<(), HandlerError> {
    calls.hit(order.order_id);
    if order.total_cents > 100_000 {
        return Err(HandlerError::permanent_msg("amount over the card limit"));
    }
    Ok(())
}

#[tokio::test]
async fn permanent_error_poisons_at_once() {
    let (h, calls) = billing_with(reject_large).await;

    h.publish(&OrderPlaced {
        order_id: 3,
        total_cents: 1_000_000,
    })
    .await
    .unwrap();
    h.publish(&order(4)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(calls.of(3), 1, "no retries for a permanent error");
    assert_eq!(h.handled(QUEUE), 1);
    let poisoned = h.poisoned(QUEUE);
    assert_eq!(poisoned.len(), 1);
    assert_eq!(poisoned[0].failure.kind, FailureKind::Permanent);
    assert_eq!(poisoned[0].failure.attempts, 1);
    assert_eq!(poisoned[0].failure.message, "amount over the card limit");
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn duplicates_are_handled_once() {
    let (h, calls) = billing_with(reject_large).await;

    // The same message delivered twice, and a new message with the same business key.
    let id = h.publish(&order(5)).await.unwrap();
    h.publish_with(&order(5), PublishOptions::default().message_id(id))
        .await
        .unwrap();
    h.publish(&order(5)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(calls.of(5), 1);
    assert_eq!(h.handled(QUEUE), 1);
    assert_eq!(h.duplicates(QUEUE), 2);
    assert_eq!(h.stats(QUEUE).unwrap().acked, 3);
    h.shutdown().await.unwrap();
}

#[handler(name = "invoice")]
async fn invoice(sent: InvoiceSent, State(calls): State<Calls>) -> Result<(), HandlerError> {
    calls.hit(sent.order_id);
    Ok(())
}

#[tokio::test]
async fn without_a_business_key_the_message_id_deduplicates() {
    let (h, calls) = billing_with(invoice).await;

    let sent = InvoiceSent { order_id: 1 };
    let id = h.publish(&sent).await.unwrap();
    h.publish_with(&sent, PublishOptions::default().message_id(id))
        .await
        .unwrap();
    h.publish(&sent).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(calls.of(1), 2, "two distinct messages, one redelivery");
    assert_eq!(h.duplicates("billing.invoice"), 1);
    h.shutdown().await.unwrap();
}

#[handler(name = "charge")]
async fn panics_first(order: OrderPlaced, State(calls): State<Calls>) -> Result<(), HandlerError> {
    if calls.hit(order.order_id) == 1 && order.order_id == 1 {
        panic!("card reader exploded");
    }
    Ok(())
}

#[tokio::test]
async fn a_panicking_handler_is_retried_and_the_service_keeps_running() {
    let (h, calls) = billing_with(panics_first).await;

    h.publish(&order(1)).await.unwrap();
    h.publish(&order(2)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(calls.of(1), 2);
    assert_eq!(calls.of(2), 1);
    assert_eq!(h.handled(QUEUE), 2);
    let errors: Vec<String> = h
        .records()
        .into_iter()
        .filter_map(|r| match r.outcome {
            RecordedOutcome::Retrying { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(errors, ["handler panicked: card reader exploded"]);

    // Still consuming after the panic.
    h.publish(&order(3)).await.unwrap();
    h.settle().await.unwrap();
    assert_eq!(h.handled(QUEUE), 3);
    h.shutdown().await.unwrap();
}

#[handler(name = "charge", timeout = "50ms")]
async fn slow_first(order: OrderPlaced, State(calls): State<Calls>) -> Result<(), HandlerError> {
    if calls.hit(order.order_id) == 1 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_handler_past_its_timeout_fails_transiently() {
    let (h, calls) = billing_with(slow_first).await;

    h.publish(&order(1)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(calls.of(1), 2);
    assert_eq!(h.handled(QUEUE), 1);
    let retried = h
        .records()
        .into_iter()
        .find_map(|r| match r.outcome {
            RecordedOutcome::Retrying { error, .. } => Some(error),
            _ => None,
        })
        .unwrap();
    assert_eq!(retried, "handler timed out after 50ms");
    h.shutdown().await.unwrap();
}

#[handler(name = "charge", emits(PaymentCaptured, InvoiceSent))]
async fn capture_and_invoice(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    ctx.publish(&InvoiceSent {
        order_id: order.order_id,
    })?;
    Ok(())
}

#[handler(name = "notify")]
async fn notify(captured: PaymentCaptured, ctx: Context, State(seen): State<Calls>) {
    assert_eq!(ctx.handler(), "notify");
    seen.hit(captured.order_id);
}

#[tokio::test]
async fn follow_up_events_carry_correlation_and_causation() {
    let mut h = TestHarness::new();
    let seen = Calls::default();
    h.start(Service::new("billing").handler(capture_and_invoice))
        .await
        .unwrap();
    h.start(Service::new("mailer").handler(notify).state(seen.clone()))
        .await
        .unwrap();

    let correlation = choreo::envelope::new_id();
    let id = h
        .publish_with(
            &order(11),
            PublishOptions::default().correlation_id(correlation).trace(
                choreo::trace::TraceContext::parse(
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    h.settle().await.unwrap();

    assert_eq!(seen.of(11), 1);
    let published = h.published_messages();
    assert_eq!(published.len(), 3);
    let incoming = &published[0];
    assert_eq!(incoming.meta.id, id);
    assert_eq!(
        incoming.meta.trace.unwrap().trace_id,
        0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
        "the caller's trace"
    );
    for follow_up in &published[1..] {
        assert_eq!(follow_up.meta.correlation_id, correlation);
        assert_eq!(follow_up.meta.causation_id, Some(id));
        assert_eq!(&*follow_up.meta.source, "billing");
        assert_eq!(follow_up.meta.id.get_version_num(), 7);
        let trace = |m: &Message| m.meta.trace.unwrap();
        assert_eq!(
            trace(follow_up).trace_id,
            trace(incoming).trace_id,
            "one trace"
        );
        assert_ne!(trace(follow_up).span_id, trace(incoming).span_id);
    }
    assert_eq!(published[1].meta.name, "billing.payment-captured");
    assert_eq!(published[1].meta.key.as_deref(), Some("11"));
    assert_eq!(published[2].meta.name, "billing.invoice-sent");
    assert_eq!(published[2].meta.key, None);
    assert_ne!(published[1].meta.id, published[2].meta.id);

    let handled = h
        .records()
        .into_iter()
        .find(|r| r.queue == "billing.charge")
        .unwrap();
    assert_eq!(
        handled.outcome,
        RecordedOutcome::Handled {
            published: vec![published[1].meta.id, published[2].meta.id]
        }
    );
    h.shutdown().await.unwrap();
}

#[handler(name = "charge", emits(PaymentCaptured))]
async fn emits_undeclared(
    order: OrderPlaced,
    ctx: Context,
    State(errors): State<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
) -> Result<(), HandlerError> {
    // The handler swallows the error; the runtime still refuses the run.
    if let Err(error) = ctx.publish(&InvoiceSent {
        order_id: order.order_id,
    }) {
        assert!(matches!(error, PublishError::Undeclared { .. }));
        errors.lock().unwrap().push(error.to_string());
    }
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

#[tokio::test]
async fn publishing_an_undeclared_event_is_rejected() {
    let mut h = TestHarness::new();
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    h.start(
        Service::new("billing")
            .handler(emits_undeclared)
            .state(errors.clone()),
    )
    .await
    .unwrap();

    h.publish(&order(1)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(
        errors.lock().unwrap().as_slice(),
        [
            "handler `billing.charge` does not declare `billing.invoice-sent v1` in `emits(...)`; declared: `billing.payment-captured v1`"
        ]
    );
    assert!(h.published::<InvoiceSent>().is_empty());
    assert!(
        h.published::<PaymentCaptured>().is_empty(),
        "a refused run publishes nothing"
    );
    let poisoned = h.poisoned(QUEUE);
    assert_eq!(poisoned.len(), 1);
    assert_eq!(poisoned[0].failure.kind, FailureKind::Permanent);
    assert!(poisoned[0].failure.message.contains("does not declare"));
    h.shutdown().await.unwrap();
}

#[handler(name = "charge", emits(PaymentCaptured))]
async fn propagates_undeclared(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&InvoiceSent {
        order_id: order.order_id,
    })?;
    Ok(())
}

#[tokio::test]
async fn an_undeclared_emit_returned_with_question_mark_is_not_retried() {
    let mut h = TestHarness::new();
    h.start(
        Service::new("billing")
            .handler(propagates_undeclared)
            .retry_policy(fast_retries()),
    )
    .await
    .unwrap();

    h.publish(&order(1)).await.unwrap();
    h.settle().await.unwrap();

    assert_eq!(h.retries(QUEUE), 0, "a bug is not retried");
    let poisoned = h.poisoned(QUEUE);
    assert_eq!(poisoned.len(), 1);
    assert_eq!(poisoned[0].failure.kind, FailureKind::Permanent);
    assert_eq!(poisoned[0].failure.attempts, 1);
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_bodies_unknown_versions_and_oversized_messages_are_poisoned_without_retries() {
    let mut h = TestHarness::new();
    let calls = Calls::default();
    h.start(
        Service::new("billing")
            .handler(reject_large)
            .state(calls.clone())
            .retry_policy(fast_retries())
            .max_body_size(256),
    )
    .await
    .unwrap();

    let good = Message::encode(&order(1), "test".into()).unwrap();
    let mut not_json = good.clone();
    not_json.meta.id = choreo::envelope::new_id();
    not_json.body = bytes::Bytes::from_static(b"{not json");
    let mut wrong_shape = good.clone();
    wrong_shape.meta.id = choreo::envelope::new_id();
    wrong_shape.body = bytes::Bytes::from_static(br#"{"order_id":"seven"}"#);
    let mut v9 = good.clone();
    v9.meta.id = choreo::envelope::new_id();
    v9.meta.version = 9;
    let mut other_event = good.clone();
    other_event.meta.id = choreo::envelope::new_id();
    other_event.meta.name = "orders.order-cancelled".into();
    let mut large = good.clone();
    large.meta.id = choreo::envelope::new_id();
    large.body = serde_json::to_vec(&serde_json::json!({
        "order_id": 2, "total_cents": 1, "note": "x".repeat(300)
    }))
    .unwrap()
    .into();

    let transport = h.transport().clone();
    for message in [not_json, wrong_shape, v9, other_event, large, good.clone()] {
        transport.inject(QUEUE, message).unwrap();
    }
    h.settle().await.unwrap();

    assert_eq!(calls.total(), 1, "only the good message ran the handler");
    assert_eq!(h.handled(QUEUE), 1);
    let kinds: Vec<(FailureKind, u32)> = h
        .poisoned(QUEUE)
        .iter()
        .map(|p| (p.failure.kind, p.failure.attempts))
        .collect();
    assert_eq!(
        kinds,
        [
            (FailureKind::Decode, 0),
            (FailureKind::Decode, 0),
            (FailureKind::UnknownVersion, 0),
            (FailureKind::UnknownVersion, 0),
            (FailureKind::TooLarge, 0),
        ]
    );
    assert_eq!(h.retries(QUEUE), 0);
    let stats = h.stats(QUEUE).unwrap();
    assert_eq!((stats.outstanding, stats.poisoned, stats.acked), (0, 5, 1));
    h.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_poisoned_message_can_be_replayed_once_fixed() {
    let mut h = TestHarness::new();
    let (service, calls) = billing(12);
    h.start(service).await.unwrap();

    h.publish(&order(1)).await.unwrap();
    h.settle().await.unwrap();
    assert_eq!(h.poisoned(QUEUE).len(), 1);

    // The gateway recovers: the 13th call succeeds.
    assert_eq!(h.transport().replay_poisoned(QUEUE).unwrap(), 1);
    h.settle().await.unwrap();
    assert_eq!(calls.of(1), 13);
    assert_eq!(h.handled(QUEUE), 1);
    assert!(h.poisoned(QUEUE).is_empty());
    h.shutdown().await.unwrap();
}

#[handler(name = "charge", concurrency = 1)]
async fn slow(order: OrderPlaced, State(counter): State<Counter>) {
    let _ = order;
    tokio::time::sleep(Duration::from_millis(200)).await;
    counter.incr();
}

/// Polls until `n` messages of the queue are in flight.
async fn wait_until_in_flight(transport: &choreo::MemoryTransport, n: usize) {
    for _ in 0..5000 {
        if transport.stats(QUEUE).unwrap().in_flight == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never {n} in flight");
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_handlers() {
    let transport = choreo::MemoryTransport::new();
    let counter = Counter::default();
    let running = Service::new("billing")
        .handler(slow)
        .state(counter.clone())
        .start(&transport)
        .await
        .unwrap();
    let publisher = choreo::Publisher::new(transport.clone(), "test");
    publisher.publish(&order(1)).await.unwrap();
    publisher.publish(&order(2)).await.unwrap();

    // Let the first message start, then stop: it finishes, the second stays queued.
    wait_until_in_flight(&transport, 1).await;
    running.shutdown().await.unwrap();

    assert_eq!(counter.get(), 1);
    let stats = transport.stats(QUEUE).unwrap();
    assert_eq!((stats.acked, stats.ready, stats.in_flight), (1, 1, 0));
}

#[tokio::test]
async fn shutdown_returns_messages_still_running_after_the_grace_period() {
    let transport = choreo::MemoryTransport::new();
    let counter = Counter::default();
    let running = Service::new("billing")
        .handler(slow)
        .state(counter.clone())
        .shutdown_grace(Duration::from_millis(20))
        .start(&transport)
        .await
        .unwrap();
    choreo::Publisher::new(transport.clone(), "test")
        .publish(&order(1))
        .await
        .unwrap();
    wait_until_in_flight(&transport, 1).await;
    running.shutdown().await.unwrap();

    assert_eq!(counter.get(), 0, "the handler was stopped");
    let stats = transport.stats(QUEUE).unwrap();
    assert_eq!(
        (stats.acked, stats.ready, stats.in_flight, stats.outstanding),
        (0, 1, 0, 1),
        "returned, not lost"
    );
}

/// Starts `handler` of concurrency `concurrency`, publishes five orders, and checks that
/// exactly `concurrency` of them run while the rest wait.
async fn five_orders_at_concurrency(
    handler: impl choreo::Handler,
    concurrency: usize,
) -> (choreo::MemoryTransport, Counter, choreo::RunningService) {
    let transport = choreo::MemoryTransport::new();
    let counter = Counter::default();
    let running = Service::new("billing")
        .handler(handler)
        .state(counter.clone())
        .start(&transport)
        .await
        .unwrap();
    let publisher = choreo::Publisher::new(transport.clone(), "test");
    for id in 0..5 {
        publisher.publish(&order(id)).await.unwrap();
    }
    wait_until_in_flight(&transport, concurrency).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = transport.stats(QUEUE).unwrap();
    assert_eq!(
        (stats.in_flight, stats.ready),
        (concurrency, 5 - concurrency),
        "concurrency = {concurrency}"
    );
    (transport, counter, running)
}

#[tokio::test]
async fn concurrency_bounds_in_flight_messages() {
    let (_, _, running) = five_orders_at_concurrency(slow, 1).await;
    running.shutdown().await.unwrap();
}

#[handler(name = "charge", concurrency = 3)]
async fn slow_three_at_once(order: OrderPlaced, State(counter): State<Counter>) {
    let _ = order;
    tokio::time::sleep(Duration::from_millis(200)).await;
    counter.incr();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_takes_its_own_deliveries_and_shutdown_keeps_the_rest() {
    let (transport, counter, running) = five_orders_at_concurrency(slow_three_at_once, 3).await;

    // The three running finish; the two waiting stay queued for the next instance.
    running.shutdown().await.unwrap();
    assert_eq!(counter.get(), 3);
    let stats = transport.stats(QUEUE).unwrap();
    assert_eq!(
        (stats.acked, stats.ready, stats.in_flight, stats.outstanding),
        (3, 2, 0, 2)
    );
}

#[tokio::test]
async fn start_up_rejects_invalid_services_naming_the_setting() {
    let transport = choreo::MemoryTransport::new();
    let start = |service: Service| {
        let transport = transport.clone();
        async move { service.start(&transport).await.map(drop).unwrap_err() }
    };

    let error = start(Service::new("Billing").handler(invoice)).await;
    assert!(matches!(error, Error::Config { ref setting, .. } if setting == "service name"));

    let error = start(
        Service::new("billing")
            .handler(invoice)
            .state(Calls::default())
            .concurrency(0),
    )
    .await;
    assert_eq!(
        error.to_string(),
        "invalid configuration: service: concurrency: 0 is out of range; allowed: 1 to 65535"
    );

    let error = start(Service::new("billing").handler(invoice)).await;
    assert!(matches!(error, Error::Startup { .. }));
    assert!(
        error
            .to_string()
            .contains("handler `invoice` takes `State<runtime::common::Calls>`"),
        "{error}"
    );

    let error = start(
        Service::new("billing")
            .handler(invoice)
            .handler(invoice)
            .state(Calls::default()),
    )
    .await;
    assert!(
        error
            .to_string()
            .contains("two handlers are named `invoice`")
    );

    let error = start(
        Service::new("billing")
            .handler(invoice)
            .state(Calls::default())
            .retry_policy(RetryPolicy::default().delays([Duration::ZERO])),
    )
    .await;
    assert!(error.to_string().contains("retry policy"), "{error}");

    assert!(transport.queues().is_empty(), "nothing declared on failure");
}

#[tokio::test]
async fn unroutable_publishes_are_errors_by_default() {
    let transport = choreo::MemoryTransport::new();
    let publisher = choreo::Publisher::new(transport, "test");
    let error = publisher.publish(&order(1)).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "publish not confirmed: unroutable: no queue is bound to `orders.order-placed.v1` on exchange `orders`"
    );
}

#[tokio::test]
async fn the_topology_follows_the_design() {
    let service = Service::new("billing")
        .handler(capture_and_invoice)
        .retry_policy(RetryPolicy::default());
    let topology = service.topology().unwrap();
    assert_eq!(topology.exchanges, ["billing", "orders"]);
    let queue = &topology.queues[0];
    assert_eq!(queue.name, "billing.charge");
    assert_eq!(queue.poison_queue(), "billing.charge.poison");
    assert_eq!(
        queue
            .retry_tiers
            .iter()
            .map(|d| queue.retry_queue(*d))
            .collect::<Vec<_>>(),
        [
            "billing.charge.retry.1s",
            "billing.charge.retry.10s",
            "billing.charge.retry.1m"
        ]
    );
    assert_eq!(queue.bindings[0].exchange, "orders");
    assert_eq!(queue.bindings[0].routing_key, "orders.order-placed.v1");
}
