//! Each preflight check failing and passing on a real server: checks of server-wide
//! settings against servers that have them (the shared one, a `wal_level=replica` one, the
//! ops tests' own with a bounded `max_slot_wal_keep_size`), the rest per database.

use walhook::config::CaptureMode;
use walhook::ops::preflight::{self, Check, Context, Level, Settings};
use walhook::subscriptions::store;

use super::bounded_server;
use crate::support::{TestDb, replica_server, server};

fn settings(db: &TestDb, mode: CaptureMode) -> Settings {
    Settings {
        mode,
        slot: db.name.clone(),
        publication: db.name.clone(),
        max_retained_wal: 1 << 30,
    }
}

/// The checks for `settings` on `url` (walhook's own session handling).
async fn checks_on(url: &str, settings: &Settings) -> Vec<Check> {
    let database: walhook::database::Database = url.parse().unwrap();
    let client = database.client().await.unwrap();
    let facts = preflight::gather(&client, settings).await.unwrap();
    preflight::judge(&facts, settings, Context::Status)
}

/// The one check named `name`.
async fn check(db: &TestDb, settings: &Settings, name: &str) -> Check {
    checks_on(&db.url, settings)
        .await
        .into_iter()
        .find(|c| c.name == name)
        .unwrap()
}

/// A migrated database with `orders` watched (and so a publication once created).
async fn watched(db: &TestDb) {
    store::migrate(&db.database(), &db.name, true)
        .await
        .unwrap();
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text); SELECT walhook.watch('orders');",
    )
    .await;
}

#[tokio::test]
async fn wal_level_fails_on_a_replica_server_and_passes_on_a_logical_one() {
    let replica = TestDb::on(replica_server(), "ops_pre_wal_replica").await;
    watched(&replica).await;
    let c = check(
        &replica,
        &settings(&replica, CaptureMode::Replication),
        "wal_level",
    )
    .await;
    assert_eq!(
        (c.level, c.message.as_str(), c.fix.as_deref()),
        (
            Level::Fail,
            "wal_level=replica: replication capture needs wal_level=logical",
            Some(
                "set wal_level = logical in postgresql.conf and restart PostgreSQL, or use capture.mode = \"trigger\""
            )
        )
    );
    let c = check(
        &replica,
        &settings(&replica, CaptureMode::Trigger),
        "wal_level",
    )
    .await;
    assert_eq!(c.level, Level::Ok);
    let logical = TestDb::new("ops_pre_wal_logical").await;
    watched(&logical).await;
    let c = check(
        &logical,
        &settings(&logical, CaptureMode::Replication),
        "wal_level",
    )
    .await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (Level::Ok, "wal_level=logical")
    );
}

#[tokio::test]
async fn max_slot_wal_keep_size_warns_when_unbounded() {
    let unbounded = TestDb::new("ops_pre_keep_unbounded").await;
    watched(&unbounded).await;
    let setting: String = unbounded
        .client
        .query_one("SHOW max_slot_wal_keep_size", &[])
        .await
        .unwrap()
        .get(0);
    if std::env::var("WALHOOK_TEST_DATABASE_URL").is_err() {
        assert_eq!(setting, "-1", "the harness server keeps the default");
    }
    let c = check(
        &unbounded,
        &settings(&unbounded, CaptureMode::Replication),
        "max_slot_wal_keep_size",
    )
    .await;
    assert_eq!(
        c.level,
        if setting == "-1" {
            Level::Warn
        } else {
            Level::Ok
        },
        "{c:?}"
    );
    let bounded = TestDb::on(bounded_server().await, "ops_pre_keep_bounded").await;
    watched(&bounded).await;
    let c = check(
        &bounded,
        &settings(&bounded, CaptureMode::Replication),
        "max_slot_wal_keep_size",
    )
    .await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (Level::Ok, "max_slot_wal_keep_size = 1.0 GiB")
    );
}

#[tokio::test]
async fn slot_missing_warns_and_reserved_passes() {
    let db = TestDb::new("ops_pre_slot").await;
    watched(&db).await;
    let s = settings(&db, CaptureMode::Replication);
    let c = check(&db, &s, "slot").await;
    assert_eq!(
        (c.level, c.message),
        (
            Level::Warn,
            format!("replication slot \"{}\" does not exist", db.name)
        )
    );
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        db.name
    ))
    .await;
    let c = check(&db, &s, "slot").await;
    assert_eq!(
        (c.level, c.message),
        (
            Level::Ok,
            format!(
                "slot \"{}\" wal_status=reserved, safe_wal_size unbounded",
                db.name
            )
        )
    );
    // Left over in trigger mode, it keeps WAL for nobody.
    let c = check(&db, &settings(&db, CaptureMode::Trigger), "slot").await;
    assert_eq!(c.level, Level::Warn);
    let retained = check(&db, &s, "retained_wal").await;
    assert_eq!(retained.level, Level::Ok);
    let over = Settings {
        max_retained_wal: 1,
        ..s.clone()
    };
    let retained = check(&db, &over, "retained_wal").await;
    assert_eq!(retained.level, Level::Warn, "{retained:?}");
    db.exec(&format!("SELECT pg_drop_replication_slot('{}')", db.name))
        .await;
}

