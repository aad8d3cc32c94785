//! A scriptable Sentry ingest stand-in for the integration tests: an HTTP/1.1 server on
//! 127.0.0.1 that checks every request like Relay would (method, path, `X-Sentry-Auth`,
//! headers, gzip, envelope framing, one `profile_chunk` item, the chunk itself through
//! [`validate_item`]) and answers from a script (status, headers, body, or hang), falling
//! back to a default answer (200 unless set). It records every request it answered, with the
//! decoded chunk, and every malformed request as an error.
//!
//! Used by `tests/sentry_upload.rs` (the uploader library) and `tests/sentry_attach.rs` (the
//! real binary), included with `#[path = "common/sentry_server.rs"] mod sentry_server;`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use profiler_sentry::envelope::parse_envelope;
use profiler_sentry::validate::validate_item;

/// The DSN public key the server expects (32 hex digits, like Relay requires).
pub const KEY: &str = "e3b0c44298fc1c149afbf4c8996fb924";
/// The project id the server expects.
pub const PROJECT: &str = "42";

/// `http://KEY@127.0.0.1:<port>/PROJECT`.
pub fn dsn_for(port: u16) -> String {
    format!("http://{KEY}@127.0.0.1:{port}/{PROJECT}")
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with this status, extra headers and body (`{}` for an empty 200).
    Reply {
        /// HTTP status.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
    /// Read the request, then keep the connection open without answering.
    Hang(Duration),
}

/// A plain answer with `status`.
pub fn reply(status: u16) -> Action {
    Action::Reply {
        status,
        headers: vec![],
        body: String::new(),
    }
}

/// An answer with `status`, extra `headers` and `body`.
pub fn reply_with(status: u16, headers: &[(&str, &str)], body: &str) -> Action {
    Action::Reply {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    }
}

/// One well-formed request the server answered.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the request was accepted (before it was read and answered).
    pub at: Instant,
    /// The chunk's `chunk_id`.
    pub chunk_id: String,
    /// Samples in the chunk.
    pub samples: usize,
    /// The status answered; None for a hang.
    pub status: Option<u16>,
    /// The item header's `platform`.
    pub item_platform: Option<String>,
    /// The whole chunk payload.
    pub payload: Arc<serde_json::Value>,
}

/// What the server was told to do and what it saw.
#[derive(Default)]
pub struct ServerState {
    script: Mutex<VecDeque<Action>>,
    default: Mutex<Option<Action>>,
    received: Mutex<Vec<Received>>,
    errors: Mutex<Vec<String>>,
    sdk_items: Mutex<Vec<(serde_json::Value, serde_json::Value)>>,
}

impl ServerState {
    /// Queue an answer for the next well-formed request.
    pub fn push(&self, a: Action) {
        self.script.lock().unwrap().push_back(a);
    }
    /// The answer once the script is used up (200 unless set).
    pub fn set_default(&self, a: Action) {
        *self.default.lock().unwrap() = Some(a);
    }
    /// Every well-formed request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
    /// The chunk ids answered 200, in order.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.accepted().into_iter().map(|r| r.chunk_id).collect()
    }
    /// The requests answered 200, in order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status == Some(200))
            .collect()
    }
    /// Items (header, payload) of envelopes an application's SDK sent (sentry-python's
    /// transactions), which the server takes without the agent's checks.
    pub fn sdk_items(&self) -> Vec<(serde_json::Value, serde_json::Value)> {
        self.sdk_items.lock().unwrap().clone()
    }
    /// What was wrong with malformed requests.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
    /// Panic if any request was malformed.
    pub fn assert_no_errors(&self) {
        let e = self.errors.lock().unwrap();
        assert!(e.is_empty(), "server saw bad requests: {e:?}");
    }
}

/// The running server; stops when dropped.
pub struct TestServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Listen on 127.0.0.1:`port` (0 = any; a given port is retried for 5 s while it is
    /// still taken); returns the server and its port.
    pub fn start(port: u16, state: Arc<ServerState>) -> (TestServer, u16) {
        Self::start_on("127.0.0.1", port, state)
    }

    /// Listen on `ip`:`port` (e.g. a Docker network's gateway, for agents in containers).
    pub fn start_on(ip: &str, port: u16, state: Arc<ServerState>) -> (TestServer, u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind((ip, port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("bind {port}: {e}, retrying");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("bind {port}: {e}"),
            }
        };
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = Arc::clone(&state);
                        std::thread::spawn(move || handle(stream, &st));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        (
            TestServer {
                stop,
                thread: Some(thread),
            },
            port,
        )
    }

    /// Stop listening (the port is closed afterwards).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port with nothing listening on it (connections are refused).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Poll `cond` every 20 ms; panic naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `*.chunk` files of a spool directory, sorted by name (= oldest first); empty when
/// the directory does not exist.
pub fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "chunk"))
        .collect();
    v.sort();
    v
}

