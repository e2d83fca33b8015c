//! `walhook demo`: the whole product on a throwaway local PostgreSQL.
//!
//! Starts a server ([`LocalPostgres`]), migrates, creates and watches a sample `orders`
//! table, starts a local webhook receiver on 127.0.0.1 and subscribes it to `orders.*`, runs
//! the daemon ([`crate::app::run`]), writes a few rows, and prints every webhook as the
//! receiver gets it (headers and body). It keeps running so the user can `psql` in and watch
//! their own changes arrive, try the REST API with the API token it prints, or open the
//! console with the one-time login link it prints; Ctrl-C stops the daemon and removes the
//! server.

use std::io::Write;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::database::Database;
use crate::localpg::LocalPostgres;
use crate::subscriptions::store;

const SAMPLE: &str = "
CREATE TABLE public.orders (
    id serial PRIMARY KEY,
    status text NOT NULL DEFAULT 'new',
    amount numeric(10,2) NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
SELECT walhook.watch('public.orders');
";

const WRITES: [&str; 3] = [
    "INSERT INTO public.orders (amount, tags) VALUES (12.50, '{gift}'), (99.00, '{}')",
    "UPDATE public.orders SET status = 'paid', updated_at = now() WHERE id = 1",
    "DELETE FROM public.orders WHERE id = 2",
];

/// What the demo receiver got: headers worth showing, and the body.
type Delivery = (String, String);

async fn receive(
    State(tx): State<mpsc::UnboundedSender<Delivery>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let shown: Vec<String> = [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "user-agent",
    ]
    .iter()
    .filter_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(|v| format!("  {name}: {v}"))
    })
    .collect();
    let _ = tx.send((
        shown.join("\n"),
        String::from_utf8_lossy(&body).into_owned(),
    ));
    StatusCode::NO_CONTENT
}

/// Runs the demo until Ctrl-C; prints to `out`.
pub async fn run(mut out: impl Write) -> anyhow::Result<()> {
    writeln!(out, "starting a throwaway PostgreSQL (wal_level=logical)…")?;
    let server = tokio::task::spawn_blocking(LocalPostgres::start).await??;
    let url = server.url("postgres");
    let database = Database::parse(&url)?;
    store::migrate(&database, "walhook", true).await?;
    let client = database.client().await?;
    client.batch_execute(SAMPLE).await?;

    let (tx, mut deliveries) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hooks/orders", listener.local_addr()?);
    let app = Router::new()
        .route("/hooks/orders", post(receive))
        .with_state(tx);
    tokio::spawn(async move { axum::serve(listener, app).await });
    client
        .execute(
            "SELECT walhook.subscribe($1, '{orders.*}', context => 'demo')",
            &[&hook],
        )
        .await?;

    let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut conn = store::connect(&database).await?;
    let (_, token) = crate::api::auth::create(&mut conn, "demo", &["*".to_owned()]).await?;
    // The console: an admin token, and a one-time link that exchanges a code for a session.
    let (admin, _) =
        crate::api::auth::create_with(&mut conn, "admin", &["*".to_owned()], true).await?;
    let code = crate::console::session::create_login_code(
        &mut conn,
        admin,
        crate::console::session::LOGIN_LINK_TTL,
    )
    .await?;
    drop(conn);
    let config = Config::from_toml(&format!(
        "database_url = \"{url}\"\n[api]\nlisten = \"{api}\"\n[delivery]\nallow_private_targets = true\n"
    ))?;
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(crate::app::run(config, shutdown.clone()));
    let active =
        "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = 'walhook' AND active";
    while client.query_opt(active, &[]).await?.is_none() {
        if daemon.is_finished() {
            daemon.await??;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sql in WRITES {
        client.batch_execute(sql).await?;
    }
    writeln!(
        out,
        "walhook is running: table orders is watched, and {hook} is subscribed to orders.*\n\
         sample writes made:\n  {}\n\nmake your own (in another terminal):\n  psql {url} -c \"INSERT INTO public.orders (amount) VALUES (5.00)\"\n  psql {url} -c \"SELECT * FROM walhook.subscription_health\"\n\
         or use the REST API (owner \"demo\"; see docs/api.md):\n  curl -H 'Authorization: Bearer {token}' http://{api}/v1/events\n\n\
         open the console (one-time login link, valid for {minutes} minutes):\n  http://{api}/console/login?code={code}\n\n\
         press Ctrl-C to stop and remove the server.\n",
        WRITES.join(";\n  "),
        minutes = crate::console::session::LOGIN_LINK_TTL.as_secs() / 60,
    )?;
    out.flush()?;

    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    loop {
        tokio::select! {
            Some((headers, body)) = deliveries.recv() => {
                let pretty = serde_json::from_str::<serde_json::Value>(&body)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or(body);
                writeln!(out, "POST {hook}\n{headers}\n{pretty}\n")?;
                out.flush()?;
            }
            _ = shutdown.cancelled() => break,
        }
    }
    daemon.await??;
    drop(server);
    writeln!(out, "stopped; the throwaway server is removed.")?;
    Ok(())
}
