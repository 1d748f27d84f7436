//! The demo: six scenarios played one after another on an in-memory transport.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use choreo::{Event, MemoryTransport, Message, PublishError, PublishOptions, Publisher, Transport};

use crate::billing::PaymentGateway;
use crate::events::{OrderLine, OrderPlaced};
use crate::inventory::Warehouse;
use crate::orders::{OrderStatus, place_order};
use crate::timeline::{Counts, Timeline};
use crate::{Backends, services};

/// How long one scenario may take before the demo gives up on it.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a demo run ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Every order the orders service took, with where it ended.
    pub orders: BTreeMap<String, OrderStatus>,
    /// What happened to the messages, over all services.
    pub messages: Counts,
}

impl Summary {
    /// How many orders were completed.
    pub fn completed(&self) -> usize {
        self.count(|status| matches!(status, OrderStatus::Completed { .. }))
    }

    /// How many orders were cancelled.
    pub fn cancelled(&self) -> usize {
        self.count(|status| matches!(status, OrderStatus::Cancelled { .. }))
    }

    fn count(&self, matches: impl Fn(&OrderStatus) -> bool) -> usize {
        self.orders
            .values()
            .filter(|status| matches(status))
            .count()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "summary")?;
        for (order_id, status) in &self.orders {
            writeln!(f, "  {order_id}  {status}")?;
        }
        writeln!(
            f,
            "  orders: {} completed, {} cancelled",
            self.completed(),
            self.cancelled()
        )?;
        write!(f, "  messages: {}", self.messages)
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A service did not start or stop cleanly.
    #[error(transparent)]
    Service(#[from] choreo::Error),
    /// An order could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The services were still busy when a scenario's time was up.
    #[error("the services were still busy after {0:?}")]
    Busy(Duration),
}

/// The backends the demo starts with: stock, customers' funds, and a gateway that times out
/// twice on [`flaky_order`].
pub fn backends() -> Backends {
    Backends {
        gateway: PaymentGateway::new()
            .with_funds("alice", 20_000)
            .with_funds("bob", 1_000)
            .with_funds("carol", 20_000)
            .with_funds("dave", 20_000)
            .with_outage("ord-1004", 2),
        warehouse: Warehouse::new()
            .with_stock("kettle", 10)
            .with_stock("mug", 50)
            .with_stock("teapot", 2),
        ..Backends::default()
    }
}

/// Alice's order, which goes through.
pub fn happy_order() -> OrderPlaced {
    order(
        "ord-1001",
        "alice",
        vec![OrderLine::new("kettle", 1), OrderLine::new("mug", 2)],
        6_100,
    )
}

/// Bob's order, which costs more than his card allows.
pub fn declined_order() -> OrderPlaced {
    order("ord-1002", "bob", vec![OrderLine::new("teapot", 1)], 3_500)
}

/// Carol's order, for more teapots than the warehouse holds.
pub fn out_of_stock_order() -> OrderPlaced {
    order(
        "ord-1003",
        "carol",
        vec![OrderLine::new("teapot", 5)],
        17_500,
    )
}

/// Dave's order, which the gateway times out on twice before charging it.
pub fn flaky_order() -> OrderPlaced {
    order("ord-1004", "dave", vec![OrderLine::new("mug", 4)], 3_200)
}

/// An `orders.order-placed` message whose total is text, as a buggy release of the orders
/// front door might send it: the envelope is fine, the body breaks the contract.
///
/// # Errors
///
/// [`PublishError::Encode`] if the template order does not serialize.
pub fn malformed_order() -> Result<Message, PublishError> {
    let template = order("ord-1005", "erin", vec![OrderLine::new("kettle", 1)], 4_500);
    let mut message =
        Message::encode(&template, Arc::from("orders")).map_err(|source| PublishError::Encode {
            event: OrderPlaced::event_type(),
            source,
        })?;
    let body: &'static [u8] = br#"{"order_id":"ord-1005","customer":"erin","lines":[{"sku":"kettle","quantity":1}],"total_cents":"45.00"}"#;
    message.body = body.into();
    Ok(message)
}

fn order(order_id: &str, customer: &str, lines: Vec<OrderLine>, total_cents: u64) -> OrderPlaced {
    OrderPlaced {
        order_id: order_id.to_owned(),
        customer: customer.to_owned(),
        lines,
        total_cents,
    }
}

/// Starts the four services on `transport` with [`backends`], plays every scenario, waiting
/// for the services to go quiet after each, stops them and sums up.
///
/// Every outcome is reported to `timeline`. `transport` should drop unroutable events
/// ([`Unroutable::Drop`](choreo::Unroutable::Drop)): `orders.order-completed` and
/// `orders.order-cancelled` are announced for consumers outside this example. Run it on a
/// current-thread runtime to keep each scenario's lines under its heading.
///
/// # Errors
///
/// [`DemoError::Service`] when a service does not start or stop, [`DemoError::Publish`]
/// when an order is not published, and [`DemoError::Busy`] when a scenario does not finish
/// in time.
pub async fn run_demo(
    transport: &MemoryTransport,
    timeline: &Timeline,
) -> Result<Summary, DemoError> {
    let backends = backends();
    let mut running = Vec::new();
    for service in services(&backends) {
        running.push(service.observe(timeline.clone()).start(transport).await?);
    }
    let front_door = Publisher::new(transport.clone(), "orders");
    let book = &backends.orders;

    timeline.section("1. happy path: paid, reserved, shipped, completed");
    let happy = happy_order();
    let happy_id = place_order(&front_door, book, &happy).await?;
    quiet(transport).await?;

    timeline.section("2. payment declined: the order is cancelled");
    place_order(&front_door, book, &declined_order()).await?;
    quiet(transport).await?;

    timeline.section("3. out of stock: the payment is refunded, then the order cancelled");
    place_order(&front_door, book, &out_of_stock_order()).await?;
    quiet(transport).await?;

    timeline.section("4. the payment gateway times out twice, then charges");
    place_order(&front_door, book, &flaky_order()).await?;
    quiet(transport).await?;

    timeline.section("5. a malformed order goes to the poison queue");
    transport
        .publish(malformed_order()?)
        .await
        .map_err(PublishError::from)?;
    quiet(transport).await?;

    timeline.section("6. ord-1001 is delivered again under the same message id");
    front_door
        .publish_with(&happy, PublishOptions::default().message_id(happy_id))
        .await?;
    quiet(transport).await?;

    // Shutting down waits for every handler task, so the counts below are final.
    for service in running {
        service.shutdown().await?;
    }
    Ok(Summary {
        orders: book.all(),
        messages: timeline.counts(),
    })
}

/// Waits until no message is ready, in flight or waiting for a retry.
async fn quiet(transport: &MemoryTransport) -> Result<(), DemoError> {
    let idle = async {
        while !transport.is_idle() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, idle)
        .await
        .map_err(|_| DemoError::Busy(SCENARIO_TIMEOUT))
}
