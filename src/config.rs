//! Configuration: built-in defaults (`config.default.toml`, compiled in) < `walhook.toml` or
//! `--config FILE` < `WALHOOK_*` environment variables (`__` separates nested keys).
//!
//! A bad value is refused at start with an error naming its key. `WALHOOK_LOG` (log filter)
//! and `WALHOOK_CONFIG` (the file) are read by the binary, and `WALHOOK_TEST_DATABASE_URL` by
//! the tests, not here.
//!
//! Unknown keys in a file are errors. `WALHOOK_*` environment variables that name no key are
//! ignored (Kubernetes injects `WALHOOK_PORT`, `WALHOOK_SERVICE_HOST`… for a Service named
//! `walhook`): [`Config::load`] returns one warning naming them all, with the closest key for
//! a name within edit distance 2 of one (a likely typo), for the binary to log once tracing
//! runs.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::capture::CaptureConfig;
use crate::capture::outbox::OutboxConfig;
use crate::database::{self, Database, DatabaseError};
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
    /// Operations: heartbeat rows.
    pub ops: OpsSection,
    /// Logging.
    pub log: LogSection,
    /// Backfills.
    pub backfill: BackfillSection,
    /// The process's threads.
    pub runtime: RuntimeSection,
}

/// `[runtime]`: the threads of the process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Worker threads of the async runtime; 0: one per core.
    pub worker_threads: usize,
}

/// Most worker threads `runtime.worker_threads` accepts.
const MAX_WORKER_THREADS: usize = 256;

impl RuntimeSection {
    /// The worker threads to start, validated (0: [`default_worker_threads`]).
    pub fn worker_threads(&self) -> Result<usize, ConfigError> {
        match self.worker_threads {
            0 => Ok(default_worker_threads()),
            n if n <= MAX_WORKER_THREADS => Ok(n),
            n => Err(ConfigError::Invalid {
                key: "runtime.worker_threads",
                message: format!("{n} is more than {MAX_WORKER_THREADS} (0: one per core)"),
            }),
        }
    }
}

/// One worker thread per core (what the machine or the container's CPU limit offers).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// `[backfill]`: how backfills read their tables (docs/backfill.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSection {
    /// Rows read per chunk (one short query between two watermarks), 1 to 100000.
    pub chunk_size: i64,
    /// Most rows a backfill reads per second (0: no limit), so that a backfill leaves room
    /// to the database, the endpoints and live events.
    pub max_rows_per_second: u64,
}

impl Config {
    /// `backfill.chunk_size`, validated (1 to 100000).
    pub fn backfill_chunk_size(&self) -> Result<i64, ConfigError> {
        match self.backfill.chunk_size {
            n @ 1..=100_000 => Ok(n),
            n => Err(ConfigError::Invalid {
                key: "backfill.chunk_size",
                message: format!("{n} is out of range (1 to 100000)"),
            }),
        }
    }
}

