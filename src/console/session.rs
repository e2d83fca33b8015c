//! Console sessions: login with an API token (typed into a form) or a one-time link, the
//! session cookie, CSRF tokens, and the [`Viewer`] / [`Action`] extractors.
//!
//! Invariants:
//! - A token never travels in a URL: the login form POSTs it. A one-time link carries a
//!   random code instead, valid for minutes and deleted by the one exchange that uses it.
//! - The cookie holds a random session id; the database holds only its SHA-256
//!   (`walhook.console_sessions`), with the token it was opened with: revoking the token
//!   ends the session at its next request.
//! - Every state change is a POST whose form carries the session's CSRF token ([`Action`]
//!   refuses it otherwise, 403); the login form carries one bound to a short-lived cookie of
//!   its own (double submit), so a login cannot be forced from another site.
//! - The owner and scopes of the session are the token's, as a [`Caller`]: the console
//!   calls the API's owner-scoped code with it; only an admin token sees every owner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{ConsoleError, ConsoleState};
use crate::api::auth::{Caller, hash};
use crate::api::store;

/// The session cookie.
pub const SESSION_COOKIE: &str = "walhook_session";

/// The login form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "walhook_login";

/// How long a one-time login link is valid by default.
pub const LOGIN_LINK_TTL: Duration = Duration::from_secs(10 * 60);

/// 32 random bytes, base64url.
fn random() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Creates a one-time login code for token `token_id`, valid for `ttl`; only its hash is
/// stored. The link is `/console/login?code=<code>`.
pub async fn create_login_code(
    conn: &mut AsyncPgConnection,
    token_id: Uuid,
    ttl: Duration,
) -> Result<String, diesel::result::Error> {
    let code = random();
    diesel::sql_query(
        "INSERT INTO walhook.console_logins (code_hash, token_id, expires_at)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond')",
    )
    .bind::<Text, _>(hash(&code))
    .bind::<SqlUuid, _>(token_id)
    .bind::<BigInt, _>(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(code)
}

/// The logged-in user of a request.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The token's owner and scopes, as the API sees them.
    pub caller: Caller,
    /// An admin token: sees every owner.
    pub admin: bool,
    /// The session's CSRF token (a hidden field of every form).
    pub csrf: String,
}

#[derive(QueryableByName)]
struct SessionRow {
    #[diesel(sql_type = Text)]
    owner: String,
    #[diesel(sql_type = Array<Text>)]
    scopes: Vec<String>,
    #[diesel(sql_type = Bool)]
    admin: bool,
    #[diesel(sql_type = Text)]
    csrf: String,
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, path `/console`, `Secure` when
/// configured; `max_age` `None` deletes it.
fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, secure: bool) -> HeaderValue {
    let age = max_age.map_or(0, |d| d.as_secs());
    let secure = if secure { "; Secure" } else { "" };
    let text =
        format!("{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={age}{secure}");
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Not logged in: pages redirect to the login form (JSON answers 401).
pub struct LoggedOut {
    json: bool,
}

impl IntoResponse for LoggedOut {
    fn into_response(self) -> Response {
        if self.json {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": {"code": "unauthorized",
                    "message": "log in to the console first", "field": null}})),
            )
                .into_response()
        } else {
            Redirect::to("/console/login").into_response()
        }
    }
}

impl FromRequestParts<Arc<ConsoleState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Viewer, Response> {
        let logged_out = || {
            LoggedOut {
                json: parts.uri.path().ends_with(".json"),
            }
            .into_response()
        };
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(logged_out());
        };
        let mut conn = store::conn(&state.api.pool)
            .await
            .map_err(|e| ConsoleError::from(e).into_response())?;
        let found: Option<SessionRow> = diesel::sql_query(
            "SELECT t.owner, t.scopes, t.admin, s.csrf
             FROM walhook.console_sessions s JOIN walhook.api_tokens t ON t.id = s.token_id
             WHERE s.id_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
        )
        .bind::<Text, _>(hash(id))
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(|e| ConsoleError::from(e).into_response())?;
        let row = found.ok_or_else(logged_out)?;
        Ok(Viewer {
            caller: Caller {
                owner: row.owner,
                scopes: row.scopes,
            },
            admin: row.admin,
            csrf: row.csrf,
        })
    }
}

/// A state-changing request: the viewer and the form fields, its `csrf` field checked
/// against the session's (403 otherwise). Every console POST but login takes one.
pub struct Action {
    /// Who.
    pub viewer: Viewer,
    /// The form's fields (the `csrf` field removed).
    pub fields: HashMap<String, String>,
}

