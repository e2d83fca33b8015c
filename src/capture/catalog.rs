//! Catalog lookups the decoder needs and the replication stream cannot answer: what a type
//! OID is (array, domain, composite…) and which columns form a table's primary key.
//!
//! Runs on its own ordinary (non-replication) session, opened lazily and dropped on error so
//! the next lookup reconnects. Lookups read the current catalog, not the historic snapshot
//! of the change being decoded; types rarely change shape, and a Type message from the
//! server makes the registry forget a type so it is read again.
//!
//! The session's `search_path` is `pg_catalog, pg_temp`, and every comparison with a number
//! is cast to the catalog column's type, so no user-defined operator can be picked.

use std::sync::Arc;

use super::connection::{Connection, TextRow};
use super::error::CaptureError;
use crate::database::Database;
use crate::pgoutput::types::{Kind, TypeRegistry};

/// A lazily connected catalog session.
pub(super) struct Catalog {
    database: Database,
    conn: Option<Connection>,
}

impl Catalog {
    /// A catalog reader for `database`; connects on first use.
    pub(super) fn new(database: Database) -> Catalog {
        Catalog {
            database,
            conn: None,
        }
    }

    async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>, CaptureError> {
        if self.conn.is_none() {
            self.conn = Some(Connection::connect(&self.database, false).await?);
        }
        let conn = self.conn.as_mut().ok_or(CaptureError::ConsumerGone)?;
        let result = conn.simple_query(sql).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Resolves every type in `oids` the registry does not know yet, with what they refer to
    /// (array elements, composite fields, domain bases).
    pub(super) async fn resolve_types(
        &mut self,
        oids: impl IntoIterator<Item = u32>,
        types: &mut TypeRegistry,
    ) -> Result<(), CaptureError> {
        let mut pending: Vec<u32> = oids
            .into_iter()
            .filter(|&o| types.needs_lookup(o))
            .collect();
        while !pending.is_empty() {
            pending.sort_unstable();
            pending.dedup();
            let list = pending
                .iter()
                .map(|oid| format!("{oid}::pg_catalog.oid"))
                .collect::<Vec<_>>()
                .join(",");
            let rows = self
                .query(&format!(
                    "SELECT t.oid, t.typtype, t.typelem, t.typbasetype, t.typrelid, \
                     t.typcategory, coalesce(e.typdelim, ',') \
                     FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e \
                     ON e.oid OPERATOR(pg_catalog.=) t.typelem \
                     WHERE t.oid OPERATOR(pg_catalog.=) ANY (ARRAY[{list}])"
                ))
                .await?;
            let mut next = Vec::new();
            for row in rows {
                let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                let num = |i: usize| field(i).parse::<u32>().unwrap_or(0);
                let oid = num(0);
                let kind = match (field(1).as_str(), field(5).as_str()) {
                    ("d", _) => Kind::Domain(num(3)),
                    ("c", _) => Kind::Composite(self.composite_fields(num(4)).await?),
                    (_, "A") if num(2) != 0 => Kind::Array {
                        element: num(2),
                        delimiter: field(6).bytes().next().unwrap_or(b','),
                    },
                    _ => Kind::Text,
                };
                next.extend(
                    TypeRegistry::dependencies(&kind)
                        .into_iter()
                        .filter(|&o| types.needs_lookup(o)),
                );
                types.insert(oid, kind);
            }
            // A type the catalog does not know (dropped meanwhile) is rendered as text.
            for oid in pending.drain(..) {
                if types.needs_lookup(oid) {
                    types.insert(oid, Kind::Text);
                }
            }
            pending = next;
        }
        Ok(())
    }

    async fn composite_fields(&mut self, relid: u32) -> Result<Arc<[(String, u32)]>, CaptureError> {
        let rows = self
            .query(&format!(
                "SELECT attname, atttypid FROM pg_catalog.pg_attribute \
                 WHERE attrelid OPERATOR(pg_catalog.=) {relid}::pg_catalog.oid \
                 AND attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT attisdropped \
                 ORDER BY attnum"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let name = row.first().cloned().flatten().unwrap_or_default();
                let oid = row
                    .get(1)
                    .cloned()
                    .flatten()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                (name, oid)
            })
            .collect())
    }

    /// The primary key columns of a table, else its replica identity index's, in index order;
    /// empty when it has neither.
    pub(super) async fn primary_key(&mut self, relid: u32) -> Result<Vec<String>, CaptureError> {
        let rows = self
            .query(&format!(
                "SELECT a.attname FROM pg_catalog.pg_attribute a, \
                 (SELECT indkey FROM pg_catalog.pg_index \
                  WHERE indrelid OPERATOR(pg_catalog.=) {relid}::pg_catalog.oid \
                  AND (indisprimary OR indisreplident) ORDER BY indisprimary DESC LIMIT 1) i \
                 WHERE a.attrelid OPERATOR(pg_catalog.=) {relid}::pg_catalog.oid \
                 AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey::pg_catalog.int2[]) \
                 ORDER BY pg_catalog.array_position(i.indkey::pg_catalog.int2[], a.attnum)"
            ))
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect())
    }
}
