//! `walhook status`: capture, lag, retained WAL, queues and checks, from the database alone.
//!
//! It works with no daemon running (and says so): running daemons publish what only they
//! know in `walhook.instances` ([`super::heartbeat`]); everything else is read from the
//! catalogs and walhook's tables. It never writes. [`Status::exit_code`]: 0 healthy, 1 a
//! warning (a WARN check; capture starting, reconnecting or only standing by), 2 failing (a
//! FAIL check, or capture not running).

use serde::Serialize;
use tokio_postgres::Client;

use super::preflight::{self, Check, Context, Level, Settings, SlotFacts};
use super::{OpsError, STALE_INTERVALS, human_bytes, rfc3339};
use crate::capture::progress::{Gap, gaps};
use crate::config::{CaptureMode, Config, ConfigError};
use crate::database::Database;

/// Everything `walhook status` reports; its JSON form is `walhook status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// When this was read (database time, RFC 3339 UTC).
    pub checked_at: String,
    /// `ok`, `warning` or `failing`.
    pub health: &'static str,
    /// The exit code: 0, 1 or 2.
    pub exit_code: i32,
    /// Capture: mode, state, slot, lag.
    pub capture: CaptureStatus,
    /// Events and deliveries per second over the last minute, summed over live instances.
    pub rates: RatesStatus,
    /// Live instances (heartbeat within three intervals), oldest first.
    pub instances: Vec<Instance>,
    /// Queue totals over all subscriptions.
    pub queue: QueueTotals,
    /// Every subscription, with its queue depth and health.
    pub subscriptions: Vec<SubscriptionStatus>,
    /// The preflight checks.
    pub checks: Vec<Check>,
    /// Gaps in the event stream accepted by `walhook slot reset`, oldest first (they do not
    /// change the exit code: each was accepted by an operator).
    pub gaps: Vec<Gap>,
    /// Running backfills and those finished within the last day, newest first.
    pub backfills: Vec<BackfillStatus>,
}

/// One backfill (`walhook.backfills`).
#[derive(Debug, Clone, Serialize)]
pub struct BackfillStatus {
    /// Its id.
    pub id: String,
    /// `schema.table`.
    pub table: String,
    /// The subscription it is for; `None`: every subscription taking the table's events.
    pub subscription_id: Option<String>,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Rows sent so far.
    pub rows_sent: i64,
    /// Rows the table held when it started (an estimate).
    pub estimated_total: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub created_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
}

/// Capture as the database shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureStatus {
    /// `replication` or `trigger` (the installation's mode, `walhook.settings`).
    pub mode: &'static str,
    /// `streaming`, `standby`, `reconnecting`, `starting` or `not running`.
    pub state: &'static str,
    /// The instance that captures (streams the slot or reads the outbox), if any.
    pub streaming_instance: Option<StreamingInstance>,
    /// The replication slot's name.
    pub slot_name: String,
    /// The slot, when it exists (replication mode).
    pub slot: Option<SlotFacts>,
    /// `pg_current_wal_lsn() - restart_lsn` of the slot.
    pub retained_wal_bytes: Option<i64>,
    /// `capture.max_retained_wal`.
    pub max_retained_wal_bytes: u64,
    /// Replication: WAL not yet confirmed by walhook (`pg_current_wal_lsn() -
    /// confirmed_flush_lsn`). Trigger: `None`.
    pub lag_bytes: Option<i64>,
    /// Seconds walhook is behind. Replication: since the commit of the last acknowledged
    /// transaction while the slot is behind (0 when caught up). Trigger: age of the oldest
    /// outbox row (0 when empty). `None` when unknown.
    pub lag_seconds: Option<f64>,
    /// Highest acknowledged LSN, from the capturing instance.
    pub acknowledged_lsn: Option<String>,
    /// Commit time of the last acknowledged transaction, from the capturing instance.
    pub acknowledged_commit_time: Option<String>,
    /// Trigger mode: rows in `walhook.outbox` not yet delivered or queued.
    pub outbox_rows: Option<i64>,
}

/// Who captures.
#[derive(Debug, Clone, Serialize)]
pub struct StreamingInstance {
    /// Instance id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// When it started streaming.
    pub since: String,
}

