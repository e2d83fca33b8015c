//! The routing index: event → subscriptions that receive it.
//!
//! Built from the watched tables and the active subscriptions. Patterns (`orders.created`,
//! `orders.*`, `*.deleted`, `*`) are expanded at build time against the event types that
//! exist, so routing an event is one hash lookup plus the filters of the subscriptions
//! that match its type: non-matching subscriptions cost nothing per event.
//!
//! Filters ([`super::filter`]): `{"column": value}`, `{"column": [v1, v2]}` (an array is
//! always an IN-list), operators `{"column": {"gt": 100}}`, `$changed` and `$previous`, ANDed,
//! matched on `data` (on `previous` for `deleted`, which equals `data` there). Each is
//! compiled once, when its route is built, and only the filters of the routes of the
//! event's type run. Expired subscriptions never match, checked per event.

use std::collections::HashMap;
use std::sync::Arc;

use super::filter::Filter;
use super::store::{Subscription, WatchedTable};
use crate::delivery::client::Target;
use crate::events::Event;

/// A subscription as routing keeps it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The subscription row.
    pub subscription: Subscription,
    /// Its target, prepared for sending.
    pub target: Target,
    filter: Filter,
    expires_at_micros: Option<i64>,
}

impl Route {
    fn new(subscription: Subscription) -> Route {
        let filter = Filter::compile(&subscription.filter);
        let expires_at_micros = subscription.expires_at.map(|t| t.timestamp_micros());
        let target = Target::new(
            &subscription.target_url,
            &subscription.secret,
            &subscription.headers,
        )
        .with_http2(subscription.http2);
        Route {
            subscription,
            target,
            filter,
            expires_at_micros,
        }
    }

    /// Whether this route takes `event` at `now_micros` (Unix microseconds).
    pub fn matches(&self, event: &Event, now_micros: i64) -> bool {
        if self.expires_at_micros.is_some_and(|t| t <= now_micros) {
            return false;
        }
        self.filter.matches(event)
    }
}

/// Event type → routes, plus which table produces which noun.
#[derive(Debug, Default)]
pub struct RoutingIndex {
    by_type: HashMap<String, Vec<Arc<Route>>>,
    by_id: HashMap<uuid::Uuid, Arc<Route>>,
    nouns: HashMap<(String, String), crate::events::Watch>,
    /// Watched tables by OID → their (schema, table) in `nouns`, and back: a change is
    /// matched by its table's OID first, so a renamed table keeps its watch before the
    /// watch's names catch up.
    by_relid: HashMap<u32, (String, String)>,
    relid_of: HashMap<(String, String), u32>,
}

impl RoutingIndex {
    /// Builds the index; subscriptions whose patterns match no existing event type are kept
    /// out until a watched table produces one (the next rebuild picks them up).
    pub fn build(tables: Vec<WatchedTable>, subscriptions: Vec<Subscription>) -> RoutingIndex {
        let mut index = RoutingIndex::default();
        let types: Vec<(String, String)> = tables
            .iter()
            .flat_map(|t| t.verbs.iter().map(move |v| (t.noun.clone(), v.clone())))
            .collect();
        for subscription in subscriptions {
            let route = Arc::new(Route::new(subscription));
            index.by_id.insert(route.subscription.id, route.clone());
            for (noun, verb) in &types {
                if route
                    .subscription
                    .events
                    .iter()
                    .any(|p| pattern_matches(p, noun, verb))
                {
                    index
                        .by_type
                        .entry(format!("{noun}.{verb}"))
                        .or_default()
                        .push(route.clone());
                }
            }
        }
        for t in tables {
            if let Some(relid) = t.relid {
                let key = (t.schema_name.clone(), t.table_name.clone());
                index.by_relid.insert(relid, key.clone());
                index.relid_of.insert(key, relid);
            }
            let watch = crate::events::Watch {
                noun: t.noun,
                verbs: t.verbs,
                columns: t.column_list,
                exclude_columns: t.exclude_columns,
            };
            index.nouns.insert((t.schema_name, t.table_name), watch);
        }
        index
    }

