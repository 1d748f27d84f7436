use choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(version = 1)]
struct OrderPlaced {
    #[choreo(name = "orders.order-placed")]
    order_id: u64,
}

fn main() {}
