use choreo::{Event, HandlerError, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn record(order: OrderPlaced, retries: u32) -> Result<(), HandlerError> {
    let _ = (order, retries);
    Ok(())
}

fn main() {}
