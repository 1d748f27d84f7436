use choreo::Event;

#[derive(Event)]
#[choreo(name = "orders.order-placed", version = 1)]
union OrderPlaced {
    order_id: u64,
}

fn main() {}
