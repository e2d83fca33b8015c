//! The SQL surface against co-tenant roles: pinned search paths (planted traps never run),
//! trigger capture without grants, the privilege model, validation of headers, targets and
//! secrets, and the local server's authentication.

mod grants;
mod roles;
mod traps;
mod validation;

use crate::support::{TestDb, connect, server};

/// Creates a LOGIN role named `<db>_<suffix>` with password `pw` (roles are cluster-wide, so
/// named after the test database) and returns its name.
async fn login_role(db: &TestDb, suffix: &str, extra: &str) -> String {
    let role = format!("{}_{suffix}", db.name);
    db.exec(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw' {extra}"))
        .await;
    role
}

/// A client on `db` logged in as `role` (password `pw`) over TCP.
async fn connect_as(db: &TestDb, role: &str) -> tokio_postgres::Client {
    connect(&role_url(db, role)).await
}

/// The URL of `db` for `role` (password `pw`) on the server `db` lives on.
fn role_url(db: &TestDb, role: &str) -> String {
    let config: tokio_postgres::Config = db.url.parse().expect("test URLs parse");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => server().host.clone(),
    };
    let port = config.get_ports().first().copied().unwrap_or(server().port);
    format!("postgres://{role}:pw@{host}:{port}/{}", db.name)
}

/// The SQLSTATE and message of a statement that must fail.
async fn failure(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let err = client.batch_execute(sql).await.expect_err(sql);
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    (db.code().code().to_owned(), db.message().to_owned())
}
