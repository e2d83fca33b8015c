//! The replication slot and publication walhook owns, set up on the replication session.
//!
//! Order matters: the publication is created before the slot, because pgoutput reads the
//! publication through the historic snapshot of each change, and a publication younger than
//! the slot's consistent point would be "does not exist" for the changes in between.
//!
//! The session's `search_path` is `pg_catalog, pg_temp`; tables are named by (schema, table)
//! pairs, catalog comparisons are cast, and literals use `E''` escaping (see
//! [`quote_literal`]) so nothing depends on `standard_conforming_strings`.

use super::connection::{Connection, quote_ident, quote_literal};
use super::error::CaptureError;
use crate::lsn::Lsn;

/// The server's answer to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    /// Cluster system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// Database of this session.
    pub database: String,
}

/// Runs `IDENTIFY_SYSTEM` and checks that the server can decode logically.
pub async fn identify_system(conn: &mut Connection) -> Result<SystemInfo, CaptureError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| CaptureError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
    let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let info = SystemInfo {
        system_id: field(0),
        timeline: field(1).parse().unwrap_or(0),
        xlog_pos: field(2).parse().unwrap_or_default(),
        database: field(3),
    };
    let wal_level = conn.simple_query("SHOW wal_level").await?;
    let wal_level = wal_level
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    if wal_level != "logical" {
        return Err(CaptureError::Config(format!(
            "the server runs with wal_level={wal_level}; capture = \"replication\" needs \
             wal_level=logical (set it in postgresql.conf and restart PostgreSQL)"
        )));
    }
    Ok(info)
}

/// Creates the publication when absent and adds the configured tables it lacks (a watched
/// table with its column list and row filter, see `walhook.publish_table`). The
/// publication publishes partitions via their root (`publish_via_partition_root`), so a
/// watched partitioned table's changes arrive as the parent's; an older publication
/// without it is altered. `tables` are (schema, table) pairs; one that does not exist
/// (dropped since it was watched) is skipped with a warning.
pub async fn ensure_publication(
    conn: &mut Connection,
    publication: &str,
    tables: &[(String, String)],
) -> Result<(), CaptureError> {
    let exists = conn
        .simple_query(&format!(
            "SELECT pubviaroot FROM pg_catalog.pg_publication \
             WHERE pubname OPERATOR(pg_catalog.=) {}::pg_catalog.name",
            quote_literal(publication)
        ))
        .await?;
    match exists.first() {
        None => {
            conn.simple_query(&format!(
                "CREATE PUBLICATION {} WITH (publish_via_partition_root = true)",
                quote_ident(publication)
            ))
            .await?;
            tracing::info!(publication, "created publication");
        }
        Some(row) if row.first().cloned().flatten().as_deref() != Some("t") => {
            conn.simple_query(&format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                quote_ident(publication)
            ))
            .await?;
            tracing::info!(
                publication,
                "publication now publishes partitions via their root"
            );
        }
        Some(_) => {}
    }
    let watches_known = !conn
        .simple_query(
            "SELECT 1 WHERE pg_catalog.to_regprocedure('walhook.publish_table(regclass)') IS NOT NULL",
        )
        .await?
        .is_empty();
    for (schema, table) in tables {
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        // A watched table goes in as its watch says (column list, row filter): the one place
        // that writes a table's entry is `walhook.publish_table` (sql/walhook.sql). A table
        // it does not know (no watch row, or no walhook schema) is added plainly below.
        if watches_known {
            conn.simple_query(&format!(
                "SELECT walhook.publish_table(c.oid::pg_catalog.regclass) FROM pg_catalog.pg_class c \
                 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({})::pg_catalog.oid",
                quote_literal(&name)
            ))
            .await?;
        }
        let found = conn
            .simple_query(&format!(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr \
                 JOIN pg_catalog.pg_publication p ON p.oid OPERATOR(pg_catalog.=) pr.prpubid \
                 WHERE p.pubname OPERATOR(pg_catalog.=) {}::pg_catalog.name \
                 AND pr.prrelid OPERATOR(pg_catalog.=) c.oid) \
                 FROM pg_catalog.pg_class c \
                 WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass({})::pg_catalog.oid",
                quote_literal(publication),
                quote_literal(&name)
            ))
            .await?;
        let Some(row) = found.first() else {
            tracing::warn!(publication, table = %name, "watched table does not exist (dropped?); not published");
            continue;
        };
        if row.first().cloned().flatten().as_deref() != Some("t") {
            conn.simple_query(&format!(
                "ALTER PUBLICATION {} ADD TABLE {name}",
                quote_ident(publication)
            ))
            .await?;
            tracing::info!(publication, table = %name, "added table to publication");
        }
    }
    Ok(())
}

/// Creates the logical slot (pgoutput) when absent; returns its `confirmed_flush_lsn`, the
/// position already acknowledged durably by an earlier run.
pub async fn ensure_slot(conn: &mut Connection, slot: &str) -> Result<Lsn, CaptureError> {
    let rows = conn
        .simple_query(&format!(
            "SELECT plugin, database, confirmed_flush_lsn FROM pg_catalog.pg_replication_slots \
             WHERE slot_name OPERATOR(pg_catalog.=) {}::pg_catalog.name",
            quote_literal(slot)
        ))
        .await?;
    if let Some(row) = rows.into_iter().next() {
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        if field(0) != "pgoutput" {
            return Err(CaptureError::Config(format!(
                "replication slot {slot:?} exists but uses plugin {:?}, not pgoutput; \
                 choose another capture.slot or drop it",
                field(0)
            )));
        }
        return Ok(field(2).parse().unwrap_or_default());
    }
    let created = conn
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(slot)
        ))
        .await?;
    let consistent = created
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .and_then(|l| l.parse().ok())
        .unwrap_or_default();
    tracing::info!(slot, %consistent, "created replication slot");
    Ok(consistent)
}
