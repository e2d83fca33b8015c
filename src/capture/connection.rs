//! Our own PostgreSQL frontend connection, on postgres-protocol + tokio.
//!
//! Upstream tokio-postgres cannot open a replication connection nor enter CopyBoth mode, so
//! capture speaks the protocol itself: startup (optionally `replication=database`), TLS per
//! `sslmode`, authentication (trust, cleartext, md5, SCRAM-SHA-256), simple queries with text
//! results, and the CopyBoth sub-protocol used by `START_REPLICATION`.
//!
//! Every session is pinned to the settings that make output functions print what
//! `to_jsonb` prints with `TimeZone=UTC`, and to `search_path = pg_catalog, pg_temp`
//! (see [`SESSION_SETTINGS`]). Sockets, TLS policy and credentials come from the
//! [`Database`] handle.

use std::collections::HashMap;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use super::error::{CaptureError, ServerError};
use crate::database::tls::{self, SslMode};
use crate::database::{Database, DatabaseError, SEARCH_PATH};

/// Session settings sent in every startup packet: the output formats the decoder relies on.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("search_path", SEARCH_PATH),
];

/// How much to read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A byte stream to the server, plain or TLS, TCP or Unix socket.
use crate::database::tls::AsyncReadWrite as Io;

/// One message from the server, as seen by this connection.
pub enum Backend {
    /// `CopyBothResponse` ('W'), which postgres-protocol's parser does not know.
    CopyBothResponse,
    /// Any other message, parsed by postgres-protocol.
    Message(Message),
}

/// A text result row of a simple query: one optional string per column.
pub type TextRow = Vec<Option<String>>;

/// An authenticated session with a PostgreSQL server.
pub struct Connection {
    io: Box<dyn Io>,
    read: BytesMut,
    write: BytesMut,
    params: HashMap<String, String>,
    backend_pid: i32,
}

impl Connection {
    /// Connects and authenticates; with `replication` the session is a logical walsender
    /// (`replication=database`) that accepts replication commands and plain SQL.
    pub async fn connect(
        database: &Database,
        replication: bool,
    ) -> Result<Connection, CaptureError> {
        let config = database.config();
        let user = config
            .get_user()
            .ok_or_else(|| CaptureError::Config("database_url names no user".into()))?;
        let (io, host) = open_socket(config).await?;
        let io = negotiate_tls(io, host.as_ref(), database.tls()).await?;
        let mut conn = Connection {
            io,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            backend_pid: 0,
        };
        let mut startup: Vec<(&str, &str)> = vec![("user", user)];
        startup.push(("database", config.get_dbname().unwrap_or(user)));
        if replication {
            startup.push(("replication", "database"));
        }
        startup.push((
            "application_name",
            config.get_application_name().unwrap_or("walhook"),
        ));
        if let Some(options) = config.get_options() {
            startup.push(("options", options));
        }
        // Later entries win: the pinned settings override anything in `options`.
        startup.extend_from_slice(SESSION_SETTINGS);
        frontend::startup_message(startup, &mut conn.write)?;
        conn.flush().await?;
        conn.authenticate(user, config.get_password()).await?;
        conn.wait_ready().await?;
        Ok(conn)
    }

