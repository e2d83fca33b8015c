//! TLS on every connection, against a server that accepts only `hostssl`: `walhook run` in
//! both capture modes with `sslmode=require`, `verify-full` with the test's CA, a clear
//! error on a host-name mismatch and on `sslmode=disable`; pinned `search_path`; unknown
//! `WALHOOK_*` variables warned about once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use walhook::capture::connection::Connection;
use walhook::database::Database;
use walhook::localpg::LocalPostgres;

use crate::support::receiver::Receiver;

/// The TLS-only server and the directory of the test's CA and certificates.
struct TlsServer {
    port: u16,
    certs: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, and a server certificate it signed whose only name is `DNS:localhost`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-days",
            "2",
            "-subj",
            "/CN=walhook test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

fn server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let certs = std::env::temp_dir().join(format!("walhook-tls-{}", std::process::id()));
        std::fs::create_dir_all(&certs).unwrap();
        make_certificates(&certs);
        // Leaked: lives as long as the test process (its watchdog removes it).
        let pg = Box::leak(Box::new(
            LocalPostgres::start_with_tls(
                &certs.join("server.crt"),
                &certs.join("server.key"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap_or_else(|e| panic!("{e}")),
        ));
        TlsServer {
            port: pg.port,
            certs,
        }
    })
}

fn url(host: &str, db: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/{db}?{params}", server().port)
}

fn ca() -> String {
    server().certs.join("ca.crt").display().to_string()
}

/// A fresh database on the TLS server, and a (TLS, pinned) client on it.
async fn database(name: &str) -> (String, tokio_postgres::Client) {
    let admin: Database = url("127.0.0.1", "postgres", "sslmode=require")
        .parse()
        .unwrap();
    let admin = admin.client().await.unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db: Database = url("127.0.0.1", name, "sslmode=require").parse().unwrap();
    (name.to_owned(), db.client().await.unwrap())
}

