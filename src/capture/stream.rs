//! The replication session: `START_REPLICATION`, XLogData and keepalives, standby status
//! updates, and reconnection.
//!
//! ```text
//! walsender ──XLogData──▶ PgOutput::parse ──▶ Decoder ──▶ bounded channel ──▶ consumer
//!     ▲                                                                          │
//!     └──── Standby Status Update (flush = acknowledged LSN) ◀── Acknowledger ◀──┘
//! ```
//!
//! LSN rules:
//! - `flush` sent to the server is the consumer's acknowledged LSN (the end LSN of the last
//!   transaction it made durable), never more — except when nothing is in flight (no open
//!   transaction, every forwarded commit acknowledged): then the last keepalive's WAL end is
//!   confirmed, so writes to unwatched tables do not pin WAL.
//! - Status updates go out on a timer (`status_interval`, 150 ms by default) when the
//!   position moved — so a moving acknowledgement reaches the server within a fraction of a
//!   second, coalesced — as a heartbeat every 10 s, and when the server asks; never per
//!   keepalive. The last one goes out on every clean stop, including when the consumer
//!   stopped first.
//! - After any connection loss the session restarts from the acknowledged LSN; a transaction
//!   cut in half is sent again from its Begin with the same positions.
//!
//! Every session runs under the capture [`Lease`]: taken first (standing by while another
//! instance holds it), kept across reconnects while its session lives, and the stream stops
//! the moment it is lost. Before `START_REPLICATION`, the slot's record is checked
//! ([`progress::check`]: a lost or missing slot is a definite error) and the slot must be
//! free of any previous walsender ([`Lease::free_slot`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::connection::{Connection, quote_command_literal, quote_ident};
use super::error::CaptureError;
use super::lease::Lease;
use super::{Acknowledger, CaptureConfig, Role, progress, slot};
use crate::change::CaptureMessage;
use crate::lsn::Lsn;
use crate::pgoutput::{Decoder, PgOutput};

/// Send a status update at least this often even when nothing changed.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(10);