    /// The backend process id (what `pg_terminate_backend` takes).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// A server parameter reported at startup, e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), CaptureError> {
        let auth_error = |message: String| CaptureError::Auth {
            user: user.to_owned(),
            message,
        };
        let need_password = || {
            password.ok_or_else(|| {
                auth_error("the server asks for a password but database_url has none".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let message = match self.read_message().await {
                Ok(Backend::Message(m)) => m,
                Ok(Backend::CopyBothResponse) => {
                    return Err(CaptureError::Protocol(
                        "CopyBothResponse during startup".into(),
                    ));
                }
                Err(CaptureError::Server(e)) if e.code.starts_with("28") => {
                    return Err(auth_error(e.message));
                }
                Err(e) => return Err(e),
            };
            match message {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?, &mut self.write)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), need_password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut offered = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(mechanism) = offered.next()? {
                        has_scram |= mechanism == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(auth_error(
                            "server offers no SASL mechanism we support".into(),
                        ));
                    }
                    let state = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        state.message(),
                        &mut self.write,
                    )?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        CaptureError::Protocol("SASL continue without SASL".into())
                    })?;
                    state
                        .update(body.data())
                        .map_err(|e| auth_error(e.to_string()))?;
                    frontend::sasl_response(state.message(), &mut self.write)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram
                        .as_mut()
                        .ok_or_else(|| CaptureError::Protocol("SASL final without SASL".into()))?;
                    state
                        .finish(body.data())
                        .map_err(|e| auth_error(e.to_string()))?;
                    continue;
                }
                _ => {
                    return Err(auth_error(
                        "the server asks for an authentication method walhook does not support \
                         (supported: trust, password, md5, scram-sha-256)"
                            .into(),
                    ));
                }
            }
            self.flush().await?;
        }
    }

    async fn wait_ready(&mut self) -> Result<(), CaptureError> {
        loop {
            match self.read_message().await? {
                Backend::Message(Message::BackendKeyData(body)) => {
                    self.backend_pid = body.process_id();
                }
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                _ => {}
            }
        }
    }

    /// Runs one simple-protocol statement and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<TextRow>, CaptureError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            match self.read_message().await {
                Ok(Backend::Message(Message::DataRow(body))) => {
                    let buffer = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next()? {
                        row.push(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Ok(Backend::Message(Message::ReadyForQuery(_))) => break,
                Ok(_) => {}
                Err(CaptureError::Server(e)) => failure = Some(e),
                Err(e) => return Err(e),
            }
        }
        match failure {
            Some(e) => Err(CaptureError::Server(e)),
            None => Ok(rows),
        }
    }

    /// Sends a command that answers with `CopyBothResponse` (`START_REPLICATION`) and waits
    /// for that answer.
    pub async fn start_copy_both(&mut self, command: &str) -> Result<(), CaptureError> {
        frontend::query(command, &mut self.write)?;
        self.flush().await?;
        loop {
            match self.read_message().await? {
                Backend::CopyBothResponse => return Ok(()),
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return Err(CaptureError::Protocol(format!(
                        "{command} finished without entering copy mode"
                    )));
                }
                Backend::Message(_) => {}
            }
        }
    }

    /// Reads the next CopyData payload in copy mode; `None` when the server ends the copy.
    pub async fn read_copy_data(&mut self) -> Result<Option<Bytes>, CaptureError> {
        loop {
            match self.read_message().await? {
                Backend::Message(Message::CopyData(body)) => return Ok(Some(body.into_bytes())),
                Backend::Message(Message::CopyDone) => return Ok(None),
                Backend::Message(Message::CommandComplete(_) | Message::ReadyForQuery(_)) => {
                    return Ok(None);
                }
                Backend::Message(_) | Backend::CopyBothResponse => {}
            }
        }
    }

    /// Sends one CopyData message (e.g. a standby status update).
    pub async fn write_copy_data(&mut self, payload: &[u8]) -> Result<(), CaptureError> {
        self.write.put_u8(b'd');
        self.write.put_i32(4 + payload.len() as i32);
        self.write.put_slice(payload);
        self.flush().await
    }

    /// Ends the session politely.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
    }

    async fn flush(&mut self) -> Result<(), CaptureError> {
        self.io.write_all(&self.write).await?;
        self.io.flush().await?;
        self.write.clear();
        Ok(())
    }

    /// Reads one message; server errors become `Err(Server)`, notices are logged, and
    /// parameter statuses recorded.
    async fn read_message(&mut self) -> Result<Backend, CaptureError> {
        loop {
            if let Some(header) = Header::parse(&self.read)? {
                let total = header.len() as usize + 1;
                if self.read.len() >= total && header.tag() == b'W' {
                    self.read.advance(total);
                    return Ok(Backend::CopyBothResponse);
                }
                if self.read.len() >= total {
                    match Message::parse(&mut self.read)? {
                        Some(Message::ErrorResponse(body)) => {
                            return Err(CaptureError::Server(server_error(body.fields())?));
                        }
                        Some(Message::NoticeResponse(body)) => {
                            let notice = server_error(body.fields())?;
                            tracing::info!(target: "walhook::postgres", "{notice}");
                        }
                        Some(Message::ParameterStatus(body)) => {
                            self.params
                                .insert(body.name()?.to_owned(), body.value()?.to_owned());
                        }
                        Some(message) => return Ok(Backend::Message(message)),
                        None => {}
                    }
                    continue;
                }
                self.read.reserve(total - self.read.len());
            }
            // Keep a large spare capacity: `split_to` above leaves the buffer with little, and
            // `read_buf` would otherwise grow it 64 bytes (one syscall) at a time.
            if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
                self.read.reserve(READ_CHUNK);
            }
            if self.io.read_buf(&mut self.read).await? == 0 {
                return Err(CaptureError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }
}

/// Connects to the first reachable host; returns the socket and, for TCP, the host name
/// (what TLS verifies).
async fn open_socket(
    config: &tokio_postgres::Config,
) -> Result<(Box<dyn Io>, Option<String>), CaptureError> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let default_host = [Host::Unix("/var/run/postgresql".into())];
    let hosts = if hosts.is_empty() {
        &default_host[..]
    } else {
        hosts
    };
    let mut last = None;
    for (i, host) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let tcp_name = match host {
            Host::Tcp(name) => Some(name.clone()),
            Host::Unix(_) => None,
        };
        let (addr, result): (String, io::Result<Box<dyn Io>>) = match host {
            Host::Tcp(name) => {
                let addr = format!("{name}:{port}");
                let stream = TcpStream::connect(&addr).await;
                let stream = stream.and_then(|s| s.set_nodelay(true).map(|()| s));
                (addr, stream.map(|s| Box::new(s) as Box<dyn Io>))
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let stream = UnixStream::connect(&path).await;
                (
                    path.display().to_string(),
                    stream.map(|s| Box::new(s) as Box<dyn Io>),
                )
            }
        };
        match result {
            Ok(io) => return Ok((io, tcp_name)),
            Err(source) => last = Some(CaptureError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| CaptureError::Config("database_url names no host".into())))
}

