//! The orders example end to end: every scenario of its choreography on the test harness,
//! and the demo on a real clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use choreo::envelope::headers::failure;
use choreo::testing::{RecordedOutcome, TestHarness};
use choreo::{
    FailureKind, MemoryTransport, Message, PublishOptions, Publisher, Transport, Unroutable,
};
use example_orders::demo::{self, Summary};
use example_orders::events::{
    OrderCancelled, OrderCompleted, OrderLine, OrderPlaced, PaymentCaptured, PaymentRefunded,
};
use example_orders::orders::{OrderStatus, place_order};
use example_orders::timeline::{Counts, Timeline};
use example_orders::{Backends, services};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CAPTURE_PAYMENT: &str = "billing.capture-payment";
const HANDLER_QUEUES: [&str; 7] = [
    "billing.capture-payment",
    "billing.refund-payment",
    "inventory.reserve-stock",
    "orders.cancel-declined-order",
    "orders.cancel-refunded-order",
    "orders.complete-order",
    "shipping.ship-order",
];

/// A harness running the four services on `backends`.
async fn start(backends: &Backends) -> Result<TestHarness, choreo::Error> {
    let mut harness = TestHarness::new();
    for service in services(backends) {
        harness.start(service).await?;
    }
    Ok(harness)
}

/// Places `order` through the orders front door; returns its flow's id.
async fn place(
    harness: &TestHarness,
    backends: &Backends,
    order: &OrderPlaced,
) -> Result<Uuid, choreo::PublishError> {
    let storefront = Publisher::new(harness.transport().clone(), "orders");
    place_order(&storefront, &backends.orders, order).await
}

fn names(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.meta.name.as_ref()).collect()
}

/// How many messages each handler handled, for the handlers that handled any.
fn handled(harness: &TestHarness) -> HashMap<&'static str, usize> {
    HANDLER_QUEUES
        .into_iter()
        .map(|queue| (queue, harness.handled(queue)))
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// Every message belongs to the flow `flow_id`, which the first one started, and each later
/// one was published while handling the one before it.
fn assert_one_causal_chain(flow: &[Message], flow_id: Uuid) {
    assert_eq!(flow[0].meta.id, flow_id);
    assert_eq!(flow[0].meta.causation_id, None);
    for message in flow {
        assert_eq!(
            message.meta.correlation_id, flow_id,
            "{}",
            message.meta.name
        );
    }
    for pair in flow.windows(2) {
        assert_eq!(
            pair[1].meta.causation_id,
            Some(pair[0].meta.id),
            "{} was caused by {}",
            pair[1].meta.name,
            pair[0].meta.name
        );
    }
}

