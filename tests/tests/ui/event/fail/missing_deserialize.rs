use choreo::Event;
use serde::Serialize;

#[derive(Event, Serialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

fn main() {}
