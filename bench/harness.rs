//! The walhook benchmark harness: `cargo bench --bench harness` (release build).
//!
//! On this machine it starts its own PostgreSQL (wal_level=logical), a local receiver that
//! answers 200 at once and timestamps every delivery, and `walhook run` (the release binary,
//! as a separate process so its memory and CPU are its own), then measures:
//! 1. backlog drain: 300,000 changes (200,000 in one transaction + 100,000 single-row
//!    transactions), walhook (commit → 2xx) next to `pg_recvlogical` reading the same changes
//!    from its own slot; beside it the HTTP limit of this machine — a load generator (this
//!    binary again, as its own process: reqwest, keep-alive, walhook's per-subscription
//!    concurrency, the same rendered and signed bodies) POSTing to the same receiver — and
//!    walhook again on the same backlog with `batch_max = 100`, and over cleartext HTTP/2
//!    (walhook and the generator), each with CPU µs per event of walhook, the receiver and
//!    the generator (from `/proc`);
//! 2. live latency: pgbench single-row INSERTs at full rate, then at 1,000 and 4,000 TPS,
//!    then at full rate with `batch_max = 100`; commit → 2xx p50/p95/p99/max and the final
//!    lag;
//! 3. write-path cost: pgbench TPS with walhook stopped vs running, in both capture modes;
//! 4. memory: walhook's peak RSS per phase, and with the endpoint down (connection refused)
//!    while 1,000,000 events queue in the table;
//! 5. fan-out: throughput with 1 vs 10,000 non-matching subscriptions;
//! 6. backfill: a 300,000-row table backfilled (one request per event, then
//!    `batch_max = 100`) while pgbench writes 1,000 TPS: rows/s, and the live commit → 2xx
//!    latency with and without a backfill (`BENCH_SKIP_BACKFILL=1`
//!    skips it, `BENCH_ONLY_BACKFILL=1` runs only it).
//!
//! `BENCH_QUICK=1` shrinks every phase (a smoke run); `BENCH_DRAIN_ONLY=1` stops after
//! phase 1 (the drain rows). `BENCH_PROFILE="<command…>"` runs the first (one request per
//! event) drain's walhook under that command — e.g. `valgrind --tool=callgrind
//! --callgrind-out-file=/tmp/walhook.cg` — and stops after that drain.

#![allow(clippy::unwrap_used)] // a measuring tool: fail loudly

#[path = "harness/backfill.rs"]
mod backfill;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use walhook::localpg::{LocalPostgres, bindir};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    count: AtomicU64,
    latencies_us: Mutex<Vec<i64>>,
    /// While set, single-event bodies are kept (newline-separated), for the generator.
    record: std::sync::atomic::AtomicBool,
    bodies: Mutex<Vec<u8>>,
}

/// The one envelope field the receiver reads (the rest is skipped, not built).
#[derive(serde::Deserialize)]
struct Stamp<'a> {
    timestamp: &'a str,
}

async fn receive(State(seen): State<Arc<Seen>>, body: Bytes) -> StatusCode {
    record(&seen, &body);
    StatusCode::OK
}

/// Counts the events of one request (a batch is an array) and their commit → 2xx latency.
fn record(seen: &Seen, body: &[u8]) {
    let now = chrono::Utc::now().timestamp_micros();
    let latency = |stamp: &Stamp| {
        chrono::DateTime::parse_from_rfc3339(stamp.timestamp)
            .ok()
            .map(|ts| now - ts.timestamp_micros())
    };
    if body.first() == Some(&b'[') {
        let stamps: Vec<Stamp> = serde_json::from_slice(body).unwrap_or_default();
        seen.latencies_us
            .lock()
            .unwrap()
            .extend(stamps.iter().filter_map(latency));
        seen.count.fetch_add(stamps.len() as u64, Ordering::Relaxed);
        return;
    }
    if let Some(ms) = serde_json::from_slice::<Stamp>(body)
        .ok()
        .and_then(|s| latency(&s))
    {
        seen.latencies_us.lock().unwrap().push(ms);
    }
    if seen.record.load(Ordering::Relaxed) {
        let mut bodies = seen.bodies.lock().unwrap();
        bodies.extend_from_slice(body);
        bodies.push(b'\n');
    }
    seen.count.fetch_add(1, Ordering::Relaxed);
}

