//! pgoutput messages → [`CaptureMessage`]s: the relation cache, the transaction frame, and
//! row images turned into JSON rows.
//!
//! Invariants: a change is only emitted inside a Begin/Commit frame and gets the next index
//! of that transaction; a Relation message replaces the cached shape (it is re-sent after
//! DDL and TRUNCATE), so rows decoded after it carry the new columns.
//!
//! A transactional logical message with the prefix [`WATERMARK_PREFIX`] is a backfill
//! watermark: it is yielded as a change of the pseudo table [`Table::watermark`] whose `new`
//! image is the message's JSON payload ([`crate::backfill`] takes it out of the stream).
//! Other logical messages are skipped.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::DecodeError;
use super::message::{OldKind, PgOutput, Relation, Tuple, TupleValue};
use super::types::TypeRegistry;
use super::value::to_json;
use crate::change::{
    Begin, CaptureMessage, Commit, CommitTime, Op, Origin, Position, Row, RowChange, Table,
    WATERMARK_PREFIX,
};

/// A cached relation: its wire shape and the table handed to the pipeline.
struct Entry {
    relation: Relation,
    table: Arc<Table>,
}

/// Stateful decoder for one replication stream.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Entry>,
    types: TypeRegistry,
    tx: Option<(Begin, u32)>,
    /// The pseudo table of backfill watermarks, made once.
    watermark: Option<Arc<Table>>,
}

impl Decoder {
    /// The type registry, for catalog lookups to fill.
    pub fn types_mut(&mut self) -> &mut TypeRegistry {
        &mut self.types
    }

    /// The type registry.
    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    /// Caches (or replaces) a relation. `key` names the columns that identify a row (the
    /// primary key); when empty, the replica identity columns flagged by the server are used.
    pub fn add_relation(&mut self, relation: Relation, key: Vec<String>) {
        let key = if key.is_empty() {
            relation
                .columns
                .iter()
                .filter(|c| c.is_key)
                .map(|c| c.name.clone())
                .collect()
        } else {
            key
        };
        let table = Arc::new(Table {
            id: relation.id,
            schema: if relation.schema.is_empty() {
                "pg_catalog".to_owned()
            } else {
                relation.schema.clone()
            },
            name: relation.name.clone(),
            columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            key,
        });
        self.relations
            .insert(relation.id, Entry { relation, table });
    }

    /// Whether a transaction is open (between Begin and Commit).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Forgets a partially received transaction (the connection dropped mid-way; the server
    /// will send it again from its Begin).
    pub fn reset_transaction(&mut self) {
        self.tx = None;
    }

