//! Configuration: built-in defaults (`config.default.toml`, compiled in) < `walhook.toml` or
//! `--config FILE` < `WALHOOK_*` environment variables (`__` separates nested keys).
//!
//! A bad value is refused at start with an error naming its key. `WALHOOK_LOG` (log filter)
//! and `WALHOOK_CONFIG` (the file) are read by the binary, and `WALHOOK_TEST_DATABASE_URL` by
//! the tests, not here.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::capture::CaptureConfig;
use crate::capture::outbox::OutboxConfig;
use crate::delivery::DeliveryConfig;
use crate::delivery::retry::RetryPolicy;

/// The commented default configuration.
pub const DEFAULT_TOML: &str = include_str!("config.default.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Connection URL (or key=value string) of the watched database.
    pub database_url: String,
    /// Capture settings.
    pub capture: CaptureSection,
    /// Delivery settings.
    pub delivery: DeliverySection,
    /// REST API settings.
    pub api: ApiSection,
    /// Tables declared in the file, watched at start (`walhook.watch`).
    #[serde(default)]
    pub tables: Vec<TableSection>,
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Per-request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Allow loopback/private/link-local targets.
    pub allow_private_targets: bool,
    /// Concurrent requests per subscription.
    pub max_in_flight_per_subscription: usize,
    /// Jobs per subscription in memory before queueing in the table.
    pub max_waiting_per_subscription: usize,
    /// Jobs in memory overall before capture pauses.
    pub max_outstanding: usize,
    /// Retry delays in milliseconds.
    pub retry_schedule_ms: Vec<u64>,
    /// Disable after failing this long without success (seconds).
    pub disable_after_secs: u64,
    /// Retrier poll interval in milliseconds.
    pub retry_poll_ms: u64,
}

/// How changes are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Logical replication with pgoutput.
    Replication,
    /// Triggers writing an outbox, woken by LISTEN/NOTIFY.
    Trigger,
}

/// `[capture]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// `replication` or `trigger`.
    pub mode: CaptureMode,
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Standby status update interval in milliseconds.
    pub status_interval_ms: u64,
    /// Messages buffered between stream and consumer.
    pub channel_capacity: usize,
    /// First reconnect delay in milliseconds.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in milliseconds.
    pub reconnect_max_ms: u64,
    /// Trigger mode: read the outbox this often even without a notification.
    pub trigger_poll_ms: u64,
}

/// `[api]`: the REST hooks API served by `walhook run`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Serve the API.
    pub enabled: bool,
    /// Address to listen on.
    pub listen: std::net::SocketAddr,
    /// Ask a target to echo a challenge before subscribing it (REST hooks intent verification).
    pub verify_intent: bool,
    /// Database connections of the API's own pool (apart from delivery's).
    pub pool_size: usize,
    /// Longest wait for one of them, in milliseconds; then 503.
    pub pool_wait_ms: u64,
    /// Subscriptions one owner may hold (the next is refused with 409).
    pub max_subscriptions_per_owner: u64,
    /// Requests per minute per token (token bucket, a minute's worth of burst); then 429.
    pub rate_limit_per_minute: u32,
    /// Longest time a client may take to send a request's headers, in milliseconds.
    pub header_timeout_ms: u64,
    /// Longest time one request may take, in milliseconds; then 503.
    pub request_timeout_ms: u64,
    /// Open connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

/// `[[tables]]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    /// `table` or `schema.table`.
    pub name: String,
}

