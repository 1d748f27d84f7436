#![deny(warnings)]

// A platform crate that re-exports choreo under its own path.
mod platform {
    pub use ::choreo;
}

use platform::choreo::Event;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.invoice-sent", version = 1, crate = "crate::platform::choreo")]
struct InvoiceSent {
    #[choreo(key)]
    invoice_id: u64,
}

fn main() {
    assert_eq!(InvoiceSent::ROUTING_KEY, "billing.invoice-sent.v1");
    assert_eq!(InvoiceSent { invoice_id: 7 }.key().as_deref(), Some("7"));
}