/// `[ops]`: what `walhook run` publishes for `walhook status`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSection {
    /// How often the heartbeat row is written (and retained WAL re-checked), in
    /// milliseconds; a row older than three intervals counts as a dead instance.
    pub heartbeat_interval_ms: u64,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` (human-readable, the default) or `json` (one JSON object per line).
    pub format: LogFormat,
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) for walhook's own
    /// messages, or a full filter (`walhook=debug,tokio_postgres=info`). `WALHOOK_LOG`, when
    /// set, wins.
    pub level: String,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogSection {
    /// The tracing filter directive `level` stands for: a bare level applies to walhook's own
    /// messages (`info` → `walhook=info`); anything else is used as written.
    pub fn filter(&self) -> String {
        let level = self.level.trim();
        if level.contains('=') || level.contains(',') {
            level.to_owned()
        } else {
            format!("walhook={level}")
        }
    }
}

/// A size in bytes in the configuration: a whole number of bytes (`1073741824`), or a number
/// with a unit (`"512MB"`, `"1GiB"`, `"100kB"`). Units are binary, as in PostgreSQL's own
/// settings: `kB`/`KiB` = 1024, `MB`/`MiB` = 1024², `GB`/`GiB` = 1024³, `TB`/`TiB` = 1024⁴;
/// `B` or no unit is bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ByteSetting {
    /// Whole bytes.
    Bytes(u64),
    /// A number followed by a unit.
    Text(String),
}

impl ByteSetting {
    /// The size in bytes, or why the value is unusable.
    pub fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            ByteSetting::Bytes(bytes) => return Ok(*bytes),
            ByteSetting::Text(text) => text.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "kib" => 1 << 10,
            "mb" | "mib" => 1 << 20,
            "gb" | "gib" => 1 << 30,
            "tb" | "tib" => 1 << 40,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(n) if unit_bytes > 0 => n
                .checked_mul(unit_bytes)
                .ok_or_else(|| format!("{text:?} is too large")),
            _ => Err(format!(
                "{text:?} is not a size: use bytes or a number with B, kB, MB, GB or TB (\"1GiB\", \"512MB\")"
            )),
        }
    }
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
    /// Longest an event waits in memory (for a slot or its endpoint) before it is written to
    /// the queue table, so its transaction can be acknowledged (milliseconds).
    pub max_hold_ms: u64,
    /// Retry delays in milliseconds.
    pub retry_schedule_ms: Vec<u64>,
    /// Disable after failing this long without success (seconds).
    pub disable_after_secs: u64,
    /// Retrier poll interval in milliseconds.
    pub retry_poll_ms: u64,
    /// Send every request through this HTTP(S) proxy URL; unset, no proxy is used (the
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` environment is ignored). Requires
    /// `allow_private_targets = true`.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Dead letters are purged once dead this long: seconds, or `"90s"`, `"15m"`, `"36h"`,
    /// `"14d"`, `"2w"`.
    pub dead_letter_retention: DurationSetting,
}

/// A duration in the configuration: whole seconds (`1209600`), or a number with a unit
/// (`"90s"`, `"15m"`, `"36h"`, `"14d"`, `"2w"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DurationSetting {
    /// Whole seconds.
    Secs(u64),
    /// A number followed by `s`, `m`, `h`, `d` or `w` (a bare number is seconds).
    Text(String),
}

impl DurationSetting {
    /// The duration, or why the value is unusable.
    pub fn duration(&self) -> Result<Duration, String> {
        let text = match self {
            DurationSetting::Secs(secs) => return Ok(Duration::from_secs(*secs)),
            DurationSetting::Text(text) => text.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit_secs = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(n) if unit_secs > 0 => n
                .checked_mul(unit_secs)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{text:?} is too long")),
            _ => Err(format!(
                "{text:?} is not a duration: use seconds or a number with s, m, h, d or w (\"14d\")"
            )),
        }
    }
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
    /// Retained WAL above this is a preflight WARN and makes `/readyz` answer 503: bytes, or
    /// `"1GiB"`, `"512MB"` (see [`ByteSetting`]).
    pub max_retained_wal: ByteSetting,
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
    /// Serve the browser console at `/console` (docs/console.md).
    pub console: bool,
    /// Mark the console's session cookie `Secure` (set it when a TLS proxy is in front).
    pub console_secure_cookie: bool,
    /// How long a console session lasts, in minutes.
    pub console_session_minutes: u64,
}

/// `[[tables]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSection {
    /// `table` (in schema `public`) or `schema.table`; SQL identifier syntax, so
    /// `"Sales"."Order Items"` keeps its case and space.
    pub name: String,
    /// Only these columns reach subscribers (`walhook.watch(..., columns => ...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// These columns never reach subscribers (`exclude_columns => ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_columns: Option<Vec<String>>,
    /// Row filter, an SQL predicate on the table's columns (`"where" => ...`).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub row_filter: Option<String>,
}

impl TableSection {
    /// Whether the section sets columns or a row filter (then `walhook run` applies them
    /// to the watch at every start, keeping its noun and verbs).
    pub fn shapes_payload(&self) -> bool {
        self.columns.is_some() || self.exclude_columns.is_some() || self.row_filter.is_some()
    }
}

/// Environment keys read elsewhere (the binary, the tests), never configuration.
const ENV_IGNORED: &[&str] = &["log", "config", "test_database_url"];