/// The configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading, parsing or typing failed; figment's message names the key and its source.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value has the right type but is unusable.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// Dotted key, e.g. `database_url`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl Config {
    /// Loads defaults < `file` (must exist when given; else `walhook.toml` if present) < env.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("walhook.toml")),
        };
        figment = figment.merge(
            Env::prefixed("WALHOOK_")
                .ignore(&["log", "config", "test_database_url"])
                .split("__"),
        );
        let config: Config = figment.extract().map_err(Box::new)?;
        config.capture_config()?;
        config.delivery_config()?;
        config.check_api()?;
        Ok(config)
    }

    /// Defaults < `toml` only (no file, no environment): for tests and embedding.
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.capture_config()?;
        config.delivery_config()?;
        config.check_api()?;
        Ok(config)
    }

    /// The delivery component's configuration, validated.
    pub fn delivery_config(&self) -> Result<DeliveryConfig, ConfigError> {
        let d = &self.delivery;
        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be positive".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("delivery.timeout_ms", d.timeout_ms)?;
        positive(
            "delivery.max_in_flight_per_subscription",
            d.max_in_flight_per_subscription as u64,
        )?;
        positive("delivery.max_outstanding", d.max_outstanding as u64)?;
        positive("delivery.retry_poll_ms", d.retry_poll_ms)?;
        Ok(DeliveryConfig {
            timeout: Duration::from_millis(d.timeout_ms),
            allow_private_targets: d.allow_private_targets,
            max_in_flight: d.max_in_flight_per_subscription,
            max_waiting: d.max_waiting_per_subscription,
            max_outstanding: d.max_outstanding,
            retry: RetryPolicy {
                schedule: d
                    .retry_schedule_ms
                    .iter()
                    .map(|&ms| Duration::from_millis(ms))
                    .collect(),
            },
            disable_after: Duration::from_secs(d.disable_after_secs),
            retry_poll: Duration::from_millis(d.retry_poll_ms),
        })
    }

    /// Refuses `[api]` values that cannot work (zero sizes and durations).
    pub fn check_api(&self) -> Result<(), ConfigError> {
        let a = &self.api;
        for (key, value) in [
            ("api.pool_size", a.pool_size as u64),
            ("api.pool_wait_ms", a.pool_wait_ms),
            (
                "api.rate_limit_per_minute",
                u64::from(a.rate_limit_per_minute),
            ),
            ("api.header_timeout_ms", a.header_timeout_ms),
            ("api.request_timeout_ms", a.request_timeout_ms),
            ("api.max_connections", a.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: "must be positive".into(),
                });
            }
        }
        Ok(())
    }

    /// Trigger capture's configuration.
    pub fn outbox_config(&self) -> Result<OutboxConfig, ConfigError> {
        let capture = self.capture_config()?;
        Ok(OutboxConfig {
            database: capture.database,
            batch: 500,
            max_in_flight: self.delivery.max_outstanding.max(1),
            poll: Duration::from_millis(self.capture.trigger_poll_ms.max(1)),
            channel_capacity: capture.channel_capacity,
            reconnect_min: capture.reconnect_min,
            reconnect_max: capture.reconnect_max,
        })
    }

    /// The capture component's configuration, validated.
    pub fn capture_config(&self) -> Result<CaptureConfig, ConfigError> {
        let database = self
            .database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::Invalid {
                key: "database_url",
                message: format!("not a PostgreSQL connection string: {e}"),
            })?;
        let c = &self.capture;
        let mut capture = CaptureConfig::new(database);
        capture.slot = c.slot.clone();
        capture.publication = c.publication.clone();
        capture.tables = self.tables.iter().map(|t| t.name.clone()).collect();
        capture.status_interval = Duration::from_millis(c.status_interval_ms);
        capture.channel_capacity = c.channel_capacity;
        capture.reconnect_min = Duration::from_millis(c.reconnect_min_ms.max(1));
        capture.reconnect_max = Duration::from_millis(c.reconnect_max_ms.max(c.reconnect_min_ms));
        capture.validate().map_err(|e| ConfigError::Invalid {
            key: "capture",
            message: e.to_string(),
        })?;
        Ok(capture)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn layers_file_over_defaults_and_env_over_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "walhook.toml",
                "database_url = \"postgres://u@127.0.0.1/db\"\n[capture]\nslot = \"from_file\"\n",
            )?;
            jail.set_env("WALHOOK_CAPTURE__STATUS_INTERVAL_MS", "250");
            let config = Config::load(None).expect("loads");
            assert_eq!(config.capture.slot, "from_file");
            assert_eq!(config.capture.status_interval_ms, 250);
            assert_eq!(config.capture.publication, "walhook");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        Jail::expect_with(|jail| {
            jail.set_env("WALHOOK_DATABASE_URL", "postgres://u@127.0.0.1/db");
            jail.set_env("WALHOOK_CAPTURE__STATUS_INTERVAL_MS", "soon");
            let err = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("capture.status_interval_ms"), "{err}");
            jail.set_env("WALHOOK_CAPTURE__STATUS_INTERVAL_MS", "5");
            jail.set_env("WALHOOK_CAPTURE__SLOT", "Bad-Slot");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("capture.slot \"Bad-Slot\""), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_database_url_and_missing_file_are_errors() {
        Jail::expect_with(|_jail| {
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("database_url"), "{err}");
            let err = Config::load(Some(Path::new("nope.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }
}