#[tokio::test]
async fn publication_missing_a_watched_table_fails() {
    let db = TestDb::new("ops_pre_publication").await;
    watched(&db).await;
    let s = settings(&db, CaptureMode::Replication);
    assert_eq!(check(&db, &s, "publication").await.level, Level::Warn);
    db.exec(&format!(
        "CREATE PUBLICATION {0} WITH (publish_via_partition_root = true);
         ALTER PUBLICATION {0} ADD TABLE orders;",
        db.name
    ))
    .await;
    let c = check(&db, &s, "publication").await;
    assert_eq!(
        (c.level, c.message),
        (
            Level::Ok,
            format!("every watched table is in publication \"{}\"", db.name)
        )
    );
    db.exec(&format!("ALTER PUBLICATION {} DROP TABLE orders", db.name))
        .await;
    let c = check(&db, &s, "publication").await;
    assert_eq!(
        (c.level, c.message),
        (
            Level::Fail,
            format!(
                "watched tables missing from publication \"{}\", their changes are not captured: public.orders",
                db.name
            )
        )
    );
}

#[tokio::test]
async fn triggers_missing_in_trigger_mode_fail() {
    let db = TestDb::new("ops_pre_triggers").await;
    watched(&db).await;
    db.exec("SELECT walhook.set_capture_mode('trigger')").await;
    let s = settings(&db, CaptureMode::Trigger);
    let c = check(&db, &s, "triggers").await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (Level::Ok, "every watched table has its capture trigger")
    );
    db.exec("DROP TRIGGER walhook_capture ON orders").await;
    let c = check(&db, &s, "triggers").await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (
            Level::Fail,
            "watched tables without a capture trigger, their changes are not captured: public.orders"
        )
    );
}

#[tokio::test]
async fn replica_identity_not_full_warns_and_nothing_fails() {
    let db = TestDb::new("ops_pre_identity").await;
    watched(&db).await;
    let s = settings(&db, CaptureMode::Replication);
    let c = check(&db, &s, "replica_identity").await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (Level::Ok, "every watched table is REPLICA IDENTITY FULL")
    );
    db.exec("ALTER TABLE orders REPLICA IDENTITY DEFAULT").await;
    let c = check(&db, &s, "replica_identity").await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (
            Level::Warn,
            "not REPLICA IDENTITY FULL though watched for it, so `previous` has key columns only: public.orders"
        )
    );
    db.exec("SELECT walhook.watch('orders', full_identity => false)")
        .await;
    assert_eq!(check(&db, &s, "replica_identity").await.level, Level::Ok);
    db.exec("ALTER TABLE orders REPLICA IDENTITY NOTHING").await;
    let c = check(&db, &s, "replica_identity").await;
    assert_eq!(c.level, Level::Fail, "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some("ALTER TABLE public.orders REPLICA IDENTITY FULL")
    );
}

#[tokio::test]
async fn privileges_without_replication_fail() {
    let db = TestDb::new("ops_pre_privileges").await;
    watched(&db).await;
    let role = format!("{}_daemon", db.name);
    db.exec(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw';
         GRANT USAGE ON SCHEMA walhook TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA walhook TO {role};"
    ))
    .await;
    let url = format!(
        "postgres://{role}:pw@{}:{}/{}",
        server().host,
        server().port,
        db.name
    );
    let s = settings(&db, CaptureMode::Replication);
    let named = |checks: Vec<Check>| checks.into_iter().find(|c| c.name == "privileges").unwrap();
    let c = named(checks_on(&url, &s).await);
    assert_eq!(
        (c.level, c.message),
        (
            Level::Fail,
            format!("role \"{role}\" cannot write walhook's tables (delivery_queue, instances)")
        )
    );
    db.exec(&format!(
        "GRANT INSERT, UPDATE, DELETE ON walhook.delivery_queue, walhook.instances TO {role}"
    ))
    .await;
    let c = named(checks_on(&url, &s).await);
    assert_eq!(
        (c.level, c.fix),
        (
            Level::Fail,
            Some(format!(
                "ALTER ROLE \"{role}\" REPLICATION, or use capture.mode = \"trigger\""
            ))
        )
    );
    let c = named(checks_on(&url, &settings(&db, CaptureMode::Trigger)).await);
    assert_eq!(c.level, Level::Ok);
    db.exec(&format!("ALTER ROLE {role} REPLICATION")).await;
    // No publication yet, and no CREATE on the database to make one.
    db.exec(&format!(
        "REVOKE CREATE ON DATABASE {} FROM PUBLIC",
        db.name
    ))
    .await;
    let c = named(checks_on(&url, &s).await);
    assert_eq!(c.level, Level::Fail, "{c:?}");
    db.exec(&format!("GRANT CREATE ON DATABASE {} TO {role}", db.name))
        .await;
    let c = named(checks_on(&url, &s).await);
    assert_eq!(
        (c.level, c.message),
        (
            Level::Ok,
            format!("role \"{role}\" has REPLICATION and writes walhook's tables")
        )
    );
}

#[tokio::test]
async fn an_invalidated_slot_fails() {
    // A server of this test's own: a tiny max_slot_wal_keep_size invalidates every inactive
    // slot on it.
    let pg = tokio::task::spawn_blocking(walhook::localpg::LocalPostgres::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let server = crate::support::Server::of(&pg);
    let db = TestDb::on(&server, "ops_pre_lost").await;
    watched(&db).await;
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        db.exec(sql).await;
    }
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
        db.name
    ))
    .await;
    db.exec("CREATE TABLE filler (pad text)").await;
    let s = settings(&db, CaptureMode::Replication);
    let start = std::time::Instant::now();
    loop {
        let c = check(&db, &s, "slot").await;
        if c.level == Level::Fail {
            assert_eq!(
                c.message,
                format!(
                    "slot \"{}\" wal_status=lost: it was invalidated; the WAL it needed is gone",
                    db.name
                )
            );
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{c:?}"
        );
        // WAL past the limit, in new segments, then a checkpoint removes what the slot needed.
        for sql in [
            "INSERT INTO filler SELECT repeat(md5(g::text), 32) FROM generate_series(1, 2000) g",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            db.exec(sql).await;
        }
    }
    drop(pg);
}
