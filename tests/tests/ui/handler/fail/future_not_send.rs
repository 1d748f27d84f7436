use std::rc::Rc;

use choreo::{Event, HandlerError, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

#[handler]
async fn record(order: OrderPlaced) -> Result<(), HandlerError> {
    let id = Rc::new(order.order_id);
    std::future::ready(()).await;
    let _ = id;
    Ok(())
}

fn main() {}
