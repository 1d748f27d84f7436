use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-changed", version = 1)]
enum OrderChanged {
    Placed { order_id: u64 },
    Cancelled { order_id: u64 },
}

fn main() {}
