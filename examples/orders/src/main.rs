//! Runs the orders choreography on the in-memory transport and prints its timeline.

#![allow(
    clippy::print_stdout,
    reason = "printing the timeline is what the demo is for"
)]

use choreo::{MemoryTransport, Unroutable};
use example_orders::demo::run_demo;
use example_orders::timeline::Timeline;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Completed and cancelled orders are announced for consumers outside this example.
    let transport = MemoryTransport::builder()
        .unroutable(Unroutable::Drop)
        .build();
    println!("orders, billing, inventory and shipping on the in-memory transport");
    let timeline = Timeline::new(|line: &str| println!("{line}"));
    let summary = run_demo(&transport, &timeline).await?;
    println!("\n{summary}");
    Ok(())
}
