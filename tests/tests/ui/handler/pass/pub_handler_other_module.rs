#![deny(warnings)]

mod events {
    use choreo::Event;
    use serde::{Deserialize, Serialize};

    #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
    #[choreo(name = "orders.order-placed", version = 1)]
    pub struct OrderPlaced {
        pub order_id: u64,
    }
}

pub mod billing {
    pub mod handlers {
        use choreo::{Context, HandlerError, handler};

        use crate::events::OrderPlaced;

        /// Charges the card of a placed order.
        #[handler]
        pub async fn charge_card(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
            let _ = (order.order_id, ctx);
            Ok(())
        }
    }
}

fn main() {
    use choreo::Handler;

    let _service = choreo::Service::new("billing").handler(billing::handlers::charge_card);
    assert_eq!(billing::handlers::charge_card.info().name, "charge-card");
}
