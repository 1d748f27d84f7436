//! A health endpoint for the services of one process, for a load balancer's or an
//! orchestrator's probes: `GET /health/live` and `GET /health/ready` answer `200 OK` or
//! `503 Service Unavailable` with a short JSON body made from
//! [`RunningService::health`].
//!
//! It is a few lines of HTTP/1.1 on a [`TcpListener`], one request per connection; a service
//! that already runs an HTTP server adds the two routes to it instead.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use choreo::{Health, RunningService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The liveness probe's path: `200` while every consumer runs, else restart the process.
pub const LIVE: &str = "/health/live";
/// The readiness probe's path: `200` while every service is live, connected and not stopping.
pub const READY: &str = "/health/ready";

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read; health probes send a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;

/// The health of every service of the process, as of one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Each service's name and health.
    pub services: Vec<(String, Health)>,
}

impl Report {
    /// The health of `services` now.
    pub fn of<'a>(services: impl IntoIterator<Item = &'a RunningService>) -> Self {
        Self {
            services: services
                .into_iter()
                .map(|service| (service.name().to_owned(), service.health()))
                .collect(),
        }
    }

    /// Every service is live.
    pub fn live(&self) -> bool {
        self.services.iter().all(|(_, health)| health.live)
    }

    /// Every service is ready.
    pub fn ready(&self) -> bool {
        self.services.iter().all(|(_, health)| health.ready)
    }

    /// The report as JSON:
    /// `{"live":true,"ready":true,"services":{"orders":{"live":true,...},...}}`.
    pub fn to_json(&self) -> String {
        let services: serde_json::Map<String, serde_json::Value> = self
            .services
            .iter()
            .map(|(name, health)| {
                let health = serde_json::json!({
                    "live": health.live,
                    "ready": health.ready,
                    "connected": health.connected,
                    "consumers": format!("{}/{}", health.consumers_running, health.consumers_expected),
                });
                (name.clone(), health)
            })
            .collect();
        serde_json::json!({
            "live": self.live(),
            "ready": self.ready(),
            "services": services,
        })
        .to_string()
    }

    fn response(&self, request: &[u8]) -> Response {
        let Some(line) = request.split(|&b| b == b'\n').next() else {
            return Response::text(400, "Bad Request");
        };
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return Response::text(400, "Bad Request");
        };
        let ok = match path {
            LIVE => self.live(),
            READY => self.ready(),
            _ => return Response::text(404, "Not Found"),
        };
        if method != "GET" {
            return Response::text(405, "Method Not Allowed");
        }
        Response {
            status: if ok { 200 } else { 503 },
            content_type: "application/json",
            body: self.to_json(),
        }
    }
}

/// Serves [`LIVE`] and [`READY`] on `listener` from `report`, until dropped or until
/// accepting a connection fails.
///
/// Each connection gets the report taken when it was accepted, so a slow client holds up
/// no other.
///
/// # Errors
///
/// The error of a failed `accept`.
///
/// # Cancel safety
///
/// Dropping the future closes the listener and every open connection.
pub async fn serve(listener: TcpListener, report: impl Fn() -> Report) -> io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = listener.accept().await?;
        let report = report();
        connections.spawn(answer(stream, report));
        // Reap connections that are done, so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(mut stream: TcpStream, report: Report) {
    let mut request = Vec::with_capacity(512);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut buffer = [0; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..n]);
        }
        io::Result::Ok(())
    })
    .await;
    let response = match read {
        Ok(Ok(())) => report.response(&request),
        Ok(Err(_)) => return,
        Err(_) => Response::text(408, "Request Timeout"),
    };
    // The client may be gone; there is no one to tell.
    let _ = stream.write_all(response.to_bytes().as_slice()).await;
    let _ = stream.shutdown().await;
}

/// What the endpoint answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: format!("{body}\n"),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// `GET path` from the endpoint at `addr`: what the demo asks itself, and what tests check.
///
/// # Errors
///
/// When the endpoint cannot be reached, does not answer within 5 seconds, or answers
/// something that is not HTTP.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        io::Result::Ok(answer)
    };
    let answer = tokio::time::timeout(READ_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the endpoint"))??;
    let answer = String::from_utf8_lossy(&answer);
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response");
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(malformed)?;
    let content_type = if head.contains("application/json") {
        "application/json"
    } else {
        "text/plain"
    };
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        // No services: nothing is down.
        let report = Report {
            services: Vec::new(),
        };
        assert_eq!(report.response(b"GET /nope HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(
            report
                .response(b"POST /health/live HTTP/1.1\r\n\r\n")
                .status,
            405
        );
        assert_eq!(report.response(b"\r\n\r\n").status, 400);
        assert_eq!(
            report.response(b"GET /health/live HTTP/1.1\r\n\r\n").status,
            200
        );
    }
}
