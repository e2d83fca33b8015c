//! Preflight checks: each OK / WARN / FAIL, with the fix in one line.
//!
//! [`gather`] reads everything the checks need in a few catalog queries ([`Facts`]); the
//! `judge_*` functions are pure — given values, a verdict — so every outcome is unit-tested
//! without changing server-wide settings; [`judge`] runs them all, in a fixed order.
//! `walhook status` prints them; `walhook run` logs them at start ([`log`]: OK at info, WARN
//! at warn, FAIL at error level; start-up goes on either way).
//!
//! | check | OK | WARN | FAIL |
//! |---|---|---|---|
//! | `wal_level` | logical, or trigger mode | | anything else in replication mode |
//! | `max_slot_wal_keep_size` | bounded, or trigger mode | -1 (unbounded) | |
//! | `slot` | `wal_status` reserved/extended | unreserved; missing; left over in trigger mode | lost |
//! | `publication` | every watched table published | publication missing | watched tables missing from it |
//! | `triggers` | every watched table has its trigger | | watched tables without one |
//! | `replica_identity` | FULL (or key, as watched) | not FULL though watched for it | NOTHING / DEFAULT without key |
//! | `privileges` | what the mode needs | | no REPLICATION; cannot write walhook's tables; cannot create the publication |
//! | `retained_wal` | at most `capture.max_retained_wal` | above it | |

use serde::Serialize;
use tokio_postgres::Client;

use super::{OpsError, human_bytes};
use crate::config::CaptureMode;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works now, but needs attention.
    Warn,
    /// Broken: events are or will be lost or delayed until fixed.
    Fail,
}

impl Level {
    /// `OK`, `WARN`, `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's name (`wal_level`, `slot`, …).
    pub name: &'static str,
    /// Its verdict.
    pub level: Level,
    /// What was found.
    pub message: String,
    /// What to do, in one line; `None` when OK.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, message: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            message: message.into(),
            fix: None,
        }
    }

    fn bad(
        name: &'static str,
        level: Level,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            level,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Where the checks run: `walhook run` at start expects to create a missing slot and
/// publication itself; `walhook status` reports them missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `walhook run`, before capture starts.
    Start,
    /// `walhook status`.
    Status,
}

/// What the checks are about: the installation's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The capture mode checked for.
    pub mode: CaptureMode,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// `capture.max_retained_wal` in bytes.
    pub max_retained_wal: u64,
}

/// The replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotFacts {
    /// Output plugin.
    pub plugin: Option<String>,
    /// Whether a walsender streams it now.
    pub active: bool,
    /// The server process streaming it.
    pub active_pid: Option<i32>,
    /// Confirmed position (`X/Y`).
    pub confirmed_flush_lsn: Option<String>,
    /// Oldest WAL position it keeps (`X/Y`).
    pub restart_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Bytes that can still be written before the slot is invalidated (`None`: unbounded).
    pub safe_wal_size: Option<i64>,
    /// `pg_current_wal_lsn() - restart_lsn`.
    pub retained_wal_bytes: Option<i64>,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: Option<i64>,
}

/// A watched table's (or one of its partitions') replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `schema.table` of the relation (a partition of a watched table is named itself).
    pub table: String,
    /// `pg_class.relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replident: char,
    /// It has a primary key or a replica identity index.
    pub has_key: bool,
    /// `walhook.watch(..., full_identity)` asked for FULL.
    pub full_identity: bool,
}

/// The role walhook connects as: the role of the walsender streaming the slot when there is
/// one, else the session's (`walhook status` run with the daemon's `database_url`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Privileges {
    /// Role name.
    pub role: String,
    /// Superuser.
    pub superuser: bool,
    /// `REPLICATION` attribute.
    pub replication: bool,
    /// May create a publication (`CREATE` on the database).
    pub create_on_database: bool,
    /// May write walhook's tables (queue, heartbeat).
    pub writes_walhook: bool,
}