/// The same receiver over hyper directly, for cleartext HTTP/2: a connection opening with
/// the HTTP/2 preface is served in HTTP/2 (prior knowledge), any other in HTTP/1.1.
async fn serve_both(listener: tokio::net::TcpListener, seen: Arc<Seen>) {
    use hyper::server::conn::{http1, http2};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut start = [0u8; 4];
            let n = stream.peek(&mut start).await.unwrap_or(0);
            let h2 = n > 0 && b"PRI "[..n] == start[..n];
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = axum::body::Body::new(request.into_body());
                        let bytes = axum::body::to_bytes(body, 64 << 20)
                            .await
                            .unwrap_or_default();
                        record(&seen, &bytes);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            axum::body::Body::empty(),
                        ))
                    }
                },
            );
            let io = TokioIo::new(stream);
            let _ = if h2 {
                http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                http1::Builder::new().serve_connection(io, service).await
            };
        });
    }
}

/// Walhook's default `delivery.max_in_flight_per_subscription`: the generator's concurrency.
const CONCURRENCY: usize = 16;

/// The signing secret of the benchmark's subscription (and the generator's).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=";

/// Generator mode (`BENCH_GENERATOR=<url> <bodies file> <h1|h2c>`): POSTs every body of the
/// file, signed as walhook signs, [`CONCURRENCY`] at a time over one keep-alive reqwest
/// client, and prints `<seconds> <cpu seconds>` of the sending.
async fn generate(spec: &str) -> Result<()> {
    let mut parts = spec.split(' ');
    let (url, file, proto) = (
        parts.next().ok_or("url")?.to_owned(),
        parts.next().ok_or("file")?,
        parts.next().ok_or("protocol")?,
    );
    let text = std::fs::read(file)?;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        text.split(|b| *b == b'\n')
            .filter(|b| !b.is_empty())
            .map(Bytes::copy_from_slice)
            .collect(),
    );
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .no_proxy()
        .user_agent(concat!("walhook/", env!("CARGO_PKG_VERSION")));
    if proto == "h2c" {
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build()?;
    let key = walhook::delivery::signing::Key::parse(SECRET).map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_secs(std::process::id());
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, bodies, next, key, url) = (
            client.clone(),
            bodies.clone(),
            next.clone(),
            key.clone(),
            url.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(i) else { return };
                let id = format!("evt_gen_{i}");
                let ts = chrono::Utc::now().timestamp();
                let signature = key.sign(&id, ts, body);
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts)
                    .header("webhook-signature", signature)
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(response) = sent {
                    let _ = response.bytes().await;
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    println!(
        "{} {}",
        start.elapsed().as_secs_f64(),
        cpu_secs(std::process::id()) - cpu_before
    );
    Ok(())
}

struct Bench {
    pg: LocalPostgres,
    url: String,
    client: tokio_postgres::Client,
    seen: Arc<Seen>,
    hook: String,
    quick: bool,
    /// The newest `walhook run` started, watched while waiting for deliveries.
    walhook_pid: std::sync::atomic::AtomicU32,
}

/// Whether a child process has exited (a zombie until waited for) or is gone.
fn exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .is_none_or(|state| state == "Z")
}

fn rss_peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS counter of a process (Linux: write 5 to clear_refs).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// CPU seconds (user + system) a process used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

impl Bench {
    fn walhook(&self) -> Walhook {
        self.walhook_with(&[])
    }

    /// `walhook run` with extra environment (e.g. the capture mode).
    fn walhook_with(&self, env: &[(&str, &str)]) -> Walhook {
        self.walhook_under(&[], env)
    }

