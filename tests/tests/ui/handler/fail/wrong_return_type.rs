use choreo::{Event, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn record(order: OrderPlaced) -> Option<u64> {
    Some(order.order_id)
}

fn main() {}
