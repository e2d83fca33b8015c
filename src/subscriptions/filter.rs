//! Subscription filters: the `filter` column compiled once (at index build) into conditions
//! that an event is tested against.
//!
//! The language (docs/events.md): a JSON object, every entry ANDed.
//!
//! - `"column": value` — equality; `"column": [v1, v2]` — one of (IN);
//! - `"column": {"op": operand, …}` — operators, ANDed: `eq ne gt gte lt lte in nin null
//!   prefix`;
//! - `"$changed": ["a", "b"]` — the event's `changed` list names at least one of them (only
//!   `updated` events with a known old row have one);
//! - `"$previous": {…}` — the same column conditions on the old row (`updated`, `deleted`).
//!
//! Comparison rules: numbers by exact decimal value (`42` = `42.0`, and digits beyond f64
//! count); two strings that both read as timestamps (RFC 3339 with an offset, or without one,
//! taken as UTC) as instants, other strings by code point; `eq`/`in` are JSON equality with
//! those rules and `ne`/`nin` their exact negation. The ordering operators and `prefix`
//! never match a value of another type (or `null`); a column the event does not carry
//! matches no condition. Nothing here fails at delivery time.
//!
//! The filter is validated by `walhook.filter_problem` in `sql/walhook.sql` (the trigger on
//! `walhook.subscriptions`, which the REST API writes through too); whatever it lets pass
//! compiles here, and anything unexpected compiles to a condition that never matches.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::change::Row;
use crate::events::Event;

/// A compiled filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    data: Vec<Condition>,
    previous: Option<Vec<Condition>>,
    changed: Option<Vec<String>>,
    never: bool,
}

/// The tests on one column, ANDed.
#[derive(Debug, Clone)]
struct Condition {
    column: String,
    tests: Vec<Test>,
}

/// One operator with its prepared operand.
#[derive(Debug, Clone)]
enum Test {
    Eq(Operand),
    Ne(Operand),
    Order(Operand, fn(Ordering) -> bool),
    In(Vec<Operand>),
    Nin(Vec<Operand>),
    Null(bool),
    Prefix(String),
    Never,
}

/// A filter value, with its number or instant read once.
#[derive(Debug, Clone)]
struct Operand {
    value: Value,
    scalar: Scalar,
}

/// How a JSON value compares (strings are compared from the value itself).
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    /// A number that fits an i64 (the common case, compared without allocating).
    Int(i64),
    Number(Decimal),
    Instant(i64, u32),
    Text,
    Other,
}

impl Scalar {
    fn of(value: &Value) -> Scalar {
        match value {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Decimal::parse(n.as_str()).map_or(Scalar::Other, Scalar::Number),
            },
            Value::String(s) => {
                instant(s).map_or(Scalar::Text, |(secs, nanos)| Scalar::Instant(secs, nanos))
            }
            _ => Scalar::Other,
        }
    }
}

impl Operand {
    fn new(value: Value) -> Operand {
        let scalar = Scalar::of(&value);
        Operand { value, scalar }
    }
}

impl Filter {
    /// Compiles a subscription's `filter` (a JSON object; anything else matches every event,
    /// as the SQL trigger never lets one through).
    pub fn compile(filter: &Value) -> Filter {
        let Value::Object(map) = filter else {
            return Filter::default();
        };
        let mut compiled = Filter::default();
        for (key, wanted) in map {
            match key.as_str() {
                "$changed" => match wanted {
                    Value::Array(items) => {
                        compiled.changed = Some(
                            items
                                .iter()
                                .filter_map(|c| c.as_str().map(str::to_owned))
                                .collect(),
                        );
                    }
                    _ => compiled.never = true,
                },
                "$previous" => match wanted {
                    Value::Object(columns) => compiled.previous = Some(conditions(columns)),
                    _ => compiled.never = true,
                },
                k if k.starts_with('$') => compiled.never = true,
                _ => compiled.data.push(condition(key, wanted)),
            }
        }
        compiled
    }

