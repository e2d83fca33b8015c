//! Logins: SCRAM-SHA-256 and md5, clear errors on a wrong password, TLS per sslmode.

use walhook::capture::CaptureError;
use walhook::capture::connection::Connection;
use walhook::database::Database;

use crate::support::{TestDb, server};

fn url(user: &str, password: &str, db: &str, sslmode: &str) -> Database {
    let s = server();
    format!(
        "postgres://{user}:{password}@{}:{}/{db}?sslmode={sslmode}",
        s.host, s.port
    )
    .parse()
    .unwrap()
}

async fn identify(config: &Database) -> Result<String, CaptureError> {
    let mut conn = Connection::connect(config, true).await?;
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    Ok(rows[0][3].clone().unwrap_or_default())
}

async fn roles(db: &TestDb) {
    // Roles are cluster-wide; tests may run in parallel, so create them idempotently.
    // Two tests may race to create them: a duplicate from the other one is fine.
    for (role, method, password) in [
        ("walhook_scram", "scram-sha-256", "scram pass"),
        ("walhook_md5", "md5", "md5 pass"),
    ] {
        db.exec(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 SET LOCAL password_encryption = '{method}';
                 CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}';
               END IF;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$;"
        ))
        .await;
    }
}

#[tokio::test]
async fn scram_and_md5_logins_work_and_wrong_passwords_name_the_user() {
    let db = TestDb::new("auth").await;
    roles(&db).await;
    let stored: String = db
        .client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'walhook_md5'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.starts_with("md5"),
        "the md5 role really has an md5 password"
    );
    assert_eq!(
        identify(&url("walhook_scram", "scram pass", &db.name, "disable"))
            .await
            .unwrap(),
        db.name
    );
    assert_eq!(
        identify(&url("walhook_md5", "md5 pass", &db.name, "disable"))
            .await
            .unwrap(),
        db.name
    );
    for user in ["walhook_scram", "walhook_md5"] {
        let err = identify(&url(user, "wrong", &db.name, "disable"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CaptureError::Auth { .. }), "{text}");
        assert_eq!(
            text,
            format!(
                "authentication as user \"{user}\" failed: password authentication failed for user \"{user}\""
            )
        );
        assert!(!err.is_transient());
    }
}

#[tokio::test]
async fn tls_is_used_per_sslmode() {
    let db = TestDb::new("tls").await;
    roles(&db).await;
    assert!(
        server().tls || std::env::var("WALHOOK_TEST_DATABASE_URL").is_ok(),
        "harness has TLS"
    );
    if !server().tls {
        return; // an external server may not offer TLS
    }
    for (mode, expect_tls) in [
        ("require", "true"),
        ("prefer", "true"),
        ("disable", "false"),
    ] {
        let mut conn =
            Connection::connect(&url("walhook_scram", "scram pass", &db.name, mode), false)
                .await
                .unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        let rows = conn
            .simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .await
            .unwrap();
        assert_eq!(rows[0][0].as_deref(), Some(expect_tls), "sslmode={mode}");
    }
}

#[tokio::test]
async fn unreachable_server_is_a_clear_transient_error() {
    let config: Database = "postgres://u@127.0.0.1:1/db".parse().unwrap();
    let err = Connection::connect(&config, true)
        .await
        .err()
        .expect("port 1 refuses");
    assert!(
        err.to_string()
            .starts_with("cannot connect to PostgreSQL at 127.0.0.1:1:"),
        "{err}"
    );
    assert!(err.is_transient());
}
