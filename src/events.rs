//! Row change → event: name, stable id, and the SPEC §2 envelope.
//!
//! One [`Event`] is built per change and shared by every subscription it is routed to; only
//! `context` differs per subscription, spliced into the body rendered once per event.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::change::{Op, Origin, Row, RowChange};

/// What a watched table declares: its noun and the verbs it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Event noun (`orders`).
    pub noun: String,
    /// Produced verbs: `created`, `updated`, `deleted`, `truncated`.
    pub verbs: Vec<String>,
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
    /// Identifies the row for ordering: table and key values.
    pub row_key: String,
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
    changed: Option<Vec<&'a String>>,
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
}

/// How the rendered envelope ends before a subscription's context is spliced in.
const NULL_CONTEXT_END: &[u8] = b"null}";

impl Event {
    /// Builds the event for `change` on a table watched as `watch`; `None` when the watch
    /// does not produce this verb. The envelope is rendered here, once for all subscriptions.
    pub fn from_change(change: RowChange, watch: &Watch) -> Option<Event> {
        let verb = verb(change.op);
        if !watch.verbs.iter().any(|v| v == verb) {
            return None;
        }
        let replication = change.origin == Origin::Replication;
        let id = if replication {
            format!("evt_{}", change.position).replace('-', "_")
        } else {
            format!("evt_t{:016X}", change.position.commit_lsn.0)
        };
        let event_type = format!("{}.{verb}", watch.noun);
        let (data, previous) = match change.op {
            Op::Delete => (change.old.clone().unwrap_or_default(), change.old),
            Op::Update => (change.new.unwrap_or_default(), change.old),
            _ => (change.new.unwrap_or_default(), None),
        };
        let complete_old = previous.as_ref().is_some_and(|old| {
            old.len() + change.unchanged_toast.len() >= change.table.columns.len()
        });
        let changed = (change.op == Op::Update && complete_old).then(|| {
            data.iter()
                .filter(|(k, v)| previous.as_ref().and_then(|o| o.get(*k)) != Some(v))
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        });
        let key: Vec<&Value> = change
            .table
            .key
            .iter()
            .map(|k| data.get(k).unwrap_or(&Value::Null))
            .collect();
        let row_key = format!(
            "{}.{}:{}",
            change.table.schema,
            change.table.name,
            serde_json::to_string(&key).unwrap_or_default()
        );
        let envelope = Envelope {
            id: &id,
            event_type: &event_type,
            timestamp: change.commit_time.to_rfc3339(),
            data: &data,
            previous: previous.as_ref(),
            changed,
            unavailable: &change.unchanged_toast,
            source: Source {
                schema: &change.table.schema,
                table: &change.table.name,
                lsn: replication.then(|| change.position.commit_lsn.to_string()),
                xid: change.xid,
                mode: if replication {
                    "replication"
                } else {
                    "trigger"
                },
            },
            context: None,
        };
        let body = serde_json::to_vec(&envelope).ok()?.into();
        Some(Event {
            id,
            event_type,
            data,
            row_key,
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