impl Action {
    /// A field, or "".
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

impl FromRequest<Arc<ConsoleState>> for Action {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<ConsoleState>) -> Result<Action, Response> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let Form(mut fields) = Form::<HashMap<String, String>>::from_request(req, state)
            .await
            .map_err(|_| ConsoleError::Csrf.into_response())?;
        let sent = fields.remove("csrf").unwrap_or_default();
        if !same(&sent, &viewer.csrf) {
            return Err(ConsoleError::Csrf.into_response());
        }
        Ok(Action { viewer, fields })
    }
}

/// Compares two secrets in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    code: &'a str,
    error: &'a str,
}

/// `GET /console/login[?code=…]`: the login form (with a one-time code, a button that
/// exchanges it); sets the form's CSRF cookie.
pub async fn login_page(
    State(state): State<Arc<ConsoleState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let code = query.get("code").map_or("", String::as_str);
    login_form(&state, code, "", StatusCode::OK)
}

fn login_form(
    state: &ConsoleState,
    code: &str,
    error: &str,
    status: StatusCode,
) -> Result<Response, ConsoleError> {
    let csrf = random();
    let page = LoginPage {
        csrf: &csrf,
        code,
        error,
    }
    .render()?;
    let cookie = set_cookie(
        LOGIN_COOKIE,
        &csrf,
        Some(Duration::from_secs(3600)),
        state.secure_cookie,
    );
    Ok((status, [(header::SET_COOKIE, cookie)], Html(page)).into_response())
}

/// `POST /console/login` (`token` or `code`, and `csrf`): opens a session.
pub async fn login(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Form(fields): Form<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let field = |name: &str| fields.get(name).map_or("", |v| v.trim());
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same(field("csrf"), expected) {
        return Err(ConsoleError::Csrf);
    }
    let mut conn = store::conn(&state.api.pool).await?;
    let token_id: Option<Uuid> = if !field("code").is_empty() {
        // Deleted by the exchange: a code works once, and only before it expires.
        let used: Option<UsedCode> = diesel::sql_query(
            "DELETE FROM walhook.console_logins l USING walhook.api_tokens t
             WHERE l.code_hash = $1 AND t.id = l.token_id
             RETURNING l.token_id, (l.expires_at > now() AND t.revoked_at IS NULL) AS valid",
        )
        .bind::<Text, _>(hash(field("code")))
        .get_result(&mut conn)
        .await
        .optional()?;
        used.filter(|u| u.valid).map(|u| u.token_id)
    } else if !field("token").is_empty() {
        use crate::subscriptions::schema::api_tokens;
        api_tokens::table
            .filter(api_tokens::token_hash.eq(hash(field("token"))))
            .filter(api_tokens::revoked_at.is_null())
            .select(api_tokens::id)
            .first(&mut conn)
            .await
            .optional()?
    } else {
        None
    };
    let Some(token_id) = token_id else {
        drop(conn);
        let error = if field("code").is_empty() {
            "invalid or revoked token"
        } else {
            "this login link was used already or has expired; ask for a new one"
        };
        return login_form(&state, "", error, StatusCode::UNAUTHORIZED);
    };
    let id = random();
    diesel::sql_query(
        "WITH gone AS (DELETE FROM walhook.console_sessions WHERE expires_at < now())
         INSERT INTO walhook.console_sessions (id_hash, token_id, csrf, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 second')",
    )
    .bind::<Text, _>(hash(&id))
    .bind::<SqlUuid, _>(token_id)
    .bind::<Text, _>(random())
    .bind::<BigInt, _>(i64::try_from(state.session_ttl.as_secs()).unwrap_or(i64::MAX))
    .execute(&mut conn)
    .await?;
    let mut response = Redirect::to("/console").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(
            SESSION_COOKIE,
            &id,
            Some(state.session_ttl),
            state.secure_cookie,
        ),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", None, state.secure_cookie),
    );
    Ok(response)
}

#[derive(QueryableByName)]
struct UsedCode {
    #[diesel(sql_type = SqlUuid)]
    token_id: Uuid,
    #[diesel(sql_type = Bool)]
    valid: bool,
}

/// `POST /console/logout`: ends the session.
pub async fn logout(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    action: Action,
) -> Result<Response, ConsoleError> {
    let _ = action;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        let mut conn = store::conn(&state.api.pool).await?;
        diesel::sql_query("DELETE FROM walhook.console_sessions WHERE id_hash = $1")
            .bind::<Text, _>(hash(id))
            .execute(&mut conn)
            .await?;
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", None, state.secure_cookie),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_and_set_strictly() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; walhook_session=xyz"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "b"), None);
        assert_eq!(
            set_cookie("s", "v", Some(Duration::from_secs(60)), true),
            "s=v; Path=/console; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
