use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 3)]
struct OrderPlacedV3 {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2, upcast_from(OrderPlacedV3))]
struct OrderPlaced {
    order_id: u64,
}

impl From<OrderPlacedV3> for OrderPlaced {
    fn from(old: OrderPlacedV3) -> Self {
        Self { order_id: old.order_id }
    }
}

fn main() {}
