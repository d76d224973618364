//! A logical replication client: the sink's way to read its slot through a
//! walsender instead of `pg_logical_slot_peek_binary_changes`.
//!
//! It speaks the frontend/backend protocol itself (startup with
//! `replication=database`, trust/peer, cleartext, MD5 or SCRAM-SHA-256
//! authentication, `START_REPLICATION SLOT .. LOGICAL ..` with pgoutput), then a
//! reader thread keeps the socket drained into a bounded queue of raw chunks. So
//! the walsender decodes on one core while the sink encodes and delivers on
//! another, and it keeps decoding while the sink waits for a target to commit.
//!
//! The owner of a [`Stream`] pulls [`Message`]s (XLogData payloads are pgoutput
//! messages) and sends standby status updates ([`Stream::feedback`]) with the
//! position delivered durably, which is what lets the slot advance.
//!
//! Nothing here calls into Postgres: the thread only does socket I/O.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use postgres_protocol::authentication::{self, sasl};
use postgres_protocol::message::frontend;

use super::error::{Result, SinkError};
use super::lsn::Lsn;

/// Where and as whom to connect. `host` starting with `/` is a Unix socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: Option<String>,
    pub application_name: String,
    /// Session settings for the walsender (pgoutput writes values in its text
    /// output form, so TimeZone, DateStyle ... decide what the sink sees).
    pub settings: Vec<(String, String)>,
}

