//! API errors and their one JSON shape: `{"error": {"code", "message", "field"}}`.
//!
//! Server errors (5xx) never carry internal text (database errors, pool states): their body
//! has a generic message and a `request_id`, also sent as `X-Request-Id`, and the details
//! are logged with that id.

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request failed; each maps to one status and `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 `unauthorized`: no token, or an unknown or revoked one.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403 `forbidden`: an event pattern outside the token's scopes.
    #[error("event pattern {pattern:?} is outside this token's scopes")]
    OutOfScope {
        /// The pattern.
        pattern: String,
    },
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `duplicate`: the caller already has this subscription.
    #[error("a subscription to this target_url for these events already exists: {existing}")]
    Duplicate {
        /// Its id.
        existing: uuid::Uuid,
    },
    /// 409 `subscription_limit`: the owner holds `api.max_subscriptions_per_owner` already.
    #[error(
        "this owner already has {limit} subscriptions, the most api.max_subscriptions_per_owner allows; delete one first"
    )]
    SubscriptionLimit {
        /// The configured limit.
        limit: u64,
    },
    /// 429 `rate_limited`: the token's request budget (`api.rate_limit_per_minute`) is spent.
    #[error(
        "too many requests for this token (api.rate_limit_per_minute); retry after {} s",
        retry_after_secs(*retry_after)
    )]
    RateLimited {
        /// How long until the next request is allowed.
        retry_after: std::time::Duration,
    },
    /// 413 `body_too_large`.
    #[error("request body is larger than {} bytes", super::MAX_BODY_BYTES)]
    TooLarge,
    /// 400 `malformed_json`: the body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    Malformed(String),
    /// 422 `invalid`, `unknown_field` or `missing_field`.
    #[error("{message}")]
    Invalid {
        /// Machine-readable code.
        code: &'static str,
        /// The field (or query parameter) at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 422 `verification_failed`: the target did not confirm the subscription.
    #[error("intent verification failed: {0}")]
    Verification(String),
    /// 503 `unavailable`: the database could not be reached, or no connection of the API's
    /// pool came free within `api.pool_wait_ms`.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// 503 `timeout`: the request took longer than `api.request_timeout_ms`.
    #[error("the request took longer than {0} ms (api.request_timeout_ms)")]
    TimedOut(u64),
    /// 500 `internal`.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// 422 `invalid` for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            code: "invalid",
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// 422 `missing_field` for a required `field`.
    pub fn missing(field: &str) -> ApiError {
        ApiError::Invalid {
            code: "missing_field",
            field: field.to_owned(),
            message: format!("{field} is required"),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::OutOfScope { .. } => (StatusCode::FORBIDDEN, "forbidden", Some("events")),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Duplicate { .. } => (StatusCode::CONFLICT, "duplicate", Some("target_url")),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_json", None),
            ApiError::Invalid { code, field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, Some(field))
            }
            ApiError::Verification(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "verification_failed",
                Some("target_url"),
            ),
            ApiError::SubscriptionLimit { .. } => {
                (StatusCode::CONFLICT, "subscription_limit", None)
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::TimedOut(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let mut body =
            json!({"error": {"code": code, "message": self.to_string(), "field": field}});
        let request_id = status.is_server_error().then(request_id);
        if let Some(id) = &request_id {
            tracing::error!(request_id = %id, error = %self, "API request failed");
            let message = match &self {
                ApiError::Internal(_) => format!("internal error (request id {id})"),
                ApiError::Unavailable(_) => {
                    format!("the database is unavailable or busy; retry later (request id {id})")
                }
                other => format!("{other} (request id {id})"),
            };
            body["error"]["message"] = json!(message);
            body["error"]["request_id"] = json!(id);
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(id) = request_id.and_then(|id| HeaderValue::try_from(id).ok()) {
            headers.insert("x-request-id", id);
        }
        match &self {
            ApiError::RateLimited { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after)),
                );
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"walhook\""),
                );
            }
            ApiError::Duplicate { existing } => {
                if let Ok(location) = HeaderValue::try_from(format!("/v1/hooks/{existing}")) {
                    headers.insert(header::LOCATION, location);
                }
            }
            _ => {}
        }
        response
    }
}

impl From<diesel::result::Error> for ApiError {
    /// Validation by the `check_subscription` trigger (SQLSTATE 23514 with a column) becomes
    /// 422 naming that column; anything else is internal.
    fn from(e: diesel::result::Error) -> ApiError {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::DatabaseError(DatabaseErrorKind::CheckViolation, info) => {
                let field = info.column_name().unwrap_or("body");
                let message = info.message();
                let message = message
                    .strip_prefix("walhook.subscriptions.")
                    .unwrap_or(message);
                ApiError::invalid(field, message)
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                ApiError::Unavailable(e.to_string())
            }
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

/// Whole seconds to wait, rounded up (at least 1).
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// A fresh request id: `req_` + 16 random hex digits.
fn request_id() -> String {
    format!("req_{:016x}", rand::random::<u64>())
}

/// The answer for a path no route serves: 404 in the API's error shape.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_errors_hide_details_behind_a_request_id() {
        let response =
            ApiError::Internal("relation \"secret_table\" does not exist".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(id.starts_with("req_") && id.len() == 20, "{id}");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "internal", "message": format!("internal error (request id {id})"),
                   "field": null, "request_id": id}})
        );
    }

    #[tokio::test]
    async fn rate_limits_say_when_to_come_back() {
        let wait = std::time::Duration::from_millis(11_200);
        let response = ApiError::RateLimited { retry_after: wait }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "12");
        assert!(!response.headers().contains_key("x-request-id"));
    }
}
