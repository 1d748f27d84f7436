use choreo::{Event, HandlerError, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn record<E: Event>(event: E) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