#[tokio::test]
async fn happy_path_ships_and_completes_the_order() -> TestResult {
    let backends = demo::backends();
    let harness = start(&backends).await?;

    let flow_id = place(&harness, &backends, &demo::happy_order()).await?;
    harness.settle().await?;

    let flow = harness.published_messages();
    assert_eq!(
        names(&flow),
        [
            "orders.order-placed",
            "billing.payment-captured",
            "inventory.stock-reserved",
            "shipping.order-shipped",
            "orders.order-completed",
        ]
    );
    assert_one_causal_chain(&flow, flow_id);
    assert_eq!(
        handled(&harness),
        HashMap::from([
            ("billing.capture-payment", 1),
            ("inventory.reserve-stock", 1),
            ("shipping.ship-order", 1),
            ("orders.complete-order", 1),
        ])
    );
    assert_eq!(
        harness.records().len(),
        4,
        "no retries, duplicates or poison"
    );

    assert_eq!(
        harness.published::<OrderCompleted>(),
        [OrderCompleted {
            order_id: "ord-1001".into(),
            tracking_number: "PKG-0001".into(),
        }]
    );
    assert_eq!(
        backends.orders.status("ord-1001"),
        Some(OrderStatus::Completed {
            tracking_number: "PKG-0001".into()
        })
    );
    assert_eq!(backends.gateway.funds("alice"), 20_000 - 6_100);
    assert_eq!(backends.warehouse.on_hand("kettle"), 9);
    assert_eq!(backends.warehouse.on_hand("mug"), 48);
    harness.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn declined_payment_cancels_the_order() -> TestResult {
    let backends = demo::backends();
    let harness = start(&backends).await?;

    let flow_id = place(&harness, &backends, &demo::declined_order()).await?;
    harness.settle().await?;

    let flow = harness.published_messages();
    assert_eq!(
        names(&flow),
        [
            "orders.order-placed",
            "billing.payment-declined",
            "orders.order-cancelled",
        ]
    );
    assert_one_causal_chain(&flow, flow_id);
    assert_eq!(
        handled(&harness),
        HashMap::from([
            ("billing.capture-payment", 1),
            ("orders.cancel-declined-order", 1),
        ])
    );
    assert_eq!(
        harness.published::<OrderCancelled>(),
        [OrderCancelled {
            order_id: "ord-1002".into(),
            reason: "payment declined: insufficient funds".into(),
        }]
    );
    assert_eq!(
        backends.orders.status("ord-1002"),
        Some(OrderStatus::Cancelled {
            reason: "payment declined: insufficient funds".into()
        })
    );
    assert_eq!(backends.gateway.payment("ord-1002"), None);
    assert_eq!(backends.gateway.funds("bob"), 1_000);
    assert_eq!(backends.warehouse.on_hand("teapot"), 2);
    harness.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn out_of_stock_refunds_the_payment_then_cancels_the_order() -> TestResult {
    let backends = demo::backends();
    let harness = start(&backends).await?;

    let flow_id = place(&harness, &backends, &demo::out_of_stock_order()).await?;
    harness.settle().await?;

    let flow = harness.published_messages();
    assert_eq!(
        names(&flow),
        [
            "orders.order-placed",
            "billing.payment-captured",
            "inventory.out-of-stock",
            "billing.payment-refunded",
            "orders.order-cancelled",
        ]
    );
    assert_one_causal_chain(&flow, flow_id);
    assert_eq!(
        handled(&harness),
        HashMap::from([
            ("billing.capture-payment", 1),
            ("inventory.reserve-stock", 1),
            ("billing.refund-payment", 1),
            ("orders.cancel-refunded-order", 1),
        ])
    );
    let reason = "out of stock: 5 × teapot requested, 2 available";
    assert_eq!(
        harness.published::<PaymentRefunded>(),
        [PaymentRefunded {
            order_id: "ord-1003".into(),
            payment_id: "pay-0001".into(),
            amount_cents: 17_500,
            reason: reason.into(),
        }]
    );
    assert_eq!(
        backends.orders.status("ord-1003"),
        Some(OrderStatus::Cancelled {
            reason: format!("{reason}; payment pay-0001 refunded")
        })
    );
    assert_eq!(backends.gateway.funds("carol"), 20_000, "paid back in full");
    assert!(
        backends
            .gateway
            .payment("ord-1003")
            .is_some_and(|p| p.refunded)
    );
    assert_eq!(backends.warehouse.on_hand("teapot"), 2);
    assert_eq!(backends.warehouse.reservation("ord-1003"), None);
    harness.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn gateway_timeouts_are_retried_then_the_payment_is_captured() -> TestResult {
    let backends = demo::backends();
    let harness = start(&backends).await?;

    let flow_id = place(&harness, &backends, &demo::flaky_order()).await?;
    // The second failure waits in the first delayed tier; settling moves the clock past it.
    harness.settle().await?;

    let flow = harness.published_messages();
    let captured = flow
        .iter()
        .find(|m| m.meta.name == "billing.payment-captured")
        .map(|m| m.meta.id);
    let billing: Vec<RecordedOutcome> = harness
        .records()
        .into_iter()
        .filter(|r| r.queue == CAPTURE_PAYMENT)
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        billing,
        [
            RecordedOutcome::Retrying {
                attempt: 1,
                tier: None,
                error: "payment gateway timed out".into(),
            },
            RecordedOutcome::Retrying {
                attempt: 2,
                tier: Some(0),
                error: "payment gateway timed out".into(),
            },
            RecordedOutcome::Handled {
                published: captured.into_iter().collect(),
            },
        ]
    );
    assert_eq!(harness.retries(CAPTURE_PAYMENT), 2);
    assert!(harness.poisoned(CAPTURE_PAYMENT).is_empty());

    // A failed run publishes nothing, so the flow is the happy one, charged once.
    assert_eq!(
        names(&flow),
        [
            "orders.order-placed",
            "billing.payment-captured",
            "inventory.stock-reserved",
            "shipping.order-shipped",
            "orders.order-completed",
        ]
    );
    assert_one_causal_chain(&flow, flow_id);
    assert_eq!(
        harness.published::<PaymentCaptured>(),
        [PaymentCaptured {
            order_id: "ord-1004".into(),
            payment_id: "pay-0001".into(),
            amount_cents: 3_200,
            lines: vec![OrderLine::new("mug", 4)],
        }]
    );
    assert_eq!(backends.gateway.funds("dave"), 20_000 - 3_200);
    assert_eq!(
        backends.orders.status("ord-1004"),
        Some(OrderStatus::Completed {
            tracking_number: "PKG-0001".into()
        })
    );
    harness.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn malformed_order_is_poisoned_as_decode() -> TestResult {
    let backends = demo::backends();
    let harness = start(&backends).await?;

    let message = demo::malformed_order()?;
    let (id, body) = (message.meta.id, message.body.clone());
    harness.transport().publish(message).await?;
    harness.settle().await?;

    let poisoned = harness.poisoned(CAPTURE_PAYMENT);
    assert_eq!(poisoned.len(), 1);
    let poisoned = &poisoned[0];
    assert_eq!(poisoned.message.meta.id, id);
    assert_eq!(poisoned.message.body, body, "kept byte for byte");

    let failure_message =
        "body does not match the event: invalid type: string \"45.00\", expected u64";
    assert_eq!(poisoned.failure.kind, FailureKind::Decode);
    assert_eq!(poisoned.failure.handler, CAPTURE_PAYMENT);
    assert_eq!(poisoned.failure.attempts, 0, "the handler never ran");
    assert!(
        poisoned.failure.message.starts_with(failure_message),
        "{}",
        poisoned.failure.message
    );
    let headers: HashMap<&str, String> = poisoned.failure_headers().into_iter().collect();
    assert_eq!(headers[failure::HANDLER], CAPTURE_PAYMENT);
    assert_eq!(headers[failure::KIND], "decode");
    assert!(headers[failure::MESSAGE].starts_with(failure_message));
    assert_eq!(headers[failure::ATTEMPTS], "0");
    assert_eq!(headers[failure::EXCHANGE], "orders");
    assert_eq!(headers[failure::ROUTING_KEY], "orders.order-placed.v1");
    for time in [failure::FIRST_AT, failure::LAST_AT] {
        assert!(choreo::envelope::parse_rfc3339(&headers[time]).is_some());
    }

    assert_eq!(
        harness.records().len(),
        1,
        "poisoned at once, never retried"
    );
    assert_eq!(
        names(&harness.published_messages()),
        ["orders.order-placed"]
    );
    assert_eq!(backends.gateway.payment("ord-1005"), None);
    harness.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn duplicate_delivery_is_handled_once() -> TestResult {
    let backends = demo::backends();
    let harness = start(&backends).await?;
    let order = demo::happy_order();

    let flow_id = place(&harness, &backends, &order).await?;
    harness.settle().await?;
    harness
        .publish_with(&order, PublishOptions::default().message_id(flow_id))
        .await?;
    harness.settle().await?;

    assert_eq!(harness.handled(CAPTURE_PAYMENT), 1);
    assert_eq!(harness.duplicates(CAPTURE_PAYMENT), 1);
    let last = harness.records().pop();
    assert!(last.is_some_and(|r| r.outcome == RecordedOutcome::Duplicate
        && r.message_id == Some(flow_id)
        && r.correlation_id == Some(flow_id)));

    let published = harness.published_messages();
    assert_eq!(
        names(&published),
        [
            "orders.order-placed",
            "billing.payment-captured",
            "inventory.stock-reserved",
            "shipping.order-shipped",
            "orders.order-completed",
            "orders.order-placed",
        ]
    );
    assert_eq!(published[5].meta.id, flow_id);
    assert_eq!(harness.published::<PaymentCaptured>().len(), 1);
    assert_eq!(
        backends.gateway.funds("alice"),
        20_000 - 6_100,
        "charged once"
    );
    harness.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn demo_plays_every_scenario() -> TestResult {
    let transport = MemoryTransport::builder()
        .unroutable(Unroutable::Drop)
        .build();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let timeline = Timeline::new(move |line: &str| {
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line.to_owned());
    });

    let summary = demo::run_demo(&transport, &timeline).await?;

    let completed = |tracking_number: &str| OrderStatus::Completed {
        tracking_number: tracking_number.into(),
    };
    let cancelled = |reason: &str| OrderStatus::Cancelled {
        reason: reason.into(),
    };
    assert_eq!(
        summary,
        Summary {
            orders: [
                ("ord-1001", completed("PKG-0001")),
                (
                    "ord-1002",
                    cancelled("payment declined: insufficient funds")
                ),
                (
                    "ord-1003",
                    cancelled(
                        "out of stock: 5 × teapot requested, 2 available; payment pay-0002 refunded"
                    )
                ),
                ("ord-1004", completed("PKG-0002")),
            ]
            .into_iter()
            .map(|(id, status)| (id.to_owned(), status))
            .collect(),
            messages: Counts {
                handled: 14,
                retried: 2,
                poisoned: 1,
                duplicates: 1,
            },
        }
    );
    assert_eq!((summary.completed(), summary.cancelled()), (2, 2));

    let lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
    let sections = lines.iter().filter(|l| l.starts_with("\n── ")).count();
    assert_eq!((sections, lines.len() - sections), (6, 18), "{lines:#?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("poisoned (decode)"))
            .count(),
        1
    );
    assert!(transport.is_idle());
    assert_eq!(timeline.open(), 0, "the timeline saw every delivery settle");
    assert_eq!(transport.poisoned(CAPTURE_PAYMENT)?.len(), 1);
    Ok(())
}
