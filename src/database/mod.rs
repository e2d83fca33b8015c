//! The one place that connects to PostgreSQL.
//!
//! A [`Database`] is parsed once from `database_url` (URL or key=value form) and owns the
//! TLS policy ([`tls`]: `sslmode`, `sslrootcert`, `sslcert`, `sslkey` with libpq's
//! meanings). It is cheap to clone, and every module that talks to the database takes it
//! instead of a URL string:
//!
//! ```text
//!  database_url ─▶ Database::parse ─┬─ client() / connect()  tokio-postgres (switch, LISTEN
//!                  (url.rs: ssl*     │                        sessions, outbox reader)
//!                   taken out,       ├─ diesel() / pool()     diesel-async (migrations, store,
//!                   tls.rs: one      │                        routing loads, queue, API)
//!                   rustls config)   └─ capture::connection   our protocol (replication and
//!                                       ::Connection::connect catalog sessions)
//! ```
//!
//! Every session is pinned to `search_path = pg_catalog, pg_temp` at connect (the startup
//! parameter in our protocol, `options=-c search_path=…` for tokio-postgres and so for the
//! diesel connections), so no object a co-tenant role creates in `public` is ever resolved
//! by walhook's SQL; walhook's own objects are always schema-qualified (`walhook.`).

pub mod tls;
mod url;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use futures_util::FutureExt;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Socket};

pub use tls::SslMode;
use tls::{MakeRustls, RustlsStream, Tls};

use crate::delivery::queue::PgPool;

/// The `search_path` of every session walhook opens.
pub const SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// A tokio-postgres connection future as [`Database::connect`] returns it: drive it (spawn
/// it, or poll its messages for LISTEN notifications).
pub type PgConnection = tokio_postgres::Connection<Socket, RustlsStream<Socket>>;

/// Connecting failed, or `database_url` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// An `ssl*` parameter is wrong (bad value, unreadable or empty PEM file…).
    #[error("database_url: {parameter}: {message}")]
    Parameter {
        /// The parameter's name, e.g. `sslrootcert`.
        parameter: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The string is not a PostgreSQL connection string.
    #[error("database_url: not a PostgreSQL connection string: {0}")]
    Parse(String),
    /// TLS was refused, failed or did not verify.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server could not be reached, or refused the session.
    #[error("cannot connect to PostgreSQL: {message}")]
    Connect {
        /// SQLSTATE when the server answered with an error (e.g. `28000` from pg_hba.conf).
        code: Option<String>,
        /// The server's or the socket's message.
        message: String,
    },
    /// A pool could not be built.
    #[error("database pool: {0}")]
    Pool(String),
}

impl DatabaseError {
    /// Whether trying again later may succeed: an unreachable server or a server-side error
    /// of the classes that pass (08, 53, 57, 58); never a bad parameter, TLS, or refused login.
    pub fn is_transient(&self) -> bool {
        match self {
            DatabaseError::Connect { code: None, .. } => true,
            DatabaseError::Connect {
                code: Some(code), ..
            } => {
                matches!(code.get(..2), Some("08" | "53" | "57" | "58"))
            }
            DatabaseError::Parameter { .. }
            | DatabaseError::Parse(_)
            | DatabaseError::Tls(_)
            | DatabaseError::Pool(_) => false,
        }
    }

    /// A tokio-postgres connect error, in walhook's words.
    fn from_postgres(e: tokio_postgres::Error, mode: SslMode) -> DatabaseError {
        if let Some(db) = e.as_db_error() {
            let mut message = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" (hint: {hint})"));
            }
            return DatabaseError::Connect {
                code: Some(db.code().code().to_owned()),
                message,
            };
        }
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            if let Some(DatabaseError::Tls(message)) = cause.downcast_ref::<DatabaseError>() {
                return DatabaseError::Tls(message.clone());
            }
            source = cause.source();
        }
        let text = e.to_string();
        if text.contains("server does not support TLS") {
            return DatabaseError::Tls(format!(
                "the server does not support TLS but sslmode={mode}"
            ));
        }
        DatabaseError::Connect {
            code: e.code().map(|c| c.code().to_owned()),
            message: text,
        }
    }
}

/// The watched database: connection parameters and TLS policy, parsed once.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    /// What tokio-postgres connects with (and our protocol reads hosts, user… from):
    /// `sslmode` mapped to tokio-postgres's three, `search_path` pinned in `options`.
    config: tokio_postgres::Config,
    tls: Tls,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Debug redacts the password.
        f.debug_struct("Database")
            .field("config", &self.inner.config)
            .field("tls", &self.inner.tls)
            .finish()
    }
}

impl FromStr for Database {
    type Err = DatabaseError;

    fn from_str(url: &str) -> Result<Database, DatabaseError> {
        Database::parse(url)
    }
}

impl Database {
    /// Parses `database_url` (URL or key=value) and reads the TLS files it names.
    pub fn parse(url: &str) -> Result<Database, DatabaseError> {
        let (rest, params) = url::split(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| DatabaseError::Parse(e.to_string()))?;
        let tls = Tls::new(&params)?;
        let only_unix = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(match tls.mode() {
            // libpq does not use TLS on Unix-domain sockets.
            _ if only_unix => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        // `options` separates arguments by spaces; `\ ` is a space inside one.
        let pin = format!("-c search_path={}", SEARCH_PATH.replace(' ', "\\ "));
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {pin}"),
            _ => pin,
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("walhook");
        }
        Ok(Database {
            inner: Arc::new(Inner { config, tls }),
        })
    }

    /// The effective `sslmode`.
    pub fn sslmode(&self) -> SslMode {
        self.inner.tls.mode()
    }

    /// Connection parameters (hosts, ports, user, password, database, options).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.inner.config
    }