    /// Decodes one message, appending what it yields to `out`. Relation and Type messages
    /// are cached here too, though the capture normally resolves their types first.
    pub fn decode(
        &mut self,
        message: PgOutput<'_>,
        out: &mut Vec<CaptureMessage>,
    ) -> Result<(), DecodeError> {
        match message {
            PgOutput::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                let begin = Begin {
                    xid,
                    commit_lsn: final_lsn,
                    commit_time: CommitTime(commit_time),
                };
                out.push(CaptureMessage::Begin(begin.clone()));
                self.tx = Some((begin, 0));
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
            } => {
                let (begin, changes) = self.tx.take().ok_or(DecodeError::OutsideTransaction)?;
                out.push(CaptureMessage::Commit(Commit {
                    xid: begin.xid,
                    commit_lsn,
                    end_lsn,
                    commit_time: CommitTime(commit_time),
                    changes,
                }));
            }
            PgOutput::Relation(relation) => self.add_relation(relation, Vec::new()),
            PgOutput::Type { oid, .. } => self.types.forget(oid),
            PgOutput::Message {
                transactional: true,
                prefix,
                content,
                ..
            } if prefix == WATERMARK_PREFIX && self.tx.is_some() => {
                if let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(content) {
                    let table = self
                        .watermark
                        .get_or_insert_with(|| Arc::new(Table::watermark()))
                        .clone();
                    let (begin, index) = self.tx.as_mut().ok_or(DecodeError::OutsideTransaction)?;
                    let position = Position {
                        commit_lsn: begin.commit_lsn,
                        index: *index,
                    };
                    *index += 1;
                    out.push(CaptureMessage::Change(RowChange {
                        position,
                        xid: begin.xid,
                        commit_time: begin.commit_time,
                        table,
                        op: Op::Insert,
                        new: Some(payload),
                        old: None,
                        unchanged_toast: Vec::new(),
                        origin: Origin::Replication,
                    }));
                }
            }
            PgOutput::Origin { .. } | PgOutput::Message { .. } => {}
            PgOutput::Insert { relation, new } => {
                let entry = self.entry(relation)?;
                let (new, unchanged) = row(entry, &self.types, &new, None)?;
                let change = self.change(relation, Op::Insert, Some(new), None, unchanged)?;
                out.push(change);
            }
            PgOutput::Update { relation, old, new } => {
                let entry = self.entry(relation)?;
                let old = old
                    .map(|(kind, tuple)| old_row(entry, &self.types, kind, &tuple))
                    .transpose()?;
                let (new, unchanged) = row(entry, &self.types, &new, old.as_ref())?;
                let change = self.change(relation, Op::Update, Some(new), old, unchanged)?;
                out.push(change);
            }
            PgOutput::Delete {
                relation,
                old: (kind, tuple),
            } => {
                let entry = self.entry(relation)?;
                let old = old_row(entry, &self.types, kind, &tuple)?;
                out.push(self.change(relation, Op::Delete, None, Some(old), Vec::new())?);
            }
            PgOutput::Truncate { relations, .. } => {
                for relation in relations {
                    out.push(self.change(relation, Op::Truncate, None, None, Vec::new())?);
                }
            }
        }
        Ok(())
    }

    fn entry(&self, relation: u32) -> Result<&Entry, DecodeError> {
        self.relations
            .get(&relation)
            .ok_or(DecodeError::UnknownRelation(relation))
    }

    fn change(
        &mut self,
        relation: u32,
        op: Op,
        new: Option<Row>,
        old: Option<Row>,
        unchanged_toast: Vec<String>,
    ) -> Result<CaptureMessage, DecodeError> {
        let table = self.entry(relation)?.table.clone();
        let (begin, index) = self.tx.as_mut().ok_or(DecodeError::OutsideTransaction)?;
        let position = Position {
            commit_lsn: begin.commit_lsn,
            index: *index,
        };
        *index += 1;
        Ok(CaptureMessage::Change(RowChange {
            position,
            xid: begin.xid,
            commit_time: begin.commit_time,
            table,
            op,
            new,
            old,
            unchanged_toast,
            origin: Origin::Replication,
        }))
    }
}

/// A new row image as JSON. Unchanged TOASTed columns are taken from `old` when it has them,
/// else left out and returned by name.
fn row(
    entry: &Entry,
    types: &TypeRegistry,
    tuple: &Tuple<'_>,
    old: Option<&Row>,
) -> Result<(Row, Vec<String>), DecodeError> {
    check_width(entry, tuple)?;
    let mut out = Row::with_capacity(tuple.len());
    let mut unchanged = Vec::new();
    for (column, value) in entry.relation.columns.iter().zip(tuple) {
        let json = match value {
            TupleValue::UnchangedToast => match old.and_then(|o| o.get(&column.name)) {
                Some(previous) => previous.clone(),
                None => {
                    unchanged.push(column.name.clone());
                    continue;
                }
            },
            other => value_json(*other, column.type_oid, types),
        };
        out.insert(column.name.clone(), json);
    }
    Ok((out, unchanged))
}

/// An old row image: all columns for 'O', only the identity columns for 'K'. Unchanged TOAST
/// markers in an old image are left out (the value is unknown).
fn old_row(
    entry: &Entry,
    types: &TypeRegistry,
    kind: OldKind,
    tuple: &Tuple<'_>,
) -> Result<Row, DecodeError> {
    check_width(entry, tuple)?;
    let mut out = Row::with_capacity(tuple.len());
    for (column, value) in entry.relation.columns.iter().zip(tuple) {
        if (kind == OldKind::Key && !column.is_key) || *value == TupleValue::UnchangedToast {
            continue;
        }
        out.insert(
            column.name.clone(),
            value_json(*value, column.type_oid, types),
        );
    }
    Ok(out)
}