    /// `walhook run` started by `wrapper` (a profiler command line; empty: directly).
    fn walhook_under(&self, wrapper: &[&str], env: &[(&str, &str)]) -> Walhook {
        let binary = env!("CARGO_BIN_EXE_walhook");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("run")
            .envs(env.iter().copied())
            .env("WALHOOK_DATABASE_URL", &self.url)
            .env("WALHOOK_DELIVERY__ALLOW_PRIVATE_TARGETS", "true")
            .env("WALHOOK_DELIVERY__RETRY_SCHEDULE_MS", "[3600000]")
            .env("WALHOOK_LOG", "walhook=warn")
            .env("WALHOOK_API__ENABLED", "false")
            .stdout(Stdio::null())
            .spawn()
            .expect("start walhook");
        self.walhook_pid.store(child.id(), Ordering::Relaxed);
        Walhook(child)
    }

    /// Fails the run when the newest `walhook run` has exited (e.g. refused its config).
    fn check_running(&self) {
        let pid = self.walhook_pid.load(Ordering::Relaxed);
        assert!(
            !exited(pid),
            "walhook exited early (its error is printed above)"
        );
    }

    async fn wait_streaming(&self) -> Result<()> {
        let sql = "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'walhook' AND active";
        while self.client.query_opt(sql, &[]).await?.is_none() {
            self.check_running();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn wait_count(&self, n: u64, limit: Duration) -> Duration {
        let start = Instant::now();
        while self.seen.count.load(Ordering::Relaxed) < n && start.elapsed() < limit {
            self.check_running();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    /// Waits until no delivery arrived for 2 s (the previous phase's backlog is drained).
    async fn wait_quiet(&self) {
        let mut last = u64::MAX;
        loop {
            let now = self.seen.count.load(Ordering::Relaxed);
            if now == last {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// One live-latency row: pgbench (full rate or `rate`), then waits for every delivery;
    /// the row's p99 in ms.
    async fn live(&self, seconds: u64, rate: Option<u32>) -> Result<f64> {
        let label = rate.map_or("full".to_string(), |r| r.to_string());
        self.live_as(&label, seconds, rate).await
    }

    /// [`Self::live`] with the row labelled `label`.
    async fn live_as(&self, label: &str, seconds: u64, rate: Option<u32>) -> Result<f64> {
        self.reset();
        let (tps, done) = self.pgbench_at(seconds, 4, rate)?;
        let ended = Instant::now();
        self.wait_count(done, Duration::from_secs(120)).await;
        let lag = ended.elapsed();
        let mut lat = self.seen.latencies_us.lock().unwrap().clone();
        lat.sort_unstable();
        println!(
            "| {} | {tps:.0} | {}/{done} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} s |",
            label,
            self.seen.count.load(Ordering::Relaxed),
            pct(&lat, 0.5),
            pct(&lat, 0.95),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            lag.as_secs_f64()
        );
        Ok(pct(&lat, 0.99))
    }

    /// A backlog of the drain's shape: `big` rows in one transaction, then `singles`
    /// single-row transactions, written while walhook is stopped.
    async fn backlog(&self, big: usize, singles: usize) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "INSERT INTO bench (payload) SELECT 'bulk' FROM generate_series(1, {big})"
            ))
            .await?;
        self.client
            .batch_execute(&format!("CALL bench_rows({singles})"))
            .await?;
        Ok(())
    }

    /// Starts walhook on a backlog of `total` events and waits until all arrived; then
    /// stops it. Seconds, walhook's CPU seconds, the receiver's CPU seconds.
    async fn drain(&self, total: u64) -> (f64, f64, f64) {
        self.reset();
        let queued_before = self.queued_total().await;
        let receiver_before = cpu_secs(std::process::id());
        let mut walhook = self.walhook();
        let took = self.wait_count(total, Duration::from_secs(600)).await;
        let walhook_cpu = cpu_secs(walhook.id());
        let receiver_cpu = cpu_secs(std::process::id()) - receiver_before;
        stop(&mut walhook);
        // A drain is only comparable when nothing failed on the way: say so when something did.
        if let Ok(Some(row)) = self
            .client
            .query_opt(
                "SELECT last_error FROM walhook.subscription_health WHERE last_error_at > now() - interval '10 minutes' LIMIT 1",
                &[],
            )
            .await
        {
            eprintln!("note: deliveries failed during this drain: {:?}", row.get::<_, Option<String>>(0));
        }
        self.note_queued(queued_before).await;
        (took.as_secs_f64(), walhook_cpu, receiver_cpu)
    }

    /// Rows ever inserted into `walhook.delivery_queue` (from the statistics).
    async fn queued_total(&self) -> i64 {
        let sql = "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables \
                   WHERE schemaname = 'walhook' AND relname = 'delivery_queue'";
        match self.client.query_one(sql, &[]).await {
            Ok(row) => row.get(0),
            Err(_) => 0,
        }
    }

    /// Says so when events went through the queue table since `before` (held past
    /// `max_hold_ms` on a loaded machine, or refused): such a drain measured the retrier's
    /// table writes too and is not comparable.
    async fn note_queued(&self, before: i64) {
        let queued = self.queued_total().await - before;
        if queued > 0 {
            eprintln!(
                "note: {queued} events went through the queue table during this drain (its CPU includes the retrier's work)"
            );
        }
    }

    /// The load generator (this binary in generator mode) sending the recorded bodies to
    /// `url`; seconds and CPU seconds of the generator, CPU seconds of the receiver.
    async fn generator(
        &self,
        url: &str,
        bodies: &std::path::Path,
        proto: &str,
        total: u64,
    ) -> Result<(f64, f64, f64)> {
        self.reset();
        let receiver_before = cpu_secs(std::process::id());
        let out = tokio::process::Command::new(std::env::current_exe()?)
            .env(
                "BENCH_GENERATOR",
                format!("{url} {} {proto}", bodies.display()),
            )
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>());
        let (Some(Ok(secs)), Some(Ok(cpu))) = (fields.next(), fields.next()) else {
            return Err(format!(
                "generator said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        };
        self.wait_count(total, Duration::from_secs(60)).await;
        let receiver_cpu = cpu_secs(std::process::id()) - receiver_before;
        Ok((secs, cpu, receiver_cpu))
    }

    fn reset(&self) {
        self.seen.count.store(0, Ordering::Relaxed);
        self.seen.latencies_us.lock().unwrap().clear();
    }

    /// pgbench single-row INSERTs for `seconds` on `clients`, at full rate or at `rate` TPS.
    fn pgbench(&self, seconds: u64, clients: u32) -> Result<(f64, u64)> {
        self.pgbench_at(seconds, clients, None)
    }

    fn pgbench_at(&self, seconds: u64, clients: u32, rate: Option<u32>) -> Result<(f64, u64)> {
        let script = self.pg.root.join("insert.sql");
        std::fs::write(&script, "INSERT INTO bench (payload) VALUES ('live');\n")?;
        let out = Command::new(bindir().ok_or("no pgbench")?.join("pgbench"))
            .args([
                "-n",
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "-f",
            ])
            .arg(&script)
            .args(rate.map(|r| format!("--rate={r}")))
            .arg(&self.url)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps"))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .ok_or_else(|| {
                format!(
                    "pgbench said: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let done = text
            .lines()
            .find(|l| l.contains("actually processed"))
            .and_then(|l| l.split(':').nth(1)?.split('/').next()?.trim().parse().ok())
            .unwrap_or(0);
        Ok((tps, done))
    }
}

/// `walhook run`, killed if the harness exits early (so no orphan keeps running).
struct Walhook(Child);

impl Walhook {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGTERM and wait: the graceful stop.
fn stop(walhook: &mut Walhook) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(walhook.id().to_string())
        .status();
    let _ = walhook.0.wait();
}

fn pct(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Ok(spec) = std::env::var("BENCH_GENERATOR") {
        return generate(&spec).await;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let scale = if quick { 10 } else { 1 };
    let pg = tokio::task::spawn_blocking(LocalPostgres::start).await??;
    let url = pg.url("postgres");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    walhook::subscriptions::store::migrate(&url.parse()?, "walhook", true).await?;
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    let fill = Arc::new(Seen::default());
    let fill_hook = format!("http://{}/fill", listener.local_addr()?);
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(seen.clone())
        .merge(
            Router::new()
                .route("/fill", post(receive))
                .with_state(fill.clone()),
        );
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let h2_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let h2_hook = format!("http://{}/hook", h2_listener.local_addr()?);
    tokio::spawn(serve_both(h2_listener, seen.clone()));
    client
        .batch_execute(
            "CREATE TABLE bench (id bigserial PRIMARY KEY, payload text NOT NULL, at timestamptz NOT NULL DEFAULT now());
             SELECT walhook.watch('bench');
             CREATE PROCEDURE bench_rows(n int) LANGUAGE plpgsql AS $$
             BEGIN FOR i IN 1..n LOOP INSERT INTO bench (payload) VALUES ('single'); COMMIT; END LOOP; END $$;",
        )
        .await?;
    client
        .execute("SELECT walhook.subscribe($1, '{bench.created}')", &[&hook])
        .await?;
    let b = Bench {
        pg,
        url,
        client,
        seen,
        hook,
        quick,
        walhook_pid: Default::default(),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# walhook benchmark ({} run), {cores} cores\n",
        if b.quick { "quick" } else { "full" }
    );
    if std::env::var("BENCH_ONLY_BACKFILL").is_ok() {
        let mut walhook = b.walhook();
        b.wait_streaming().await?;
        backfill::phase(&b, &fill, &fill_hook).await?;
        stop(&mut walhook);
        return Ok(());
    }

    // 1. Backlog drain, next to pg_recvlogical on its own slot.
    let mut walhook = b.walhook();
    b.wait_streaming().await?;
    stop(&mut walhook);
    let recv = bindir().ok_or("no pg_recvlogical")?.join("pg_recvlogical");
    let status = Command::new(&recv)
        .args([
            "-d",
            &b.url,
            "--slot",
            "recv",
            "--create-slot",
            "-P",
            "pgoutput",
        ])
        .status()?;
    assert!(status.success(), "pg_recvlogical --create-slot");
    let (big, singles) = (200_000 / scale, 100_000 / scale);
    b.client
        .batch_execute(&format!(
            "INSERT INTO bench (payload) SELECT 'bulk' FROM generate_series(1, {big})"
        ))
        .await?;
    b.client
        .batch_execute(&format!("CALL bench_rows({singles})"))
        .await?;
    let end: String = b
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let total = (big + singles) as u64;
    let start = Instant::now();
    let status = Command::new(&recv)
        .args([
            "-d",
            &b.url,
            "--slot",
            "recv",
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=walhook",
            "-E",
            &end,
        ])
        .status()?;
    let recv_time = start.elapsed();
    assert!(status.success(), "pg_recvlogical drain");
    b.reset();
    let start = Instant::now();
    let receiver_before = cpu_secs(std::process::id());
    b.seen.record.store(true, Ordering::Relaxed);
    let queued_before = b.queued_total().await;
    let profile = std::env::var("BENCH_PROFILE").ok();
    let wrapper: Vec<&str> = profile.iter().flat_map(|p| p.split_whitespace()).collect();
    let mut walhook = b.walhook_under(&wrapper, &[]);
    let pid = walhook.id();
    let drain_time = b.wait_count(total, Duration::from_secs(1800)).await;
    let drain_cpu = cpu_secs(pid);
    let receiver_cpu = cpu_secs(std::process::id()) - receiver_before;
    b.seen.record.store(false, Ordering::Relaxed);
    let drain_rss = rss_peak_kb(pid);
    let _ = start;
    println!(
        "## 1. Backlog drain ({total} changes: {big} in one transaction + {singles} single-row)\n"
    );
    println!("| reader | seconds | changes/s |\n|---|---|---|");
    println!(
        "| pg_recvlogical (pgoutput → /dev/null) | {:.2} | {:.0} |",
        recv_time.as_secs_f64(),
        total as f64 / recv_time.as_secs_f64()
    );
    println!(
        "| walhook (commit → 2xx at the receiver) | {:.2} | {:.0} |",
        drain_time.as_secs_f64(),
        total as f64 / drain_time.as_secs_f64()
    );
    println!(
        "\nratio walhook/pg_recvlogical rate: {:.2} (target ≥ 0.50); walhook CPU {drain_cpu:.1} s, receiver CPU {receiver_cpu:.1} s; peak RSS {} MB\n",
        recv_time.as_secs_f64() / drain_time.as_secs_f64(),
        drain_rss / 1024
    );

    if profile.is_some() {
        stop(&mut walhook);
        b.note_queued(queued_before).await;
        return Ok(());
    }

    // 1b. The HTTP limit, batching and HTTP/2 on the same backlog shape.
    let bodies_file = b.pg.root.join("bodies.ndjson");
    std::fs::write(
        &bodies_file,
        std::mem::take(&mut *b.seen.bodies.lock().unwrap()),
    )?;
    let per_event = |cpu: f64| cpu / total as f64 * 1e6;
    let row =
        |what: &str, secs: f64, walhook: Option<f64>, receiver: f64, generator: Option<f64>| {
            let us = |cpu: Option<f64>| {
                cpu.map_or("—".to_string(), |c| format!("{:.1}", per_event(c)))
            };
            println!(
                "| {what} | {secs:.2} | {:.0} | {:.2} | {} | {:.1} | {} |",
                total as f64 / secs,
                recv_time.as_secs_f64() / secs,
                us(walhook),
                per_event(receiver),
                us(generator)
            );
        };
    println!(
        "### HTTP limit, batching, HTTP/2 ({total} events each; CPU µs per event from /proc)\n"
    );
    println!(
        "| sender | seconds | events/s | ÷ pg_recvlogical rate | walhook µs/event | receiver µs/event | generator µs/event |\n|---|---|---|---|---|---|---|"
    );
    let (secs, gen_cpu, recv_cpu) = b.generator(&b.hook, &bodies_file, "h1", total).await?;
    row(
        &format!(
            "HTTP limit: generator, HTTP/1.1, {CONCURRENCY} concurrent, one request per event"
        ),
        secs,
        None,
        recv_cpu,
        Some(gen_cpu),
    );
    let limit_h1 = secs;
    row(
        "walhook, HTTP/1.1, one request per event (above)",
        drain_time.as_secs_f64(),
        Some(drain_cpu),
        receiver_cpu,
        None,
    );
    stop(&mut walhook);
    b.note_queued(queued_before).await;
    b.client
        .execute(
            "UPDATE walhook.subscriptions SET batch_max = 100 WHERE target_url = $1",
            &[&b.hook],
        )
        .await?;
    b.backlog(big, singles).await?;
    let (secs, cpu, recv_cpu) = b.drain(total).await;
    row(
        "walhook, HTTP/1.1, batch_max = 100",
        secs,
        Some(cpu),
        recv_cpu,
        None,
    );
    b.client
        .execute(
            "UPDATE walhook.subscriptions SET batch_max = NULL, target_url = $2, http2 = true WHERE target_url = $1",
            &[&b.hook, &h2_hook],
        )
        .await?;
    b.backlog(big, singles).await?;
    let (secs, cpu, recv_cpu) = b.drain(total).await;
    row(
        "walhook, h2c (http2 = true), one request per event",
        secs,
        Some(cpu),
        recv_cpu,
        None,
    );
    let (secs, gen_cpu, recv_cpu) = b.generator(&h2_hook, &bodies_file, "h2c", total).await?;
    row(
        &format!("HTTP limit: generator, h2c, {CONCURRENCY} concurrent, one request per event"),
        secs,
        None,
        recv_cpu,
        Some(gen_cpu),
    );
    b.client
        .execute(
            "UPDATE walhook.subscriptions SET target_url = $1, http2 = false WHERE target_url = $2",
            &[&b.hook, &h2_hook],
        )
        .await?;
    println!(
        "\nwalhook one-request-per-event drain ÷ HTTP/1.1 limit: {:.2} (target ≥ 0.70)\n",
        limit_h1 / drain_time.as_secs_f64()
    );
    let _ = std::fs::remove_file(&bodies_file);
    if std::env::var("BENCH_DRAIN_ONLY").is_ok() {
        return Ok(());
    }
    let mut walhook = b.walhook();
    let pid = walhook.id();
    b.wait_streaming().await?;

    // 2. Live latency under pgbench.
    b.wait_quiet().await;
    reset_peak(pid);
    b.reset();
    let seconds = if b.quick { 5 } else { 30 };
    let cpu_before = cpu_secs(pid);
    println!("## 2. Live latency (pgbench, 4 clients, single-row INSERT, {seconds} s)\n");
    println!(
        "| pgbench rate | TPS | delivered | p50 ms | p95 ms | p99 ms | max ms | final lag |\n|---|---|---|---|---|---|---|---|"
    );
    b.live(seconds, None).await?;
    let cpu_full = cpu_secs(pid) - cpu_before;
    let rss_full = rss_peak_kb(pid) / 1024;
    // The same at fixed rates below walhook's capacity (a third as long): the commit → 2xx
    // path itself.
    for rate in [1_000, 4_000] {
        b.wait_quiet().await;
        b.live(seconds / 3, Some(rate)).await?;
    }
    // Full rate again with batch_max = 100 (a third as long): whether batching keeps up.
    b.wait_quiet().await;
    b.client
        .execute(
            "UPDATE walhook.subscriptions SET batch_max = 100 WHERE target_url = $1",
            &[&b.hook],
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // routing reload
    b.live_as("full, batch_max = 100", seconds / 3, None)
        .await?;
    b.client
        .execute(
            "UPDATE walhook.subscriptions SET batch_max = NULL WHERE target_url = $1",
            &[&b.hook],
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // routing reload
    println!("\nwalhook CPU {cpu_full:.1} s over the full-rate run; peak RSS {rss_full} MB\n");

    // 3. Write-path cost.
    let seconds = if b.quick { 3 } else { 10 };
    let (with_capture, _) = b.pgbench(seconds, 4)?;
    stop(&mut walhook);
    let (without, _) = b.pgbench(seconds, 4)?;
    // Trigger capture: walhook switches (delivering the slot's backlog first), then the
    // capture trigger is on the write path.
    let mut trigger = b.walhook_with(&[("WALHOOK_CAPTURE__MODE", "trigger")]);
    let switched = "SELECT 1 FROM walhook.settings WHERE name = 'capture_mode' AND value = 'trigger'
                    AND NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'walhook')";
    while b.client.query_opt(switched, &[]).await?.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_quiet().await;
    let (with_trigger, _) = b.pgbench(seconds, 4)?;
    stop(&mut trigger);
    // The trigger alone (walhook stopped: rows wait in the outbox).
    let (trigger_only, _) = b.pgbench(seconds, 4)?;
    println!("## 3. Write-path cost (pgbench TPS, 4 clients, {seconds} s each)\n");
    println!(
        "| capture | TPS |\n|---|---|\n| walhook stopped | {without:.0} |\n| replication capture running | {with_capture:.0} ({:+.1} %) |\n| trigger capture running | {with_trigger:.0} ({:+.1} %) |\n| capture triggers installed, walhook stopped | {trigger_only:.0} ({:+.1} %) |\n",
        (with_capture / without - 1.0) * 100.0,
        (with_trigger / without - 1.0) * 100.0,
        (trigger_only / without - 1.0) * 100.0
    );

    // 4. Memory with the endpoint down: events queue in the table.
    let queued = 1_000_000 / scale;
    b.client
        .batch_execute(
            "CREATE TABLE bench_down (id bigserial PRIMARY KEY, payload text);
             SELECT walhook.watch('bench_down');
             SELECT walhook.subscribe('http://127.0.0.1:9/down', '{bench_down.created}');",
        )
        .await?;
    let mut walhook = b.walhook();
    let pid = walhook.id();
    b.wait_streaming().await?;
    // Drain what the write-path phase produced first.
    b.wait_quiet().await;
    reset_peak(pid);
    let start = Instant::now();
    b.client
        .batch_execute(&format!(
            "INSERT INTO bench_down (payload) SELECT 'x' FROM generate_series(1, {queued})"
        ))
        .await?;
    loop {
        let n: i64 = b
            .client
            .query_one("SELECT count(*) FROM walhook.delivery_queue", &[])
            .await?
            .get(0);
        if n as u64 >= queued as u64 || start.elapsed() > Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let spill_time = start.elapsed();
    let attempted: i64 = b
        .client
        .query_one(
            "SELECT count(*) FROM walhook.delivery_queue WHERE attempts > 0",
            &[],
        )
        .await?
        .get(0);
    println!("## 4. Endpoint down (connection refused): {queued} events queued in the table\n");
    println!(
        "queued in {:.1} s ({:.0} events/s; {attempted} attempted, the rest held by the circuit breaker); walhook peak RSS {} MB\n",
        spill_time.as_secs_f64(),
        queued as f64 / spill_time.as_secs_f64(),
        rss_peak_kb(pid) / 1024
    );
    b.client.batch_execute("SELECT walhook.unwatch('bench_down'); DELETE FROM walhook.subscriptions WHERE target_url LIKE '%/down'").await?;
    // Leave no dead tuples of the million queued rows to the next phase's measurement.
    b.client
        .batch_execute("VACUUM walhook.delivery_queue")
        .await?;

    // 5. Fan-out: 1 vs 10,000 non-matching subscriptions.
    let rows = 100_000 / scale;
    let mut rates = Vec::new();
    for extra in [0, 10_000] {
        if extra > 0 {
            b.client
                .batch_execute(&format!(
                    "SET client_min_messages = error;
                     INSERT INTO walhook.subscriptions (target_url, events)
                     SELECT format('https://n%s.example.com/', g), '{{bench.deleted}}' FROM generate_series(1, {extra}) g;"
                ))
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await; // routing reload
        }
        b.wait_quiet().await;
        b.reset();
        let start = Instant::now();
        b.client
            .batch_execute(&format!(
                "INSERT INTO bench (payload) SELECT 'fan' FROM generate_series(1, {rows})"
            ))
            .await?;
        let took = b.wait_count(rows as u64, Duration::from_secs(300)).await;
        let _ = start;
        rates.push(rows as f64 / took.as_secs_f64());
    }
    println!("## 5. Fan-out ({rows} events in one transaction)\n");
    println!(
        "| subscriptions | events/s |\n|---|---|\n| 1 | {:.0} |\n| 1 + 10,000 non-matching | {:.0} ({:+.1} %) |\n",
        rates[0],
        rates[1],
        (rates[1] / rates[0] - 1.0) * 100.0
    );
    b.client
        .batch_execute(
            "DELETE FROM walhook.subscriptions WHERE target_url LIKE 'https://n%.example.com/'",
        )
        .await?;

    // 6. Backfill while live traffic flows.
    if std::env::var("BENCH_SKIP_BACKFILL").is_err() {
        backfill::phase(&b, &fill, &fill_hook).await?;
    }
    stop(&mut walhook);
    let _ = &b.hook;
    Ok(())
}