/// One live `walhook run`.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    /// Random id, new at every start.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: i32,
    /// walhook version.
    pub version: String,
    /// When it started.
    pub started_at: String,
    /// Its capture mode.
    pub capture_mode: String,
    /// `starting`, `streaming`, `standby` or `reconnecting`.
    pub role: String,
    /// Since when it has that role.
    pub role_since: String,
    /// Its last heartbeat.
    pub heartbeat_at: String,
    /// Its heartbeat interval in milliseconds.
    pub heartbeat_interval_ms: i32,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
    /// Highest LSN it acknowledged.
    pub acknowledged_lsn: Option<String>,
    /// Commit time of the last transaction it acknowledged.
    pub acknowledged_commit_time: Option<String>,
    /// Events per second over the last minute.
    pub events_per_second: f64,
    /// Successful deliveries per second over the last minute.
    pub deliveries_per_second: f64,
    /// Whether it saw retained WAL above its `capture.max_retained_wal` (its `/readyz` is 503).
    pub retained_wal_over_limit: bool,
}

/// Summed rates.
#[derive(Debug, Clone, Serialize)]
pub struct RatesStatus {
    /// Events per second.
    pub events_per_second: f64,
    /// Successful deliveries per second.
    pub deliveries_per_second: f64,
}

/// Queue and subscription totals.
#[derive(Debug, Clone, Serialize)]
pub struct QueueTotals {
    /// Events waiting in the queue table (to be retried).
    pub pending: i64,
    /// Dead letters.
    pub dead: i64,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Failing subscriptions (active, last attempt failed).
    pub failing: usize,
    /// Disabled subscriptions (inactive).
    pub disabled: usize,
}

/// One subscription's queue depth and health.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    /// Id.
    pub id: String,
    /// Owner (`None`: admin).
    pub owner: Option<String>,
    /// Target URL.
    pub target_url: String,
    /// Active.
    pub active: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Active and its last attempt failed.
    pub failing: bool,
    /// Failures since the last success.
    pub consecutive_failures: i32,
    /// Last success.
    pub last_success_at: Option<String>,
    /// Last failure.
    pub last_error_at: Option<String>,
    /// Last failure's message.
    pub last_error: Option<String>,
    /// Events waiting in the queue table.
    pub pending: i64,
    /// Dead letters.
    pub dead: i64,
}

/// `walhook status` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be read.
    #[error(transparent)]
    Ops(#[from] OpsError),
}

