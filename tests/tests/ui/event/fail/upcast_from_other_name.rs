use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-cancelled", version = 1)]
struct OrderCancelled {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2, upcast_from(OrderCancelled))]
struct OrderPlaced {
    order_id: u64,
}

impl From<OrderCancelled> for OrderPlaced {
    fn from(old: OrderCancelled) -> Self {
        Self { order_id: old.order_id }
    }
}

fn main() {}