/// The chunk id in a spool file name `<stamp>-<chunk_id>.chunk`.
pub fn spool_chunk_id(p: &Path) -> String {
    let stem = p.file_stem().unwrap().to_str().unwrap();
    stem.split_once('-').unwrap().1.to_string()
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> Result<Request, String> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let method = parts.next().ok_or("no method")?.to_string();
    let path = parts.next().ok_or("no path")?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').ok_or("bad header")?;
        let k = k.trim().to_ascii_lowercase();
        if headers.insert(k.clone(), v.trim().to_string()).is_some() {
            return Err(format!("duplicate header {k}"));
        }
    }
    let len: usize = headers
        .get("content-length")
        .ok_or("no content-length")?
        .parse()
        .map_err(|_| "bad content-length")?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(Request {
        method,
        path,
        headers,
        body,
    })
}

/// A checked request: chunk id, samples, item platform, payload.
type Checked = (String, usize, Option<String>, serde_json::Value);

/// Check a request like Relay.
fn check(req: &Request) -> Result<Checked, String> {
    let want = |k: &str, v: &str| -> Result<(), String> {
        match req.headers.get(k) {
            Some(x) if x == v => Ok(()),
            other => Err(format!("header {k}: want {v:?}, got {other:?}")),
        }
    };
    if req.method != "POST" {
        return Err(format!("method {}", req.method));
    }
    if req.path != format!("/api/{PROJECT}/envelope/") {
        return Err(format!("path {}", req.path));
    }
    let ua = format!("profiler/{}", env!("CARGO_PKG_VERSION"));
    want(
        "x-sentry-auth",
        &format!("Sentry sentry_key={KEY}, sentry_version=7, sentry_client={ua}"),
    )?;
    want("content-type", "application/x-sentry-envelope")?;
    want("content-encoding", "gzip")?;
    want("user-agent", &ua)?;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&req.body[..])
        .read_to_end(&mut raw)
        .map_err(|e| format!("gunzip: {e}"))?;
    let env = parse_envelope(&raw)?;
    let keys: Vec<&String> = env
        .header
        .as_object()
        .ok_or("envelope header is not an object")?
        .keys()
        .collect();
    if keys
        .iter()
        .any(|k| !["sent_at", "sdk", "dsn"].contains(&k.as_str()))
    {
        return Err(format!("unexpected envelope header keys {keys:?}"));
    }
    let sent_at = env.header["sent_at"].as_str().ok_or("no sent_at")?;
    if sent_at.len() != 27 || !sent_at.ends_with('Z') {
        return Err(format!("sent_at {sent_at}"));
    }
    if env.items.len() != 1 {
        return Err(format!("{} items", env.items.len()));
    }
    let item = &env.items[0];
    if item.header["type"] != "profile_chunk" || item.header["content_type"] != "application/json" {
        return Err(format!("item header {}", item.header));
    }
    let platform = item.header["platform"].as_str().map(str::to_string);
    let payload: serde_json::Value =
        serde_json::from_slice(&item.payload).map_err(|e| e.to_string())?;
    validate_item(&payload, platform.as_deref())?;
    Ok((
        payload["chunk_id"].as_str().unwrap().to_string(),
        payload["profile"]["samples"].as_array().unwrap().len(),
        platform,
        payload,
    ))
}

fn handle(mut stream: TcpStream, st: &ServerState) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let at = Instant::now();
    let req = match read_request(&mut stream) {
        Ok(r) => r,
        Err(e) => {
            st.errors.lock().unwrap().push(format!("read: {e}"));
            return;
        }
    };
    // An application's SDK (sentry-python) sending to the same project: keep its items.
    if req
        .headers
        .get("x-sentry-auth")
        .is_some_and(|a| a.contains("sentry_client=sentry."))
    {
        let mut raw = Vec::new();
        if req.headers.get("content-encoding").map(String::as_str) == Some("gzip") {
            let _ = flate2::read::GzDecoder::new(&req.body[..]).read_to_end(&mut raw);
        } else {
            raw = req.body.clone();
        }
        match parse_envelope(&raw) {
            Ok(env) => {
                let mut items = st.sdk_items.lock().unwrap();
                for it in env.items {
                    let payload = serde_json::from_slice(&it.payload).unwrap_or_default();
                    items.push((it.header, payload));
                }
            }
            Err(e) => st.errors.lock().unwrap().push(format!("sdk envelope: {e}")),
        }
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        return;
    }
    let action = match check(&req) {
        Ok((chunk_id, samples, item_platform, payload)) => {
            let a = st
                .script
                .lock()
                .unwrap()
                .pop_front()
                .or_else(|| st.default.lock().unwrap().clone())
                .unwrap_or(reply(200));
            let status = match &a {
                Action::Reply { status, .. } => Some(*status),
                Action::Hang(_) => None,
            };
            st.received.lock().unwrap().push(Received {
                at,
                chunk_id,
                samples,
                status,
                item_platform,
                payload: Arc::new(payload),
            });
            a
        }
        Err(e) => {
            st.errors.lock().unwrap().push(e.clone());
            reply_with(400, &[], &e)
        }
    };
    match action {
        Action::Reply {
            status,
            headers,
            body,
        } => {
            let body = if body.is_empty() && status == 200 {
                "{}".to_string()
            } else {
                body
            };
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            resp.push_str(&body);
            let _ = stream.write_all(resp.as_bytes());
        }
        Action::Hang(d) => std::thread::sleep(d),
    }
}