/// Everything the checks judge, read by [`gather`].
#[derive(Debug, Clone)]
pub struct Facts {
    /// `wal_level`.
    pub wal_level: String,
    /// `max_slot_wal_keep_size` in MB (-1: unbounded).
    pub max_slot_wal_keep_size_mb: i64,
    /// The slot, when it exists.
    pub slot: Option<SlotFacts>,
    /// Whether the publication exists.
    pub publication_exists: bool,
    /// Watched tables (`schema.table`) that are not in the publication.
    pub unpublished: Vec<String>,
    /// Watched tables (`schema.table`) without a capture trigger.
    pub untriggered: Vec<String>,
    /// Replica identities of the watched tables and their partitions.
    pub identities: Vec<Identity>,
    /// The session's role.
    pub privileges: Privileges,
}

/// Reads the facts for `settings` on `client`.
pub async fn gather(client: &Client, settings: &Settings) -> Result<Facts, OpsError> {
    let q = OpsError::from_query;
    let server = client
        .query_one(
            "WITH daemon AS (
                 SELECT coalesce((SELECT a.usename FROM pg_catalog.pg_replication_slots s
                                  JOIN pg_catalog.pg_stat_activity a ON a.pid = s.active_pid
                                  WHERE s.slot_name = $2::text::name), current_user) AS name)
             SELECT current_setting('wal_level'),
                    (SELECT setting::int8 FROM pg_catalog.pg_settings WHERE name = 'max_slot_wal_keep_size'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1::text::name),
                    r.rolname::text,
                    r.rolsuper, r.rolreplication,
                    has_database_privilege(r.oid, current_database(), 'CREATE'),
                    has_table_privilege(r.oid, 'walhook.delivery_queue', 'INSERT, UPDATE, DELETE')
                      AND has_table_privilege(r.oid, 'walhook.instances', 'INSERT, UPDATE, DELETE')
             FROM daemon JOIN pg_catalog.pg_roles r ON r.rolname = daemon.name",
            &[&settings.publication, &settings.slot],
        )
        .await
        .map_err(q)?;
    let slot = client
        .query_opt(
            "SELECT plugin::text, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text,
                    wal_status, safe_wal_size,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1::text::name",
            &[&settings.slot],
        )
        .await
        .map_err(q)?
        .map(|r| SlotFacts {
            plugin: r.get(0),
            active: r.get(1),
            active_pid: r.get(2),
            confirmed_flush_lsn: r.get(3),
            restart_lsn: r.get(4),
            wal_status: r.get(5),
            safe_wal_size: r.get(6),
            retained_wal_bytes: r.get(7),
            lag_bytes: r.get(8),
        });
    let watched = "SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, w.full_identity
                   FROM walhook.watched_tables w
                   JOIN pg_catalog.pg_class c ON c.oid = w.relid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";
    let unpublished = client
        .query(
            &format!(
                "SELECT t.name FROM ({watched}) t
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p
                                   JOIN pg_catalog.pg_namespace pn ON pn.nspname = p.schemaname
                                   JOIN pg_catalog.pg_class pc ON pc.relname = p.tablename AND pc.relnamespace = pn.oid
                                   WHERE p.pubname = $1::text::name
                                     AND pc.oid IN (SELECT t.oid UNION SELECT a.relid FROM pg_partition_ancestors(t.oid) a))
                 ORDER BY 1"
            ),
            &[&settings.publication],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let untriggered = client
        .query(
            &format!(
                "SELECT t.name FROM ({watched}) t
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
                                   WHERE g.tgrelid = t.oid AND g.tgname IN ('walhook_capture', 'walhook_capture_truncate'))
                 ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let identities = client
        .query(
            &format!(
                "SELECT format('%I.%I', n.nspname, c.relname), c.relreplident::text, t.full_identity,
                        EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                                WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))
                 FROM ({watched}) t
                 CROSS JOIN LATERAL (SELECT t.oid AS relid
                                     UNION SELECT relid FROM pg_partition_tree(t.oid)) p
                 JOIN pg_catalog.pg_class c ON c.oid = p.relid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind = 'r'
                 ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| Identity {
            table: r.get(0),
            replident: r.get::<_, String>(1).chars().next().unwrap_or('d'),
            full_identity: r.get(2),
            has_key: r.get(3),
        })
        .collect();
    Ok(Facts {
        wal_level: server.get(0),
        max_slot_wal_keep_size_mb: server.get::<_, Option<i64>>(1).unwrap_or(-1),
        slot,
        publication_exists: server.get(2),
        unpublished,
        untriggered,
        identities,
        privileges: Privileges {
            role: server.get(3),
            superuser: server.get(4),
            replication: server.get(5),
            create_on_database: server.get(6),
            writes_walhook: server.get(7),
        },
    })
}