    /// The TLS policy.
    pub fn tls(&self) -> &Tls {
        &self.inner.tls
    }

    /// A tokio-postgres session whose connection the caller drives (to receive LISTEN
    /// notifications through `poll_message`).
    pub async fn connect(&self) -> Result<(Client, PgConnection), DatabaseError> {
        self.inner
            .config
            .connect(MakeRustls(self.inner.tls.clone()))
            .await
            .map_err(|e| DatabaseError::from_postgres(e, self.sslmode()))
    }

    /// A tokio-postgres session, its connection driven by a spawned task.
    pub async fn client(&self) -> Result<Client, DatabaseError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database session ended");
            }
        });
        Ok(client)
    }

    /// One diesel-async connection.
    pub async fn diesel(&self) -> Result<AsyncPgConnection, DatabaseError> {
        let (client, connection) = self.connect().await?;
        AsyncPgConnection::try_from_client_and_connection(client, connection)
            .await
            .map_err(|e| DatabaseError::Connect {
                code: None,
                message: e.to_string(),
            })
    }

    /// A diesel-async pool of at most `size` connections, each made by [`Database::diesel`]
    /// (so with TLS and the pinned `search_path`); `wait_timeout` bounds how long a caller
    /// waits for a free connection (`None`: as long as it takes).
    pub fn pool(
        &self,
        size: usize,
        wait_timeout: Option<Duration>,
    ) -> Result<PgPool, DatabaseError> {
        let database = self.clone();
        let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
        manager_config.custom_setup = Box::new(move |_url| {
            let database = database.clone();
            async move {
                database
                    .diesel()
                    .await
                    .map_err(|e| ConnectionError::BadConnection(e.to_string()))
            }
            .boxed()
        });
        // The URL is unused: custom_setup connects through this handle.
        let manager = AsyncDieselConnectionManager::new_with_config("", manager_config);
        let mut builder = Pool::builder(manager).max_size(size);
        if let Some(timeout) = wait_timeout {
            builder = builder
                .wait_timeout(Some(timeout))
                .runtime(deadpool_runtime());
        }
        builder
            .build()
            .map_err(|e| DatabaseError::Pool(e.to_string()))
    }
}

/// Splits a table name as SQL writes it into (schema, table): `orders` → (`public`,
/// `orders`) (sessions are pinned to `pg_catalog, pg_temp`, so an unqualified name means
/// `public`, the default schema), `App.Orders` → (`app`, `orders`), `"Sales"."Order Items"`
/// → (`Sales`, `Order Items`). `None` when it is not one or two identifiers.
pub fn split_table_name(name: &str) -> Option<(String, String)> {
    let mut parts = Vec::new();
    let mut chars = name.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => part.push('"'),
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != '.' && *c != '"') {
                part.push(c);
            }
            part = part.trim().to_lowercase();
            if part.is_empty() || part.contains(char::is_whitespace) {
                return None;
            }
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => {}
            Some(_) => return None,
        }
    }
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(table), None, None) => Some(("public".to_owned(), table)),
        (Some(schema), Some(table), None) => Some((schema, table)),
        _ => None,
    }
}

fn deadpool_runtime() -> deadpool::Runtime {
    deadpool::Runtime::Tokio1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_pinned_and_modes_mapped() {
        let db = Database::parse("postgres://u@h/db?options=-c%20work_mem%3D1MB").unwrap();
        assert_eq!(
            db.config().get_options(),
            Some("-c work_mem=1MB -c search_path=pg_catalog,\\ pg_temp")
        );
        assert_eq!(db.sslmode(), SslMode::Prefer);
        assert_eq!(db.config().get_application_name(), Some("walhook"));
        let db = Database::parse("host=h user=u sslmode=require").unwrap();
        assert_eq!(db.sslmode(), SslMode::Require);
        assert_eq!(
            db.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn table_names_split_as_sql_does() {
        let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(split_table_name("orders"), pair("public", "orders"));
        assert_eq!(split_table_name("App.Orders"), pair("app", "orders"));
        assert_eq!(
            split_table_name("\"Sales\".\"Order Items\""),
            pair("Sales", "Order Items")
        );
        assert_eq!(split_table_name("\"a.b\".\"c\"\"d\""), pair("a.b", "c\"d"));
        assert_eq!(split_table_name("a.b.c"), None);
        assert_eq!(split_table_name("a b"), None);
        assert_eq!(split_table_name("\"open"), None);
        assert_eq!(split_table_name(""), None);
    }

    #[test]
    fn verification_needs_a_root_certificate() {
        let err = Database::parse("postgres://u@h/db?sslmode=verify-full")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "database_url: sslrootcert: sslmode=verify-full needs sslrootcert=FILE (PEM CA certificates)"
        );
        let err =
            Database::parse("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("database_url: sslrootcert: cannot read /nonexistent/ca.pem: "),
            "{err}"
        );
        let err = Database::parse("postgres://u@h/db?sslmode=require&sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "database_url: sslkey: sslcert is given but sslkey is not"
        );
    }
}
