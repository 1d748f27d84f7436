//! The `opentelemetry` feature: exported spans of a three-hop flow form one trace, each hop a
//! child of the span that published its message.
//!
//! It needs the feature (`required-features` in `Cargo.toml`), which `cargo test --workspace`
//! turns on. The subscriber is process-wide, so this file holds the only test that installs
//! one.

mod common;

use std::sync::{Arc, Mutex};

use choreo::envelope::headers;
use choreo::testing::TestHarness;
use choreo::trace::TraceContext;
use choreo::{Context, Event, HandlerError, PublishOptions, Service, State, handler};
use common::{OrderPlaced, PaymentCaptured, order};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "shipping.order-shipped", version = 1)]
struct OrderShipped {
    order_id: u64,
}

/// What `Context::trace()` said in the shipping handler, per order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(u64, TraceContext)>>>);

#[handler(name = "charge", emits(PaymentCaptured))]
async fn charge(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.publish(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

#[handler(name = "ship", emits(OrderShipped))]
async fn ship(
    captured: PaymentCaptured,
    ctx: Context,
    State(seen): State<Seen>,
) -> Result<(), HandlerError> {
    seen.0
        .lock()
        .expect("seen")
        .push((captured.order_id, ctx.trace()));
    ctx.publish(&OrderShipped {
        order_id: captured.order_id,
    })?;
    Ok(())
}

#[handler(name = "notify")]
async fn notify(shipped: OrderShipped) {
    let _ = shipped;
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The one span named `name` of the flow `correlation_id` (and of `handler`, for handle spans).
fn span<'a>(
    spans: &'a [SpanData],
    name: &str,
    correlation_id: &str,
    handler: Option<&str>,
) -> &'a SpanData {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| {
            s.name == name
                && attribute(s, "correlation_id").as_deref() == Some(correlation_id)
                && handler.is_none_or(|h| attribute(s, "handler").as_deref() == Some(h))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {handler:?} of {correlation_id}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_is_one_exported_trace_with_each_hop_a_child_of_its_publisher() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("choreo-tests")));
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber in this test binary");

    let seen = Seen::default();
    let mut h = TestHarness::new();
    h.start(Service::new("billing").handler(charge))
        .await
        .unwrap();
    h.start(Service::new("shipping").handler(ship).state(seen.clone()))
        .await
        .unwrap();
    h.start(Service::new("mailer").handler(notify))
        .await
        .unwrap();

    // Order 1 continues a caller's trace handed over in its headers, with a `tracestate`.
    let caller = TraceContext::root();
    let continued = h
        .publish_with(
            &order(1),
            PublishOptions::default()
                .header(headers::TRACEPARENT, caller.to_string())
                .header(headers::TRACESTATE, "vendor=abc"),
        )
        .await
        .unwrap();
    // Order 2 is published inside a span of the application's.
    let checkout = tracing::info_span!("checkout");
    let within = h
        .publish(&order(2))
        .instrument(checkout.clone())
        .await
        .unwrap();
    drop(checkout);
    h.settle().await.unwrap();
    let messages = h.published_messages();
    // Shutting down ends every handle span, so each is exported.
    h.shutdown().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    for (flow, root_parent) in [(continued, Some(caller)), (within, None::<TraceContext>)] {
        let id = flow.to_string();
        let publish = span(&spans, "choreo.publish", &id, None);
        let charged = span(&spans, "choreo.handle", &id, Some("billing.charge"));
        let shipped = span(&spans, "choreo.handle", &id, Some("shipping.ship"));
        let notified = span(&spans, "choreo.handle", &id, Some("mailer.notify"));

        // Where the flow starts: the caller's remote span, or the application's span.
        let trace_id = publish.span_context.trace_id();
        match root_parent {
            Some(caller) => {
                assert_eq!(trace_id, TraceId::from(caller.trace_id));
                assert_eq!(publish.parent_span_id, SpanId::from(caller.span_id));
                assert!(publish.parent_span_is_remote);
            }
            None => {
                let checkout = spans
                    .iter()
                    .find(|s| s.name == "checkout")
                    .expect("the application's span");
                assert_eq!(trace_id, checkout.span_context.trace_id());
                assert_eq!(publish.parent_span_id, checkout.span_context.span_id());
            }
        }

        // One trace, each hop's parent the span that published its message.
        for (child, parent) in [(charged, publish), (shipped, charged), (notified, shipped)] {
            assert_eq!(child.span_context.trace_id(), trace_id, "{}", child.name);
            assert_eq!(
                child.parent_span_id,
                parent.span_context.span_id(),
                "{:?} is a child of {:?}",
                attribute(child, "handler"),
                attribute(parent, "handler")
            );
            assert!(child.parent_span_is_remote, "it came in a message");
        }

        // The messages carry the spans that published them; `tracestate` travels along.
        for (event, publisher) in [
            (OrderPlaced::NAME, publish),
            (PaymentCaptured::NAME, charged),
            (OrderShipped::NAME, shipped),
        ] {
            let message = messages
                .iter()
                .find(|m| m.meta.name == event && m.meta.correlation_id == flow)
                .expect("published");
            let carried = message.meta.trace.expect("traceparent");
            assert_eq!(TraceId::from(carried.trace_id), trace_id);
            assert_eq!(
                SpanId::from(carried.span_id),
                publisher.span_context.span_id()
            );
            let state = message.meta.headers.get(headers::TRACESTATE);
            if root_parent.is_some() {
                assert_eq!(state, Some("vendor=abc"), "{event}");
            } else {
                assert_eq!(state, None, "{event}");
            }
        }

        // A handler's `Context::trace()` is its handle span.
        let order_id = if root_parent.is_some() { 1 } else { 2 };
        let in_handler = seen
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(o, _)| *o == order_id)
            .map(|(_, trace)| *trace)
            .expect("the shipping handler ran");
        assert_eq!(TraceId::from(in_handler.trace_id), trace_id);
        assert_eq!(
            SpanId::from(in_handler.span_id),
            shipped.span_context.span_id()
        );
    }
}