/// Every configuration key, dotted (`capture.slot`), sections included: what the
/// compiled-in defaults define, plus the keys without a default (`database_url`, `tables`,
/// `delivery.proxy`).
fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, dict: &figment::value::Dict, out: &mut Vec<String>) {
        for (key, value) in dict {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if let figment::value::Value::Dict(_, inner) = value {
                walk(&path, inner, out);
            }
            out.push(path);
        }
    }
    let mut keys: Vec<String> = ["database_url", "tables", "delivery.proxy"]
        .map(str::to_owned)
        .to_vec();
    if let Ok(dict) = Figment::from(Toml::string(DEFAULT_TOML)).extract::<figment::value::Dict>() {
        walk("", &dict, &mut keys);
    }
    keys
}

/// Levenshtein distance (short ASCII keys: the quadratic table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// `capture.slot` → `WALHOOK_CAPTURE__SLOT`.
fn env_name(key: &str) -> String {
    format!("WALHOOK_{}", key.replace('.', "__").to_uppercase())
}

/// The one warning about `WALHOOK_*` variables that are not configuration keys, if any.
fn unknown_env(vars: impl Iterator<Item = (String, String)>) -> Option<String> {
    let known = known_keys();
    let mut unknown = Vec::new();
    for (name, _) in vars {
        let Some(rest) = name.strip_prefix("WALHOOK_") else {
            continue;
        };
        let key = rest.to_lowercase().replace("__", ".");
        if ENV_IGNORED.contains(&key.as_str()) || known.contains(&key) {
            continue;
        }
        let closest = known
            .iter()
            .map(|k| (edit_distance(&env_name(k), &name), k))
            .min();
        unknown.push(match closest {
            Some((distance, k)) if distance <= 2 => {
                format!("{name} (did you mean {}?)", env_name(k))
            }
            _ => name,
        });
    }
    unknown.sort();
    (!unknown.is_empty()).then(|| {
        format!(
            "ignoring environment variables that are not configuration keys: {}",
            unknown.join(", ")
        )
    })
}