impl Status {
    /// Reads the status of the installation `config` points at.
    pub async fn read(config: &Config) -> Result<Status, StatusError> {
        let database: Database = config.database()?;
        let max_retained_wal = config.max_retained_wal()?;
        let client = database.client().await.map_err(OpsError::from)?;
        Ok(read(&client, config, max_retained_wal).await?)
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let c = &self.capture;
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
        line(
            "health",
            format!("{} (exit {})", self.health, self.exit_code),
        );
        line("capture", format!("{} mode, {}", c.mode, c.state));
        match &c.streaming_instance {
            Some(i) => line(
                "streaming instance",
                format!("{} pid {} since {} ({})", i.host, i.pid, i.since, i.id),
            ),
            None if c.state == "not running" => line(
                "streaming instance",
                "none: no walhook run is running".into(),
            ),
            None => line("streaming instance", "none".into()),
        }
        if c.mode == "replication" {
            match &c.slot {
                Some(s) => line(
                    "slot",
                    format!(
                        "{} confirmed {} restart {} wal_status {} {}",
                        c.slot_name,
                        s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
                        s.restart_lsn.as_deref().unwrap_or("-"),
                        s.wal_status.as_deref().unwrap_or("-"),
                        if s.active { "active" } else { "inactive" }
                    ),
                ),
                None => line("slot", format!("{} (does not exist)", c.slot_name)),
            }
        }
        line(
            "retained WAL",
            format!(
                "{} (limit {})",
                c.retained_wal_bytes.map_or("-".into(), human_bytes),
                human_bytes(i64::try_from(c.max_retained_wal_bytes).unwrap_or(i64::MAX))
            ),
        );
        line(
            "lag",
            format!(
                "{}, {}",
                c.lag_bytes.map_or("- bytes".into(), human_bytes),
                c.lag_seconds.map_or("- s".into(), |s| format!("{s:.1} s"))
            ),
        );
        if let Some(rows) = c.outbox_rows {
            line("outbox rows", rows.to_string());
        }
        line(
            "acknowledged",
            format!(
                "{} committed {}",
                c.acknowledged_lsn.as_deref().unwrap_or("-"),
                c.acknowledged_commit_time.as_deref().unwrap_or("-")
            ),
        );
        line(
            "rates",
            format!(
                "{:.1} events/s, {:.1} deliveries/s",
                self.rates.events_per_second, self.rates.deliveries_per_second
            ),
        );
        let q = &self.queue;
        line(
            "queue",
            format!(
                "{} pending, {} dead; {} subscriptions, {} failing, {} disabled",
                q.pending, q.dead, q.subscriptions, q.failing, q.disabled
            ),
        );
        out.push_str("\ninstances\n");
        if self.instances.is_empty() {
            out.push_str("  none running\n");
        }
        for i in &self.instances {
            out.push_str(&format!(
                "  {:<12} {} pid {} since {}, heartbeat {:.1} s ago, {:.1} events/s, {:.1} deliveries/s\n",
                i.role, i.host, i.pid, i.role_since, i.heartbeat_age_seconds, i.events_per_second, i.deliveries_per_second
            ));
        }
        let notable: Vec<&SubscriptionStatus> = self
            .subscriptions
            .iter()
            .filter(|s| s.pending > 0 || s.dead > 0 || s.failing || !s.active)
            .collect();
        out.push_str(&format!(
            "\nsubscriptions with a queue, failing or disabled ({} of {})\n",
            notable.len(),
            self.subscriptions.len()
        ));
        for s in notable {
            let state = if !s.active {
                format!(
                    "disabled: {}",
                    s.disabled_reason.as_deref().unwrap_or("inactive")
                )
            } else if s.failing {
                format!(
                    "failing ({}x): {}",
                    s.consecutive_failures,
                    s.last_error.as_deref().unwrap_or("")
                )
            } else {
                "ok".into()
            };
            out.push_str(&format!(
                "  {} {} pending {} dead {} {}\n",
                s.id, s.target_url, s.pending, s.dead, state
            ));
        }
        out.push_str("\nchecks\n");
        for check in &self.checks {
            out.push_str(&format!(
                "  {:<5}{:<24}{}\n",
                check.level.as_str(),
                check.name,
                check.message
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("  {:<29}fix: {fix}\n", ""));
            }
        }
        out.push_str("\nbackfills\n");
        if self.backfills.is_empty() {
            out.push_str("  none\n");
        }
        for b in &self.backfills {
            out.push_str(&format!(
                "  {} {} {}: {} of ~{} rows, since {}{}{}\n",
                b.id,
                b.table,
                b.state,
                b.rows_sent,
                b.estimated_total,
                b.created_at,
                b.finished_at
                    .as_ref()
                    .map_or_else(String::new, |t| format!(", ended {t}")),
                b.error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" ({e})")),
            ));
        }
        out.push_str("\ngaps\n");
        if self.gaps.is_empty() {
            out.push_str("  none\n");
        }
        for gap in &self.gaps {
            out.push_str(&format!(
                "  #{} {} slot {:?}: {} ({}) .. {} ({}), tables {}\n",
                gap.id,
                gap.reason,
                gap.slot,
                gap.from_lsn,
                gap.from_time
                    .map_or_else(|| "time unknown".to_owned(), |t| t.to_rfc3339()),
                gap.to_lsn,
                gap.to_time.to_rfc3339(),
                gap.tables.join(", ")
            ));
        }
        out
    }
}

/// The exit code for checks and a capture state: 2 on a FAIL or capture not running, 1 on a
/// WARN or a capture that is not streaming, else 0.
pub fn exit_code(checks: &[Check], state: &str) -> i32 {
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    match (worst, state) {
        (Level::Fail, _) | (_, "not running") => 2,
        (Level::Warn, _) => 1,
        (Level::Ok, "streaming") => 0,
        (Level::Ok, _) => 1,
    }
}

/// The capture state from the live instances' roles.
pub fn capture_state<'a>(roles: impl Iterator<Item = &'a str>) -> &'static str {
    let roles: Vec<&str> = roles.collect();
    for (role, state) in [
        ("streaming", "streaming"),
        ("reconnecting", "reconnecting"),
        ("starting", "starting"),
        ("standby", "standby"),
    ] {
        if roles.contains(&role) {
            return state;
        }
    }
    "not running"
}