/// Every check, in a fixed order.
pub fn judge(facts: &Facts, settings: &Settings, context: Context) -> Vec<Check> {
    let mode = settings.mode;
    vec![
        judge_wal_level(mode, &facts.wal_level),
        judge_max_slot_wal_keep_size(mode, facts.max_slot_wal_keep_size_mb),
        judge_slot(mode, &settings.slot, facts.slot.as_ref(), context),
        judge_publication(
            mode,
            &settings.publication,
            facts.publication_exists,
            &facts.unpublished,
            context,
        ),
        judge_triggers(mode, &facts.untriggered),
        judge_replica_identity(mode, &facts.identities),
        judge_privileges(mode, &facts.privileges, facts.publication_exists),
        judge_retained_wal(
            &settings.slot,
            facts.slot.as_ref().and_then(|s| s.retained_wal_bytes),
            settings.max_retained_wal,
        ),
    ]
}

/// Logs each check: OK at info, WARN at warn, FAIL at error level.
pub fn log(checks: &[Check]) {
    for c in checks {
        let fix = c.fix.as_deref().unwrap_or("");
        match c.level {
            Level::Ok => tracing::info!(check = c.name, "preflight OK: {}", c.message),
            Level::Warn => {
                tracing::warn!(check = c.name, fix, "preflight WARN: {}", c.message)
            }
            Level::Fail => {
                tracing::error!(check = c.name, fix, "preflight FAIL: {}", c.message)
            }
        }
    }
}

/// `wal_level`: replication capture needs `logical`.
pub fn judge_wal_level(mode: CaptureMode, wal_level: &str) -> Check {
    const NAME: &str = "wal_level";
    match mode {
        CaptureMode::Trigger => Check::ok(
            NAME,
            format!("wal_level={wal_level}; trigger capture does not need logical"),
        ),
        CaptureMode::Replication if wal_level == "logical" => Check::ok(NAME, "wal_level=logical"),
        CaptureMode::Replication => Check::bad(
            NAME,
            Level::Fail,
            format!("wal_level={wal_level}: replication capture needs wal_level=logical"),
            "set wal_level = logical in postgresql.conf and restart PostgreSQL, or use capture.mode = \"trigger\"",
        ),
    }
}

/// `max_slot_wal_keep_size` (MB): unbounded means a stopped daemon can fill the disk.
pub fn judge_max_slot_wal_keep_size(mode: CaptureMode, mb: i64) -> Check {
    const NAME: &str = "max_slot_wal_keep_size";
    match (mode, mb) {
        (CaptureMode::Trigger, _) => Check::ok(NAME, "trigger capture uses no slot"),
        (CaptureMode::Replication, mb) if mb < 0 => Check::bad(
            NAME,
            Level::Warn,
            "max_slot_wal_keep_size = -1 (unbounded): a stopped walhook makes the server keep WAL until the disk is full",
            "set max_slot_wal_keep_size (e.g. '50GB', below the free WAL disk space) and SELECT pg_reload_conf()",
        ),
        (CaptureMode::Replication, mb) => Check::ok(
            NAME,
            format!(
                "max_slot_wal_keep_size = {}",
                human_bytes(mb.saturating_mul(1 << 20))
            ),
        ),
    }
}

