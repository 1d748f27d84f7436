#![deny(warnings)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use choreo::{Context, Event, Handler, HandlerError, RetryPolicy, Service, State, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    #[choreo(key)]
    order_id: u64,
    total_cents: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.payment-captured", version = 1)]
struct PaymentCaptured {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.payment-failed", version = 1)]
struct PaymentFailed {
    order_id: u64,
}

#[derive(Clone, Default)]
struct Ledger(Arc<AtomicU64>);

#[derive(Clone)]
struct Limit(u64);

/// Charges the card of a placed order.
#[handler(
    emits(PaymentCaptured, PaymentFailed),
    name = "charge",
    retry = RetryPolicy::default().immediate(1),
    timeout = "1500ms",
    concurrency = 4
)]
async fn charge_card(
    order: OrderPlaced,
    ctx: Context,
    State(ledger): State<Ledger>,
    limit: State<Limit>,
) -> Result<(), HandlerError> {
    if order.total_cents > limit.0.0 {
        ctx.publish(&PaymentFailed { order_id: order.order_id })?;
        return Ok(());
    }
    ledger.0.fetch_add(order.total_cents, Ordering::Relaxed);
    ctx.publish(&PaymentCaptured { order_id: order.order_id })?;
    Ok(())
}

fn main() {
    let info = charge_card.info();
    assert_eq!(info.name, "charge");
    assert_eq!(info.event, OrderPlaced::event_type());
    assert_eq!(
        info.emits,
        [PaymentCaptured::event_type(), PaymentFailed::event_type()]
    );
    assert_eq!(info.state.len(), 2);
    assert_eq!(info.retry, Some(RetryPolicy::default().immediate(1)));
    assert_eq!(info.timeout, Some(std::time::Duration::from_millis(1500)));
    assert_eq!(info.concurrency, Some(4));

    let _service = Service::new("billing")
        .state(Ledger::default())
        .state(Limit(10_000))
        .handler(charge_card);
}
