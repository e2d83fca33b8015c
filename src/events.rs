//! Row change → event: name, stable id, and the SPEC §2 envelope.
//!
//! One [`Event`] is built per change and shared by every subscription it is routed to; only
//! `context` differs per subscription, added when the body is rendered.

use serde_json::{Map, Value, json};

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
    /// Old row on updated and deleted, when known.
    pub previous: Option<Row>,
    /// Identifies the row for ordering: table and key values.
    pub row_key: String,
    envelope: Map<String, Value>,
}

impl Event {
    /// Builds the event for `change` on a table watched as `watch`; `None` when the watch
    /// does not produce this verb.
    pub fn from_change(change: &RowChange, watch: &Watch) -> Option<Event> {
        let verb = verb(change.op);
        if !watch.verbs.iter().any(|v| v == verb) {
            return None;
        }
        let id = match change.origin {
            Origin::Replication => format!("evt_{}", change.position).replace('-', "_"),
            Origin::Trigger => format!("evt_t{:016X}", change.position.commit_lsn.0),
        };
        let event_type = format!("{}.{verb}", watch.noun);
        let data = match change.op {
            Op::Delete => change.old.clone().unwrap_or_default(),
            _ => change.new.clone().unwrap_or_default(),
        };
        let previous = match change.op {
            Op::Update | Op::Delete => change.old.clone(),
            _ => None,
        };
        let complete_old = previous.as_ref().is_some_and(|old| {
            old.len() + change.unchanged_toast.len() >= change.table.columns.len()
        });
        let changed = (change.op == Op::Update && complete_old).then(|| {
            let old = previous.as_ref().map(|o| o as &Row);
            data.iter()
                .filter(|(k, v)| old.and_then(|o| o.get(*k)) != Some(v))
                .map(|(k, _)| k.clone())
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
            Value::from(key.into_iter().cloned().collect::<Vec<_>>())
        );
        let mut envelope = Map::new();
        envelope.insert("id".into(), json!(id));
        envelope.insert("type".into(), json!(event_type));
        envelope.insert("timestamp".into(), json!(change.commit_time.to_rfc3339()));
        envelope.insert("data".into(), Value::Object(data.clone()));
        envelope.insert(
            "previous".into(),
            previous.clone().map_or(Value::Null, Value::Object),
        );
        envelope.insert("changed".into(), changed.map_or(Value::Null, Value::from));
        if !change.unchanged_toast.is_empty() {
            envelope.insert("unavailable".into(), json!(change.unchanged_toast));
        }
        envelope.insert(
            "source".into(),
            json!({
                "schema": change.table.schema,
                "table": change.table.name,
                "lsn": match change.origin {
                    Origin::Replication => Value::from(change.position.commit_lsn.to_string()),
                    Origin::Trigger => Value::Null,
                },
                "xid": change.xid,
                "mode": match change.origin {
                    Origin::Replication => "replication",
                    Origin::Trigger => "trigger",
                },
            }),
        );
        Some(Event {
            id,
            event_type,
            data,
            previous,
            row_key,
            envelope,
        })
    }

    /// The POST body for a subscription whose `context` is given.
    pub fn envelope(&self, context: Option<&str>) -> Value {
        let mut body = self.envelope.clone();
        body.insert("context".into(), context.map_or(Value::Null, Value::from));
        Value::Object(body)
    }
}
