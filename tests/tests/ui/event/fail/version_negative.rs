use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = -1)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