/// A [`DatabaseError`] from parsing `database_url`, as a configuration error.
fn database_url_error(e: DatabaseError) -> ConfigError {
    let message = match e {
        DatabaseError::Parameter { parameter, message } => format!("{parameter}: {message}"),
        DatabaseError::Parse(message) => format!("not a PostgreSQL connection string: {message}"),
        other => other.to_string(),
    };
    ConfigError::Invalid {
        key: "database_url",
        message,
    }
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
    /// Returns the configuration and warnings to log (environment variables ignored).
    pub fn load(file: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("walhook.toml")),
        };
        let known = known_keys();
        figment = figment.merge(
            Env::prefixed("WALHOOK_")
                .ignore(ENV_IGNORED)
                .filter(move |key| known.contains(&key.as_str().to_lowercase().replace("__", ".")))
                .split("__"),
        );
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        config.check_api()?;
        let warnings = unknown_env(std::env::vars()).into_iter().collect();
        Ok((config, warnings))
    }

    /// Defaults < `toml` only (no file, no environment): for tests and embedding.
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml));
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        config.check_api()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.capture_config(self.database()?)?;
        self.delivery_config()?;
        self.check_ops()?;
        self.backfill_chunk_size()?;
        self.runtime.worker_threads()?;
        Ok(())
    }

    /// `capture.max_retained_wal` in bytes, validated (positive).
    pub fn max_retained_wal(&self) -> Result<u64, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "capture.max_retained_wal",
            message,
        };
        match self.capture.max_retained_wal.bytes().map_err(invalid)? {
            0 => Err(invalid("must be positive".into())),
            bytes => Ok(bytes),
        }
    }

    /// `ops.heartbeat_interval_ms`, validated (1 ms to 1 hour).
    pub fn heartbeat_interval(&self) -> Result<Duration, ConfigError> {
        match self.ops.heartbeat_interval_ms {
            ms @ 1..=3_600_000 => Ok(Duration::from_millis(ms)),
            ms => Err(ConfigError::Invalid {
                key: "ops.heartbeat_interval_ms",
                message: format!("{ms} is out of range (1 to 3600000)"),
            }),
        }
    }

    /// Refuses `[ops]`, `[log]` and `capture.max_retained_wal` values that cannot work.
    fn check_ops(&self) -> Result<(), ConfigError> {
        self.max_retained_wal()?;
        self.heartbeat_interval()?;
        let filter = self.log.filter();
        tracing_subscriber::EnvFilter::builder()
            .parse(&filter)
            .map_err(|e| ConfigError::Invalid {
                key: "log.level",
                message: format!("{:?} is not a level or filter: {e}", self.log.level),
            })?;
        Ok(())
    }

    /// The database handle, parsed from `database_url` (TLS files read now). Parse it once
    /// and clone the handle.
    pub fn database(&self) -> Result<Database, ConfigError> {
        Database::parse(&self.database_url).map_err(database_url_error)
    }

    /// The `[[tables]]` as (schema, table) pairs.
    pub fn table_names(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.tables
            .iter()
            .map(|t| {
                // Exact spelling split at the first dot, unless quoted SQL syntax (see
                // crate::table_names, which also finds case-folded spellings when watching).
                if !t.name.contains('"') {
                    let (schema, table) = t.name.split_once('.').unwrap_or(("public", &t.name));
                    return Ok((schema.to_owned(), table.to_owned()));
                }
                database::split_table_name(&t.name).ok_or_else(|| ConfigError::Invalid {
                    key: "tables.name",
                    message: format!(
                        "{:?} is not `table`, `schema.table` or quoted SQL identifiers",
                        t.name
                    ),
                })
            })
            .collect()
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
        positive("delivery.max_hold_ms", d.max_hold_ms)?;
        self.dead_letter_retention()?;
        if let Some(proxy) = &d.proxy {
            if !d.allow_private_targets {
                return Err(ConfigError::Invalid {
                    key: "delivery.proxy",
                    message: "set while delivery.allow_private_targets = false: walhook cannot \
                              check the addresses a proxy connects to; unset delivery.proxy or \
                              set delivery.allow_private_targets = true"
                        .into(),
                });
            }
            reqwest::Url::parse(proxy).map_err(|e| ConfigError::Invalid {
                key: "delivery.proxy",
                message: format!("{proxy:?} is not a URL: {e}"),
            })?;
        }
        Ok(DeliveryConfig {
            timeout: Duration::from_millis(d.timeout_ms),
            allow_private_targets: d.allow_private_targets,
            max_in_flight: d.max_in_flight_per_subscription,
            max_waiting: d.max_waiting_per_subscription,
            max_outstanding: d.max_outstanding,
            max_hold: Duration::from_millis(d.max_hold_ms),
            retry: RetryPolicy {
                schedule: d
                    .retry_schedule_ms
                    .iter()
                    .map(|&ms| Duration::from_millis(ms))
                    .collect(),
            },
            disable_after: Duration::from_secs(d.disable_after_secs),
            retry_poll: Duration::from_millis(d.retry_poll_ms),
            proxy: d.proxy.clone(),
        })
    }

    /// `delivery.dead_letter_retention`, validated (positive, at most 100 years).
    pub fn dead_letter_retention(&self) -> Result<Duration, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: "delivery.dead_letter_retention",
            message,
        };
        let retention = self
            .delivery
            .dead_letter_retention
            .duration()
            .map_err(invalid)?;
        if retention.is_zero() || retention > Duration::from_secs(100 * 365 * 86_400) {
            return Err(invalid(format!(
                "{retention:?} is out of range (more than 0 s, at most 100 years)"
            )));
        }
        Ok(retention)
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

    /// Trigger capture's configuration, on `database`.
    pub fn outbox_config(&self, database: Database) -> Result<OutboxConfig, ConfigError> {
        let capture = self.capture_config(database)?;
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

    /// The capture component's configuration on `database`, validated.
    pub fn capture_config(&self, database: Database) -> Result<CaptureConfig, ConfigError> {
        let c = &self.capture;
        let mut capture = CaptureConfig::new(database);
        capture.slot = c.slot.clone();
        capture.publication = c.publication.clone();
        capture.tables = self.table_names()?;
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
            let (config, warnings) = Config::load(None).expect("loads");
            assert!(warnings.is_empty(), "{warnings:?}");
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
            jail.set_env("WALHOOK_CAPTURE__SLOT", "good_slot");
            jail.set_env("WALHOOK_BACKFILL__MAX_ROWS_PER_SECOND", "-5");
            let err = Config::load(None).unwrap_err().to_string().to_lowercase();
            assert!(err.contains("backfill.max_rows_per_second"), "{err}");
            jail.set_env("WALHOOK_BACKFILL__MAX_ROWS_PER_SECOND", "0");
            let (config, _) = Config::load(None).expect("0: no limit");
            assert_eq!(config.backfill.max_rows_per_second, 0);
            assert_eq!(
                config.runtime.worker_threads().unwrap(),
                default_worker_threads()
            );
            jail.set_env("WALHOOK_RUNTIME__WORKER_THREADS", "100000");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("runtime.worker_threads"), "{err}");
            assert!(err.contains("more than 256"), "{err}");
            jail.set_env("WALHOOK_RUNTIME__WORKER_THREADS", "3");
            let (config, _) = Config::load(None).expect("3 threads");
            assert_eq!(config.runtime.worker_threads().unwrap(), 3);
            Ok(())
        });
    }

    #[test]
    fn dead_letter_retention_and_proxy() {
        let url = "database_url = \"postgres://u@127.0.0.1/db\"\n";
        let config = Config::from_toml(url).expect("defaults load");
        assert_eq!(
            config.dead_letter_retention().unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(config.delivery.proxy, None);
        for (value, secs) in [
            ("\"36h\"", 129_600),
            ("\"90s\"", 90),
            ("\"2w\"", 1_209_600),
            ("\"15m\"", 900),
            ("3600", 3600),
        ] {
            let config = Config::from_toml(&format!(
                "{url}[delivery]\ndead_letter_retention = {value}\n"
            ))
            .unwrap();
            assert_eq!(
                config.dead_letter_retention().unwrap(),
                Duration::from_secs(secs),
                "{value}"
            );
        }
        for value in ["\"soon\"", "\"14y\"", "\"-1d\"", "0", "\"99999999999999w\""] {
            let err = Config::from_toml(&format!(
                "{url}[delivery]\ndead_letter_retention = {value}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("configuration key delivery.dead_letter_retention: "),
                "{value}: {err}"
            );
        }
        let err = Config::from_toml(&format!(
            "{url}[delivery]\nproxy = \"http://127.0.0.1:3128\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "configuration key delivery.proxy: set while delivery.allow_private_targets = false: walhook cannot \
             check the addresses a proxy connects to; unset delivery.proxy or set delivery.allow_private_targets = true"
        );
        let config = Config::from_toml(&format!(
            "{url}[delivery]\nproxy = \"http://127.0.0.1:3128\"\nallow_private_targets = true\n"
        ))
        .unwrap();
        assert_eq!(
            config.delivery_config().unwrap().proxy.as_deref(),
            Some("http://127.0.0.1:3128")
        );
        Jail::expect_with(|jail| {
            jail.set_env("WALHOOK_DATABASE_URL", "postgres://u@127.0.0.1/db");
            jail.set_env("WALHOOK_DELIVERY__DEAD_LETTER_RETENTION", "36h");
            assert_eq!(
                Config::load(None)
                    .unwrap()
                    .0
                    .dead_letter_retention()
                    .unwrap(),
                Duration::from_secs(129_600)
            );
            jail.set_env("WALHOOK_DELIVERY__DEAD_LETTER_RETENTION", "90");
            assert_eq!(
                Config::load(None)
                    .unwrap()
                    .0
                    .dead_letter_retention()
                    .unwrap(),
                Duration::from_secs(90)
            );
            Ok(())
        });
    }

    #[test]
    fn max_retained_wal_heartbeat_and_log_settings() {
        let url = "database_url = \"postgres://u@127.0.0.1/db\"\n";
        let config = Config::from_toml(url).expect("defaults load");
        assert_eq!(config.max_retained_wal().unwrap(), 1 << 30);
        assert_eq!(
            config.heartbeat_interval().unwrap(),
            Duration::from_millis(2000)
        );
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.log.filter(), "walhook=info");
        for (value, bytes) in [
            ("1073741824", 1u64 << 30),
            ("\"512MB\"", 512 << 20),
            ("\"512 MiB\"", 512 << 20),
            ("\"100kB\"", 100 << 10),
            ("\"2TB\"", 2 << 40),
            ("\"4096\"", 4096),
            ("\"10B\"", 10),
        ] {
            let config =
                Config::from_toml(&format!("{url}[capture]\nmax_retained_wal = {value}\n"))
                    .unwrap();
            assert_eq!(config.max_retained_wal().unwrap(), bytes, "{value}");
        }
        for value in ["0", "\"1PB\"", "\"lots\"", "\"99999999999TB\""] {
            let err = Config::from_toml(&format!("{url}[capture]\nmax_retained_wal = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("configuration key capture.max_retained_wal: "),
                "{value}: {err}"
            );
        }
        let config = Config::from_toml(&format!(
            "{url}[log]\nformat = \"json\"\nlevel = \"walhook=debug,tokio_postgres=info\"\n"
        ))
        .unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.filter(), "walhook=debug,tokio_postgres=info");
        let err = Config::from_toml(&format!("{url}[ops]\nheartbeat_interval_ms = 0\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "configuration key ops.heartbeat_interval_ms: 0 is out of range (1 to 3600000)"
        );
    }

    #[test]
    fn unknown_environment_variables_warn_once_with_hints() {
        Jail::expect_with(|jail| {
            jail.set_env("WALHOOK_DATABASE_URL", "postgres://u@127.0.0.1/db");
            jail.set_env("WALHOOK_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("WALHOOK_SERVICE_HOST", "10.0.0.1");
            jail.set_env("WALHOOK_PORT_8080_TCP_ADDR", "10.0.0.1");
            jail.set_env("WALHOOK_DELIVERY__TIMEOUT_M", "5");
            jail.set_env("WALHOOK_CAPTURE_SLOT", "typo");
            jail.set_env("WALHOOK_DELIVERY__TIMEOUT_MS", "1234");
            let (config, warnings) = Config::load(None).expect("loads");
            assert_eq!(config.delivery.timeout_ms, 1234);
            assert_eq!(config.capture.slot, "walhook");
            assert_eq!(
                warnings,
                vec![
                    "ignoring environment variables that are not configuration keys: \
                     WALHOOK_CAPTURE_SLOT (did you mean WALHOOK_CAPTURE__SLOT?), \
                     WALHOOK_DELIVERY__TIMEOUT_M (did you mean WALHOOK_DELIVERY__TIMEOUT_MS?), \
                     WALHOOK_PORT, WALHOOK_PORT_8080_TCP_ADDR, WALHOOK_SERVICE_HOST"
                        .to_owned()
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_in_a_file_stay_errors() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "walhook.toml",
                "database_url = \"postgres://u@127.0.0.1/db\"\n[delivery]\ntimeout_m = 5\n",
            )?;
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("unknown field") && err.contains("timeout_m"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn database_url_parameters_are_named() {
        let err = Config::from_toml("database_url = \"postgres://u@h/db?sslmode=verify-full\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "configuration key database_url: sslrootcert: sslmode=verify-full needs \
             sslrootcert=FILE (PEM CA certificates)"
        );
        let config = Config::from_toml(
            "database_url = \"postgres://u@h/db\"\n[[tables]]\nname = 'orders'\n[[tables]]\nname = '\"Sales\".\"Order Items\"'\n",
        )
        .unwrap();
        assert_eq!(
            config.table_names().unwrap(),
            vec![
                ("public".to_owned(), "orders".to_owned()),
                ("Sales".to_owned(), "Order Items".to_owned())
            ]
        );
    }

    #[test]
    fn table_sections_take_columns_and_a_row_filter() {
        let config = Config::from_toml(
            "database_url = \"postgres://u@h/db\"\n[[tables]]\nname = 'users'\n\
             exclude_columns = ['password_hash']\nwhere = 'tenant_id <> 0'\n\
             [[tables]]\nname = 'orders'\ncolumns = ['id', 'status']\n[[tables]]\nname = 'plain'\n",
        )
        .unwrap();
        let t = &config.tables;
        assert_eq!(t[0].exclude_columns, Some(vec!["password_hash".to_owned()]));
        assert_eq!(t[0].row_filter.as_deref(), Some("tenant_id <> 0"));
        assert_eq!(t[0].columns, None);
        assert_eq!(
            t[1].columns,
            Some(vec!["id".to_owned(), "status".to_owned()])
        );
        assert!(t[0].shapes_payload() && t[1].shapes_payload() && !t[2].shapes_payload());
        let err = Config::from_toml(
            "database_url = \"postgres://u@h/db\"\n[[tables]]\nname = 't'\nexclude = ['a']\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("exclude"), "{err}");
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
