use choreo::{HandlerError, handler};

#[handler]
async fn tick() -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