/// The slot's `wal_status` and `safe_wal_size`.
pub fn judge_slot(
    mode: CaptureMode,
    name: &str,
    slot: Option<&SlotFacts>,
    context: Context,
) -> Check {
    const NAME: &str = "slot";
    let safe = |s: &SlotFacts| match s.safe_wal_size {
        Some(bytes) => format!(", safe_wal_size {}", human_bytes(bytes)),
        None => ", safe_wal_size unbounded".into(),
    };
    match (mode, slot) {
        (CaptureMode::Trigger, None) => Check::ok(NAME, "trigger capture uses no slot"),
        (CaptureMode::Trigger, Some(_)) => Check::bad(
            NAME,
            Level::Warn,
            format!(
                "replication slot {name:?} exists but capture is in trigger mode: it keeps WAL for nobody"
            ),
            format!(
                "SELECT pg_drop_replication_slot('{name}') once no walhook uses replication mode"
            ),
        ),
        (CaptureMode::Replication, None) if context == Context::Start => Check::ok(
            NAME,
            format!("replication slot {name:?} does not exist yet; capture creates it"),
        ),
        (CaptureMode::Replication, None) => Check::bad(
            NAME,
            Level::Warn,
            format!("replication slot {name:?} does not exist"),
            "start walhook run (its first start creates the slot)",
        ),
        (CaptureMode::Replication, Some(s)) => {
            let status = s.wal_status.as_deref().unwrap_or("unknown");
            match status {
                "reserved" | "extended" => Check::ok(
                    NAME,
                    format!("slot {name:?} wal_status={status}{}", safe(s)),
                ),
                "unreserved" => Check::bad(
                    NAME,
                    Level::Warn,
                    format!(
                        "slot {name:?} wal_status=unreserved{}: WAL it needs is past max_slot_wal_keep_size and will be removed at the next checkpoint",
                        safe(s)
                    ),
                    "get walhook streaming and caught up now, or raise max_slot_wal_keep_size",
                ),
                "lost" => Check::bad(
                    NAME,
                    Level::Fail,
                    format!(
                        "slot {name:?} wal_status=lost: it was invalidated; the WAL it needed is gone"
                    ),
                    "run `walhook slot reset` to accept the gap (it is recorded in walhook.gaps)",
                ),
                other => Check::bad(
                    NAME,
                    Level::Warn,
                    format!("slot {name:?} wal_status={other}"),
                    "check pg_replication_slots",
                ),
            }
        }
    }
}

/// Watched tables missing from the publication (replication mode).
pub fn judge_publication(
    mode: CaptureMode,
    publication: &str,
    exists: bool,
    unpublished: &[String],
    context: Context,
) -> Check {
    const NAME: &str = "publication";
    match mode {
        CaptureMode::Trigger => Check::ok(NAME, "trigger capture uses no publication"),
        CaptureMode::Replication if !exists && context == Context::Start => Check::ok(
            NAME,
            format!("publication {publication:?} does not exist yet; capture creates it"),
        ),
        CaptureMode::Replication if !exists => Check::bad(
            NAME,
            Level::Warn,
            format!("publication {publication:?} does not exist"),
            "start walhook run (it creates the publication with every watched table)",
        ),
        CaptureMode::Replication if unpublished.is_empty() => Check::ok(
            NAME,
            format!("every watched table is in publication {publication:?}"),
        ),
        CaptureMode::Replication => Check::bad(
            NAME,
            Level::Fail,
            format!(
                "watched tables missing from publication {publication:?}, their changes are not captured: {}",
                unpublished.join(", ")
            ),
            format!(
                "ALTER PUBLICATION \"{publication}\" ADD TABLE {} (walhook run adds them within 1 s)",
                unpublished.join(", ")
            ),
        ),
    }
}

