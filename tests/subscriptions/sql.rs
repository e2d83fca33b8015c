//! `walhook migrate` and the SQL functions, with their error messages.

use walhook::subscriptions::store;

use crate::support::TestDb;

/// The error message of a failing statement.
async fn error_of(db: &TestDb, sql: &str) -> String {
    let err = db.client.batch_execute(sql).await.expect_err(sql);
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string())
}

async fn migrated(test: &str) -> TestDb {
    let db = TestDb::new(test).await;
    store::migrate(&db.database(), &db.name, true)
        .await
        .expect("migrate");
    db
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_in_parallel() {
    let db = TestDb::new("migrate").await;
    let database = db.database();
    let (a, b) = tokio::join!(
        store::migrate(&database, "p1", true),
        store::migrate(&database, "p1", true)
    );
    a.unwrap();
    b.unwrap();
    store::migrate(&db.database(), "p2", true).await.unwrap();
    let row = db
        .client
        .query_one(
            "SELECT value FROM walhook.settings WHERE name = 'publication'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "p2");
    let views: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_views WHERE schemaname = 'walhook' \
             AND viewname IN ('dead_letters', 'subscription_health')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(views, 2);
}

#[tokio::test]
async fn watch_sets_identity_keeps_the_publication_and_refuses_what_would_break() {
    let db = migrated("watch").await;
    db.exec(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, status text);
         CREATE TABLE invoices (id int PRIMARY KEY);
         CREATE TABLE nokey (v int);
         CREATE PUBLICATION {} ;",
        db.name
    ))
    .await;
    let row = db
        .client
        .query_one("SELECT noun, verbs FROM walhook.watch('orders')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "orders");
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["created", "updated", "deleted"]
    );
    let identity: i8 = db
        .client
        .query_one(
            "SELECT relreplident::\"char\" FROM pg_class WHERE relname = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity as u8, b'f');
    let in_pub = "SELECT count(*) FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2";
    let count = |table: &'static str| {
        let db = &db;
        async move {
            let n: i64 = db
                .client
                .query_one(in_pub, &[&db.name, &table])
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    assert_eq!(count("orders").await, 1);

    assert_eq!(
        error_of(&db, "SELECT walhook.watch('invoices', noun => 'orders')").await,
        "walhook.watch: noun 'orders' of table public.invoices is already used by table \
         public.orders; pass another noun => 'public_invoices'"
    );
    assert_eq!(
        error_of(&db, "SELECT walhook.watch('nokey', full_identity => false)").await,
        "walhook.watch: public.nokey has no primary key and no replica identity index, so once \
         published its UPDATE and DELETE statements would fail"
    );
    assert_eq!(
        error_of(&db, "SELECT walhook.watch('invoices', verbs => '{made}')").await,
        "walhook.watch: verbs {made} must be a non-empty subset of {created,updated,deleted,truncated}"
    );
    assert_eq!(
        error_of(&db, "SELECT walhook.watch('invoices', noun => 'Bad Noun')").await,
        "walhook.watch: noun 'Bad Noun' of table public.invoices must be lower-case letters, \
         digits and _, starting with a letter; pass noun => '...'"
    );
    // full identity makes a key-less table safe to publish.
    db.exec("SELECT walhook.watch('nokey'); UPDATE nokey SET v = 1;")
        .await;
    db.exec("SELECT walhook.unwatch('orders')").await;
    assert_eq!(count("orders").await, 0);
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM walhook.watched_tables", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

#[tokio::test]
async fn subscribe_and_plain_sql_reject_bad_arguments_naming_the_column() {
    let db = migrated("subscribe").await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); SELECT walhook.watch('orders');")
        .await;
    let cases = [
        (
            "SELECT walhook.subscribe('https://example.test/h', '{}')",
            "walhook.subscriptions.events must name at least one event pattern",
        ),
        (
            "SELECT walhook.subscribe('https://example.test/h', '{orders.made}')",
            "walhook.subscriptions.events: 'orders.made' is not an event pattern",
        ),
        (
            "SELECT walhook.subscribe('ftp://example.test/h', '{orders.created}')",
            "walhook.subscriptions.target_url must be an http:// or https:// URL, got 'ftp://example.test/h'",
        ),
        (
            "SELECT walhook.subscribe('https://example.test/h', '{orders.*}', filter => '[1]')",
            "walhook.subscriptions.filter must be a JSON object (column → value or array of values), got [1]",
        ),
        (
            "SELECT walhook.subscribe('https://example.test/h', '{*}', expires_at => '2000-01-01Z')",
            "walhook.subscriptions.expires_at 2000-01-01 00:00:00+00 is in the past",
        ),
        (
            "SELECT walhook.subscribe('https://example.test/h', '{*}', secret => 'hunter2')",
            "walhook.subscriptions.secret must be whsec_ followed by at least 24 base64-encoded bytes",
        ),
        (
            "INSERT INTO walhook.subscriptions (target_url, events) VALUES ('http://x.test', '{*.gone}')",
            "walhook.subscriptions.events: '*.gone' is not an event pattern",
        ),
        (
            "INSERT INTO walhook.subscriptions (target_url, events, filter) VALUES ('notaurl', '{*}', '{}')",
            "walhook.subscriptions.target_url must be an http:// or https:// URL, got 'notaurl'",
        ),
    ];
    for (sql, message) in cases {
        assert_eq!(error_of(&db, sql).await, message, "{sql}");
    }
    // A valid subscription: secret generated, defaults filled.
    let row = db
        .client
        .query_one(
            "SELECT id::text, secret, filter::text, active FROM walhook.subscribe(\
             'https://example.test/h', '{orders.created,*.deleted}', owner => 'acme', \
             filter => '{\"id\": [1, 2]}', context => 'ctx')",
            &[],
        )
        .await
        .unwrap();
    let secret: &str = row.get(1);
    assert!(
        secret.starts_with("whsec_") && secret.len() == 50,
        "{secret}"
    );
    assert_eq!(row.get::<_, &str>(2), r#"{"id": [1, 2]}"#);
    assert!(row.get::<_, bool>(3));
    // Plain UPDATE gets the same checks.
    assert_eq!(
        error_of(&db, "UPDATE walhook.subscriptions SET filter = '\"x\"'").await,
        "walhook.subscriptions.filter must be a JSON object (column → value or array of values), got \"x\""
    );
    db.exec("SELECT walhook.subscribe('https://example.test/h', '{*}')")
        .await;
    let n: i32 = db
        .client
        .query_one(
            "SELECT walhook.unsubscribe('https://example.test/h'::text)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let row = db
        .client
        .query_one(
            "SELECT id::text FROM walhook.subscribe('https://b.test/', '{*}')",
            &[],
        )
        .await
        .unwrap();
    let id: String = row.get(0);
    let gone: bool = db
        .client
        .query_one(&format!("SELECT walhook.unsubscribe('{id}'::uuid)"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone);
    let redelivered: i32 = db
        .client
        .query_one("SELECT walhook.redeliver()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(redelivered, 0);
}