fn check_width(entry: &Entry, tuple: &Tuple<'_>) -> Result<(), DecodeError> {
    if tuple.len() == entry.relation.columns.len() {
        return Ok(());
    }
    Err(DecodeError::ColumnCount {
        table: format!("{}.{}", entry.table.schema, entry.table.name),
        expected: entry.relation.columns.len(),
        got: tuple.len(),
    })
}

fn value_json(value: TupleValue<'_>, oid: u32, types: &TypeRegistry) -> Value {
    match value {
        TupleValue::Null | TupleValue::UnchangedToast => Value::Null,
        TupleValue::Text(bytes) | TupleValue::Binary(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => to_json(text, oid, types),
            Err(_) => to_json(&String::from_utf8_lossy(bytes), oid, types),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::message::RelationColumn;
    use serde_json::json;

    fn decoder() -> Decoder {
        let mut d = Decoder::default();
        let column = |name: &str, oid, is_key| RelationColumn {
            is_key,
            name: name.into(),
            type_oid: oid,
            type_modifier: -1,
        };
        d.add_relation(
            Relation {
                id: 7,
                schema: "public".into(),
                name: "docs".into(),
                replica_identity: b'd',
                columns: vec![column("id", 23, true), column("body", 25, false)],
            },
            Vec::new(),
        );
        d
    }

    fn begin(d: &mut Decoder, out: &mut Vec<CaptureMessage>) {
        let b = PgOutput::Begin {
            final_lsn: Lsn(100),
            commit_time: 0,
            xid: 9,
        };
        d.decode(b, out).unwrap();
    }

    #[test]
    fn unchanged_toast_is_filled_from_old_or_named() {
        let mut d = decoder();
        let mut out = Vec::new();
        begin(&mut d, &mut out);
        let new = vec![TupleValue::Text(b"1"), TupleValue::UnchangedToast];
        d.decode(
            PgOutput::Update {
                relation: 7,
                old: None,
                new: new.clone(),
            },
            &mut out,
        )
        .unwrap();
        let full_old = vec![TupleValue::Text(b"1"), TupleValue::Text(b"long")];
        let old = Some((OldKind::Full, full_old));
        d.decode(
            PgOutput::Update {
                relation: 7,
                old,
                new,
            },
            &mut out,
        )
        .unwrap();
        let CaptureMessage::Change(first) = &out[1] else {
            panic!()
        };
        assert_eq!(first.new, json!({"id": 1}).as_object().cloned());
        assert_eq!(first.unchanged_toast, vec!["body".to_string()]);
        assert_eq!(
            first.position,
            Position {
                commit_lsn: Lsn(100),
                index: 0
            }
        );
        let CaptureMessage::Change(second) = &out[2] else {
            panic!()
        };
        assert_eq!(
            second.new,
            json!({"id": 1, "body": "long"}).as_object().cloned()
        );
        assert!(second.unchanged_toast.is_empty());
        assert_eq!(second.position.index, 1);
        assert_eq!(second.table.key, vec!["id".to_string()]);
    }

    #[test]
    fn key_old_image_keeps_only_identity_columns() {
        let mut d = decoder();
        let mut out = Vec::new();
        begin(&mut d, &mut out);
        let old = (OldKind::Key, vec![TupleValue::Text(b"5"), TupleValue::Null]);
        d.decode(PgOutput::Delete { relation: 7, old }, &mut out)
            .unwrap();
        let CaptureMessage::Change(change) = &out[1] else {
            panic!()
        };
        assert_eq!(change.old, json!({"id": 5}).as_object().cloned());
        assert_eq!(change.op, Op::Delete);
    }

    #[test]
    fn rejects_changes_outside_a_transaction_and_unknown_relations() {
        let mut d = decoder();
        let mut out = Vec::new();
        let insert = PgOutput::Insert {
            relation: 7,
            new: vec![TupleValue::Null, TupleValue::Null],
        };
        assert!(matches!(
            d.decode(insert, &mut out),
            Err(DecodeError::OutsideTransaction)
        ));
        begin(&mut d, &mut out);
        let insert = PgOutput::Insert {
            relation: 8,
            new: vec![],
        };
        assert!(matches!(
            d.decode(insert, &mut out),
            Err(DecodeError::UnknownRelation(8))
        ));
    }
}