/// Reads the status over `client` (also the console's overview, on its own session).
pub(crate) async fn read(
    client: &Client,
    config: &Config,
    max_retained_wal: u64,
) -> Result<Status, OpsError> {
    let q = OpsError::from_query;
    let settings_row = client
        .query_one(
            &format!(
                "SELECT (SELECT value FROM walhook.settings WHERE name = 'capture_mode'),
                        (SELECT value FROM walhook.settings WHERE name = 'publication'),
                        {}",
                rfc3339("now()")
            ),
            &[],
        )
        .await
        .map_err(q)?;
    let mode = match settings_row.get::<_, Option<String>>(0).as_deref() {
        Some("trigger") => CaptureMode::Trigger,
        Some(_) => CaptureMode::Replication,
        None => config.capture.mode,
    };
    let settings = Settings {
        mode,
        slot: config.capture.slot.clone(),
        publication: settings_row
            .get::<_, Option<String>>(1)
            .unwrap_or_else(|| config.capture.publication.clone()),
        max_retained_wal,
    };
    let checked_at: String = settings_row.get(2);
    let instances: Vec<Instance> = client
        .query(
            &format!(
                "SELECT id::text, host, pid, version, {}, capture_mode, role, {}, {}, heartbeat_interval_ms,
                        extract(epoch FROM now() - heartbeat_at)::float8,
                        acknowledged_lsn::text, {}, events_per_second, deliveries_per_second,
                        retained_wal_over_limit
                 FROM walhook.instances
                 WHERE heartbeat_at >= now() - $1::int4 * heartbeat_interval_ms * interval '1 millisecond'
                 ORDER BY started_at, id",
                rfc3339("started_at"),
                rfc3339("role_since"),
                rfc3339("heartbeat_at"),
                rfc3339("acknowledged_commit_time"),
            ),
            &[&STALE_INTERVALS],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| Instance {
            id: r.get(0),
            host: r.get(1),
            pid: r.get(2),
            version: r.get(3),
            started_at: r.get(4),
            capture_mode: r.get(5),
            role: r.get(6),
            role_since: r.get(7),
            heartbeat_at: r.get(8),
            heartbeat_interval_ms: r.get(9),
            heartbeat_age_seconds: r.get(10),
            acknowledged_lsn: r.get(11),
            acknowledged_commit_time: r.get(12),
            events_per_second: r.get(13),
            deliveries_per_second: r.get(14),
            retained_wal_over_limit: r.get(15),
        })
        .collect();
    let subscriptions: Vec<SubscriptionStatus> = client
        .query(
            &format!(
                "SELECT id::text, owner, target_url, active, disabled_reason, consecutive_failures,
                        {}, {}, last_error, pending, dead
                 FROM walhook.subscription_health ORDER BY target_url, id",
                rfc3339("last_success_at"),
                rfc3339("last_error_at"),
            ),
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| {
            let active: bool = r.get(3);
            let consecutive_failures: i32 = r.get(5);
            SubscriptionStatus {
                id: r.get(0),
                owner: r.get(1),
                target_url: r.get(2),
                active,
                disabled_reason: r.get(4),
                failing: active && consecutive_failures > 0,
                consecutive_failures,
                last_success_at: r.get(6),
                last_error_at: r.get(7),
                last_error: r.get(8),
                pending: r.get(9),
                dead: r.get(10),
            }
        })
        .collect();
    let facts = preflight::gather(client, &settings).await?;
    let checks = preflight::judge(&facts, &settings, Context::Status);

    let state = capture_state(instances.iter().map(|i| i.role.as_str()));
    let capturing = instances
        .iter()
        .filter(|i| i.role == "streaming")
        .max_by(|a, b| a.role_since.cmp(&b.role_since));
    let streaming_instance = capturing.map(|i| StreamingInstance {
        id: i.id.clone(),
        host: i.host.clone(),
        pid: i.pid,
        since: i.role_since.clone(),
    });
    // What was acknowledged: the capturing instance's, else the newest any live one knows.
    let acked = capturing.or_else(|| {
        instances
            .iter()
            .filter(|i| i.acknowledged_lsn.is_some())
            .max_by(|a, b| a.heartbeat_at.cmp(&b.heartbeat_at))
    });
    let acknowledged_commit_time = acked.and_then(|i| i.acknowledged_commit_time.clone());
    let (lag_bytes, lag_seconds, outbox_rows) = match mode {
        CaptureMode::Replication => {
            let lag_bytes = facts.slot.as_ref().and_then(|s| s.lag_bytes);
            let seconds = match (lag_bytes, &acknowledged_commit_time) {
                (Some(b), _) if b <= 0 => Some(0.0),
                (Some(_), Some(t)) => client
                    .query_one(
                        "SELECT greatest(extract(epoch FROM now() - $1::text::timestamptz), 0)::float8",
                        &[t],
                    )
                    .await
                    .map_err(q)?
                    .get(0),
                _ => None,
            };
            (lag_bytes, seconds, None)
        }
        CaptureMode::Trigger => {
            let row = client
                .query_one(
                    "SELECT count(*), coalesce(extract(epoch FROM now() - min(committed_at)), 0)::float8
                     FROM walhook.outbox",
                    &[],
                )
                .await
                .map_err(q)?;
            (None, Some(row.get(1)), Some(row.get(0)))
        }
    };
    let pending = subscriptions.iter().map(|s| s.pending).sum();
    let dead = subscriptions.iter().map(|s| s.dead).sum();
    let queue = QueueTotals {
        pending,
        dead,
        subscriptions: subscriptions.len(),
        failing: subscriptions.iter().filter(|s| s.failing).count(),
        disabled: subscriptions.iter().filter(|s| !s.active).count(),
    };
    let rates = RatesStatus {
        // fold from +0.0: an empty f64 sum is -0.0.
        events_per_second: instances
            .iter()
            .fold(0.0, |sum, i| sum + i.events_per_second),
        deliveries_per_second: instances
            .iter()
            .fold(0.0, |sum, i| sum + i.deliveries_per_second),
    };
    let exit_code = exit_code(&checks, state);
    Ok(Status {
        checked_at,
        health: ["ok", "warning", "failing"][exit_code as usize],
        exit_code,
        capture: CaptureStatus {
            mode: match mode {
                CaptureMode::Replication => "replication",
                CaptureMode::Trigger => "trigger",
            },
            state,
            streaming_instance,
            slot_name: settings.slot.clone(),
            retained_wal_bytes: facts.slot.as_ref().and_then(|s| s.retained_wal_bytes),
            slot: facts.slot.clone(),
            max_retained_wal_bytes: max_retained_wal,
            lag_bytes,
            lag_seconds,
            acknowledged_lsn: acked.and_then(|i| i.acknowledged_lsn.clone()),
            acknowledged_commit_time,
            outbox_rows,
        },
        rates,
        instances,
        queue,
        subscriptions,
        checks,
        gaps: gaps(client).await?,
        backfills: backfills(client).await?,
    })
}