    /// This index with one subscription changed: `subscription` replaces (or adds) the route
    /// of `id`, `None` removes it. Other routes are shared, not rebuilt, and no query runs:
    /// an API write costs the index one copy of its lists, not a reload of every row.
    pub fn with(&self, id: uuid::Uuid, subscription: Option<Subscription>) -> RoutingIndex {
        let mut by_type: HashMap<String, Vec<Arc<Route>>> = self
            .by_type
            .iter()
            .map(|(event_type, routes)| {
                let kept = routes
                    .iter()
                    .filter(|r| r.subscription.id != id)
                    .cloned()
                    .collect::<Vec<_>>();
                (event_type.clone(), kept)
            })
            .filter(|(_, routes)| !routes.is_empty())
            .collect();
        let mut by_id = self.by_id.clone();
        by_id.remove(&id);
        if let Some(subscription) = subscription {
            let route = Arc::new(Route::new(subscription));
            by_id.insert(route.subscription.id, route.clone());
            for watch in self.nouns.values() {
                for verb in &watch.verbs {
                    if route
                        .subscription
                        .events
                        .iter()
                        .any(|p| pattern_matches(p, &watch.noun, verb))
                    {
                        by_type
                            .entry(format!("{}.{verb}", watch.noun))
                            .or_default()
                            .push(route.clone());
                    }
                }
            }
        }
        RoutingIndex {
            by_type,
            by_id,
            nouns: self.nouns.clone(),
            by_relid: self.by_relid.clone(),
            relid_of: self.relid_of.clone(),
        }
    }

    /// How the table `schema.table` is watched, if it is.
    pub fn watch(&self, schema: &str, table: &str) -> Option<&crate::events::Watch> {
        self.nouns.get(&(schema.to_owned(), table.to_owned()))
    }

    /// How the captured `table` is watched, if it is: by its OID, else by its name unless
    /// that name is watched as another table (a different OID).
    pub fn watch_table(&self, table: &crate::change::Table) -> Option<&crate::events::Watch> {
        if let Some(key) = self.by_relid.get(&table.id) {
            return self.nouns.get(key);
        }
        let key = (table.schema.clone(), table.name.clone());
        match self.relid_of.get(&key) {
            Some(_) if table.id != 0 => None,
            _ => self.nouns.get(&key),
        }
    }

    /// Watched tables as (schema, table) pairs.
    pub fn watched_tables(&self) -> Vec<(String, String)> {
        self.nouns.keys().cloned().collect()
    }

    /// The routes that receive `event` now. A backfill's event (`<noun>.backfilled`) goes
    /// only to its backfill's subscription, or, without one, to every subscription taking
    /// some event of the noun; the subscription's filter and expiry apply as to any event.
    pub fn route<'a>(
        &'a self,
        event: &'a Event,
        now_micros: i64,
    ) -> impl Iterator<Item = &'a Arc<Route>> {
        let live = match event.backfill {
            None => self.by_type.get(&event.event_type),
            Some(_) => None,
        };
        let backfill = event.backfill.map(|origin| {
            let noun = event
                .event_type
                .rsplit_once('.')
                .map_or(event.event_type.as_str(), |(noun, _)| noun);
            let verbs = self
                .nouns
                .values()
                .find(|w| w.noun == noun)
                .map(|w| w.verbs.as_slice())
                .unwrap_or_default();
            let takes = move |r: &&Arc<Route>| {
                r.subscription
                    .events
                    .iter()
                    .any(|p| verbs.iter().any(|v| pattern_matches(p, noun, v)))
            };
            let (one, every) = match origin.subscription {
                Some(id) => (self.by_id.get(&id), None),
                None => (None, Some(self.by_id.values())),
            };
            one.into_iter()
                .chain(every.into_iter().flatten())
                .filter(takes)
        });
        live.into_iter()
            .flatten()
            .chain(backfill.into_iter().flatten())
            .filter(move |r| r.matches(event, now_micros))
    }

    /// An active subscription by id (for retries).
    pub fn subscription(&self, id: uuid::Uuid) -> Option<&Arc<Route>> {
        self.by_id.get(&id)
    }

    /// The event types that exist now (from watched tables), sorted.
    pub fn event_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self
            .nouns
            .values()
            .flat_map(|w| w.verbs.iter().map(move |v| format!("{}.{v}", w.noun)))
            .collect();
        types.sort();
        types
    }
}

/// Whether `pattern` is an event pattern: `noun.verb`, `noun.*`, `*.verb` or `*`, with a
/// lower-case noun and a verb among created, updated, deleted, truncated (as SQL's
/// `walhook.event_pattern_valid`).
pub fn pattern_valid(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((noun, verb)) = pattern.split_once('.') else {
        return false;
    };
    let noun_ok = noun == "*"
        || noun.starts_with(|c: char| c.is_ascii_lowercase())
            && noun
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    noun_ok && ["*", "created", "updated", "deleted", "truncated"].contains(&verb)
}