/// Runs sessions until cancelled or a definite error; transient errors reconnect with
/// exponential backoff.
pub(super) async fn run(
    config: CaptureConfig,
    tx: mpsc::Sender<CaptureMessage>,
    ack: Acknowledger,
    cancel: CancellationToken,
) -> Result<(), CaptureError> {
    let mut decoder = Decoder::default();
    let mut catalog = Catalog::new(config.database.clone());
    let mut delay = config.reconnect_min;
    let mut lease: Option<Lease> = None;
    loop {
        let mut session = Session::new(&config, &tx, &ack, &cancel);
        let result = match lease.take().filter(|l| !l.lost().is_cancelled()) {
            Some(held) => Ok(Some(held)),
            None => Lease::acquire(&config, &ack, &cancel).await,
        };
        let result = match result {
            Ok(Some(held)) => {
                let result = session.run(&mut decoder, &mut catalog, &held).await;
                lease = Some(held);
                result
            }
            Ok(None) => return Ok(()),
            Err(e) => Err(e),
        };
        ack.set_role(Role::Reconnecting);
        decoder.reset_transaction();
        if result.is_err() && lease.as_ref().is_some_and(|l| l.lost().is_cancelled()) {
            lease = None;
        }
        if matches!(result, Ok(()) | Err(CaptureError::ConsumerGone))
            && let Some(held) = &lease
        {
            held.record(&config.slot, &ack).await;
        }
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !cancel.is_cancelled() => {
                if session.streamed {
                    delay = config.reconnect_min;
                }
                tracing::warn!(error = %e, retry_in = ?delay, "replication stream interrupted; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
                delay = (delay * 2).min(config.reconnect_max);
            }
            Err(CaptureError::ConsumerGone) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// What the select loop woke up for.
enum Wake {
    Cancelled,
    LeaseLost,
    Tick,
    Data(Result<Option<Bytes>, CaptureError>),
}

/// One connection's worth of streaming state.
struct Session<'a> {
    config: &'a CaptureConfig,
    tx: &'a mpsc::Sender<CaptureMessage>,
    ack: &'a Acknowledger,
    cancel: &'a CancellationToken,
    /// End LSN of the last commit handed to the consumer.
    forwarded_end: Lsn,
    /// WAL end reported by the latest keepalive.
    server_end: Lsn,
    /// Flush position last reported, and when.
    reported: Lsn,
    reported_at: Instant,
    /// Whether this session reached the streaming state (resets the backoff).
    streamed: bool,
    out: Vec<CaptureMessage>,
    /// Cancelled when the lease is lost (set once streaming starts).
    lost: Option<CancellationToken>,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a CaptureConfig,
        tx: &'a mpsc::Sender<CaptureMessage>,
        ack: &'a Acknowledger,
        cancel: &'a CancellationToken,
    ) -> Self {
        Session {
            config,
            tx,
            ack,
            cancel,
            forwarded_end: Lsn(0),
            server_end: Lsn(0),
            reported: Lsn(0),
            reported_at: Instant::now(),
            streamed: false,
            out: Vec::new(),
            lost: None,
        }
    }

    async fn run(
        &mut self,
        decoder: &mut Decoder,
        catalog: &mut Catalog,
        lease: &Lease,
    ) -> Result<(), CaptureError> {
        let slot_name = &self.config.slot;
        if lease.recorded {
            progress::check(&lease.client, slot_name).await?;
        }
        lease.free_slot(slot_name).await?;
        let mut conn = Connection::connect(&self.config.database, true).await?;
        let system = slot::identify_system(&mut conn).await?;
        slot::ensure_publication(&mut conn, &self.config.publication, &self.config.tables).await?;
        let confirmed = slot::ensure_slot(&mut conn, slot_name).await?;
        if lease.recorded {
            progress::adopt(&lease.client, slot_name, confirmed).await?;
        }
        // What the server already confirmed was made durable by an earlier run.
        self.ack.acknowledge(confirmed);
        let start = self.ack.acknowledged();
        self.forwarded_end = start;
        self.reported = confirmed;
        // Logical messages (backfill watermarks) exist in pgoutput from PostgreSQL 14 on.
        let messages = server_major(conn.parameter("server_version")) >= 14;
        conn.start_copy_both(&format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}{})",
            quote_ident(&self.config.slot),
            quote_command_literal(&quote_ident(&self.config.publication)),
            if messages { ", messages 'true'" } else { "" },
        ))
        .await?;
        self.streamed = true;
        self.ack.set_role(Role::Streaming);
        tracing::info!(
            slot = %self.config.slot,
            %start,
            server_wal = %system.xlog_pos,
            pid = conn.backend_pid(),
            "streaming changes"
        );
        let mut timer = interval(self.config.status_interval);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let lost = lease.lost().clone();
        self.lost = Some(lost.clone());
        loop {
            let wake = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => Wake::Cancelled,
                _ = lost.cancelled() => Wake::LeaseLost,
                _ = timer.tick() => Wake::Tick,
                data = conn.read_copy_data() => Wake::Data(data),
            };
            match wake {
                Wake::Cancelled => {
                    self.report(&mut conn, decoder, true).await?;
                    conn.terminate().await;
                    return Ok(());
                }
                Wake::LeaseLost => {
                    // Another instance may take over: stop streaming now, without a last
                    // status update (what the server confirmed stays the restart point).
                    drop(conn);
                    return Err(CaptureError::LeaseLost(
                        "the lease session closed or stopped answering; stopped streaming".into(),
                    ));
                }
                Wake::Tick => self.report(&mut conn, decoder, false).await?,
                Wake::Data(Ok(Some(data))) => {
                    let handled = self
                        .handle(&mut conn, decoder, catalog, data, &mut timer)
                        .await;
                    if let Err(CaptureError::ConsumerGone) = handled {
                        // The consumer stopped while we waited to hand it more: confirm
                        // what it acknowledged last, so a restart repeats nothing.
                        self.report(&mut conn, decoder, true).await?;
                        conn.terminate().await;
                        return Err(CaptureError::ConsumerGone);
                    }
                    handled?;
                }
                Wake::Data(Ok(None)) => {
                    return Err(CaptureError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server ended the replication stream",
                    )));
                }
                Wake::Data(Err(e)) => return Err(e),
            }
        }
    }

    async fn handle(
        &mut self,
        conn: &mut Connection,
        decoder: &mut Decoder,
        catalog: &mut Catalog,
        data: Bytes,
        timer: &mut tokio::time::Interval,
    ) -> Result<(), CaptureError> {
        match data.first() {
            // XLogData: start, end, send time, then one pgoutput message.
            Some(b'w') if data.len() >= 25 => {
                let message = PgOutput::parse(&data[25..])?;
                match message {
                    PgOutput::Relation(relation) => {
                        let oids = relation.columns.iter().map(|c| c.type_oid);
                        catalog.resolve_types(oids, decoder.types_mut()).await?;
                        let key = catalog.primary_key(relation.id).await?;
                        decoder.add_relation(relation, key);
                    }
                    message => {
                        decoder.decode(message, &mut self.out)?;
                        self.forward(conn, decoder, timer).await?;
                    }
                }
            }
            // Primary keepalive: WAL end, send time, reply-requested flag.
            Some(b'k') if data.len() >= 18 => {
                let wal_end = Lsn(u64::from_be_bytes(
                    data[1..9].try_into().unwrap_or_default(),
                ));
                self.server_end = self.server_end.max(wal_end);
                if data[17] == 1 {
                    self.report(conn, decoder, true).await?;
                }
            }
            _ => {
                return Err(CaptureError::Protocol(format!(
                    "unexpected replication message {:?}",
                    data.first().map(|&b| b as char)
                )));
            }
        }
        Ok(())
    }

    /// Hands decoded messages to the consumer. While the channel is full the status timer
    /// keeps running, so a slow consumer never trips `wal_sender_timeout`.
    async fn forward(
        &mut self,
        conn: &mut Connection,
        decoder: &Decoder,
        timer: &mut tokio::time::Interval,
    ) -> Result<(), CaptureError> {
        for message in std::mem::take(&mut self.out) {
            let commit_end = match &message {
                CaptureMessage::Commit(c) => Some(c.end_lsn),
                _ => None,
            };
            let lost = self.lost.clone().unwrap_or_default();
            let permit = loop {
                tokio::select! {
                    permit = self.tx.reserve() => break permit.map_err(|_| CaptureError::ConsumerGone)?,
                    _ = timer.tick() => self.report(conn, decoder, false).await?,
                    _ = lost.cancelled() => return Err(CaptureError::LeaseLost(
                        "the lease session closed or stopped answering; stopped streaming".into(),
                    )),
                }
            };
            permit.send(message);
            if let Some(end) = commit_end {
                self.forwarded_end = end;
            }
        }
        Ok(())
    }

    /// The position safe to confirm now.
    fn flush_position(&self, decoder: &Decoder) -> Lsn {
        let acked = self.ack.acknowledged();
        let idle = !decoder.in_transaction() && acked >= self.forwarded_end;
        if idle {
            acked.max(self.server_end)
        } else {
            acked
        }
    }

    /// Sends a Standby Status Update when the position moved, when forced, or as heartbeat.
    async fn report(
        &mut self,
        conn: &mut Connection,
        decoder: &Decoder,
        force: bool,
    ) -> Result<(), CaptureError> {
        let flush = self.flush_position(decoder);
        if !force && flush == self.reported && self.reported_at.elapsed() < STATUS_HEARTBEAT {
            return Ok(());
        }
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(flush.0); // written
        msg.put_u64(flush.0); // flushed
        msg.put_u64(flush.0); // applied
        msg.put_i64(pg_now_micros());
        msg.put_u8(0);
        conn.write_copy_data(&msg).await?;
        tracing::trace!(%flush, "standby status update");
        self.reported = flush;
        self.reported_at = Instant::now();
        Ok(())
    }
}

/// The major version in a `server_version` parameter (`15.4`, `14beta1`, `16.1 (Debian…)`);
/// 0 when unknown.
fn server_major(version: Option<&str>) -> u32 {
    version
        .and_then(|v| {
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// Now in microseconds since 2000-01-01 UTC.
fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    unix.as_micros() as i64 - 946_684_800_000_000
}
