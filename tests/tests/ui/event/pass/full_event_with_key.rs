#![deny(warnings)]

use choreo::Event;
use serde::{Deserialize, Serialize};

/// An order was placed.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2)]
pub struct OrderPlaced {
    #[choreo(key)]
    pub order_id: uuid::Uuid,
    pub total_cents: u64,
}

fn main() {
    assert_eq!(OrderPlaced::NAME, "orders.order-placed");
    assert_eq!(OrderPlaced::VERSION, 2);
    assert_eq!(OrderPlaced::DOMAIN, "orders");
    assert_eq!(OrderPlaced::ROUTING_KEY, "orders.order-placed.v2");
    assert_eq!(OrderPlaced::KEY_FIELD, Some("order_id"));
    let order = OrderPlaced {
        order_id: uuid::Uuid::nil(),
        total_cents: 1999,
    };
    assert_eq!(order.key().as_deref(), Some("00000000-0000-0000-0000-000000000000"));
    assert!(choreo::event::lookup("orders.order-placed", 2).is_some());
}
