//! Row change → event: name, stable id, and the SPEC §2 envelope.
//!
//! One [`Event`] is built per change and shared by every subscription it is routed to; only
//! `context` differs per subscription, spliced into the body rendered once per event.
//!
//! Columns the watch hides (`columns`, `exclude_columns`) are dropped here, before anything
//! is rendered or queued, from `data`, `previous`, `changed` and `unavailable`: with
//! `REPLICA IDENTITY FULL` PostgreSQL must send every column (a publication column list
//! would make the application's UPDATE and DELETE fail), so this is where they stop.
//!
//! A backfill's row ([`Origin::Backfill`]) becomes `<noun>.backfilled` whatever the watch's
//! verbs: `data` is the row, no `previous`/`changed`, `source.backfill` names the backfill,
//! and its id is derived from the backfill and the row key, so a chunk read again after a
//! crash repeats the same ids.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use sha2::{Digest, Sha256};

use crate::change::{BackfillOrigin, Op, Origin, Row, RowChange};
use crate::lsn::push_hex;

/// What a watched table declares: its noun, the verbs it produces and the columns its
/// events carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// Event noun (`orders`).
    pub noun: String,
    /// Produced verbs: `created`, `updated`, `deleted`, `truncated`.
    pub verbs: Vec<String>,
    /// Only these columns are carried (`None` = every column).
    pub columns: Option<Vec<String>>,
    /// Columns never carried.
    pub exclude_columns: Vec<String>,
}

impl Watch {
    /// Whether events of this watch carry `column`.
    pub fn shows(&self, column: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == column))
            && !self.exclude_columns.iter().any(|c| c == column)
    }

    /// Whether some column is held back.
    fn hides_any(&self) -> bool {
        self.columns.is_some() || !self.exclude_columns.is_empty()
    }
}

/// The verb an operation maps to.
pub fn verb(op: Op) -> &'static str {
    match op {
        Op::Insert => "created",
        Op::Update => "updated",
        Op::Delete => "deleted",
        Op::Truncate => "truncated",
    }
}

/// An event, ready to route and render.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `evt_` + commit LSN + index: the same on every replay.
    pub id: String,
    /// `<noun>.<verb>`.
    pub event_type: String,
    /// The row (new for created/updated, old for deleted); empty for truncated.
    pub data: Row,
    /// The old row (updated, deleted) when known.
    pub previous: Option<Row>,
    /// The columns whose value differs (updated, when the old row is complete).
    pub changed: Option<Vec<String>>,
    /// Identifies the row for ordering: table and key values.
    pub row_key: String,
    /// Set on a backfill's rows: which backfill, and the subscriptions it is restricted to
    /// (applied by [`crate::subscriptions::routing::RoutingIndex::route`]).
    pub backfill: Option<BackfillOrigin>,
    /// The envelope rendered once, with `"context":null` last.
    body: Bytes,
}

/// The SPEC §2 envelope, in its documented key order.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a Row,
    previous: Option<&'a Row>,
    changed: Option<&'a [String]>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unavailable: &'a [String],
    source: Source<'a>,
    context: Option<&'a str>,
}

#[derive(Serialize)]
struct Source<'a> {
    schema: &'a str,
    table: &'a str,
    lsn: Option<String>,
    xid: u32,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    backfill: Option<String>,
}

/// How the rendered envelope ends before a subscription's context is spliced in.
const NULL_CONTEXT_END: &[u8] = b"null}";