/// Sends `SSLRequest` unless `sslmode=disable` or the socket is a Unix-domain one (libpq
/// uses no TLS there), and wraps the socket in TLS when accepted.
async fn negotiate_tls(
    mut io: Box<dyn Io>,
    host: Option<&String>,
    tls: &tls::Tls,
) -> Result<Box<dyn Io>, CaptureError> {
    let mode = tls.mode();
    let Some(host) = host.filter(|_| mode != SslMode::Disable) else {
        return Ok(io);
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    io.write_all(&request).await?;
    io.flush().await?;
    match io.read_u8().await? {
        b'S' => tls::wrap(tls, io, host).await.map_err(CaptureError::from),
        b'N' if !mode.requires_tls() => Ok(io),
        b'N' => Err(CaptureError::Tls(format!(
            "the server does not support TLS but sslmode={mode}"
        ))),
        other => Err(CaptureError::Protocol(format!(
            "unexpected answer {other:#x} to SSLRequest"
        ))),
    }
}

fn server_error(mut fields: ErrorFields<'_>) -> Result<ServerError, CaptureError> {
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    while let Some(field) = fields.next()? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    Ok(error)
}

/// Quotes an SQL identifier: `my"name` → `"my""name"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal whatever `standard_conforming_strings` is, as an escape
/// string: `it's \x` → `E'it''s \\x'`.
pub fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a string for a replication command (`START_REPLICATION … (publication_names …)`),
/// whose scanner knows only `'…'` with doubled quotes and no backslash escapes.
pub fn quote_command_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl From<DatabaseError> for CaptureError {
    fn from(e: DatabaseError) -> CaptureError {
        match e {
            DatabaseError::Tls(message) => CaptureError::Tls(message),
            DatabaseError::Parameter { .. } | DatabaseError::Parse(_) => {
                CaptureError::Config(e.to_string())
            }
            DatabaseError::Connect { code, message } => CaptureError::Outbox { code, message },
            DatabaseError::Pool(message) => CaptureError::Outbox {
                code: None,
                message,
            },
        }
    }
}
