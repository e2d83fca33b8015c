//! Column text → JSON, by the rules of PostgreSQL's `to_jsonb` under `TimeZone=UTC`.
//!
//! The walsender prints every value with its type's output function in the session settings
//! pinned by the capture connection (ISO dates, UTC, hex bytea, shortest floats). From that
//! text this module rebuilds exactly what `to_jsonb(row)` prints:
//! - numbers become JSON numbers written as `numeric` would print them (`1e+100` →
//!   `1000…0`), `NaN`/`Infinity` become strings;
//! - timestamps use `T` and timestamptz a `+00:00` offset (`JsonEncodeDateTime`, XSD style);
//! - json is embedded with jsonb's number normalisation, jsonb is embedded as is;
//! - arrays (any dimension, NULLs, quoting) become nested JSON arrays, composites objects;
//! - everything else is its text output as a string.

use serde_json::{Map, Number, Value};

use super::types::{Kind, TypeRegistry};

/// Converts one column's text output to its `to_jsonb` value.
pub fn to_json(text: &str, oid: u32, types: &TypeRegistry) -> Value {
    match types.kind(oid) {
        Kind::Bool => Value::Bool(text == "t"),
        Kind::Number => number(text),
        Kind::Date | Kind::Text | Kind::Domain(_) => Value::String(text.to_owned()),
        Kind::Timestamp => Value::String(iso_t(text)),
        Kind::Timestamptz => Value::String(with_xsd_offset(iso_t(text))),
        Kind::Json => match serde_json::from_str::<Value>(text) {
            Ok(mut value) => {
                normalize_numbers(&mut value);
                value
            }
            Err(_) => Value::String(text.to_owned()),
        },
        Kind::Jsonb => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        Kind::Array { element, delimiter } => {
            let element = *element;
            let convert = |item: &str| to_json(item, element, types);
            parse_array(text, *delimiter, &convert)
                .unwrap_or_else(|| Value::String(text.to_owned()))
        }
        Kind::Composite(fields) => match parse_record(text) {
            Some(values) if values.len() == fields.len() => {
                let mut object = Map::with_capacity(fields.len());
                for ((name, oid), value) in fields.iter().zip(values) {
                    let value = value.map_or(Value::Null, |v| to_json(&v, *oid, types));
                    object.insert(name.clone(), value);
                }
                Value::Object(object)
            }
            _ => Value::String(text.to_owned()),
        },
    }
}

/// A number's text → what jsonb stores: a `numeric`, printed as `numeric_out` does, or the
/// text as a string when it is no JSON number (NaN, Infinity).
pub fn number(text: &str) -> Value {
    match normalize_numeric(text).and_then(|n| n.parse::<Number>().ok()) {
        Some(n) => Value::Number(n),
        None => Value::String(text.to_owned()),
    }
}

/// Rewrites a JSON number literal the way `numeric_in` + `numeric_out` would: no exponent,
/// display scale `max(0, fraction digits - exponent)`, no sign on zero. `None` if the text is
/// not a JSON number.
fn normalize_numeric(text: &str) -> Option<String> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    let valid_int = !int_part.is_empty()
        && int_part.bytes().all(|b| b.is_ascii_digit())
        && (int_part == "0" || !int_part.starts_with('0'));
    let valid_frac = frac_part.bytes().all(|b| b.is_ascii_digit())
        && (frac_part.is_empty() != mantissa.contains('.'));
    if !valid_int || !valid_frac {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            e.parse().ok()?
        }
    };
    let digits: String = [int_part, frac_part].concat();
    let scale = (frac_part.len() as i64 - exponent).max(0) as usize;
    let point = int_part.len() as i64 + exponent; // position of the point within `digits`
    let (mut whole, fraction) = if point <= 0 {
        let zeros = "0".repeat(point.unsigned_abs() as usize);
        ("0".to_owned(), format!("{zeros}{digits}"))
    } else if point as usize >= digits.len() {
        let zeros = "0".repeat(point as usize - digits.len());
        (format!("{digits}{zeros}"), String::new())
    } else {
        let (w, f) = digits.split_at(point as usize);
        (w.to_owned(), f.to_owned())
    };
    let trimmed = whole.trim_start_matches('0');
    whole = if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    };
    let fraction = &fraction[..scale.min(fraction.len())];
    let is_zero = whole == "0" && fraction.bytes().all(|b| b == b'0');
    let mut out = String::with_capacity(whole.len() + fraction.len() + 2);
    if negative && !is_zero {
        out.push('-');
    }
    out.push_str(&whole);
    if scale > 0 {
        out.push('.');
        out.push_str(fraction);
    }
    Some(out)
}

