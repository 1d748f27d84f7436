use choreo::{Event, HandlerError, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler(timout = "5s")]
async fn record(order: OrderPlaced) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
