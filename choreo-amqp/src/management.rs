//! The RabbitMQ management HTTP API, for the one thing AMQP 0-9-1 cannot do: list queues.
//!
//! A plain HTTP/1.1 GET over a TCP stream is all this needs (one request, `Connection:
//! close`, a JSON answer with a `Content-Length` or chunked body), so it is written here
//! rather than pulling an HTTP client and its TLS stack into every service that uses the
//! transport.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::AmqpConfig;
use crate::error::AmqpError;

/// The management plugin's default HTTP port.
const DEFAULT_PORT: u16 = 15672;

/// The largest answer read: the queue list of a large broker, with room to spare.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Where the management API is and how to sign in. Never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Management {
    host: String,
    port: u16,
    /// A path prefix when the API sits behind a proxy, without a trailing `/`.
    prefix: String,
    user: String,
    password: String,
    vhost: String,
}

impl fmt::Debug for Management {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Management")
            .field("url", &self.base_url())
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// The API of the broker `config` connects to: the `management_url` setting when given,
    /// else the AMQP URL's host on port 15672. Credentials and vhost come from the AMQP URL
    /// unless the management URL names a user.
    pub(crate) fn from_config(config: &AmqpConfig) -> Result<Self, AmqpError> {
        let amqp = UrlParts::parse(&config.url)
            .ok_or_else(|| AmqpError::config("url", "cannot read host and vhost from the URL"))?;
        let vhost = match amqp.path.trim_start_matches('/') {
            "" => "/".to_owned(),
            path => percent_decode(path),
        };
        let mut management = Self {
            host: amqp.host,
            port: DEFAULT_PORT,
            prefix: String::new(),
            user: amqp.user.unwrap_or_else(|| "guest".to_owned()),
            password: amqp.password.unwrap_or_else(|| "guest".to_owned()),
            vhost,
        };
        if let Some(url) = &config.management_url {
            let parts = UrlParts::parse(url)
                .filter(|p| p.scheme == "http")
                .ok_or_else(|| {
                    AmqpError::config(
                        "management url",
                        "expected `http://host:port`, optionally with a user and a path prefix \
                         (https is not supported)",
                    )
                })?;
            management.host = parts.host;
            management.port = parts.port.unwrap_or(80);
            management.prefix = parts.path.trim_end_matches('/').to_owned();
            if let Some(user) = parts.user {
                management.user = user;
                management.password = parts.password.unwrap_or_default();
            }
        }
        Ok(management)
    }

    /// The API's base URL, without credentials: safe to print.
    pub(crate) fn base_url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("http://{host}:{}{}", self.port, self.prefix)
    }

    /// The names of every queue in the vhost.
    pub(crate) async fn queue_names(&self, timeout: Duration) -> Result<Vec<String>, AmqpError> {
        let path = format!("/api/queues/{}?columns=name", percent_encode(&self.vhost));
        let body = self.get(&path, timeout).await?;
        let queues: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
            self.error(format!("answered with JSON that is not a queue list ({e})"))
        })?;
        Ok(queues
            .iter()
            .filter_map(|q| q.get("name")?.as_str().map(str::to_owned))
            .collect())
    }

    async fn get(&self, path: &str, timeout: Duration) -> Result<Vec<u8>, AmqpError> {
        let exchange = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            let request = format!(
                "GET {}{path} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Basic {}\r\n\
                 Accept: application/json\r\nConnection: close\r\n\r\n",
                self.prefix,
                self.host,
                self.port,
                base64(format!("{}:{}", self.user, self.password).as_bytes()),
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            let mut raw = Vec::new();
            (&mut stream)
                .take(MAX_RESPONSE as u64 + 1)
                .read_to_end(&mut raw)
                .await
                .map_err(|e| self.unreachable(&e.to_string()))?;
            if raw.len() > MAX_RESPONSE {
                return Err(self.error(format!("answered more than {MAX_RESPONSE} bytes")));
            }
            Ok(raw)
        };
        let raw = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| self.unreachable(&format!("no answer within {timeout:?}")))??;
        let response = Response::parse(&raw)
            .ok_or_else(|| self.error("answered something that is not HTTP".to_owned()))?;
        match response.status {
            200 => Ok(response.body),
            401 => Err(self.error(format!(
                "refused the credentials of user `{}` (401); the user needs the `monitoring` \
                 or `management` tag",
                self.user
            ))),
            404 => Err(self.error(format!("does not know vhost `{}` (404)", self.vhost))),
            status => Err(self.error(format!("answered HTTP {status}"))),
        }
    }

    fn unreachable(&self, cause: &str) -> AmqpError {
        self.error(format!(
            "does not answer ({cause}); enable it with `rabbitmq-plugins enable \
             rabbitmq_management`, or set CHOREO_AMQP_MANAGEMENT_URL to where it listens"
        ))
    }

    fn error(&self, reason: String) -> AmqpError {
        AmqpError::Management {
            url: self.base_url(),
            reason,
        }
    }
}