/// A child process killed when dropped, so a failing assertion leaves no daemon behind.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Process {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// `walhook` with `args` on `db_url`; stderr goes to a file, returned with the child.
fn walhook(args: &[&str], db_url: &str, name: &str, extra: &[(&str, &str)]) -> (Process, PathBuf) {
    let log = server().certs.join(format!("{name}.stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(args)
        .env("WALHOOK_DATABASE_URL", db_url)
        .env("WALHOOK_CAPTURE__SLOT", name)
        .env("WALHOOK_CAPTURE__PUBLICATION", name)
        .env("WALHOOK_CAPTURE__STATUS_INTERVAL_MS", "100")
        .env("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
        .env("WALHOOK_API__ENABLED", "false")
        .env("WALHOOK_LOG", "walhook=info")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Process(child), log)
}

/// `walhook run` with `sslmode=require` in `mode` delivers an insert to a receiver.
async fn run_delivers(mode: &str, extra: &[(&str, &str)]) -> String {
    let (name, client) = database(&format!("tls_run_{mode}")).await;
    let receiver = Receiver::start().await;
    client
        .batch_execute("CREATE TABLE public.items (id int PRIMARY KEY, label text)")
        .await
        .unwrap();
    let db_url = url("127.0.0.1", &name, "sslmode=require");
    let mut env = vec![("WALHOOK_CAPTURE__MODE", mode)];
    env.extend_from_slice(extra);
    // `walhook migrate` over TLS installs the schema; then watch and subscribe, then run.
    let (mut migrate, log) = walhook(&["migrate"], &db_url, &name, &env);
    assert!(
        migrate.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    client
        .batch_execute(&format!(
            "SELECT walhook.watch('public.items'); SELECT walhook.subscribe('{}', '{{items.created}}');",
            receiver.url
        ))
        .await
        .unwrap();
    let (mut child, log) = walhook(&["run"], &db_url, &name, &env);
    // Insert until the first delivery: the daemon may still be starting its capture.
    let mut id = 0;
    let mut delivered = Vec::new();
    for _ in 0..60 {
        id += 1;
        client
            .execute("INSERT INTO public.items VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        delivered = receiver.delivered();
        if !delivered.is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "walhook exited: {}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
    assert!(
        !delivered.is_empty(),
        "nothing delivered in {mode} mode: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let body: serde_json::Value = serde_json::from_str(&delivered[0].body).unwrap();
    assert_eq!(body["type"], "items.created");
    assert_eq!(body["source"]["mode"], mode);
    // Every session of walhook's on this database is encrypted.
    let plain: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_stat_ssl s \
             ON s.pid = a.pid WHERE a.application_name = 'walhook' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test]
async fn run_with_sslmode_require_in_replication_mode() {
    let stderr = run_delivers(
        "replication",
        &[
            ("WALHOOK_PORT", "tcp://10.0.0.1:8080"),
            ("WALHOOK_SERVICE_HOST", "10.0.0.1"),
        ],
    )
    .await;
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("not configuration keys"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].ends_with(
            "ignoring environment variables that are not configuration keys: \
             WALHOOK_PORT, WALHOOK_SERVICE_HOST"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn run_with_sslmode_require_in_trigger_mode() {
    run_delivers("trigger", &[]).await;
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name() {
    let (name, _client) = database("tls_verify").await;
    let good = format!("sslmode=verify-full&sslrootcert={}", ca());
    // tokio-postgres (pool, LISTEN, outbox) and our protocol (replication, catalog) alike.
    let db: Database = url("localhost", &name, &good).parse().unwrap();
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl, pg_catalog.current_setting('search_path') FROM pg_catalog.pg_stat_ssl \
             WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "pg_catalog, pg_temp");
    let mut conn = Connection::connect(&db, true).await.unwrap();
    let rows = conn
        .simple_query("SELECT current_setting('search_path')")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("pg_catalog, pg_temp"));

    // The certificate names localhost only: 127.0.0.1 does not match.
    let db: Database = url("127.0.0.1", &name, &good).parse().unwrap();
    let expected = "TLS: certificate for host 127.0.0.1 does not match (sslmode=verify-full): \
                    it is for localhost";
    assert_eq!(db.client().await.err().unwrap().to_string(), expected);
    let err = Connection::connect(&db, false).await.err().unwrap();
    assert_eq!(err.to_string(), expected);
    assert!(!err.is_transient());

    // verify-ca checks the chain only.
    let ca_only = format!("sslmode=verify-ca&sslrootcert={}", ca());
    let db: Database = url("127.0.0.1", &name, &ca_only).parse().unwrap();
    db.client().await.unwrap();

    // A CA that did not sign the server's certificate.
    let other = server().certs.join("other");
    std::fs::create_dir_all(&other).unwrap();
    openssl(
        &other,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "rsa:2048",
            "-days",
            "2",
            "-subj",
            "/CN=other CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    let wrong = format!(
        "sslmode=verify-full&sslrootcert={}",
        other.join("ca.crt").display()
    );
    let db: Database = url("localhost", &name, &wrong).parse().unwrap();
    assert_eq!(
        db.client().await.err().unwrap().to_string(),
        format!(
            "TLS: the certificate of localhost is not signed by a CA in sslrootcert {} \
             (sslmode=verify-full)",
            other.join("ca.crt").display()
        )
    );

    // The daemon stops at start with the same sentence.
    let bad = url("127.0.0.1", &name, &good);
    let (mut child, log) = walhook(&["migrate"], &bad, &name, &[]);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains(expected), "{stderr}");
}

#[tokio::test]
async fn sslmode_disable_is_refused_by_the_server() {
    let (name, _client) = database("tls_disable").await;
    let plain = url("127.0.0.1", &name, "sslmode=disable");
    let db: Database = plain.parse().unwrap();
    let expected = format!(
        "cannot connect to PostgreSQL: FATAL 28000: no pg_hba.conf entry for host \"127.0.0.1\", \
         user \"postgres\", database \"{name}\", no encryption"
    );
    assert_eq!(db.client().await.err().unwrap().to_string(), expected);
    let err = Connection::connect(&db, true).await.err().unwrap();
    assert!(
        err.to_string().contains(&format!(
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"{name}\", no encryption"
        )),
        "{err}"
    );
    let (mut child, log) = walhook(&["migrate"], &plain, &name, &[]);
    assert!(!child.wait().unwrap().success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test]
async fn pool_sessions_are_pinned() {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        path: String,
    }
    let (name, _client) = database("tls_pool").await;
    let db: Database = url("127.0.0.1", &name, "sslmode=require").parse().unwrap();
    let pool = db.pool(2, Some(Duration::from_secs(5))).unwrap();
    let mut conn = pool.get().await.unwrap();
    let setting: Setting =
        diesel::sql_query("SELECT pg_catalog.current_setting('search_path') AS path")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(setting.path, "pg_catalog, pg_temp");
}
