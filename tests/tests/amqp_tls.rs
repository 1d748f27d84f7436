//! `amqps://` end to end: a TLS listener in front of the local broker, with a certificate
//! authority made for the test. The broker's certificate is verified: without the test's CA
//! the connection is refused.
//!
//! Needs `openssl` and `socat` (Debian packages of the same names) and a broker on
//! 127.0.0.1:5672; missing tools fail the test rather than skip it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use choreo::{Event, Transport};
use choreo_amqp::{AmqpConfig, AmqpTransport};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
#[choreo(name = "orders.order-placed", version = 1)]
struct OrderPlaced {
    order_id: u64,
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (install openssl and socat)"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a certificate for `localhost` signed by it.
fn make_certificates(dir: &Path) {
    let path = |name: &str| dir.join(name);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=choreo test CA"])
        .arg("-keyout")
        .arg(path("ca.key"))
        .arg("-out")
        .arg(path("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(path("server.key"))
        .arg("-out")
        .arg(path("server.csr")));
    std::fs::write(
        path("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
        .arg("-in")
        .arg(path("server.csr"))
        .arg("-CA")
        .arg(path("ca.pem"))
        .arg("-CAkey")
        .arg(path("ca.key"))
        .arg("-extfile")
        .arg(path("san.ext"))
        .arg("-out")
        .arg(path("server.pem")));
}

/// `socat` terminating TLS on a free port and forwarding to the broker; killed on drop.
struct TlsProxy {
    child: Child,
    port: u16,
}

impl TlsProxy {
    fn start(dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        );
        let child = Command::new("socat")
            .arg(listen)
            .arg("TCP:127.0.0.1:5672")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_and_gets_confirms_over_tls() {
    let dir = std::env::temp_dir().join(format!("choreo-tls-{:x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let proxy = TlsProxy::start(&dir);
    let url = format!("amqps://guest:guest@localhost:{}/%2f", proxy.port);
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();

    // Unknown CA: refused, with the URL (password redacted) in the error.
    let error = AmqpTransport::connect(
        AmqpConfig::new(url.clone()).connect_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot connect to amqps://guest:***@localhost:{}",
            proxy.port
        )),
        "{text}"
    );

    // Trusted CA: a declared queue receives a published event over TLS.
    let prefix = format!("tls{:x}.", fastrand_suffix());
    let transport = AmqpTransport::connect(
        AmqpConfig::new(url)
            .tls_ca_certificates(ca)
            .exchange_prefix(prefix.clone()),
    )
    .await
    .expect("TLS connection with the test CA");
    let service = choreo::Service::new(format!("tls{:x}", fastrand_suffix()));
    let topology = choreo::transport::Topology {
        service: service.name().into(),
        exchanges: vec!["orders".into()],
        queues: vec![],
    };
    transport.declare(&topology).await.unwrap();
    let error = transport
        .publisher("test")
        .publish(&OrderPlaced { order_id: 1 })
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unroutable"),
        "a confirmed answer over TLS: {error}"
    );
    transport.delete_exchange("orders").await.unwrap();
    transport.close().await;
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        & 0xFFFF_FFFF
}
