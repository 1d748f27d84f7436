//! The `otel` feature: the in-memory demo's spans, as the demo prints them.
//!
//! The subscriber is process-wide, so this file holds the only test that installs one.
#![cfg(feature = "otel")]

use choreo::{MemoryTransport, Unroutable};
use example_orders::demo::{self, happy_order};
use example_orders::telemetry::Telemetry;
use example_orders::timeline::Timeline;

#[tokio::test(flavor = "current_thread")]
async fn one_orders_flow_is_one_trace_across_its_services() -> Result<(), Box<dyn std::error::Error>>
{
    let telemetry = Telemetry::install()?;
    let transport = MemoryTransport::builder()
        .unroutable(Unroutable::Drop)
        .build();
    demo::run_demo(&transport, &Timeline::new(|_: &str| {})).await?;

    let order = happy_order().order_id;
    let flow = telemetry.flow(&order).expect("the order's spans");
    assert_eq!(
        flow.handlers(),
        [
            "billing.capture-payment",
            "inventory.reserve-stock",
            "shipping.ship-order",
            "orders.complete-order",
        ],
        "{flow}"
    );
    // The front door, its publish, and four handlers, nested in that order.
    assert_eq!(flow.len(), 6, "{flow}");
    let tree = flow.to_string();
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].contains(&flow.trace_id()), "{tree}");
    for (line, (depth, what)) in lines[1..].iter().zip([
        (0, "place_order ord-1001"),
        (1, "choreo.publish orders.order-placed v1"),
        (2, "billing.capture-payment handles orders.order-placed v1"),
        (
            3,
            "inventory.reserve-stock handles billing.payment-captured v1",
        ),
        (4, "shipping.ship-order handles inventory.stock-reserved v1"),
        (5, "orders.complete-order handles shipping.order-shipped v1"),
    ]) {
        let indent = if depth == 0 {
            "  ".to_owned()
        } else {
            format!("  {}└─ ", "   ".repeat(depth - 1))
        };
        assert!(line.starts_with(&format!("{indent}{what}")), "{tree}");
    }

    // A handler's log line carries its span's fields, the correlation id among them.
    let logged = telemetry
        .log_lines()
        .into_iter()
        .find(|l| l.contains("payment captured") && l.contains(&order))
        .expect("billing logs the captured payment");
    assert!(
        logged.contains("choreo.handle{handler=billing.capture-payment"),
        "{logged}"
    );
    assert!(logged.contains(" correlation_id="), "{logged}");
    assert!(
        logged.contains(&format!("trace_id={}", flow.trace_id())),
        "{logged}"
    );
    Ok(())
}