/// The parts of `scheme://user:password@host:port/path` this module needs.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    path: String,
}

impl UrlParts {
    fn parse(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => {
                    (Some(percent_decode(user)), Some(percent_decode(password)))
                }
                None => (Some(percent_decode(info)), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']')?;
            (host.to_owned(), after.strip_prefix(':'))
        } else {
            match host_port.split_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (host_port.to_owned(), None),
            }
        };
        let port = match port {
            Some(port) => Some(port.parse().ok()?),
            None => None,
        };
        if host.is_empty() {
            return None;
        }
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            host,
            port,
            path: path.to_owned(),
        })
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> Option<Self> {
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..head_end]).ok()?;
        let rest = &raw[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut status_parts = status_line.split(' ');
        if !status_parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        let status = status_parts.next()?.parse().ok()?;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().ok()?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        let body = if chunked {
            dechunk(rest)?
        } else if let Some(length) = length {
            rest.get(..length)?.to_vec()
        } else {
            rest.to_vec()
        };
        Some(Self { status, body })
    }
}

/// Decodes a chunked body: `<hex size>[;ext]\r\n<data>\r\n` ... `0\r\n\r\n`.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_is_found_from_the_amqp_url() {
        let m = Management::from_config(&AmqpConfig::new("amqp://app:s%40cret@broker:5672/%2f"))
            .unwrap();
        assert_eq!(m.base_url(), "http://broker:15672");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("app", "s@cret"));
        assert_eq!(m.vhost, "/");
        assert!(!format!("{m:?}").contains("cret"));

        let m = Management::from_config(&AmqpConfig::new("amqp://h/orders")).unwrap();
        assert_eq!((m.user.as_str(), m.vhost.as_str()), ("guest", "orders"));
        let m = Management::from_config(&AmqpConfig::new("amqp://h")).unwrap();
        assert_eq!(m.vhost, "/");
    }

    #[test]
    fn the_management_url_setting_wins() {
        let config = AmqpConfig::new("amqp://app:secret@broker/%2f")
            .management_url("http://admin:pw@mgmt:8080/rabbit/");
        let m = Management::from_config(&config).unwrap();
        assert_eq!(m.base_url(), "http://mgmt:8080/rabbit");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("admin", "pw"));
        let config = AmqpConfig::new("amqp://app:secret@broker/%2f").management_url("http://mgmt");
        let m = Management::from_config(&config).unwrap();
        assert_eq!(m.base_url(), "http://mgmt:80");
        assert_eq!(m.user, "app", "credentials of the AMQP URL");
        let config = AmqpConfig::new("amqp://h").management_url("https://mgmt");
        let error = Management::from_config(&config).unwrap_err();
        assert!(error.to_string().contains("management url"), "{error}");
    }

    #[test]
    fn responses_with_length_or_chunks() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n[1,2]";
        let r = Response::parse(raw).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[1,2]"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2;x=y\r\n2]\r\n0\r\n\r\n";
        assert_eq!(Response::parse(raw).unwrap().body, b"[1,2]");
        let raw = b"HTTP/1.1 401 Unauthorized\r\n\r\n";
        assert_eq!(Response::parse(raw).unwrap().status, 401);
        assert!(Response::parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_none());
        assert!(Response::parse(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_none());
    }

    #[test]
    fn encodings() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("a b"), "a%20b");
        assert_eq!(percent_decode("%2f%zz"), "/%zz");
    }

    #[tokio::test]
    async fn an_api_that_does_not_answer_says_how_to_enable_it() {
        // A port nothing listens on: bind one, then free it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let config = AmqpConfig::new("amqp://guest:secret@127.0.0.1/%2f")
            .management_url(format!("http://127.0.0.1:{port}"));
        let m = Management::from_config(&config).unwrap();
        let error = m
            .queue_names(Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("rabbitmq-plugins enable rabbitmq_management"),
            "{error}"
        );
        assert!(
            error.contains(&format!("http://127.0.0.1:{port}")),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
}