    /// Whether `event` passes: every condition on `data`, on `previous`, and `$changed`.
    pub fn matches(&self, event: &Event) -> bool {
        if self.never {
            return false;
        }
        if !all(&self.data, &event.data) {
            return false;
        }
        if let Some(previous) = &self.previous {
            match &event.previous {
                Some(old) if all(previous, old) => {}
                _ => return false,
            }
        }
        if let Some(wanted) = &self.changed {
            match &event.changed {
                Some(changed) if changed.iter().any(|c| wanted.contains(c)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether a row passes the column conditions alone (a backfill's own filter: a row
    /// image has no `previous` or `$changed`, so a filter asking for them never passes).
    pub fn matches_row(&self, row: &crate::change::Row) -> bool {
        !self.never && self.previous.is_none() && self.changed.is_none() && all(&self.data, row)
    }

    /// Whether the filter lets every event through (no condition at all).
    pub fn is_empty(&self) -> bool {
        !self.never && self.data.is_empty() && self.previous.is_none() && self.changed.is_none()
    }
}

fn conditions(columns: &Map<String, Value>) -> Vec<Condition> {
    columns
        .iter()
        .map(|(column, wanted)| {
            if column.starts_with('$') {
                Condition {
                    column: column.clone(),
                    tests: vec![Test::Never],
                }
            } else {
                condition(column, wanted)
            }
        })
        .collect()
}

fn condition(column: &str, wanted: &Value) -> Condition {
    let tests = match wanted {
        Value::Array(items) => vec![Test::In(items.iter().cloned().map(Operand::new).collect())],
        Value::Object(ops) if !ops.is_empty() => {
            ops.iter().map(|(op, operand)| test(op, operand)).collect()
        }
        Value::Object(_) => vec![Test::Never],
        other => vec![Test::Eq(Operand::new(other.clone()))],
    };
    Condition {
        column: column.to_owned(),
        tests,
    }
}

fn test(op: &str, operand: &Value) -> Test {
    let list = |v: &Value| match v {
        Value::Array(items) => Some(items.iter().cloned().map(Operand::new).collect::<Vec<_>>()),
        _ => None,
    };
    match op {
        "eq" => Test::Eq(Operand::new(operand.clone())),
        "ne" => Test::Ne(Operand::new(operand.clone())),
        "gt" => Test::Order(Operand::new(operand.clone()), Ordering::is_gt),
        "gte" => Test::Order(Operand::new(operand.clone()), Ordering::is_ge),
        "lt" => Test::Order(Operand::new(operand.clone()), Ordering::is_lt),
        "lte" => Test::Order(Operand::new(operand.clone()), Ordering::is_le),
        "in" => list(operand).map_or(Test::Never, Test::In),
        "nin" => list(operand).map_or(Test::Never, Test::Nin),
        "null" => operand.as_bool().map_or(Test::Never, Test::Null),
        "prefix" => operand
            .as_str()
            .map_or(Test::Never, |p| Test::Prefix(p.to_owned())),
        _ => Test::Never,
    }
}

fn all(conditions: &[Condition], row: &Row) -> bool {
    conditions.iter().all(|c| {
        row.get(&c.column).is_some_and(|got| {
            // Read the event's value as a number or instant only if a test needs it.
            let mut scalar = None;
            c.tests.iter().all(|t| passes(t, got, &mut scalar))
        })
    })
}

fn passes(test: &Test, got: &Value, scalar: &mut Option<Scalar>) -> bool {
    match test {
        Test::Eq(w) => equal(got, scalar, w),
        Test::Ne(w) => !equal(got, scalar, w),
        Test::In(list) => list.iter().any(|w| equal(got, scalar, w)),
        Test::Nin(list) => !list.iter().any(|w| equal(got, scalar, w)),
        Test::Order(w, accept) => {
            let mine = scalar.get_or_insert_with(|| Scalar::of(got));
            order(got, mine, &w.value, &w.scalar).is_some_and(accept)
        }
        Test::Null(wanted) => got.is_null() == *wanted,
        Test::Prefix(p) => got.as_str().is_some_and(|s| s.starts_with(p.as_str())),
        Test::Never => false,
    }
}

/// JSON equality with numbers by value and timestamps as instants.
fn equal(got: &Value, scalar: &mut Option<Scalar>, wanted: &Operand) -> bool {
    match (&wanted.scalar, got) {
        (Scalar::Int(_) | Scalar::Number(_), Value::Number(n))
            if Some(n) == wanted.value.as_number() =>
        {
            true
        }
        (Scalar::Int(_) | Scalar::Number(_), Value::Number(_))
        | (Scalar::Instant(..), Value::String(_)) => {
            let mine = scalar.get_or_insert_with(|| Scalar::of(got));
            order(got, mine, &wanted.value, &wanted.scalar) == Some(Ordering::Equal)
        }
        _ => got == &wanted.value,
    }
}

/// The order of two values of the same kind; `None` across kinds.
fn order(a: &Value, a_scalar: &Scalar, b: &Value, b_scalar: &Scalar) -> Option<Ordering> {
    match (a_scalar, b_scalar) {
        (Scalar::Int(x), Scalar::Int(y)) => Some(x.cmp(y)),
        (Scalar::Number(x), Scalar::Number(y)) => Some(x.cmp(y)),
        (Scalar::Int(x), Scalar::Number(y)) => Some(Decimal::parse(&x.to_string())?.cmp(y)),
        (Scalar::Number(x), Scalar::Int(y)) => Some(x.cmp(&Decimal::parse(&y.to_string())?)),
        (Scalar::Instant(s1, n1), Scalar::Instant(s2, n2)) => Some((s1, n1).cmp(&(s2, n2))),
        (Scalar::Text | Scalar::Instant(..), Scalar::Text | Scalar::Instant(..)) => {
            Some(a.as_str()?.cmp(b.as_str()?))
        }
        _ => None,
    }
}

/// A timestamp string as (Unix seconds, nanoseconds): RFC 3339 with an offset
/// (`2026-01-02T03:04:05.5+02:00`, what `to_jsonb` prints for timestamptz), or without one
/// (`timestamp` columns), taken as UTC; a space may stand for the `T`.
fn instant(text: &str) -> Option<(i64, u32)> {
    // Cheap shape check first: most strings are not timestamps.
    let bytes = text.as_bytes();
    if bytes.len() < 19
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !(bytes[10] == b'T' || bytes[10] == b' ')
    {
        return None;
    }
    let normalized;
    let text = if bytes[10] == b' ' {
        normalized = format!("{}T{}", &text[..10], &text[11..]);
        normalized.as_str()
    } else {
        text
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some((t.timestamp(), t.timestamp_subsec_nanos()));
    }
    // PostgreSQL prints offsets without minutes (`+02`) in some styles.
    if let Ok(t) = chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%#z") {
        return Some((t.timestamp(), t.timestamp_subsec_nanos()));
    }
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    let t = t.and_utc();
    Some((t.timestamp(), t.timestamp_subsec_nanos()))
}

/// An exact decimal: sign, significant digits (no leading or trailing zeros) and the
/// position of the decimal point relative to the first digit (value = 0.d1d2… × 10^point).
/// Zero has no digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    point: i64,
}

impl Decimal {
    /// Reads a JSON number's text (`-12.50`, `1e-3`, `123456789012345678901234567890.1`).
    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let mut point = i64::try_from(int.len()).ok()?.checked_add(exponent)?;
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        point -= i64::try_from(leading).ok()?;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                point: 0,
            });
        }
        Some(Decimal {
            negative,
            digits,
            point,
        })
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        fn by_magnitude(a: &Decimal, b: &Decimal) -> Ordering {
            match (a.digits.is_empty(), b.digits.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => (a.point, &a.digits).cmp(&(b.point, &b.digits)),
            }
        }
        let sign = |d: &Decimal| match (d.digits.is_empty(), d.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        match sign(self).cmp(&sign(other)) {
            Ordering::Equal if sign(self) < 0 => by_magnitude(other, self),
            Ordering::Equal => by_magnitude(self, other),
            unequal => unequal,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().cloned().unwrap()
    }

    fn event(data: Value, previous: Option<Value>, changed: Option<&[&str]>) -> Event {
        // Built through the real constructor so the test sees what routing sees.
        use crate::change::{CommitTime, Op, Origin, Position, RowChange, Table};
        use std::sync::Arc;
        let columns: Vec<String> = data.as_object().unwrap().keys().cloned().collect();
        let op = if previous.is_some() {
            Op::Update
        } else {
            Op::Insert
        };
        let change = RowChange {
            position: Position {
                commit_lsn: crate::lsn::Lsn(1),
                index: 0,
            },
            xid: 1,
            commit_time: CommitTime(0),
            table: Arc::new(Table {
                id: 1,
                schema: "public".into(),
                name: "t".into(),
                columns,
                key: vec![],
            }),
            op,
            new: Some(row(data)),
            old: previous.map(row),
            unchanged_toast: vec![],
            origin: Origin::Replication,
        };
        let watch = crate::events::Watch {
            noun: "t".into(),
            verbs: vec!["created".into(), "updated".into()],
            ..Default::default()
        };
        let mut event = Event::from_change(change, &watch).unwrap();
        if let Some(changed) = changed {
            event.changed = Some(changed.iter().map(|c| c.to_string()).collect());
        }
        event
    }

    fn hit(filter: Value, data: Value) -> bool {
        Filter::compile(&filter).matches(&event(data, None, None))
    }

    #[test]
    fn decimals_compare_exactly() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        assert_eq!(d("42"), d("42.000"));
        assert_eq!(d("0"), d("-0.0"));
        assert_eq!(d("1e3"), d("1000"));
        assert_eq!(d("12.5E-1"), d("1.25"));
        assert!(
            d("123456789012345678901234567890.000000000000000001")
                > d("123456789012345678901234567890")
        );
        assert!(d("9007199254740993") > d("9007199254740992"));
        assert!(d("-1.5") < d("-1.25"));
        assert!(d("-0.001") < d("0"));
        assert!(d("0.1") < d("1"));
        assert!(d("99") < d("100"));
        assert!(d("-100") < d("-99"));
        assert_eq!(Decimal::parse("1x"), None);
        assert_eq!(Decimal::parse(""), None);
    }

