//! A throwaway local PostgreSQL: `initdb` into a temp dir, start on a free 127.0.0.1 port
//! with `wal_level=logical`, stop and delete on drop.
//!
//! Used by `walhook demo` and by the test harness. PostgreSQL refuses to run as root, so
//! when we are root the server runs as the `postgres` user. A watchdog shell stops the server
//! and removes its directory when this process exits, however it exits (even SIGKILL).
//!
//! Authentication: only the Unix socket (in the private temp directory, mode 0700) is
//! trusted; TCP connections need SCRAM-SHA-256 with the random `postgres` password generated
//! at start ([`LocalPostgres::password`], carried by [`LocalPostgres::url`]), so another local
//! user or process cannot log in as superuser.

use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Starting the local server failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// `initdb`/`postgres` were not found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found in PATH, `pg_config --bindir` \
         or /usr/lib/postgresql/*/bin; install them, e.g. `apt-get install postgresql-15`"
    )]
    NoBinaries,
    /// We are root and there is no `postgres` user to run the server as.
    #[error("running as root needs a `postgres` system user to run PostgreSQL as")]
    NoPostgresUser,
    /// A step failed.
    #[error("{step}: {message}")]
    Step {
        /// What we were doing.
        step: &'static str,
        /// What went wrong (for a server that did not start: its log).
        message: String,
    },
}

/// A running throwaway server.
pub struct LocalPostgres {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Temp directory holding data, socket and log.
    pub root: PathBuf,
    /// Whether TLS is on (a self-signed certificate, when `openssl` is available).
    pub tls: bool,
    /// The `postgres` superuser's password (random, hex), needed over TCP.
    pub password: String,
    child: Child,
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> LocalPgError {
    move |e| LocalPgError::Step {
        step,
        message: e.to_string(),
    }
}

impl LocalPostgres {
    /// Initialises and starts a server (`wal_level=logical`), waiting until it accepts
    /// connections. Blocking.
    pub fn start() -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::start_with_wal_level("logical")
    }

    /// As [`start`](Self::start), with another `wal_level` (`replica` models a managed
    /// server without logical replication, for trigger capture).
    pub fn start_with_wal_level(wal_level: &str) -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::start_inner(wal_level, None)
    }

    /// A `wal_level=logical` server with TLS from the given PEM certificate and key files
    /// and exactly the given `pg_hba.conf` (e.g. only `hostssl` lines): for TLS tests.
    pub fn start_with_tls(
        cert: &Path,
        key: &Path,
        hba: &str,
    ) -> Result<LocalPostgres, LocalPgError> {
        LocalPostgres::start_inner("logical", Some((cert, key, hba)))
    }

    fn start_inner(
        wal_level: &str,
        custom_tls: Option<(&Path, &Path, &str)>,
    ) -> Result<LocalPostgres, LocalPgError> {
        let bindir = bindir().ok_or(LocalPgError::NoBinaries)?;
        let owner = run_as()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let root = std::env::temp_dir().join(format!("walhook-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root).map_err(step("create temp dir"))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
            .map_err(step("protect temp dir"))?;
        give(&root, owner)?;
        let data = root.join("data");
        let password = random_password()?;
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).map_err(step("write pwfile"))?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .map_err(step("protect pwfile"))?;
        give(&pwfile, owner)?;
        let output = command(&bindir.join("initdb"), owner)
            .arg("-D")
            .arg(&data)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(step("run initdb"))?;
        let _ = std::fs::remove_file(&pwfile);
        if !output.status.success() {
            return Err(LocalPgError::Step {
                step: "initdb",
                message: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let tls = match custom_tls {
            Some((cert, key, _)) => {
                std::fs::copy(cert, data.join("server.crt")).map_err(step("copy server.crt"))?;
                std::fs::copy(key, data.join("server.key")).map_err(step("copy server.key"))?;
                for file in ["server.key", "server.crt"] {
                    give(&data.join(file), owner)?;
                }
                std::fs::set_permissions(
                    data.join("server.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .map_err(step("protect server.key"))?;
                true
            }
            None => make_certificate(&data, owner)?,
        };
        let port = free_port()?;
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             unix_socket_permissions = 0700\npassword_encryption = 'scram-sha-256'\n\
             wal_level = {wal_level}\nmax_wal_senders = 100\nmax_replication_slots = 100\n\
             max_connections = 400\nfsync = off\nfull_page_writes = off\n\
             shared_buffers = 128MB\nmax_wal_size = 2GB\nlog_min_messages = warning\n",
            root.display()
        );
        if tls {
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        append(&data.join("postgresql.conf"), &conf)?;
        let hba = match custom_tls {
            Some((_, _, hba)) => hba,
            None => {
                "local all all trust\n\
                 host all walhook_md5 127.0.0.1/32 md5\n\
                 host all all 127.0.0.1/32 scram-sha-256\n"
            }
        };
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(step("write pg_hba.conf"))?;
        let child = spawn_postgres(&root, owner)?;
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.3; done; kill -INT {pg} 2>/dev/null; \
                 while kill -0 {pg} 2>/dev/null; do sleep 0.1; done; rm -rf '{dir}'",
                me = std::process::id(),
                pg = child.id(),
                dir = root.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(step("start watchdog"))?;
        let server = LocalPostgres {
            port,
            root,
            tls,
            password,
            child,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Superuser URL of `database` on this server (over TCP, with the password).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Stops the server with a fast shutdown (what `pg_ctl restart -m fast` does) and starts
    /// it again on the same port and data; returns how long the shutdown took. Blocking.
    pub fn restart_fast(&mut self) -> Result<Duration, LocalPgError> {
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        self.child
            .wait()
            .map_err(step("wait for the fast shutdown"))?;
        let shutdown = started.elapsed();
        let _ = std::fs::remove_file(self.root.join("data/postmaster.pid"));
        self.child = spawn_postgres(&self.root, run_as()?)?;
        self.wait_ready()?;
        Ok(shutdown)
    }

    /// The postmaster writes "ready" into line 8 of `postmaster.pid` once it accepts
    /// connections.
    fn wait_ready(&self) -> Result<(), LocalPgError> {
        let pid_file = self.root.join("data/postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let status = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if status.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LocalPgError::Step {
            step: "wait for PostgreSQL to accept connections",
            message: std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default(),
        })
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's "fast shutdown".
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The directory holding `initdb` and `postgres`.
pub fn bindir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").exists() && dir.join("postgres").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    candidates.sort_by_key(|dir| {
        let version = dir
            .parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str());
        version.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    candidates.into_iter().rev().find(|dir| has_server(dir))
}

/// Starts the postmaster on `root`'s data directory, logging to `root/postgres.log`
/// (appended to, across restarts).
fn spawn_postgres(root: &Path, owner: Option<(u32, u32)>) -> Result<Child, LocalPgError> {
    let bindir = bindir().ok_or(LocalPgError::NoBinaries)?;
    let log_path = root.join("postgres.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(step("open log"))?;
    give(&log_path, owner)?;
    command(&bindir.join("postgres"), owner)
        .arg("-D")
        .arg(root.join("data"))
        .stdout(log.try_clone().map_err(step("open log"))?)
        .stderr(log)
        .spawn()
        .map_err(step("start postgres"))
}

/// uid/gid of the `postgres` user when we are root.
fn run_as() -> Result<Option<(u32, u32)>, LocalPgError> {
    // /proc/self belongs to the effective user of this process.
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
        != 0
    {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(step("read /etc/passwd"))?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"));
    let fields: Vec<&str> = line
        .ok_or(LocalPgError::NoPostgresUser)?
        .split(':')
        .collect();
    let id = |i: usize| fields.get(i).and_then(|f| f.parse().ok());
    Ok(Some((
        id(2).ok_or(LocalPgError::NoPostgresUser)?,
        id(3).ok_or(LocalPgError::NoPostgresUser)?,
    )))
}

fn give(path: &Path, owner: Option<(u32, u32)>) -> Result<(), LocalPgError> {
    match owner {
        Some((uid, gid)) => chown(path, Some(uid), Some(gid)).map_err(step("chown for postgres")),
        None => Ok(()),
    }
}

fn command(program: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// 16 random bytes from the OS, hex (URL-safe).
fn random_password() -> Result<String, LocalPgError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(step("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> Result<u16, LocalPgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(step("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(step("find a free port"))?
        .port())
}

fn append(path: &Path, text: &str) -> Result<(), LocalPgError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(step("open postgresql.conf"))?;
    file.write_all(text.as_bytes())
        .map_err(step("write postgresql.conf"))
}

/// A self-signed certificate for `ssl = on`; `false` when openssl is unavailable.
fn make_certificate(data: &Path, owner: Option<(u32, u32)>) -> Result<bool, LocalPgError> {
    let made = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-newkey", "rsa:2048", "-keyout"])
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        for file in ["server.key", "server.crt"] {
            give(&data.join(file), owner)?;
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(step("protect server.key"))?;
    }
    Ok(made)
}