impl Event {
    /// Builds the event for `change` on a table watched as `watch`; `None` when the watch
    /// does not produce this verb. The envelope is rendered here, once for all subscriptions.
    pub fn from_change(change: RowChange, watch: &Watch) -> Option<Event> {
        let backfill = match &change.origin {
            Origin::Backfill(origin) => Some(**origin),
            _ => None,
        };
        let verb = if backfill.is_some() {
            "backfilled"
        } else {
            verb(change.op)
        };
        if backfill.is_none() && !watch.verbs.iter().any(|v| v == verb) {
            return None;
        }
        let replication = match &change.origin {
            Origin::Replication => true,
            Origin::Trigger => false,
            Origin::Backfill(origin) => !origin.trigger,
        };
        let id = if backfill.is_some() {
            String::new() // set below, from the row key
        } else {
            // Replication: `evt_` + the position with `_` for its `-`; trigger: `evt_t` +
            // the outbox row id. One allocation, no formatter.
            let mut id = String::with_capacity(31);
            id.push_str(if replication { "evt_" } else { "evt_t" });
            push_hex(&mut id, change.position.commit_lsn.0, 16);
            if replication {
                id.push('_');
                id.push_str(itoa::Buffer::new().format(change.position.index));
            }
            id
        };
        let mut event_type = String::with_capacity(watch.noun.len() + 1 + verb.len());
        event_type.push_str(&watch.noun);
        event_type.push('.');
        event_type.push_str(verb);
        let (mut data, mut previous) = match change.op {
            Op::Delete => (change.old.clone().unwrap_or_default(), change.old),
            Op::Update => (change.new.unwrap_or_default(), change.old),
            _ => (change.new.unwrap_or_default(), None),
        };
        // Complete: every column the events carry is known (trigger capture has already left
        // hidden ones out of the old image; replication sends them and they go below).
        let complete_old = previous.as_ref().is_some_and(|old| {
            if watch.hides_any() {
                change
                    .table
                    .columns
                    .iter()
                    .filter(|c| watch.shows(c))
                    .all(|c| old.contains_key(c) || change.unchanged_toast.iter().any(|t| t == c))
            } else {
                old.len() + change.unchanged_toast.len() >= change.table.columns.len()
            }
        });
        // The row key is taken before hidden columns go: a hidden key still orders the row.
        let key: Vec<&Value> = change
            .table
            .key
            .iter()
            .map(|k| data.get(k).unwrap_or(&Value::Null))
            .collect();
        let row_key = {
            let (schema, name) = (&change.table.schema, &change.table.name);
            let mut text = Vec::with_capacity(schema.len() + name.len() + 24);
            text.extend_from_slice(schema.as_bytes());
            text.push(b'.');
            text.extend_from_slice(name.as_bytes());
            text.push(b':');
            let _ = serde_json::to_writer(&mut text, &key);
            String::from_utf8(text).unwrap_or_default()
        };
        let id = match backfill {
            Some(origin) => backfill_event_id(origin.id, &row_key),
            None => id,
        };
        let mut unavailable = change.unchanged_toast;
        if watch.hides_any() {
            data.retain(|k, _| watch.shows(k));
            if let Some(old) = previous.as_mut() {
                old.retain(|k, _| watch.shows(k));
            }
            unavailable.retain(|k| watch.shows(k));
        }
        let changed = (change.op == Op::Update && complete_old).then(|| {
            data.iter()
                .filter(|(k, v)| previous.as_ref().and_then(|o| o.get(*k)) != Some(v))
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        });
        let envelope = Envelope {
            id: &id,
            event_type: &event_type,
            timestamp: change.commit_time.to_rfc3339(),
            data: &data,
            previous: previous.as_ref(),
            changed: changed.as_deref(),
            unavailable: &unavailable,
            source: Source {
                schema: &change.table.schema,
                table: &change.table.name,
                lsn: replication.then(|| change.position.commit_lsn.text()),
                xid: change.xid,
                mode: if replication {
                    "replication"
                } else {
                    "trigger"
                },
                backfill: backfill.map(|b| b.id.to_string()),
            },
            context: None,
        };
        let body = serde_json::to_vec(&envelope).ok()?.into();
        Some(Event {
            id,
            event_type,
            data,
            previous,
            changed,
            row_key,
            backfill,
            body,
        })
    }

    /// The exact POST body for a subscription whose `context` is given. Without a context
    /// this is the shared rendering (no copy); with one, the context is spliced in.
    pub fn body(&self, context: Option<&str>) -> Bytes {
        let Some(context) = context else {
            return self.body.clone();
        };
        let head = &self.body[..self.body.len() - NULL_CONTEXT_END.len()];
        let mut body = Vec::with_capacity(self.body.len() + context.len() + 8);
        body.extend_from_slice(head);
        // Serialising a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, context);
        body.push(b'}');
        body.into()
    }
}

/// `evt_b` + 32 hex digits of SHA-256 over the backfill id and the row key: the same when a
/// chunk is read again, distinct per row and per backfill.
fn backfill_event_id(backfill: uuid::Uuid, row_key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(backfill.as_bytes());
    hash.update(row_key.as_bytes());
    let digest = hash.finalize();
    let mut id = String::with_capacity(37);
    id.push_str("evt_b");
    for byte in &digest[..16] {
        // Writing into a String cannot fail.
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::change::{CommitTime, Position, Table};
    use crate::lsn::Lsn;

    #[test]
    fn hidden_columns_leave_data_previous_changed_and_unavailable() {
        let change = RowChange {
            position: Position {
                commit_lsn: Lsn(0x10),
                index: 0,
            },
            xid: 1,
            commit_time: CommitTime(0),
            table: Arc::new(Table {
                id: 1,
                schema: "public".into(),
                name: "users".into(),
                columns: vec!["id".into(), "email".into(), "secret".into(), "bio".into()],
                key: vec!["id".into()],
            }),
            op: Op::Update,
            new: json!({"id": 7, "email": "b", "secret": "s2"})
                .as_object()
                .cloned(),
            old: json!({"id": 7, "email": "a", "secret": "s1"})
                .as_object()
                .cloned(),
            unchanged_toast: vec!["bio".into()],
            origin: Origin::Replication,
        };
        let watch = Watch {
            noun: "users".into(),
            verbs: vec!["updated".into()],
            columns: None,
            exclude_columns: vec!["secret".into(), "id".into()],
        };
        let event = Event::from_change(change, &watch).unwrap();
        assert_eq!(event.data, *json!({"email": "b"}).as_object().unwrap());
        assert_eq!(event.previous, json!({"email": "a"}).as_object().cloned());
        assert_eq!(event.changed, Some(vec!["email".to_owned()]));
        assert_eq!(
            event.row_key, "public.users:[7]",
            "a hidden key still orders the row"
        );
        assert_eq!(event.id, "evt_0000000000000010_0");
        assert_eq!(event.event_type, "users.updated");
        let body: serde_json::Value = serde_json::from_slice(&event.body(None)).unwrap();
        assert_eq!(body["unavailable"], json!(["bio"]));
        assert_eq!(body["source"]["lsn"], "0/10");
        assert_eq!(body["timestamp"], "2000-01-01T00:00:00.000000Z");
        assert!(!String::from_utf8_lossy(&event.body(None)).contains("s1"));
        assert!(watch.shows("email") && !watch.shows("secret"));
        let only = Watch {
            columns: Some(vec!["email".into()]),
            ..Watch::default()
        };
        assert!(only.shows("email") && !only.shows("id"));
    }
}
