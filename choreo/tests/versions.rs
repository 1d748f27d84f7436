//! Versioned events: a handler written for v2 reads v1 messages through an upcast.

use std::sync::{Arc, Mutex};

use choreo::testing::TestHarness;
use choreo::{Event, FailureKind, HandlerError, Message, Service, State, catalog, handler};
use serde::{Deserialize, Serialize};

/// The first version: a total in cents, always in euros.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Clone, Debug)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlacedV1 {
    #[choreo(key)]
    order_id: u64,
    total_cents: u64,
}

/// The second version: the currency is explicit.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[choreo(name = "orders.order-placed", version = 2, upcast_from(OrderPlacedV1))]
struct OrderPlaced {
    #[choreo(key)]
    order_id: u64,
    total_cents: u64,
    currency: String,
}

impl From<OrderPlacedV1> for OrderPlaced {
    fn from(v1: OrderPlacedV1) -> Self {
        Self {
            order_id: v1.order_id,
            total_cents: v1.total_cents,
            currency: "EUR".to_owned(),
        }
    }
}

type Received = Arc<Mutex<Vec<(OrderPlaced, u32)>>>;

#[handler(name = "charge")]
async fn charge(
    order: OrderPlaced,
    ctx: choreo::Context,
    State(seen): State<Received>,
) -> Result<(), HandlerError> {
    seen.lock().unwrap().push((order, ctx.meta().version));
    Ok(())
}

#[test]
fn the_new_version_reads_both() {
    assert_eq!(OrderPlaced::READS, &[2, 1]);
    assert_eq!(OrderPlacedV1::READS, &[1]);
    assert_eq!(OrderPlaced::ROUTING_KEY, "orders.order-placed.v2");
    let v1 = serde_json::to_vec(&OrderPlacedV1 {
        order_id: 1,
        total_cents: 500,
    })
    .unwrap();
    assert_eq!(
        OrderPlaced::decode(1, &v1).unwrap(),
        OrderPlaced {
            order_id: 1,
            total_cents: 500,
            currency: "EUR".into()
        }
    );
    assert!(OrderPlaced::decode(3, &v1).is_err());
    let versions: Vec<u32> = catalog()
        .iter()
        .filter(|d| d.name == "orders.order-placed")
        .map(|d| d.version)
        .collect();
    assert_eq!(versions, [1, 2], "both versions are contracts");
}

#[tokio::test]
async fn a_v2_handler_receives_v1_messages_upcast() {
    let mut h = TestHarness::new();
    let seen = Received::default();
    h.start(Service::new("billing").handler(charge).state(seen.clone()))
        .await
        .unwrap();
    let topology = Service::new("billing")
        .handler(charge)
        .state(seen.clone())
        .topology()
        .unwrap();
    let keys: Vec<&str> = topology.queues[0]
        .bindings
        .iter()
        .map(|b| b.routing_key.as_str())
        .collect();
    assert_eq!(keys, ["orders.order-placed.v2", "orders.order-placed.v1"]);

    h.publish(&OrderPlacedV1 {
        order_id: 1,
        total_cents: 500,
    })
    .await
    .unwrap();
    h.publish(&OrderPlaced {
        order_id: 2,
        total_cents: 700,
        currency: "USD".into(),
    })
    .await
    .unwrap();
    // A version nobody reads, put straight into the queue.
    let v3 = Message::raw("orders.order-placed", 3, "test".into(), &b"{}"[..]);
    h.transport().inject("billing.charge", v3).unwrap();
    h.settle().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0.currency, "EUR");
    assert_eq!(seen[0].1, 1, "the handler still sees the wire version");
    assert_eq!(seen[1].0.currency, "USD");
    let poisoned = h.poisoned("billing.charge");
    assert_eq!(poisoned.len(), 1);
    assert_eq!(poisoned[0].failure.kind, FailureKind::UnknownVersion);
    h.shutdown().await.unwrap();
}
