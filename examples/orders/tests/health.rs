//! The health endpoint in front of a service on a real RabbitMQ, at `CHOREO_AMQP_URL` or the
//! local default: `200` while it is connected, `503` once its connections are closed.
//!
//! There is no skipping: a broker that does not answer fails the test.

use std::net::SocketAddr;

use choreo::{Event, Service, handler};
use choreo_amqp::{AmqpConfig, AmqpTransport};
use example_orders::health::{self, Report};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An event of this test alone, so its queue hears nothing of other tests' traffic.
#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "health-test.pinged", version = 1)]
struct Pinged {
    at: u64,
}

#[handler]
async fn record_ping(ping: Pinged) {
    let _ = ping.at;
}

async fn probe(addr: SocketAddr) -> Result<(u16, u16, String), Box<dyn std::error::Error>> {
    let live = health::get(addr, health::LIVE).await?;
    let ready = health::get(addr, health::READY).await?;
    assert_eq!(ready.content_type, "application/json");
    Ok((live.status, ready.status, ready.body))
}

#[tokio::test]
async fn ready_is_200_while_connected_and_503_once_the_transport_is_closed() -> TestResult {
    let config = AmqpConfig::from_env();
    // A service name of this run alone: its queue is `<name>.record-ping`.
    let name = format!("health-{}-{}", std::process::id(), unique_suffix());
    let service = Service::new(name.clone()).handler(record_ping);
    let topology = service.topology()?;
    let transport = AmqpTransport::connect(config.clone()).await?;
    let running = service.start(&transport).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = health::serve(listener, || Report::of([&running]));
    let checks = async {
        let (live, ready, body) = probe(addr).await?;
        assert_eq!((live, ready), (200, 200), "{body}");
        let expected = format!(
            r#"{{"live":true,"ready":true,"services":{{"{name}":{{"connected":true,"consumers":"1/1","live":true,"ready":true}}}}}}"#
        );
        assert_eq!(body, expected);
        assert_eq!(health::get(addr, "/health").await?.status, 404);

        transport.close().await;
        let (_, ready, body) = probe(addr).await?;
        assert_eq!(ready, 503, "{body}");
        assert!(body.contains(r#""connected":false"#), "{body}");
        assert!(body.contains(r#""ready":false"#), "{body}");
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let checked = tokio::select! {
        served = server => Err(format!("the endpoint stopped: {served:?}").into()),
        checked = checks => checked,
    };

    // Clean up on a connection of our own: the service's are closed.
    let stopped = running.shutdown().await;
    let cleanup = AmqpTransport::connect(config).await?;
    cleanup.delete_queues(&topology).await?;
    cleanup.delete_exchange("health-test").await?;
    cleanup.close().await;
    checked?;
    stopped?;
    Ok(())
}

/// A few random digits, so two runs at once do not share a queue.
fn unique_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 100_000)
}
