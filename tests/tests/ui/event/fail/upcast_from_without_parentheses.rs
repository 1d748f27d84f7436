use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlacedV1 {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 2, upcast_from = OrderPlacedV1)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