/// Rewrites every number inside an embedded `json` value as jsonb stores it.
fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(normal) = normalize_numeric(n.as_str()).and_then(|s| s.parse().ok()) {
                *n = normal;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// `2024-01-02 03:04:05` → `2024-01-02T03:04:05` (the first space separates date and time;
/// `infinity` has none).
fn iso_t(text: &str) -> String {
    text.replacen(' ', "T", 1)
}

/// Completes a `+hh` offset to `+hh:mm`, as the XSD style `to_jsonb` uses prints it.
fn with_xsd_offset(mut text: String) -> String {
    let Some(t) = text.find('T') else { return text };
    let Some(sign) = text[t..].find(['+', '-']).map(|i| i + t) else {
        return text;
    };
    let end = text[sign..].find(' ').map_or(text.len(), |i| i + sign);
    if end - sign == 3 {
        text.insert_str(end, ":00");
    }
    text
}

/// Parses `array_out` text (`{1,NULL,"a \"b\""}`, `[0:1]={..}`, nested braces) into JSON,
/// converting each non-NULL item with `convert`. `None` if the text is malformed.
fn parse_array(text: &str, delimiter: u8, convert: &dyn Fn(&str) -> Value) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut at = 0;
    if bytes.first() == Some(&b'[') {
        at = text.find('=')? + 1;
    }
    let value = array_level(bytes, &mut at, delimiter, convert)?;
    (at == bytes.len()).then_some(value)
}

fn array_level(
    bytes: &[u8],
    at: &mut usize,
    delimiter: u8,
    convert: &dyn Fn(&str) -> Value,
) -> Option<Value> {
    if bytes.get(*at) != Some(&b'{') {
        return None;
    }
    *at += 1;
    let mut items = Vec::new();
    skip_spaces(bytes, at);
    if bytes.get(*at) == Some(&b'}') {
        *at += 1;
        return Some(Value::Array(items));
    }
    loop {
        skip_spaces(bytes, at);
        match bytes.get(*at)? {
            b'{' => items.push(array_level(bytes, at, delimiter, convert)?),
            b'"' => {
                *at += 1;
                let mut item = Vec::new();
                loop {
                    match *bytes.get(*at)? {
                        b'\\' => {
                            item.push(*bytes.get(*at + 1)?);
                            *at += 2;
                        }
                        b'"' => {
                            *at += 1;
                            break;
                        }
                        b => {
                            item.push(b);
                            *at += 1;
                        }
                    }
                }
                items.push(convert(&String::from_utf8_lossy(&item)));
            }
            _ => {
                let mut item = Vec::new();
                while let Some(&b) = bytes.get(*at) {
                    if b == delimiter || b == b'}' {
                        break;
                    }
                    if b == b'\\' {
                        item.push(*bytes.get(*at + 1)?);
                        *at += 2;
                    } else {
                        item.push(b);
                        *at += 1;
                    }
                }
                let item = String::from_utf8_lossy(&item);
                let item = item.trim_end();
                items.push(if item.eq_ignore_ascii_case("NULL") {
                    Value::Null
                } else {
                    convert(item)
                });
            }
        }
        skip_spaces(bytes, at);
        match *bytes.get(*at)? {
            b'}' => {
                *at += 1;
                return Some(Value::Array(items));
            }
            b if b == delimiter => *at += 1,
            _ => return None,
        }
    }
}