    #[test]
    fn instants_read_offsets() {
        assert_eq!(
            instant("2026-01-02T03:04:05+02:00"),
            instant("2026-01-02T01:04:05Z")
        );
        assert_eq!(
            instant("2026-01-02T03:04:05.5+02"),
            instant("2026-01-02T01:04:05.500+00:00")
        );
        assert_eq!(
            instant("2026-01-02 01:04:05"),
            instant("2026-01-02T01:04:05+00:00")
        );
        assert_eq!(instant("2026-01-02"), None);
        assert_eq!(instant("hello world, this is text"), None);
    }

    #[test]
    fn every_operator() {
        let data = json!({"n": 100.5, "s": "paid", "z": null, "t": "2026-01-02T03:04:05+02:00", "b": true});
        let cases = [
            (json!({"n": 100.5}), true),
            (json!({"n": 100.50}), true),
            (json!({"n": [1, 100.5]}), true),
            (json!({"n": {"eq": 100.5}}), true),
            (json!({"n": {"ne": 100.5}}), false),
            (json!({"n": {"gt": 100}}), true),
            (json!({"n": {"gt": 100.5}}), false),
            (json!({"n": {"gte": 100.5}}), true),
            (json!({"n": {"lt": 101}}), true),
            (json!({"n": {"lte": 100.4}}), false),
            (json!({"n": {"gt": 100, "lt": 101}}), true),
            (json!({"n": {"gt": "100"}}), false),
            (json!({"n": {"in": [100.5, 2]}}), true),
            (json!({"n": {"nin": [100.5, 2]}}), false),
            (json!({"n": {"null": false}}), true),
            (json!({"s": {"prefix": "pa"}}), true),
            (json!({"s": {"prefix": "x"}}), false),
            (json!({"s": {"gt": "p"}}), true),
            (json!({"s": {"ne": 5}}), true),
            (json!({"z": null}), true),
            (json!({"z": {"null": true}}), true),
            (json!({"z": {"eq": null}}), true),
            (json!({"z": {"ne": 1}}), true),
            (json!({"z": {"gt": 1}}), false),
            (json!({"z": {"prefix": ""}}), false),
            (json!({"t": {"eq": "2026-01-02T01:04:05Z"}}), true),
            (json!({"t": {"gt": "2026-01-02T02:00:00+00:00"}}), false),
            (json!({"t": {"lt": "2026-01-02T02:00:00+00:00"}}), true),
            (json!({"b": true}), true),
            (json!({"b": {"gt": false}}), false),
            (json!({"missing": {"null": true}}), false),
            (json!({"missing": {"ne": 1}}), false),
            (json!({"n": {"bogus": 1}}), false),
            (json!({"n": {}}), false),
            (json!({"$bogus": 1}), false),
            (json!({}), true),
        ];
        for (filter, expected) in cases {
            assert_eq!(hit(filter.clone(), data.clone()), expected, "{filter}");
        }
    }

    #[test]
    fn changed_and_previous() {
        let e = event(
            json!({"id": 1, "status": "paid", "email": "a"}),
            Some(json!({"id": 1, "status": "pending", "email": "a"})),
            None,
        );
        assert_eq!(e.changed, Some(vec!["status".to_string()]));
        let f = |v: Value| Filter::compile(&v).matches(&e);
        assert!(f(json!({"$changed": ["status", "email"]})));
        assert!(!f(json!({"$changed": ["email"]})));
        assert!(f(
            json!({"status": "paid", "$previous": {"status": "pending"}})
        ));
        assert!(!f(json!({"$previous": {"status": "paid"}})));
        assert!(f(
            json!({"$previous": {"status": {"in": ["new", "pending"]}}})
        ));
        let created = event(json!({"id": 1, "status": "paid"}), None, None);
        assert!(!Filter::compile(&json!({"$changed": ["status"]})).matches(&created));
        assert!(!Filter::compile(&json!({"$previous": {}})).matches(&created));
        assert!(Filter::compile(&json!({})).is_empty());
    }
}
