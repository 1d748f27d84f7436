//! Configuration of the RabbitMQ transport.

use std::fmt;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

use crate::error::AmqpError;

/// The environment variable read by [`AmqpConfig::from_env`].
pub const URL_ENV: &str = "CHOREO_AMQP_URL";

/// The environment variable read by [`AmqpConfig::from_env`] for the management API's URL.
pub const MANAGEMENT_URL_ENV: &str = "CHOREO_AMQP_MANAGEMENT_URL";

/// The URL used when `CHOREO_AMQP_URL` is not set: a local broker with the default user.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The kind of queue declared for handlers, their retry tiers and poison queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, durable Raft queues: the default, and what a cluster needs.
    #[default]
    Quorum,
    /// Classic durable queues, for a single broker or brokers older than 3.10.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// How the transport connects, declares and publishes.
///
/// ```
/// use std::time::Duration;
/// use choreo_amqp::{AmqpConfig, QueueType};
///
/// let config = AmqpConfig::new("amqp://app:secret@broker:5672/%2f")
///     .queue_type(QueueType::Classic)
///     .publish_timeout(Duration::from_secs(60));
/// assert_eq!(config.redacted_url(), "amqp://app:***@broker:5672/%2f");
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct AmqpConfig {
    pub(crate) url: String,
    pub(crate) exchange_prefix: String,
    pub(crate) queue_type: QueueType,
    pub(crate) publish_timeout: Duration,
    pub(crate) confirm_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) max_body_size: usize,
    pub(crate) mandatory: bool,
    pub(crate) publish_channels: usize,
    pub(crate) connection_name: String,
    pub(crate) management_url: Option<String>,
    pub(crate) tls: OwnedTLSConfig,
}

