//! The shipping service: sends reserved goods and hands out tracking numbers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use choreo::{Context, HandlerError, Service, State, handler};

use crate::events::{OrderShipped, StockReserved};

/// The parcels sent so far, by order. Clones share them.
#[derive(Clone, Debug, Default)]
pub struct Dispatch {
    parcels: Arc<Mutex<HashMap<String, String>>>,
}

impl Dispatch {
    /// No parcels yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the parcel for `order_id` and returns its tracking number. Sending an order
    /// again returns the tracking number it already has.
    pub fn send(&self, order_id: &str) -> String {
        let mut parcels = self.lock();
        let next = parcels.len() + 1;
        parcels
            .entry(order_id.to_owned())
            .or_insert_with(|| format!("PKG-{next:04}"))
            .clone()
    }

    /// The tracking number of `order_id`'s parcel, once sent.
    pub fn tracking_number(&self, order_id: &str) -> Option<String> {
        self.lock().get(order_id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.parcels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shipping service, recording parcels in `dispatch`.
pub fn service(dispatch: Dispatch) -> Service {
    Service::new("shipping")
        .retry_policy(crate::retry_policy())
        .state(dispatch)
        .handler(ship_order)
}

#[handler(emits(OrderShipped))]
async fn ship_order(
    reserved: StockReserved,
    ctx: Context,
    State(dispatch): State<Dispatch>,
) -> Result<(), HandlerError> {
    let tracking_number = dispatch.send(&reserved.order_id);
    ctx.publish(&OrderShipped {
        order_id: reserved.order_id,
        tracking_number,
    })?;
    Ok(())
}
