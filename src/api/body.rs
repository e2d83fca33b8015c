//! Request bodies: at most [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES) of JSON holding an
//! object, read field by field so every complaint names its field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::error::ApiError;

/// A JSON object body.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::Malformed(e.body_text())
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => {
                // PostgreSQL text and jsonb cannot hold U+0000.
                if let Some(field) = map.iter().find(|(k, v)| k.contains('\0') || has_nul(v)) {
                    let field = field.0.replace('\0', "\\u0000");
                    return Err(ApiError::invalid(
                        &field,
                        format!("{field} must not contain the character U+0000"),
                    ));
                }
                Ok(JsonObject(map))
            }
            Ok(_) => Err(ApiError::invalid("body", "the body must be a JSON object")),
            Err(e) => Err(ApiError::Malformed(e.to_string())),
        }
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Reads a JSON object's fields by type, naming the field in every error.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Takes `body`; `allowed` lists every field it may hold (others → 422 `unknown_field`).
    pub fn new(body: JsonObject, allowed: &[&str]) -> Result<Fields, ApiError> {
        if let Some(unknown) = body.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::Invalid {
                code: "unknown_field",
                field: unknown.clone(),
                message: format!(
                    "unknown field {unknown:?}; expected one of: {}",
                    allowed.join(", ")
                ),
            });
        }
        Ok(Fields { map: body.0 })
    }

    /// Whether `name` is present (even as null).
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// A string field: absent → `None`; present but not a string → 422.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
        }
    }

    /// A nullable string field: absent → `None`, null → `Some(None)`.
    pub fn nullable_string(&self, name: &str) -> Result<Option<Option<String>>, ApiError> {
        match self.map.get(name) {
            Some(Value::Null) => Ok(Some(None)),
            _ => Ok(self.string(name)?.map(Some)),
        }
    }

    /// A boolean field.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name} must be true or false"),
            )),
        }
    }

    /// An integer field from `min` to `max`; anything else (a fraction, a string, out of
    /// range) → 422 with `rule`.
    pub fn integer(
        &self,
        name: &str,
        min: i64,
        max: i64,
        rule: &str,
    ) -> Result<Option<i64>, ApiError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| (min..=max).contains(&n)) => {
                Ok(n.as_i64())
            }
            Some(other) => Err(ApiError::invalid(name, format!("{rule}, got {other}"))),
        }
    }

    /// A nullable integer field from `min` to `max`: absent → `None`, null → `Some(None)`.
    pub fn nullable_integer(
        &self,
        name: &str,
        min: i64,
        max: i64,
        rule: &str,
    ) -> Result<Option<Option<i64>>, ApiError> {
        match self.map.get(name) {
            Some(Value::Null) => Ok(Some(None)),
            _ => Ok(self.integer(name, min, max, rule)?.map(Some)),
        }
    }

    /// A JSON object field.
    pub fn object(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
            Some(_) => Err(ApiError::invalid(
                name,
                format!("{name} must be a JSON object"),
            )),
        }
    }

    /// A non-empty array of strings.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        let Some(value) = self.map.get(name) else {
            return Ok(None);
        };
        let items: Option<Vec<String>> = value
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or(None);
        match items {
            Some(items) if !items.is_empty() => Ok(Some(items)),
            _ => Err(ApiError::invalid(
                name,
                format!("{name} must be a non-empty array of strings"),
            )),
        }
    }

    /// A nullable RFC 3339 timestamp.
    pub fn nullable_time(
        &self,
        name: &str,
    ) -> Result<Option<Option<chrono::DateTime<chrono::Utc>>>, ApiError> {
        match self.nullable_string(name)? {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(text)) => chrono::DateTime::parse_from_rfc3339(&text)
                .map(|t| Some(Some(t.to_utc())))
                .map_err(|e| {
                    ApiError::invalid(
                        name,
                        format!(
                            "{name} must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z: {e}"
                        ),
                    )
                }),
        }
    }
}
