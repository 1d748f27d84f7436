#![deny(warnings)]

// A platform crate that re-exports choreo under its own path.
mod platform {
    pub use ::choreo;
}

use platform::choreo::{Event, Handler, State, handler};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "billing.invoice-sent", version = 1, crate = "crate::platform::choreo")]
struct InvoiceSent {
    invoice_id: u64,
}

#[handler(crate = "crate::platform::choreo", emits(InvoiceSent))]
async fn archive(invoice: InvoiceSent, State(prefix): State<String>) {
    let _ = (invoice.invoice_id, prefix);
}

fn main() {
    assert_eq!(archive.info().emits, [InvoiceSent::event_type()]);
}