impl Target {
    /// Override fields from a libpq-style `key=value` string (host, port, user,
    /// password, dbname; values may be single-quoted with `\'` and `\\` escapes).
    pub fn apply_conninfo(&mut self, conninfo: &str) -> Result<()> {
        for (k, v) in parse_conninfo(conninfo)? {
            match k.as_str() {
                "host" | "hostaddr" => self.host = v,
                "port" => {
                    self.port = v.parse().map_err(|_| bad_conninfo(format!("port \"{v}\" is not a port number")))?;
                }
                "user" => self.user = v,
                "password" => self.password = Some(v),
                "dbname" => self.database = v,
                "application_name" => self.application_name = v,
                other => return Err(bad_conninfo(format!("unsupported key \"{other}\""))),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn bad_conninfo(why: String) -> SinkError {
    SinkError::config(format!("invalid pg_sink.replication_conninfo: {why}")).hint("Use libpq key=value pairs: host, port, user, password, dbname.")
}

/// Split `key=value key2='quoted value'` into pairs.
pub fn parse_conninfo(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(bad_conninfo(format!("missing \"=\" after \"{key}\"")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(bad_conninfo(format!("unterminated quoted value of \"{key}\""))),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| bad_conninfo("trailing backslash".into()))?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn open(t: &Target, timeout: Duration) -> io::Result<Conn> {
        if t.host.starts_with('/') {
            let s = UnixStream::connect(format!("{}/.s.PGSQL.{}", t.host.trim_end_matches('/'), t.port))?;
            s.set_read_timeout(Some(timeout))?;
            Ok(Conn::Unix(s))
        } else {
            use std::net::ToSocketAddrs;
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("no address for host \"{}\"", t.host));
            for addr in (t.host.as_str(), t.port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(timeout))?;
                        return Ok(Conn::Tcp(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
    fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }
    fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Conn {
    /// A signal landing on the backend's thread (SIGHUP for a reload) interrupts a
    /// blocking read; that is not the connection failing, so read again.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match self {
                Conn::Unix(s) => s.read(buf),
                Conn::Tcp(s) => s.read(buf),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why [`start`] failed.
#[derive(Debug)]
pub enum StartError {
    /// Could not connect, authenticate or talk to the walsender.
    Connect(SinkError),
    /// Connected, but the walsender refused START_REPLICATION (`code`: its
    /// SQLSTATE, e.g. 55006 while another process holds the slot).
    Refused { code: String, error: SinkError },
}

/// A server error or notice: severity, SQLSTATE, message, detail, hint.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Parse the fields of an ErrorResponse/NoticeResponse body.
pub fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut e = ServerError::default();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let text = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => e.code = text,
            b'M' => e.message = text,
            b'D' => e.detail = Some(text),
            b'H' => e.hint = Some(text),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    e
}

fn server_error(context: &str, e: ServerError) -> SinkError {
    let mut err = SinkError::transient(format!("{context}: {} (SQLSTATE {})", e.message, e.code));
    if let Some(d) = e.detail {
        err = err.detail(d);
    }
    if let Some(h) = e.hint {
        err = err.hint(h);
    }
    err
}

/// Reads whole backend messages during the handshake.
struct Handshake {
    conn: Conn,
    buf: Vec<u8>,
    target: String,
}

impl Handshake {
    fn send(&mut self, msg: &BytesMut) -> Result<()> {
        self.conn.write_all(msg).map_err(|e| SinkError::transient(format!("could not send to the walsender at {}: {e}", self.target)))
    }

    /// A whole message already read, if there is one.
    fn take_message(&mut self) -> Option<(u8, Vec<u8>)> {
        let len = frame_len(&self.buf)?;
        if self.buf.len() < len {
            return None;
        }
        let rest = self.buf.split_off(len);
        let frame = std::mem::replace(&mut self.buf, rest);
        Some((frame[0], frame[5..].to_vec()))
    }

    /// The next message, however long the server takes, as long as `stop` says
    /// no (checked every read timeout).
    fn wait_message(&mut self, stop: &dyn Fn() -> bool) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some(m) = self.take_message() {
                return Ok(m);
            }
            let mut tmp = [0u8; 8192];
            match self.conn.read(&mut tmp) {
                Ok(0) => return Err(SinkError::transient(format!("the walsender at {} closed the connection", self.target))),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {
                    if stop() {
                        return Err(SinkError::transient(super::error::STOPPING));
                    }
                }
                Err(e) => return Err(SinkError::transient(format!("could not read from the walsender at {}: {e}", self.target))),
            }
        }
    }

    fn read_message(&mut self) -> Result<(u8, Vec<u8>)> {
        loop {
            if let Some(m) = self.take_message() {
                return Ok(m);
            }
            let mut tmp = [0u8; 8192];
            let n =
                self.conn.read(&mut tmp).map_err(|e| SinkError::transient(format!("could not read from the walsender at {}: {e}", self.target)))?;
            if n == 0 {
                return Err(SinkError::transient(format!("the walsender at {} closed the connection", self.target)));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

/// Total length (type byte included) of the frame starting at `buf[0]`, once its
/// header is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    Some(1 + len.max(4) as usize)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Connect, authenticate and start streaming `slot` from `start` with pgoutput
/// (protocol version 1) for `publication`.
pub fn start(target: &Target, slot: &str, publication: &str, start: Lsn) -> Result<Stream, StartError> {
    let mut hs = handshake(target).map_err(StartError::Connect)?;
    let command = start_command(slot, publication, start);
    let mut msg = BytesMut::new();
    frontend::query(&command, &mut msg).map_err(|e| StartError::Connect(SinkError::transient(format!("START_REPLICATION: {e}"))))?;
    hs.send(&msg).map_err(StartError::Connect)?;
    loop {
        match hs.read_message().map_err(StartError::Connect)? {
            (b'W', _) => break,
            (b'E', body) => {
                let e = parse_error_fields(&body);
                let code = e.code.clone();
                return Err(StartError::Refused { code, error: server_error(&format!("could not start streaming slot \"{slot}\""), e) });
            }
            _ => {}
        }
    }
    let Handshake { conn, buf: leftover, .. } = hs;
    conn.set_read_timeout(None).map_err(|e| StartError::Connect(SinkError::transient(format!("socket: {e}"))))?;
    Stream::spawn(conn, leftover, HEARTBEAT).map_err(StartError::Connect)
}

/// Connect and authenticate; returns once the server is ready for a command.
fn handshake(target: &Target) -> Result<Handshake> {
    let where_ = target.describe();
    let conn = Conn::open(target, Duration::from_secs(10))
        .map_err(|e| SinkError::transient(format!("could not connect to the walsender at {where_}: {e}")))?;
    let mut hs = Handshake { conn, buf: Vec::new(), target: where_.clone() };
    let mut msg = BytesMut::new();
    let mut params = vec![
        ("user", target.user.as_str()),
        ("database", target.database.as_str()),
        ("replication", "database"),
        ("application_name", target.application_name.as_str()),
        // Text in the stream as UTF-8 whatever the server's encoding.
        ("client_encoding", "UTF8"),
    ];
    params.extend(target.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut msg).map_err(|e| SinkError::transient(format!("startup message: {e}")))?;
    hs.send(&msg)?;
    authenticate(&mut hs, target)?;
    // ParameterStatus, BackendKeyData ... until ReadyForQuery.
    loop {
        match hs.read_message()? {
            (b'Z', _) => break,
            (b'E', body) => return Err(server_error("the walsender refused the connection", parse_error_fields(&body))),
            _ => {}
        }
    }
    Ok(hs)
}

/// A replication connection whose open transaction holds the snapshot of the slot
/// it created (`CREATE_REPLICATION_SLOT .. (SNAPSHOT 'use')`, as Postgres' own
/// table synchronisation does): what is read here is exactly what committed
/// before the slot's consistent point, and nothing is locked beyond what the reads
/// take (ACCESS SHARE). Writers go on; the slot streams every transaction that
/// commits after that point. Dropped without [`SnapshotSession::finish`], the
/// transaction ends with the connection.
pub struct SnapshotSession {
    hs: Handshake,
    /// Where the slot's stream starts.
    pub consistent_point: Lsn,
}

/// Connect, begin a repeatable-read transaction and create `slot` (pgoutput) in
/// it, using its snapshot. Waits as long as the server does (slot creation waits
/// for transactions in progress), checking `stop` every 200 ms.
pub fn create_slot_with_snapshot(target: &Target, slot: &str, stop: &dyn Fn() -> bool) -> Result<SnapshotSession, StartError> {
    let hs = handshake(target).map_err(StartError::Connect)?;
    hs.conn.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| StartError::Connect(SinkError::transient(format!("socket: {e}"))))?;
    let mut s = SnapshotSession { hs, consistent_point: Lsn::ZERO };
    // Connected: what fails from here on is not a reason to read another way,
    // and is retried (a slot that exists after a race, a role not allowed yet).
    let refused =
        |error: SinkError| StartError::Refused { code: String::new(), error: SinkError { kind: super::error::ErrorKind::Transient, ..error } };
    s.query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ", stop).map_err(refused)?;
    let command = format!("CREATE_REPLICATION_SLOT \"{}\" LOGICAL pgoutput (SNAPSHOT 'use')", slot.replace('"', "\"\""));
    let rows = s.query(&command, stop).map_err(refused)?;
    // slot_name, consistent_point, snapshot_name, output_plugin
    let point = rows.first().and_then(|r| r.get(1)).cloned().flatten().and_then(|t| t.parse().ok());
    s.consistent_point = point.ok_or_else(|| refused(SinkError::transient("CREATE_REPLICATION_SLOT returned no consistent point")))?;
    Ok(s)
}

/// Rows of a simple query, each column as text (`None`: NULL).
pub type TextRows = Vec<Vec<Option<String>>>;

impl SnapshotSession {
    /// Run one statement (simple query protocol) in the snapshot's transaction and
    /// return its rows. An error of SQLSTATE class 42 or 0A (a dropped column, a
    /// revoked privilege, a feature not there) is permanent, others transient.
    pub fn query(&mut self, sql: &str, stop: &dyn Fn() -> bool) -> Result<TextRows> {
        let mut msg = BytesMut::new();
        frontend::query(sql, &mut msg).map_err(|e| SinkError::transient(format!("query: {e}")))?;
        self.hs.send(&msg)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.hs.wait_message(stop)? {
                (b'D', body) => rows.push(parse_data_row(&body)?),
                (b'E', body) => error = Some(parse_error_fields(&body)),
                (b'Z', _) => break,
                _ => {} // RowDescription, CommandComplete, notices, parameter status
            }
        }
        let Some(e) = error else {
            return Ok(rows);
        };
        let permanent = e.code.starts_with("42") || e.code.starts_with("0A");
        let err = server_error("the snapshot's query failed", e);
        Err(if permanent { SinkError { kind: super::error::ErrorKind::Permanent, ..err } } else { err })
    }

    /// Commit the snapshot's transaction and close the connection.
    pub fn finish(mut self, stop: &dyn Fn() -> bool) -> Result<()> {
        self.query("COMMIT", stop)?;
        self.hs.conn.shutdown();
        Ok(())
    }
}

/// A DataRow's columns as text.
fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>> {
    let bad = || SinkError::transient("malformed DataRow from the walsender");
    let n = u16::from_be_bytes([*body.first().ok_or_else(bad)?, *body.get(1).ok_or_else(bad)?]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let bytes = body.get(at..at + len as usize).ok_or_else(bad)?;
        at += len as usize;
        out.push(Some(String::from_utf8(bytes.to_vec()).map_err(|_| SinkError::transient("a value from the walsender is not UTF-8"))?));
    }
    Ok(out)
}

/// `START_REPLICATION SLOT "s" LOGICAL X/Y (proto_version '1', publication_names '"p"', messages 'true')`
/// (logical messages carry replayed dead letters).
pub fn start_command(slot: &str, publication: &str, start: Lsn) -> String {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names '{}', messages 'true')",
        ident(slot),
        start,
        ident(publication).replace('\'', "''")
    )
}

fn authenticate(hs: &mut Handshake, target: &Target) -> Result<()> {
    let need_password = || {
        target.password.clone().ok_or_else(|| {
            SinkError::transient(format!("the walsender at {} asks user \"{}\" for a password", target.describe(), target.user))
                .hint("Allow local replication connections of the superuser (trust or peer in pg_hba.conf), or give a password in pg_sink.replication_conninfo.")
        })
    };
    loop {
        let (kind, body) = hs.read_message()?;
        match kind {
            b'E' => return Err(server_error("the walsender refused the connection", parse_error_fields(&body))),
            b'R' => {}
            _ => return Err(SinkError::transient(format!("unexpected message '{}' during authentication", kind as char))),
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let mut msg = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => {
                let pw = need_password()?;
                frontend::password_message(pw.as_bytes(), &mut msg).map_err(|e| SinkError::transient(e.to_string()))?;
            }
            5 => {
                let pw = need_password()?;
                let salt = [body[4], body[5], body[6], body[7]];
                let hash = authentication::md5_hash(target.user.as_bytes(), pw.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut msg).map_err(|e| SinkError::transient(e.to_string()))?;
            }
            10 => {
                let pw = need_password()?;
                let mechanisms: Vec<&[u8]> = body[4..].split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                    return Err(SinkError::transient("the walsender offers no SASL mechanism pg_sink supports (SCRAM-SHA-256)"));
                }
                let mut scram = sasl::ScramSha256::new(pw.as_bytes(), sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut msg).map_err(|e| SinkError::transient(e.to_string()))?;
                hs.send(&msg)?;
                let (k, b) = hs.read_message()?;
                if k == b'E' {
                    return Err(server_error("authentication failed", parse_error_fields(&b)));
                }
                scram.update(&b[4..]).map_err(|e| SinkError::transient(format!("SCRAM: {e}")))?;
                let mut msg = BytesMut::new();
                frontend::sasl_response(scram.message(), &mut msg).map_err(|e| SinkError::transient(e.to_string()))?;
                hs.send(&msg)?;
                let (k, b) = hs.read_message()?;
                if k == b'E' {
                    return Err(server_error("authentication failed", parse_error_fields(&b)));
                }
                scram.finish(&b[4..]).map_err(|e| SinkError::transient(format!("SCRAM: {e}")))?;
                continue;
            }
            other => {
                return Err(SinkError::transient(format!("the walsender asks for an authentication method pg_sink does not support (code {other})")))
            }
        }
        hs.send(&msg)?;
    }
}

/// What the reader thread hands over: raw bytes holding whole frames, or the end.
enum Chunk {
    Frames(Vec<u8>),
    End(String),
}

/// One message of the replication stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// XLogData: a pgoutput message and the WAL range it came from.
    Data { start: Lsn, end: Lsn, payload: &'a [u8] },
    /// Primary keepalive: the walsender has sent everything up to `end`.
    Keepalive { end: Lsn, reply: bool },
}

/// Chunks queued between the reader thread and the sink (each up to ~256 KiB).
const QUEUE_CHUNKS: usize = 256;
const READ_SIZE: usize = 256 * 1024;

/// How often a standby status update goes out on its own, whatever the owner of
/// the stream is doing: a target that takes longer than `wal_sender_timeout` to
/// take a batch must not get the stream closed under the step (it then failed and
/// was retried for ever). It reports only what the owner last said is durable.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Positions shared with the heartbeat thread.
#[derive(Default)]
struct Positions {
    received: AtomicU64,
    flushed: AtomicU64,
}

/// A started replication stream. Dropping it closes the connection.
pub struct Stream {
    rx: Receiver<Chunk>,
    /// Shared with the heartbeat thread; one status update at a time.
    writer: Arc<Mutex<Conn>>,
    positions: Arc<Positions>,
    stop_heartbeat: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
    chunk: Vec<u8>,
    pos: usize,
    /// Start of the frame `next` returned last (for `unread`).
    last: usize,
    wake: UnixStream,
    reader: Option<JoinHandle<()>>,
    ended: Option<String>,
}

impl Stream {
    fn spawn(conn: Conn, leftover: Vec<u8>, every: Duration) -> Result<Stream> {
        let io = |e: io::Error| SinkError::transient(format!("replication stream: {e}"));
        let reader_conn = conn.try_clone().map_err(io)?;
        let (wake_tx, wake_rx) = UnixStream::pair().map_err(io)?;
        wake_tx.set_nonblocking(true).map_err(io)?;
        wake_rx.set_nonblocking(true).map_err(io)?;
        let (tx, rx) = sync_channel(QUEUE_CHUNKS);
        let reader = with_signals_blocked(|| {
            std::thread::Builder::new().name("pg_sink stream".into()).spawn(move || read_loop(reader_conn, leftover, tx, wake_tx))
        })
        .map_err(io)?;
        let writer = Arc::new(Mutex::new(conn));
        let positions = Arc::new(Positions::default());
        let stop_heartbeat = Arc::new(AtomicBool::new(false));
        let (w, p, stop) = (writer.clone(), positions.clone(), stop_heartbeat.clone());
        let heartbeat =
            with_signals_blocked(|| std::thread::Builder::new().name("pg_sink heartbeat".into()).spawn(move || heartbeat_loop(&w, &p, &stop, every)))
                .map_err(io)?;
        Ok(Stream {
            rx,
            writer,
            positions,
            stop_heartbeat,
            heartbeat: Some(heartbeat),
            chunk: Vec::new(),
            pos: 0,
            last: 0,
            wake: wake_rx,
            reader: Some(reader),
            ended: None,
        })
    }

    /// A descriptor that becomes readable when data arrives (for the caller's
    /// latch wait while idle). Call [`Stream::ready`] before waiting on it.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Clears the wake descriptor; true if a message (or the stream's end) is
    /// waiting, so the caller must not sleep.
    pub fn ready(&mut self) -> bool {
        let mut sink = [0u8; 256];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        loop {
            // A keepalive that asks nothing and reports no WAL past what was read
            // tells an idle sink nothing: dropped here. (Each step asks for one;
            // when it arrives after the step ended, waking for it would run
            // another step, which asks again: a busy loop between idle sinks and
            // their walsenders.)
            while self.pos < self.chunk.len() && self.stale_keepalive_at(self.pos) {
                self.pos += frame_len(&self.chunk[self.pos..]).unwrap_or(usize::MAX).min(self.chunk.len() - self.pos);
                self.last = self.pos;
            }
            if self.pos < self.chunk.len() || self.ended.is_some() {
                return true;
            }
            match self.rx.try_recv() {
                Ok(c) => self.take(c),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => {
                    self.ended = Some("the replication stream's reader stopped".into());
                    return true;
                }
            }
        }
    }

    /// Whether the frame at `at` is a keepalive that asks for no reply and reports
    /// no position past [`Stream::received`].
    fn stale_keepalive_at(&self, at: usize) -> bool {
        let Some(len) = frame_len(&self.chunk[at..]) else { return false };
        let Some(body) = self.chunk.get(at + 5..at + len) else { return false };
        self.chunk[at] == b'd' && body.len() >= 18 && body[0] == b'k' && body[17] == 0 && be_u64(&body[1..]) <= self.received().0
    }

    fn take(&mut self, c: Chunk) {
        match c {
            Chunk::Frames(v) => {
                self.chunk = v;
                self.pos = 0;
                self.last = 0;
            }
            Chunk::End(why) => self.ended = Some(why),
        }
    }

    /// Put back the message `next` returned last, to be returned again.
    pub fn unread(&mut self) {
        self.pos = self.last;
    }

    /// The next message, waiting up to `wait` for one. `None`: nothing arrived.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Message<'_>>> {
        loop {
            if self.pos >= self.chunk.len() {
                if let Some(why) = &self.ended {
                    return Err(SinkError::transient(format!("replication stream ended: {why}")));
                }
                let got = if wait.is_zero() {
                    match self.rx.try_recv() {
                        Ok(c) => Some(c),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Disconnected) => Some(Chunk::End("the replication stream's reader stopped".into())),
                    }
                } else {
                    match self.rx.recv_timeout(wait) {
                        Ok(c) => Some(c),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => Some(Chunk::End("the replication stream's reader stopped".into())),
                    }
                };
                match got {
                    None => return Ok(None),
                    Some(c) => {
                        self.take(c);
                        continue;
                    }
                }
            }
            let start = self.pos;
            self.last = start;
            let len = frame_len(&self.chunk[start..]).unwrap_or(usize::MAX);
            let end = start.saturating_add(len).min(self.chunk.len());
            self.pos = end;
            let kind = self.chunk[start];
            let body = &self.chunk[(start + 5).min(end)..end];
            match kind {
                b'd' => match body.first() {
                    Some(b'w') if body.len() >= 25 => {
                        let (s, e) = (Lsn(be_u64(&body[1..])), Lsn(be_u64(&body[9..])));
                        self.positions.received.fetch_max(e.max(s).0, Ordering::Relaxed);
                        // Borrow again from self.chunk (the checks above are on a copy of the range).
                        let payload = &self.chunk[start + 5 + 25..end];
                        return Ok(Some(Message::Data { start: s, end: e, payload }));
                    }
                    Some(b'k') if body.len() >= 18 => {
                        let end_lsn = Lsn(be_u64(&body[1..]));
                        let reply = body[17] != 0;
                        self.positions.received.fetch_max(end_lsn.0, Ordering::Relaxed);
                        return Ok(Some(Message::Keepalive { end: end_lsn, reply }));
                    }
                    _ => return Err(SinkError::transient("malformed message in the replication stream")),
                },
                b'E' => {
                    let e = parse_error_fields(body);
                    self.ended = Some(e.message.clone());
                    return Err(server_error("the walsender failed", e));
                }
                b'c' | b'C' | b'Z' => {
                    self.ended = Some("the walsender ended the stream".into());
                }
                // NoticeResponse, ParameterStatus: nothing to do.
                _ => {}
            }
        }
    }

    /// Highest WAL position received (XLogData end or keepalive).
    pub fn received(&self) -> Lsn {
        Lsn(self.positions.received.load(Ordering::Relaxed))
    }

    /// Standby status update: everything up to `received` is in, `flushed` is
    /// durable (the slot may release WAL before it). `reply`: ask the walsender
    /// for a keepalive with its position.
    pub fn feedback(&mut self, flushed: Lsn, reply: bool) -> Result<()> {
        let write = self.received().max(flushed);
        self.positions.flushed.fetch_max(flushed.0, Ordering::Relaxed);
        let msg = status_update(write, flushed, now_pg_micros(), reply);
        let mut w = self.writer.lock().map_err(|_| SinkError::transient("replication stream writer poisoned"))?;
        w.write_all(&msg).map_err(|e| SinkError::transient(format!("could not send feedback to the walsender: {e}")))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop_heartbeat.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if let Ok(mut w) = self.writer.lock() {
            let _ = w.write_all(&[b'X', 0, 0, 0, 4]);
            w.shutdown();
        }
        // Drop the queue first, so a reader blocked on a full queue stops too.
        let (_, closed) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, closed));
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

/// CopyData('r'): write, flush, apply positions, a timestamp, reply wanted or not.
pub fn status_update(write: Lsn, flush: Lsn, now: i64, reply: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(39);
    m.push(b'd');
    m.extend_from_slice(&(4 + 34i32).to_be_bytes());
    m.push(b'r');
    m.extend_from_slice(&write.0.to_be_bytes());
    m.extend_from_slice(&flush.0.to_be_bytes());
    m.extend_from_slice(&flush.0.to_be_bytes());
    m.extend_from_slice(&now.to_be_bytes());
    m.push(reply as u8);
    m
}

/// Microseconds since 2000-01-01 (Postgres' epoch).
fn now_pg_micros() -> i64 {
    let us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    us - 946_684_800_000_000
}

/// Length of the longest prefix of `buf` made of whole frames.
fn whole_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(len) = frame_len(&buf[at..]) {
        if at + len > buf.len() {
            break;
        }
        at += len;
    }
    at
}

fn read_loop(mut conn: Conn, mut pending: Vec<u8>, tx: SyncSender<Chunk>, mut wake: UnixStream) {
    let mut tmp = vec![0u8; READ_SIZE];
    loop {
        let whole = whole_frames(&pending);
        if whole > 0 {
            let rest = pending[whole..].to_vec();
            let mut frames = std::mem::replace(&mut pending, rest);
            frames.truncate(whole);
            if tx.send(Chunk::Frames(frames)).is_err() {
                return;
            }
            let _ = wake.write(&[1]);
        }
        match conn.read(&mut tmp) {
            Ok(0) => {
                let _ = tx.send(Chunk::End("the walsender closed the connection".into()));
                let _ = wake.write(&[1]);
                return;
            }
            Ok(n) => pending.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Chunk::End(format!("could not read from the walsender: {e}")));
                let _ = wake.write(&[1]);
                return;
            }
        }
    }
}