/// Whether a token scope allows subscribing to `pattern`: every event type `pattern` can
/// match, `scope` matches too (`orders.*` covers `orders.created` and `orders.*`, not `*`).
pub fn pattern_covers(scope: &str, pattern: &str) -> bool {
    let (noun, verb) = pattern.split_once('.').unwrap_or(("*", "*"));
    pattern_matches(scope, noun, verb)
}

/// Whether `pattern` (`noun.verb`, `noun.*`, `*.verb`, `*`) covers `noun.verb`.
pub fn pattern_matches(pattern: &str, noun: &str, verb: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('.') {
        Some((n, v)) => (n == "*" || n == noun) && (v == "*" || v == verb),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{CommitTime, Op, Origin, Position, RowChange, Table};
    use crate::events::Watch;
    use crate::lsn::Lsn;
    use serde_json::{Value, json};

    fn sub(target: &str, events: &[&str], filter: Value, expires: Option<i64>) -> Subscription {
        Subscription {
            id: uuid::Uuid::new_v4(),
            owner: None,
            events: events.iter().map(|e| e.to_string()).collect(),
            target_url: target.into(),
            filter,
            secret: "whsec_x".into(),
            headers: json!({}),
            context: None,
            active: true,
            expires_at: expires.and_then(chrono::DateTime::from_timestamp_micros),
            batch_max: None,
            batch_window_ms: 0,
            http2: false,
        }
    }

    fn tables() -> Vec<WatchedTable> {
        let table = |noun: &str| WatchedTable {
            schema_name: "public".into(),
            table_name: noun.into(),
            noun: noun.into(),
            verbs: vec!["created".into(), "updated".into(), "deleted".into()],
            relid: None,
            column_list: None,
            exclude_columns: Vec::new(),
            row_filter: None,
        };
        vec![table("orders"), table("invoices")]
    }

    fn event(op: Op, new: Value, old: Option<Value>) -> Event {
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
                name: "orders".into(),
                columns: vec!["id".into(), "ws".into()],
                key: vec!["id".into()],
            }),
            op,
            new: new.as_object().cloned(),
            old: old.and_then(|o| o.as_object().cloned()),
            unchanged_toast: vec![],
            origin: Origin::Replication,
        };
        let watch = Watch {
            noun: "orders".into(),
            verbs: vec!["created".into(), "updated".into(), "deleted".into()],
            ..Watch::default()
        };
        Event::from_change(change, &watch).unwrap()
    }

    fn targets(index: &RoutingIndex, event: &Event) -> Vec<String> {
        let mut t: Vec<String> = index
            .route(event, 0)
            .map(|r| r.subscription.target_url.clone())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn patterns_cover_exact_noun_verb_and_star() {
        assert!(pattern_matches("orders.created", "orders", "created"));
        assert!(pattern_matches("orders.*", "orders", "deleted"));
        assert!(pattern_matches("*.deleted", "invoices", "deleted"));
        assert!(pattern_matches("*", "x", "updated"));
        assert!(!pattern_matches("orders.created", "orders", "updated"));
        assert!(!pattern_matches("invoices.*", "orders", "created"));
        assert!(!pattern_matches("orders", "orders", "created"));
    }

    #[test]
    fn patterns_are_validated_and_scopes_cover_narrower_patterns() {
        for ok in [
            "*",
            "orders.created",
            "orders.*",
            "*.deleted",
            "*.*",
            "line_items2.truncated",
        ] {
            assert!(pattern_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "orders",
            "Orders.created",
            "orders.made",
            "1x.created",
            "orders.created.x",
            "*.*.*",
        ] {
            assert!(!pattern_valid(bad), "{bad}");
        }
        assert!(pattern_covers("orders.*", "orders.created"));
        assert!(pattern_covers("orders.*", "orders.*"));
        assert!(pattern_covers("*", "*"));
        assert!(pattern_covers("*.deleted", "orders.deleted"));
        assert!(!pattern_covers("orders.*", "*"));
        assert!(!pattern_covers("orders.created", "orders.*"));
        assert!(!pattern_covers("*.deleted", "*.*"));
        assert!(!pattern_covers("invoices.*", "orders.created"));
    }

    #[test]
    fn changes_find_their_watch_by_oid_first_then_by_name() {
        let mut tables = tables();
        tables[0].relid = Some(42); // orders
        let index = RoutingIndex::build(tables, Vec::new());
        let table = |id: u32, name: &str| Table {
            id,
            schema: "public".into(),
            name: name.into(),
            columns: vec![],
            key: vec![],
        };
        let noun = |t: &Table| index.watch_table(t).map(|w| w.noun.clone());
        // Renamed since the watch was loaded: found by OID under its noun.
        assert_eq!(noun(&table(42, "purchases")), Some("orders".into()));
        assert_eq!(noun(&table(42, "orders")), Some("orders".into()));
        // Another table now carrying the watched name: not this watch.
        assert_eq!(noun(&table(7, "orders")), None);
        // No OID recorded for invoices: by name; an unknown OID (0) also by name.
        assert_eq!(noun(&table(9, "invoices")), Some("invoices".into()));
        assert_eq!(noun(&table(0, "orders")), Some("orders".into()));
        assert_eq!(noun(&table(9, "other")), None);
        assert_eq!(
            {
                let mut names = index.watched_tables();
                names.sort();
                names
            },
            vec![
                ("public".to_owned(), "invoices".to_owned()),
                ("public".to_owned(), "orders".to_owned())
            ]
        );
    }

    #[test]
    fn routes_by_pattern_filter_and_expiry() {
        let subs = vec![
            sub("a", &["orders.created"], json!({}), None),
            sub("b", &["orders.*", "*.created"], json!({}), None),
            sub("c", &["*.deleted"], json!({}), None),
            sub("d", &["*"], json!({"ws": 42}), None),
            sub("e", &["*"], json!({"ws": [1, 2.0]}), None),
            sub("f", &["*"], json!({}), Some(-1)),
            sub("g", &["invoices.*"], json!({}), None),
        ];
        let index = RoutingIndex::build(tables(), subs);
        let created = event(Op::Insert, json!({"id": 1, "ws": 42}), None);
        assert_eq!(targets(&index, &created), vec!["a", "b", "d"]);
        let created2 = event(Op::Insert, json!({"id": 1, "ws": 2}), None);
        assert_eq!(targets(&index, &created2), vec!["a", "b", "e"]);
        let deleted = event(Op::Delete, json!(null), Some(json!({"id": 1, "ws": 42})));
        assert_eq!(
            targets(&index, &deleted),
            vec!["b", "c", "d"],
            "deleted filters on the old row"
        );
        assert_eq!(
            index.event_types(),
            [
                "invoices.created",
                "invoices.deleted",
                "invoices.updated",
                "orders.created",
                "orders.deleted",
                "orders.updated"
            ]
        );
    }

    #[test]
    fn one_subscription_changes_without_a_rebuild() {
        let a = sub("a", &["orders.created"], json!({}), None);
        let b = sub("b", &["*.created"], json!({}), None);
        let index = RoutingIndex::build(tables(), vec![a.clone(), b.clone()]);
        let created = event(Op::Insert, json!({"id": 1, "ws": 1}), None);
        let mut b2 = b.clone();
        b2.target_url = "b2".into();
        b2.events = vec!["invoices.*".into()];
        let changed = index.with(b.id, Some(b2));
        assert_eq!(targets(&changed, &created), vec!["a"]);
        assert_eq!(
            changed
                .subscription(b.id)
                .map(|r| r.subscription.target_url.as_str()),
            Some("b2")
        );
        assert_eq!(
            changed.by_type.get("invoices.created").map(Vec::len),
            Some(1)
        );
        let c = sub("c", &["orders.*"], json!({}), None);
        let added = changed.with(c.id, Some(c.clone()));
        assert_eq!(targets(&added, &created), vec!["a", "c"]);
        let removed = added.with(a.id, None);
        assert_eq!(targets(&removed, &created), vec!["c"]);
        assert!(removed.subscription(a.id).is_none());
        assert_eq!(
            targets(&index, &created),
            vec!["a", "b"],
            "the old index is unchanged"
        );
        assert_eq!(removed.event_types(), index.event_types());
    }

    #[test]
    fn non_matching_subscriptions_are_not_visited() {
        let mut subs: Vec<Subscription> = (0..10_000)
            .map(|i| sub(&format!("n{i}"), &["invoices.*"], json!({}), None))
            .collect();
        subs.push(sub("hit", &["orders.created"], json!({}), None));
        let index = RoutingIndex::build(tables(), subs);
        let created = event(Op::Insert, json!({"id": 1, "ws": 1}), None);
        assert_eq!(index.by_type.get("orders.created").map(Vec::len), Some(1));
        assert_eq!(targets(&index, &created), vec!["hit"]);
    }
}
