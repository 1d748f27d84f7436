//! The inventory service: sets stock aside for paid orders.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use choreo::{Context, HandlerError, Service, State, handler};

use crate::events::{OrderLine, OutOfStock, PaymentCaptured, StockReserved};

/// An article an order asks for more of than is on hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortage {
    /// The article.
    pub sku: String,
    /// How many the order asks for, over all its lines.
    pub requested: u32,
    /// How many are on hand.
    pub available: u32,
}

/// The warehouse's stock and the reservations held against it. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Warehouse {
    inner: Arc<Mutex<Stock>>,
}

#[derive(Debug, Default)]
struct Stock {
    on_hand: HashMap<String, u32>,
    reserved: HashMap<String, Vec<OrderLine>>,
}

impl Warehouse {
    /// An empty warehouse.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `quantity` of `sku` on the shelves.
    #[must_use]
    pub fn with_stock(self, sku: impl Into<String>, quantity: u32) -> Self {
        *self.lock().on_hand.entry(sku.into()).or_default() += quantity;
        self
    }

    /// How many of `sku` are on hand and not reserved.
    pub fn on_hand(&self, sku: &str) -> u32 {
        self.lock().on_hand.get(sku).copied().unwrap_or(0)
    }

    /// The lines reserved for `order_id`, if any.
    pub fn reservation(&self, order_id: &str) -> Option<Vec<OrderLine>> {
        self.lock().reserved.get(order_id).cloned()
    }

    /// Reserves every line for `order_id`, or none of them. Reserving an order again
    /// changes nothing.
    ///
    /// # Errors
    ///
    /// The first article short, when any is.
    pub fn reserve(&self, order_id: &str, lines: &[OrderLine]) -> Result<(), Shortage> {
        let mut stock = self.lock();
        if stock.reserved.contains_key(order_id) {
            return Ok(());
        }
        let mut wanted: Vec<(&str, u32)> = Vec::new();
        for line in lines {
            match wanted.iter_mut().find(|(sku, _)| *sku == line.sku) {
                Some((_, quantity)) => *quantity += line.quantity,
                None => wanted.push((&line.sku, line.quantity)),
            }
        }
        for &(sku, requested) in &wanted {
            let available = stock.on_hand.get(sku).copied().unwrap_or(0);
            if requested > available {
                return Err(Shortage {
                    sku: sku.to_owned(),
                    requested,
                    available,
                });
            }
        }
        for (sku, requested) in wanted {
            if let Some(on_hand) = stock.on_hand.get_mut(sku) {
                *on_hand -= requested;
            }
        }
        stock.reserved.insert(order_id.to_owned(), lines.to_vec());
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Stock> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The inventory service, reserving from `warehouse`.
pub fn service(warehouse: Warehouse) -> Service {
    Service::new("inventory")
        .retry_policy(crate::retry_policy())
        .state(warehouse)
        .handler(reserve_stock)
}

#[handler(emits(StockReserved, OutOfStock))]
async fn reserve_stock(
    payment: PaymentCaptured,
    ctx: Context,
    State(warehouse): State<Warehouse>,
) -> Result<(), HandlerError> {
    match warehouse.reserve(&payment.order_id, &payment.lines) {
        Ok(()) => ctx.publish(&StockReserved {
            order_id: payment.order_id,
            lines: payment.lines,
        })?,
        Err(Shortage {
            sku,
            requested,
            available,
        }) => ctx.publish(&OutOfStock {
            order_id: payment.order_id,
            sku,
            requested,
            available,
        })?,
    }
    Ok(())
}
