//! API tokens: `whk_` + 32 random bytes (base64url), shown once; only their SHA-256 is
//! stored in `walhook.api_tokens`, with the owner and the scopes (event patterns the token
//! may subscribe to). [`Caller`] authenticates a request's `Authorization: Bearer` header
//! and takes one request from the token's rate budget (`api.rate_limit_per_minute`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::ApiState;
use super::error::ApiError;
use crate::subscriptions::routing::pattern_valid;
use crate::subscriptions::schema::api_tokens;

/// Token management failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `--owner` is empty.
    #[error("--owner must not be empty")]
    EmptyOwner,
    /// No `--scope` given.
    #[error("give at least one --scope (an event pattern such as 'orders.*' or '*')")]
    NoScope,
    /// A scope is not an event pattern.
    #[error(
        "--scope {0:?} is not an event pattern: use noun.verb, noun.*, *.verb or *, with verb one of created, updated, deleted, truncated"
    )]
    InvalidScope(String),
    /// A query failed.
    #[error("token query failed: {0}")]
    Query(#[from] diesel::result::Error),
}

/// A token as listed (never its secret).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_tokens)]
pub struct TokenInfo {
    /// Id, for `walhook token revoke`.
    pub id: Uuid,
    /// Owner.
    pub owner: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// An admin token (sees everything in the console).
    pub admin: bool,
}

/// `whk_` + 32 random bytes, base64url without padding.
fn new_token() -> String {
    format!("whk_{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()))
}

/// Hex SHA-256 of a token (or of a console session id or login code): what is stored and
/// looked up.
pub(crate) fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a token for `owner` with `scopes`; returns its id and the token (shown once).
pub async fn create(
    conn: &mut AsyncPgConnection,
    owner: &str,
    scopes: &[String],
) -> Result<(Uuid, String), TokenError> {
    create_with(conn, owner, scopes, false).await
}

/// Creates a token as [`create`] does, an admin token when `admin` (the console shows it
/// every subscription; the REST API treats it as its owner's).
pub async fn create_with(
    conn: &mut AsyncPgConnection,
    owner: &str,
    scopes: &[String],
    admin: bool,
) -> Result<(Uuid, String), TokenError> {
    if owner.trim().is_empty() {
        return Err(TokenError::EmptyOwner);
    }
    if scopes.is_empty() {
        return Err(TokenError::NoScope);
    }
    if let Some(bad) = scopes.iter().find(|s| !pattern_valid(s)) {
        return Err(TokenError::InvalidScope(bad.clone()));
    }
    let token = new_token();
    let id = diesel::insert_into(api_tokens::table)
        .values((
            api_tokens::owner.eq(owner),
            api_tokens::scopes.eq(scopes),
            api_tokens::token_hash.eq(hash(&token)),
            api_tokens::admin.eq(admin),
        ))
        .returning(api_tokens::id)
        .get_result(conn)
        .await?;
    Ok((id, token))
}

/// Every token, oldest first.
pub async fn list(conn: &mut AsyncPgConnection) -> Result<Vec<TokenInfo>, TokenError> {
    Ok(api_tokens::table
        .order((api_tokens::created_at, api_tokens::id))
        .select(TokenInfo::as_select())
        .load(conn)
        .await?)
}

/// Revokes a token; `false` when no unrevoked token has that id.
pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid) -> Result<bool, TokenError> {
    let revoked = diesel::update(api_tokens::table)
        .filter(api_tokens::id.eq(id))
        .filter(api_tokens::revoked_at.is_null())
        .set(api_tokens::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(revoked > 0)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Whose subscriptions it manages.
    pub owner: String,
    /// Event patterns it may subscribe to.
    pub scopes: Vec<String>,
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "missing token: send Authorization: Bearer <token>",
            ))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be Bearer <token>",
            ))?;
        let key = hash(token);
        // A known token's empty bucket answers 429 before any query.
        let counted = match state.limiter.take(&key, false) {
            Some(Err(retry_after)) => return Err(ApiError::RateLimited { retry_after }),
            Some(Ok(())) => true,
            None => false,
        };
        let mut conn = super::store::conn(&state.pool).await?;
        let found: Option<(String, Vec<String>)> = diesel::update(api_tokens::table)
            .filter(api_tokens::token_hash.eq(&key))
            .filter(api_tokens::revoked_at.is_null())
            .set(api_tokens::last_used_at.eq(diesel::dsl::now))
            .returning((api_tokens::owner, api_tokens::scopes))
            .get_result(&mut conn)
            .await
            .optional()?;
        let (owner, scopes) = found.ok_or(ApiError::Unauthorized("invalid or revoked token"))?;
        drop(conn);
        // First request of a token since start (or since its bucket refilled and was pruned).
        if !counted && let Some(Err(retry_after)) = state.limiter.take(&key, true) {
            return Err(ApiError::RateLimited { retry_after });
        }
        Ok(Caller { owner, scopes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed_to_hex() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("whk_") && a.len() == 4 + 43, "{a}");
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