/// Send a status update every `every` (checking `stop` every 50 ms) until the
/// connection fails or the stream is dropped.
fn heartbeat_loop(writer: &Mutex<Conn>, positions: &Positions, stop: &AtomicBool, every: Duration) {
    let tick = Duration::from_millis(50).min(every);
    let mut since = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if since.elapsed() < every {
            continue;
        }
        since = std::time::Instant::now();
        let flushed = Lsn(positions.flushed.load(Ordering::Relaxed));
        let write = Lsn(positions.received.load(Ordering::Relaxed)).max(flushed);
        let msg = status_update(write, flushed, now_pg_micros(), false);
        let Ok(mut w) = writer.lock() else { return };
        if w.write_all(&msg).is_err() {
            return;
        }
    }
}

/// Run `f` (which starts threads) with every signal blocked in the calling
/// thread, then restore its mask. A thread inherits its creator's mask, so the
/// threads `f` starts never have a moment in which a Postgres signal handler
/// (SIGHUP, SIGTERM, SIGUSR1) could run on them: pgrx aborts the process when
/// that happens. Signals that arrive meanwhile wait for this thread.
pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: only changes this thread's signal mask, restored below.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    };
    let r = f();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// Threads the sink starts inside a backend (this reader, async runtimes) must
/// never run a Postgres signal handler: block every signal in the calling thread.
pub fn block_signals() {
    // SAFETY: only changes this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_give_text_and_nulls_and_refuse_short_bodies() {
        let mut body = 3u16.to_be_bytes().to_vec();
        for v in [Some(&b"42"[..]), None, Some(&b"h\xc3\xa9"[..])] {
            match v {
                Some(b) => {
                    body.extend((b.len() as i32).to_be_bytes());
                    body.extend(b);
                }
                None => body.extend((-1i32).to_be_bytes()),
            }
        }
        assert_eq!(parse_data_row(&body).unwrap(), vec![Some("42".to_string()), None, Some("h\u{e9}".to_string())]);
        assert!(parse_data_row(&body[..body.len() - 1]).is_err());
        assert!(parse_data_row(&[0]).is_err());
        let mut bad = 1u16.to_be_bytes().to_vec();
        bad.extend(1i32.to_be_bytes());
        bad.push(0xff);
        assert!(parse_data_row(&bad).is_err(), "not UTF-8");
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn xlogdata(start: u64, end: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend_from_slice(&start.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(payload);
        frame(b'd', &b)
    }

    fn keepalive(end: u64, reply: bool) -> Vec<u8> {
        let mut b = vec![b'k'];
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.push(reply as u8);
        frame(b'd', &b)
    }

    /// A stream fed from a socket pair (an in-process peer standing in for the
    /// walsender: the framing is what is under test; the integration tests run
    /// against a real walsender).
    fn stream_with(bytes: Vec<u8>, close: bool) -> (Stream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut writer = theirs.try_clone().unwrap();
        // Written from a thread: more than a socket buffer holds.
        std::thread::spawn(move || {
            writer.write_all(&bytes).unwrap();
            if close {
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            }
        });
        (Stream::spawn(Conn::Unix(ours), Vec::new(), Duration::from_secs(3600)).unwrap(), theirs)
    }

    #[test]
    fn parses_conninfo_with_quotes() {
        let pairs = parse_conninfo(" host=/var/run/postgresql port = 5433 password='it\\'s \\\\x' user=me ").unwrap();
        assert_eq!(pairs[0], ("host".into(), "/var/run/postgresql".into()));
        assert_eq!(pairs[1], ("port".into(), "5433".into()));
        assert_eq!(pairs[2].1, "it's \\x");
        assert_eq!(pairs[3], ("user".into(), "me".into()));
        assert!(parse_conninfo("host").is_err());
        assert!(parse_conninfo("password='open").is_err());
        let mut t = Target {
            host: "/tmp".into(),
            port: 5432,
            user: "postgres".into(),
            database: "db".into(),
            password: None,
            application_name: "a".into(),
            settings: vec![],
        };
        t.apply_conninfo("host=127.0.0.1 port=6000 password='p w'").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.password.as_deref()), ("127.0.0.1", 6000, Some("p w")));
        let err = t.apply_conninfo("sslmode=require").unwrap_err();
        assert!(err.message.contains("sslmode"), "{}", err.message);
        assert!(t.apply_conninfo("port=x").is_err());
    }

    #[test]
    fn start_command_quotes_names() {
        assert_eq!(
            start_command("pg_sink_1", "pub\"'x", Lsn(0x1_0000_0010)),
            "START_REPLICATION SLOT \"pg_sink_1\" LOGICAL 1/10 (proto_version '1', publication_names '\"pub\"\"''x\"', messages 'true')"
        );
    }

    #[test]
    fn status_update_layout() {
        let m = status_update(Lsn(0x20), Lsn(0x10), 7, true);
        assert_eq!(m.len(), 39);
        assert_eq!(&m[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(be_u64(&m[6..]), 0x20);
        assert_eq!(be_u64(&m[14..]), 0x10);
        assert_eq!(be_u64(&m[22..]), 0x10);
        assert_eq!(be_u64(&m[30..]) as i64, 7);
        assert_eq!(m[38], 1, "reply requested");
        assert_eq!(status_update(Lsn(0x20), Lsn(0x10), 7, false)[38], 0);
    }

    #[test]
    fn reads_data_and_keepalives_across_chunks() {
        let mut bytes = xlogdata(0x10, 0x18, b"B-payload");
        bytes.extend(keepalive(0x30, true));
        bytes.extend(frame(b'N', b"Mnotice\0\0"));
        let big = vec![7u8; 600 * 1024];
        bytes.extend(xlogdata(0x40, 0x48, &big));
        let (mut s, _peer) = stream_with(bytes, true);
        let w = Duration::from_secs(5);
        assert_eq!(s.next(w).unwrap(), Some(Message::Data { start: Lsn(0x10), end: Lsn(0x18), payload: b"B-payload" }));
        assert_eq!(s.next(w).unwrap(), Some(Message::Keepalive { end: Lsn(0x30), reply: true }));
        s.unread();
        assert_eq!(s.next(w).unwrap(), Some(Message::Keepalive { end: Lsn(0x30), reply: true }), "unread puts it back");
        match s.next(w).unwrap() {
            Some(Message::Data { start, payload, .. }) => {
                assert_eq!(start, Lsn(0x40));
                assert_eq!(payload.len(), big.len(), "a frame larger than one read arrives whole");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.received(), Lsn(0x48));
        let err = s.next(w).unwrap_err();
        assert!(err.message.contains("closed"), "{}", err.message);
    }

    #[test]
    fn a_keepalive_with_nothing_new_does_not_wake_an_idle_sink() {
        let (mut s, mut peer) = stream_with(keepalive(0x99, false), false);
        let w = Duration::from_secs(5);
        assert_eq!(s.next(w).unwrap(), Some(Message::Keepalive { end: Lsn(0x99), reply: false }));
        // The same position again (the answer to a step's request that came after
        // the step ended): nothing to do, no wake-up, and it is consumed.
        peer.write_all(&keepalive(0x99, false)).unwrap();
        peer.write_all(&keepalive(0x80, false)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!s.ready(), "stale keepalives do not make the stream ready");
        assert_eq!(s.next(Duration::ZERO).unwrap(), None);
        // WAL past what was read, or a request for a reply, does.
        peer.write_all(&keepalive(0x100, false)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(s.ready());
        assert_eq!(s.next(Duration::ZERO).unwrap(), Some(Message::Keepalive { end: Lsn(0x100), reply: false }));
        peer.write_all(&keepalive(0x50, true)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(s.ready());
        assert_eq!(s.next(Duration::ZERO).unwrap(), Some(Message::Keepalive { end: Lsn(0x50), reply: true }));
        peer.write_all(&xlogdata(0x10, 0x20, b"x")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(s.ready(), "data always wakes");
    }

    #[test]
    fn nothing_waiting_is_none_and_wakes_on_data() {
        let (mut s, mut peer) = stream_with(Vec::new(), false);
        assert_eq!(s.next(Duration::ZERO).unwrap(), None);
        assert!(!s.ready());
        peer.write_all(&keepalive(0x99, false)).unwrap();
        let mut fds = libc::pollfd { fd: s.wake_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one valid descriptor.
        let n = unsafe { libc::poll(&mut fds, 1, 5000) };
        assert_eq!(n, 1, "the wake descriptor becomes readable");
        assert!(s.ready());
        assert_eq!(s.next(Duration::ZERO).unwrap(), Some(Message::Keepalive { end: Lsn(0x99), reply: false }));
        // Feedback goes back on the same connection.
        s.feedback(Lsn(0x50), false).unwrap();
        let mut got = [0u8; 39];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(be_u64(&got[6..]), 0x99, "write = received");
        assert_eq!(be_u64(&got[14..]), 0x50, "flush = durable");
    }

    #[test]
    fn a_heartbeat_reports_the_durable_position_while_the_owner_is_busy() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut s = Stream::spawn(Conn::Unix(ours), Vec::new(), Duration::from_millis(100)).unwrap();
        s.feedback(Lsn(0x50), false).unwrap();
        // The owner now does nothing (a slow target); status updates keep coming.
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..3 {
            let mut got = [0u8; 39];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(got[5], b'r');
            assert_eq!(be_u64(&got[14..]), 0x50, "flush = what the owner said is durable");
        }
        drop(s);
    }

    #[test]
    fn server_error_ends_the_stream() {
        let (mut s, _peer) = stream_with(frame(b'E', b"SERROR\0C55006\0Mreplication slot \"x\" is active for PID 7\0\0"), false);
        let err = s.next(Duration::from_secs(5)).unwrap_err();
        assert!(err.message.contains("is active for PID 7") && err.message.contains("55006"), "{}", err.message);
        assert!(s.next(Duration::ZERO).is_err());
    }
}