/// Running backfills and those finished within the last day (none before the backfill
/// migration ran).
async fn backfills(client: &Client) -> Result<Vec<BackfillStatus>, OpsError> {
    let q = OpsError::from_query;
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('walhook.backfill_jobs') IS NOT NULL",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            &format!(
                "SELECT id::text, format('%s.%s', schema_name, table_name), subscription_id::text,
                        state, rows_sent, estimated_total, error, {}, {}
                 FROM walhook.backfill_jobs
                 WHERE state = 'running' OR finished_at > now() - interval '1 day'
                 ORDER BY created_at DESC LIMIT 20",
                rfc3339("created_at"),
                rfc3339("finished_at"),
            ),
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| BackfillStatus {
            id: r.get(0),
            table: r.get(1),
            subscription_id: r.get(2),
            state: r.get(3),
            rows_sent: r.get(4),
            estimated_total: r.get(5),
            error: r.get(6),
            created_at: r.get(7),
            finished_at: r.get(8),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(level: Level) -> Check {
        Check {
            name: "x",
            level,
            message: String::new(),
            fix: None,
        }
    }

    #[test]
    fn exit_code_follows_checks_and_state() {
        assert_eq!(exit_code(&[check(Level::Ok)], "streaming"), 0);
        assert_eq!(
            exit_code(&[check(Level::Ok), check(Level::Warn)], "streaming"),
            1
        );
        assert_eq!(
            exit_code(&[check(Level::Warn), check(Level::Fail)], "streaming"),
            2
        );
        assert_eq!(exit_code(&[check(Level::Ok)], "not running"), 2);
        assert_eq!(exit_code(&[check(Level::Ok)], "reconnecting"), 1);
        assert_eq!(exit_code(&[check(Level::Ok)], "standby"), 1);
    }

    #[test]
    fn capture_state_prefers_streaming() {
        assert_eq!(
            capture_state(["standby", "streaming"].into_iter()),
            "streaming"
        );
        assert_eq!(
            capture_state(["standby", "reconnecting"].into_iter()),
            "reconnecting"
        );
        assert_eq!(capture_state(["standby"].into_iter()), "standby");
        assert_eq!(capture_state(std::iter::empty()), "not running");
    }
}