impl AmqpConfig {
    /// Connects to `url`: `amqp://user:password@host:port/vhost`, or `amqps://` with the `tls`
    /// feature.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange_prefix: String::new(),
            queue_type: QueueType::default(),
            publish_timeout: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_body_size: 1024 * 1024,
            mandatory: true,
            publish_channels: 1,
            connection_name: "choreo".to_owned(),
            management_url: None,
            tls: OwnedTLSConfig::default(),
        }
    }

    /// Connects to the URL in `CHOREO_AMQP_URL`, or to [`DEFAULT_URL`] when it is not set;
    /// takes the management API's URL from `CHOREO_AMQP_MANAGEMENT_URL` when it is set.
    pub fn from_env() -> Self {
        let config = Self::new(std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned()));
        match std::env::var(MANAGEMENT_URL_ENV) {
            Ok(url) if !url.is_empty() => config.management_url(url),
            _ => config,
        }
    }

    /// Prefixes every domain exchange, e.g. `"acme."` gives `acme.orders`. Default: none.
    #[must_use]
    pub fn exchange_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.exchange_prefix = prefix.into();
        self
    }

    /// The kind of queue to declare. Default: quorum.
    #[must_use]
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// How long one publish may wait, through reconnections, before it fails. Default: 30 s.
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long to wait for one confirm before the connection is presumed dead and replaced.
    /// Default: 10 s.
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// How long one connection attempt may take. Default: 10 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The shortest and longest pause between reconnection attempts; the pause doubles from
    /// one to the other. Default: 100 ms to 5 s.
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// The largest body this client publishes. Default: 1 MiB.
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Whether an event that no queue is bound to is an error (`true`, the default) or
    /// silently dropped by the broker.
    #[must_use]
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// How many confirm-mode channels publish at once. Default: 1, which already keeps many
    /// publishes in flight; each further channel costs the broker CPU per message.
    #[must_use]
    pub fn publish_channels(mut self, channels: usize) -> Self {
        self.publish_channels = channels;
        self
    }

    /// The name the connections show in the broker's management UI. Default: `choreo`.
    #[must_use]
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Trusts these certificate authorities (PEM) for `amqps://`, in addition to the system's.
    /// The broker's certificate is always verified.
    #[must_use]
    pub fn tls_ca_certificates(mut self, pem: impl Into<String>) -> Self {
        self.tls.cert_chain = Some(pem.into());
        self
    }

    /// Authenticates with a client certificate and key, both PEM (the key unencrypted PKCS#8),
    /// e.g. for `?auth_mechanism=external`.
    #[must_use]
    pub fn tls_client_certificate(mut self, certificate_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.tls.identity = Some(OwnedIdentity::PKCS8 {
            pem: certificate_pem,
            key: key_pem,
        });
        self
    }

    /// Authenticates with a client identity in a PKCS#12 archive.
    #[must_use]
    pub fn tls_client_pkcs12(mut self, der: Vec<u8>, password: impl Into<String>) -> Self {
        self.tls.identity = Some(OwnedIdentity::PKCS12 {
            der,
            password: password.into(),
        });
        self
    }

    /// Where the broker's management HTTP API listens, for the operator tools that list
    /// queues: `http://host:port`, optionally with `user:password@` and a path prefix.
    /// Default: the AMQP URL's host on port 15672, with the AMQP URL's credentials.
    #[must_use]
    pub fn management_url(mut self, url: impl Into<String>) -> Self {
        self.management_url = Some(url.into());
        self
    }

    /// The URL with its password replaced by `***`: safe to log.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// The exchange of a domain.
    pub fn exchange(&self, domain: &str) -> String {
        format!("{}{domain}", self.exchange_prefix)
    }

    pub(crate) fn validate(&self) -> Result<(), AmqpError> {
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("amqp") => {}
            Some("amqps") if cfg!(feature = "tls") => {}
            Some("amqps") => {
                return Err(AmqpError::config(
                    "url",
                    "`amqps://` needs the `tls` feature of choreo-amqp",
                ));
            }
            _ => {
                return Err(AmqpError::config(
                    "url",
                    format!(
                        "`{}` is not an `amqp://` or `amqps://` URL",
                        self.redacted_url()
                    ),
                ));
            }
        }
        let checks: [(&str, bool, &str); 6] = [
            (
                "publish timeout",
                self.publish_timeout.is_zero(),
                "must be longer than zero",
            ),
            (
                "confirm timeout",
                self.confirm_timeout.is_zero(),
                "must be longer than zero",
            ),
            (
                "connect timeout",
                self.connect_timeout.is_zero(),
                "must be longer than zero",
            ),
            (
                "reconnect backoff",
                self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max,
                "the shortest pause must be longer than zero and not longer than the longest",
            ),
            (
                "max body size",
                self.max_body_size == 0,
                "must be at least 1 byte",
            ),
            (
                "publish channels",
                self.publish_channels == 0 || self.publish_channels > 64,
                "allowed: 1 to 64",
            ),
        ];
        for (setting, bad, reason) in checks {
            if bad {
                return Err(AmqpError::config(setting, reason));
            }
        }
        Ok(())
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self::from_env()
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("exchange_prefix", &self.exchange_prefix)
            .field("queue_type", &self.queue_type)
            .field("publish_timeout", &self.publish_timeout)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("mandatory", &self.mandatory)
            .field(
                "management_url",
                &self.management_url.as_deref().map(redact),
            )
            .field("tls_ca_certificates", &self.tls.cert_chain.is_some())
            .field("tls_client_identity", &self.tls.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// Replaces the password of a URL with `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://u:p@ss@h/v"), "amqp://u:***@h/v");
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact("amqp://user@h"), "amqp://user@h");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn invalid_settings_are_named() {
        let e = AmqpConfig::new("http://x").validate().unwrap_err();
        assert!(e.to_string().contains("url"), "{e}");
        let e = AmqpConfig::new("amqp://x")
            .publish_channels(0)
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: publish channels: allowed: 1 to 64"
        );
    }
}