/// Watched tables without their capture trigger (trigger mode).
pub fn judge_triggers(mode: CaptureMode, untriggered: &[String]) -> Check {
    const NAME: &str = "triggers";
    match mode {
        CaptureMode::Replication => Check::ok(NAME, "replication capture uses no triggers"),
        CaptureMode::Trigger if untriggered.is_empty() => {
            Check::ok(NAME, "every watched table has its capture trigger")
        }
        CaptureMode::Trigger => Check::bad(
            NAME,
            Level::Fail,
            format!(
                "watched tables without a capture trigger, their changes are not captured: {}",
                untriggered.join(", ")
            ),
            format!(
                "SELECT walhook.watch('{}') again for each",
                untriggered.first().map_or("", String::as_str)
            ),
        ),
    }
}

/// Replica identities (replication mode): `previous` is complete only under FULL.
pub fn judge_replica_identity(mode: CaptureMode, identities: &[Identity]) -> Check {
    const NAME: &str = "replica_identity";
    if mode == CaptureMode::Trigger {
        return Check::ok(NAME, "trigger capture sees whole old rows");
    }
    let broken: Vec<&str> = identities
        .iter()
        .filter(|i| i.replident == 'n' || (i.replident == 'd' && !i.has_key))
        .map(|i| i.table.as_str())
        .collect();
    if !broken.is_empty() {
        return Check::bad(
            NAME,
            Level::Fail,
            format!(
                "no replica identity (NOTHING, or DEFAULT without a primary key), so UPDATE and DELETE on them fail once published: {}",
                broken.join(", ")
            ),
            format!("ALTER TABLE {} REPLICA IDENTITY FULL", broken[0]),
        );
    }
    let partial: Vec<&str> = identities
        .iter()
        .filter(|i| i.replident != 'f' && i.full_identity)
        .map(|i| i.table.as_str())
        .collect();
    if !partial.is_empty() {
        return Check::bad(
            NAME,
            Level::Warn,
            format!(
                "not REPLICA IDENTITY FULL though watched for it, so `previous` has key columns only: {}",
                partial.join(", ")
            ),
            format!(
                "ALTER TABLE {} REPLICA IDENTITY FULL (walhook.watch sets it)",
                partial[0]
            ),
        );
    }
    let keyed = identities.iter().filter(|i| i.replident != 'f').count();
    if identities.is_empty() {
        Check::ok(NAME, "no watched tables")
    } else if keyed > 0 {
        Check::ok(
            NAME,
            format!(
                "REPLICA IDENTITY FULL, except {keyed} table(s) watched with full_identity => false (`previous` has key columns)"
            ),
        )
    } else {
        Check::ok(NAME, "every watched table is REPLICA IDENTITY FULL")
    }
}

/// The role's privileges for the mode.
pub fn judge_privileges(mode: CaptureMode, p: &Privileges, publication_exists: bool) -> Check {
    const NAME: &str = "privileges";
    if !p.superuser && !p.writes_walhook {
        return Check::bad(
            NAME,
            Level::Fail,
            format!(
                "role {:?} cannot write walhook's tables (delivery_queue, instances)",
                p.role
            ),
            "run walhook as the role that ran `walhook migrate` (it owns schema walhook)",
        );
    }
    if mode == CaptureMode::Trigger {
        return Check::ok(
            NAME,
            format!("role {:?} has what trigger capture needs", p.role),
        );
    }
    if !p.superuser && !p.replication {
        return Check::bad(
            NAME,
            Level::Fail,
            format!(
                "role {:?} has neither REPLICATION nor superuser: replication capture cannot stream",
                p.role
            ),
            format!(
                "ALTER ROLE \"{}\" REPLICATION, or use capture.mode = \"trigger\"",
                p.role
            ),
        );
    }
    if !p.superuser && !publication_exists && !p.create_on_database {
        return Check::bad(
            NAME,
            Level::Fail,
            format!(
                "role {:?} may not create the publication (no CREATE on the database)",
                p.role
            ),
            format!(
                "GRANT CREATE ON DATABASE <database> TO \"{}\", or create the publication as its owner",
                p.role
            ),
        );
    }
    let how = if p.superuser {
        "superuser"
    } else {
        "REPLICATION"
    };
    Check::ok(
        NAME,
        format!("role {:?} has {how} and writes walhook's tables", p.role),
    )
}