fn skip_spaces(bytes: &[u8], at: &mut usize) {
    while bytes.get(*at).is_some_and(u8::is_ascii_whitespace) {
        *at += 1;
    }
}

/// Parses `record_out` text (`(1,"a b",,"x""y")`) into fields; an empty unquoted field is
/// NULL. `None` if malformed.
fn parse_record(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let bytes = inner.as_bytes();
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut at = 0;
    while at < bytes.len() {
        let b = bytes[at];
        match b {
            b'\\' => {
                field.push(*bytes.get(at + 1)?);
                at += 1;
            }
            b'"' if in_quotes && bytes.get(at + 1) == Some(&b'"') => {
                field.push(b'"');
                at += 1;
            }
            b'"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            b',' if !in_quotes => {
                fields.push(finish_field(&mut field, &mut quoted));
            }
            _ => field.push(b),
        }
        at += 1;
    }
    fields.push(finish_field(&mut field, &mut quoted));
    Some(fields)
}

fn finish_field(field: &mut Vec<u8>, quoted: &mut bool) -> Option<String> {
    let value = (!field.is_empty() || *quoted).then(|| String::from_utf8_lossy(field).into_owned());
    field.clear();
    *quoted = false;
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn n(text: &str) -> String {
        match number(text) {
            Value::Number(n) => n.as_str().to_owned(),
            Value::String(s) => format!("string:{s}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_follow_numeric_out() {
        assert_eq!(n("42"), "42");
        assert_eq!(n("-12.50"), "-12.50");
        assert_eq!(n("1e+100"), format!("1{}", "0".repeat(100)));
        assert_eq!(n("1.5e-07"), "0.00000015");
        assert_eq!(n("1.23e+1"), "12.3");
        assert_eq!(n("-0"), "0");
        assert_eq!(n("-0.00"), "0.00");
        assert_eq!(
            n("3.4028235e+38"),
            "340282350000000000000000000000000000000"
        );
        assert_eq!(n("NaN"), "string:NaN");
        assert_eq!(n("-Infinity"), "string:-Infinity");
        assert_eq!(n("007"), "string:007");
    }

    #[test]
    fn timestamps_use_xsd_style() {
        assert_eq!(iso_t("2024-01-02 03:04:05.5"), "2024-01-02T03:04:05.5");
        assert_eq!(
            with_xsd_offset(iso_t("2024-01-02 03:04:05+00")),
            "2024-01-02T03:04:05+00:00"
        );
        assert_eq!(
            with_xsd_offset(iso_t("0044-03-15 12:00:00+00 BC")),
            "0044-03-15T12:00:00+00:00 BC"
        );
        assert_eq!(with_xsd_offset(iso_t("infinity")), "infinity");
    }

    #[test]
    fn arrays_parse_quotes_nulls_and_dimensions() {
        let text = |s: &str| Value::String(s.to_owned());
        assert_eq!(
            parse_array(r#"{a,NULL,"NULL","b,c","d\"e\\f", g h }"#, b',', &text).unwrap(),
            json!(["a", null, "NULL", "b,c", "d\"e\\f", "g h"])
        );
        assert_eq!(
            parse_array("[0:1][1:2]={{1,2},{3,4}}", b',', &|s| number(s)).unwrap(),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(parse_array("{}", b',', &text).unwrap(), json!([]));
        assert!(parse_array("{1,2", b',', &text).is_none());
    }

    #[test]
    fn records_parse_quotes_and_nulls() {
        assert_eq!(
            parse_record(r#"(1,"a b",,"x""y\\z","")"#).unwrap(),
            vec![
                Some("1".into()),
                Some("a b".into()),
                None,
                Some("x\"y\\z".into()),
                Some(String::new())
            ]
        );
    }
}
