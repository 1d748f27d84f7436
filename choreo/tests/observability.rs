//! Metrics, trace context and health on the in-memory transport.
//!
//! The metrics recorder is process-wide, so this file holds the only test that installs one.

mod common;

use std::time::Duration;

use choreo::envelope::headers;
use choreo::testing::{RecordedOutcome, TestHarness};
use choreo::trace::TraceContext;
use choreo::{Context, Event, HandlerError, PublishOptions, RetryPolicy, Service, State, handler};
use common::{Calls, OrderPlaced, PaymentCaptured, order};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "shipping.order-shipped", version = 1)]
struct OrderShipped {
    order_id: u64,
}

/// Order 1 fails once, order 2 always fails permanently, the rest succeed.
#[handler(name = "charge", emits(PaymentCaptured))]
async fn charge(
    order: OrderPlaced,
    ctx: Context,
    State(calls): State<Calls>,
) -> Result<(), HandlerError> {
    let call = calls.hit(order.order_id);
    match order.order_id {
        1 if call == 1 => Err(HandlerError::msg("flaky")),
        2 => Err(HandlerError::permanent_msg("never")),
        _ => {
            ctx.publish(&PaymentCaptured {
                order_id: order.order_id,
            })?;
            Ok(())
        }
    }
}

#[handler(name = "ship", emits(OrderShipped))]
async fn ship(captured: PaymentCaptured, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&OrderShipped {
        order_id: captured.order_id,
    })?;
    Ok(())
}

#[handler(name = "notify")]
async fn notify(shipped: OrderShipped) {
    let _ = shipped;
}

/// A counter's name, labels and value.
type CounterValue = (String, Vec<(String, String)>, u64);

fn counter(snapshot: &[CounterValue], name: &str, labels: &[(&str, &str)]) -> u64 {
    snapshot
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_traces_and_health() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let mut h = TestHarness::new();
    let calls = Calls::default();
    h.start(
        Service::new("billing")
            .handler(charge)
            .state(calls.clone())
            .retry_policy(
                RetryPolicy::default()
                    .immediate(1)
                    .pause(Duration::from_millis(1)),
            ),
    )
    .await
    .unwrap();
    h.start(Service::new("shipping").handler(ship))
        .await
        .unwrap();
    h.start(Service::new("mailer").handler(notify))
        .await
        .unwrap();

    let caller = TraceContext::root();
    let mut ids = Vec::new();
    for id in 0..5 {
        let options = if id == 0 {
            PublishOptions::default().header(headers::TRACEPARENT, caller.to_string())
        } else {
            PublishOptions::default()
        };
        ids.push(h.publish_with(&order(id), options).await.unwrap());
    }
    // A redelivery of order 3.
    h.publish_with(&order(3), PublishOptions::default().message_id(ids[3]))
        .await
        .unwrap();
    h.settle().await.unwrap();

    // Metrics match what the harness saw.
    let snapshot: Vec<CounterValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(v) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect(),
                v,
            )),
            _ => None,
        })
        .collect();
    let billing = [("service", "billing"), ("handler", "charge")];
    assert_eq!(
        counter(&snapshot, choreo::metrics::HANDLED, &billing),
        h.handled("billing.charge") as u64
    );
    assert_eq!(counter(&snapshot, choreo::metrics::HANDLED, &billing), 4);
    assert_eq!(
        counter(&snapshot, choreo::metrics::RETRIED, &billing),
        h.retries("billing.charge") as u64
    );
    assert_eq!(
        counter(
            &snapshot,
            choreo::metrics::RETRIED,
            &[("handler", "charge"), ("delay", "immediate")]
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            choreo::metrics::POISONED,
            &[("handler", "charge"), ("kind", "permanent")]
        ),
        1
    );
    assert_eq!(counter(&snapshot, choreo::metrics::DUPLICATES, &billing), 1);
    assert_eq!(
        counter(
            &snapshot,
            choreo::metrics::HANDLED,
            &[("service", "shipping")]
        ),
        4
    );
    assert_eq!(
        counter(
            &snapshot,
            choreo::metrics::HANDLED,
            &[("service", "mailer")]
        ),
        4
    );
    let histograms = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == choreo::metrics::HANDLE_SECONDS)
        .count();
    assert_eq!(histograms, 3, "one handling-time series per handler");

    // One trace per flow across three hops, continuing the caller's trace.
    let published = h.published_messages();
    let trace_of = |m: &choreo::Message| m.meta.trace.expect("every message carries a traceparent");
    let flow_of_order_0: Vec<_> = published
        .iter()
        .filter(|m| m.meta.correlation_id == ids[0])
        .collect();
    assert_eq!(flow_of_order_0.len(), 3, "order, captured, shipped");
    for message in &flow_of_order_0 {
        assert_eq!(trace_of(message).trace_id, caller.trace_id);
    }
    let spans: std::collections::HashSet<u64> = flow_of_order_0
        .iter()
        .map(|m| trace_of(m).span_id)
        .collect();
    assert_eq!(spans.len(), 3, "each hop publishes from a span of its own");
    assert!(!spans.contains(&caller.span_id));
    let other_flow = trace_of(published.iter().find(|m| m.meta.id == ids[1]).unwrap());
    assert_ne!(
        other_flow.trace_id, caller.trace_id,
        "a new flow starts a new trace"
    );
    assert!(
        h.records()
            .iter()
            .any(|r| matches!(r.outcome, RecordedOutcome::Duplicate))
    );
    h.shutdown().await.unwrap();

    // Health of a running service.
    let transport = choreo::MemoryTransport::new();
    let running = Service::new("mailer")
        .handler(notify)
        .start(&transport)
        .await
        .unwrap();
    let health = running.health();
    assert!(health.live && health.ready && health.connected);
    assert_eq!(
        (health.consumers_running, health.consumers_expected),
        (1, 1)
    );
    running.shutdown().await.unwrap();
}
