//! The privilege model of `sql/roles.sql`: nothing for PUBLIC, `walhook_monitor` reads health
//! but never a secret, `walhook_admin` manages subscriptions and watches without being
//! superuser; and the local server trusts no TCP login without its password.

use walhook::subscriptions::store;

use super::{connect_as, failure, login_role};
use crate::support::{TestDb, server};

async fn migrated(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn monitor_reads_health_but_never_a_secret() {
    let db = migrated("roles_monitor").await;
    db.exec(
        "SELECT walhook.subscribe('https://example.test/h', '{*}', headers => '{\"authorization\": \"Bearer t\"}')",
    )
    .await;
    let monitor = login_role(&db, "monitor", "IN ROLE walhook_monitor").await;
    let nobody = login_role(&db, "nobody", "").await;
    let m = connect_as(&db, &monitor).await;
    for sql in [
        "SELECT secret FROM walhook.subscriptions",
        "SELECT headers FROM walhook.subscriptions",
        "SELECT * FROM walhook.subscriptions",
        "SELECT body FROM walhook.delivery_queue",
        "SELECT new_row FROM walhook.outbox",
        "SELECT * FROM walhook.api_tokens",
    ] {
        let (code, message) = failure(&m, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
    }
    assert_eq!(
        failure(
            &m,
            "SELECT walhook.subscribe('https://example.test/x', '{*}')"
        )
        .await,
        (
            "42501".to_owned(),
            "permission denied for function subscribe".to_owned()
        )
    );
    let row = m
        .query_one(
            "SELECT target_url, active, consecutive_failures, pending, dead FROM walhook.subscription_health",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "https://example.test/h");
    assert!(row.get::<_, bool>(1));
    assert_eq!(
        (
            row.get::<_, i32>(2),
            row.get::<_, i64>(3),
            row.get::<_, i64>(4)
        ),
        (0, 0, 0)
    );
    let row = m
        .query_one(
            "SELECT (SELECT count(*) FROM walhook.subscriptions WHERE active),
                    (SELECT count(*) FROM walhook.delivery_queue WHERE status = 'pending'),
                    (SELECT count(*) FROM walhook.dead_letters),
                    (SELECT count(*) FROM walhook.outbox)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        ),
        (1, 0, 0, 0)
    );
    // A role granted nothing reads nothing, not even the schema.
    let n = connect_as(&db, &nobody).await;
    assert_eq!(
        failure(&n, "SELECT secret FROM walhook.subscriptions").await,
        (
            "42501".to_owned(),
            "permission denied for schema walhook".to_owned()
        )
    );
}

#[tokio::test]
async fn admin_manages_subscriptions_and_watches_without_superuser() {
    let db = migrated("roles_admin").await;
    let admin = login_role(&db, "admin", "IN ROLE walhook_admin").await;
    db.exec(&format!(
        "CREATE SCHEMA app AUTHORIZATION {admin};
         CREATE TABLE public.payroll (id int PRIMARY KEY, salary int);
         CREATE PUBLICATION {};",
        db.name
    ))
    .await;
    let a = connect_as(&db, &admin).await;
    a.batch_execute(
        "CREATE TABLE app.\"Line Items\" (id int PRIMARY KEY, qty int);
         SELECT walhook.watch('app.\"Line Items\"', noun => 'lines');",
    )
    .await
    .unwrap();
    let row = db
        .client
        .query_one(
            "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_publication_tables p
                 WHERE p.pubname = $1 AND p.schemaname = 'app' AND p.tablename = 'Line Items')
             FROM pg_class c WHERE c.oid = 'app.\"Line Items\"'::regclass",
            &[&db.name],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, &str>(0), row.get::<_, bool>(1)), ("f", true));
    let id: String = a
        .query_one(
            "SELECT id::text FROM walhook.subscribe('https://example.test/h', '{lines.*}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    a.batch_execute(
        "UPDATE walhook.subscriptions SET events = '{lines.created}';
         INSERT INTO walhook.subscriptions (target_url, events) VALUES ('https://example.test/p', '{lines.deleted}');
         SELECT walhook.redeliver();",
    )
    .await
    .unwrap();
    let gone: i32 = a
        .query_one(&format!("SELECT walhook.unsubscribe('{id}')"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 1);
    let deleted = a
        .execute("DELETE FROM walhook.subscriptions", &[])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    // Watching streams a table's rows: a table the admin cannot read is refused.
    assert_eq!(
        failure(&a, "SELECT walhook.watch('public.payroll')").await,
        (
            "42501".to_owned(),
            format!(
                "walhook.watch: role {admin} may not read public.payroll, so it may not watch it"
            )
        )
    );
    a.batch_execute("SELECT walhook.unwatch('app.\"Line Items\"')")
        .await
        .unwrap();
    let row = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM walhook.watched_tables),
                    (SELECT count(*) FROM pg_publication_tables WHERE pubname = $1),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = $2)",
            &[&db.name, &admin],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, bool>(2)
        ),
        (0, 0, false)
    );
    // The admin's rights stop at walhook's interface.
    for sql in [
        "SELECT * FROM walhook.api_tokens",
        "INSERT INTO walhook.outbox (schema_name, table_name, op) VALUES ('app', 'x', 'INSERT')",
        "INSERT INTO walhook.watched_tables (schema_name, table_name, noun) VALUES ('public', 'payroll', 'pay')",
        "SELECT walhook.set_capture_mode('trigger')",
    ] {
        let (code, message) = failure(&a, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
    }
}

#[tokio::test]
async fn local_server_refuses_tcp_logins_without_its_password() {
    let s = server();
    if std::env::var("WALHOOK_TEST_DATABASE_URL").is_ok() {
        return; // not a LocalPostgres
    }
    let err = tokio_postgres::connect(
        &format!("postgres://postgres@127.0.0.1:{}/postgres", s.port),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("a TCP login without the password is refused");
    assert_eq!(
        std::error::Error::source(&err).map(|e| e.to_string()),
        Some("password missing".to_owned())
    );
    let err = tokio_postgres::connect(
        &format!(
            "postgres://postgres:guess@127.0.0.1:{}/postgres?sslmode=disable",
            s.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("a wrong password is refused");
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("password authentication failed for user \"postgres\"")
    );
}