/// Retained WAL against `capture.max_retained_wal`.
pub fn judge_retained_wal(slot: &str, retained: Option<i64>, limit: u64) -> Check {
    const NAME: &str = "retained_wal";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    match retained {
        None => Check::ok(NAME, "no slot, no WAL retained"),
        Some(bytes) if bytes > limit => Check::bad(
            NAME,
            Level::Warn,
            format!(
                "slot {slot:?} retains {} of WAL, above capture.max_retained_wal ({})",
                human_bytes(bytes),
                human_bytes(limit)
            ),
            "get walhook streaming and caught up (see lag), or drop the slot if walhook is gone for good",
        ),
        Some(bytes) => Check::ok(
            NAME,
            format!(
                "slot {slot:?} retains {} of WAL (limit {})",
                human_bytes(bytes),
                human_bytes(limit)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaptureMode::{Replication, Trigger};

    fn slot(wal_status: &str, safe: Option<i64>) -> SlotFacts {
        SlotFacts {
            plugin: Some("pgoutput".into()),
            active: false,
            active_pid: None,
            confirmed_flush_lsn: Some("0/10".into()),
            restart_lsn: Some("0/8".into()),
            wal_status: Some(wal_status.into()),
            safe_wal_size: safe,
            retained_wal_bytes: Some(8),
            lag_bytes: Some(0),
        }
    }

    #[test]
    fn wal_level() {
        assert_eq!(judge_wal_level(Replication, "logical").level, Level::Ok);
        let c = judge_wal_level(Replication, "replica");
        assert_eq!(c.level, Level::Fail);
        assert_eq!(
            c.message,
            "wal_level=replica: replication capture needs wal_level=logical"
        );
        assert_eq!(judge_wal_level(Trigger, "replica").level, Level::Ok);
    }

    #[test]
    fn max_slot_wal_keep_size() {
        let c = judge_max_slot_wal_keep_size(Replication, -1);
        assert_eq!(c.level, Level::Warn);
        assert!(c.fix.is_some());
        let c = judge_max_slot_wal_keep_size(Replication, 10_240);
        assert_eq!(
            (c.level, c.message.as_str()),
            (Level::Ok, "max_slot_wal_keep_size = 10.0 GiB")
        );
        assert_eq!(judge_max_slot_wal_keep_size(Trigger, -1).level, Level::Ok);
    }

    #[test]
    fn slot_wal_status() {
        let judged = |s: &str| {
            judge_slot(
                Replication,
                "w",
                Some(&slot(s, Some(1 << 20))),
                Context::Status,
            )
        };
        assert_eq!(judged("reserved").level, Level::Ok);
        assert_eq!(
            judged("extended").message,
            "slot \"w\" wal_status=extended, safe_wal_size 1.0 MiB"
        );
        assert_eq!(judged("unreserved").level, Level::Warn);
        let lost = judged("lost");
        assert_eq!(lost.level, Level::Fail);
        assert_eq!(
            lost.fix.as_deref(),
            Some("run `walhook slot reset` to accept the gap (it is recorded in walhook.gaps)")
        );
        assert_eq!(
            judge_slot(Replication, "w", None, Context::Status).level,
            Level::Warn
        );
        assert_eq!(
            judge_slot(Replication, "w", None, Context::Start).level,
            Level::Ok
        );
        assert_eq!(
            judge_slot(Trigger, "w", None, Context::Status).level,
            Level::Ok
        );
        assert_eq!(
            judge_slot(Trigger, "w", Some(&slot("reserved", None)), Context::Status).level,
            Level::Warn
        );
    }

    #[test]
    fn publication_and_triggers() {
        let missing = ["public.orders".to_owned()];
        assert_eq!(
            judge_publication(Replication, "p", true, &[], Context::Status).level,
            Level::Ok
        );
        let c = judge_publication(Replication, "p", true, &missing, Context::Status);
        assert_eq!(c.level, Level::Fail);
        assert_eq!(
            c.fix.as_deref(),
            Some(
                "ALTER PUBLICATION \"p\" ADD TABLE public.orders (walhook run adds them within 1 s)"
            )
        );
        assert_eq!(
            judge_publication(Replication, "p", false, &[], Context::Status).level,
            Level::Warn
        );
        assert_eq!(
            judge_publication(Replication, "p", false, &[], Context::Start).level,
            Level::Ok
        );
        assert_eq!(
            judge_publication(Trigger, "p", false, &missing, Context::Status).level,
            Level::Ok
        );
        assert_eq!(judge_triggers(Trigger, &[]).level, Level::Ok);
        assert_eq!(judge_triggers(Trigger, &missing).level, Level::Fail);
        assert_eq!(judge_triggers(Replication, &missing).level, Level::Ok);
    }

    #[test]
    fn replica_identity() {
        let id = |replident, has_key, full_identity| Identity {
            table: "public.t".into(),
            replident,
            has_key,
            full_identity,
        };
        assert_eq!(
            judge_replica_identity(Replication, &[id('f', false, true)]).level,
            Level::Ok
        );
        assert_eq!(
            judge_replica_identity(Replication, &[id('d', true, true)]).level,
            Level::Warn
        );
        assert_eq!(
            judge_replica_identity(Replication, &[id('d', true, false)]).level,
            Level::Ok
        );
        assert_eq!(
            judge_replica_identity(Replication, &[id('i', true, false)]).level,
            Level::Ok
        );
        assert_eq!(
            judge_replica_identity(Replication, &[id('n', true, false)]).level,
            Level::Fail
        );
        assert_eq!(
            judge_replica_identity(Replication, &[id('d', false, false)]).level,
            Level::Fail
        );
        assert_eq!(
            judge_replica_identity(Trigger, &[id('n', false, true)]).level,
            Level::Ok
        );
    }

    #[test]
    fn privileges() {
        let p = Privileges {
            role: "app".into(),
            writes_walhook: true,
            ..Privileges::default()
        };
        assert_eq!(judge_privileges(Trigger, &p, false).level, Level::Ok);
        let c = judge_privileges(Replication, &p, true);
        assert_eq!(c.level, Level::Fail);
        assert_eq!(
            c.fix.as_deref(),
            Some("ALTER ROLE \"app\" REPLICATION, or use capture.mode = \"trigger\"")
        );
        let replication = Privileges {
            replication: true,
            ..p.clone()
        };
        assert_eq!(
            judge_privileges(Replication, &replication, true).level,
            Level::Ok
        );
        assert_eq!(
            judge_privileges(Replication, &replication, false).level,
            Level::Fail
        );
        let no_writes = Privileges {
            writes_walhook: false,
            ..replication
        };
        assert_eq!(
            judge_privileges(Trigger, &no_writes, true).level,
            Level::Fail
        );
        let superuser = Privileges {
            superuser: true,
            ..Privileges::default()
        };
        assert_eq!(
            judge_privileges(Replication, &superuser, false).level,
            Level::Ok
        );
    }

    #[test]
    fn retained_wal() {
        assert_eq!(judge_retained_wal("w", None, 1024).level, Level::Ok);
        assert_eq!(judge_retained_wal("w", Some(1024), 1024).level, Level::Ok);
        let c = judge_retained_wal("w", Some(2048), 1024);
        assert_eq!(c.level, Level::Warn);
        assert_eq!(
            c.message,
            "slot \"w\" retains 2.0 KiB of WAL, above capture.max_retained_wal (1.0 KiB)"
        );
    }
}
