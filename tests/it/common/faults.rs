//! A fault-injecting HTTP proxy between the agent and a real S3 server (moto), on
//! 127.0.0.1. On a configurable share of requests it answers 500 InternalError or
//! 503 SlowDown itself, resets the connection before or after the server handled the
//! request, cuts a response body in the middle, or stalls. Everything else passes through
//! unchanged, so the agent talks to a real S3 implementation through a bad network.
//!
//! It reads one request per connection (moto answers with `Connection: close`, so the
//! client opens a new connection per request anyway) and counts what it did, so a test can
//! check that the faults it meant to inject really happened.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{S3Server, TestCommand};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// 500 InternalError from the proxy; the server never sees the request.
    ServerError,
    /// 503 SlowDown (S3's throttling answer); the server never sees the request.
    SlowDown,
    /// The connection is reset before the request reaches the server.
    Reset,
    /// The server handles the request, then the connection is reset before the answer:
    /// the client cannot know its request took effect.
    LostResponse,
    /// The answer's head and part of its body arrive, then the connection is reset.
    CutBody,
    /// The answer is held back for the stall time, then sent whole (a slow server).
    Stall,
    /// Part of the body arrives, then nothing for the stall time, then a reset.
    StallBody,
}

pub const ALL_FAULTS: &[Fault] = &[
    Fault::ServerError,
    Fault::SlowDown,
    Fault::Reset,
    Fault::LostResponse,
    Fault::CutBody,
    Fault::Stall,
    Fault::StallBody,
];

/// Which requests a forced fault applies to.
#[derive(Debug, Clone)]
pub struct Match {
    pub method: &'static str,
    /// A substring of the request target (path and query).
    pub target: &'static str,
}

struct Config {
    rate: f64,
    kinds: Vec<Fault>,
    stall: Duration,
    rng: StdRng,
    /// Faults for the next requests that match, before any random one.
    forced: VecDeque<(Match, Fault)>,
    /// Request headers (lower case) removed before a request reaches the server: a server
    /// that ignores them.
    dropped_headers: Vec<String>,
    /// Requests to keep a copy of, as sent (see [`FaultProxy::record`]).
    recording: Vec<Match>,
}

/// What the proxy saw and did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub requests: u64,
    pub injected: BTreeMap<String, u64>,
    /// Faults injected, with the request each hit.
    pub log: Vec<String>,
    /// The requests that matched [`FaultProxy::record`], in the order they arrived.
    pub recorded: Vec<Recorded>,
}

/// A request as the client sent it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Header lines, names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Stats {
    pub fn faults(&self) -> u64 {
        self.injected.values().sum()
    }

    pub fn count(&self, fault: Fault) -> u64 {
        self.injected
            .get(&format!("{fault:?}"))
            .copied()
            .unwrap_or(0)
    }
}

struct Shared {
    upstream: u16,
    config: Mutex<Config>,
    stats: Mutex<Stats>,
}

pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy in front of `server` that injects nothing until told to.
    pub fn start(server: &S3Server, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream: server.port,
            config: Mutex::new(Config {
                rate: 0.0,
                kinds: ALL_FAULTS.to_vec(),
                stall: Duration::from_secs(2),
                rng: StdRng::seed_from_u64(seed),
                forced: VecDeque::new(),
                dropped_headers: Vec::new(),
                recording: Vec::new(),
            }),
            stats: Mutex::new(Stats::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let shared = shared.clone();
                            std::thread::spawn(move || serve(client, &shared));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("fault proxy: accept failed: {e}"),
                    }
                }
            })
        };
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            shared,
            stop,
            listener: Some(thread),
        }
    }

    /// Injects one of `kinds` into a `rate` share (0.0–1.0) of requests from now on.
    pub fn set_faults(&self, rate: f64, kinds: &[Fault]) {
        let mut config = self.shared.config.lock().unwrap();
        config.rate = rate;
        config.kinds = kinds.to_vec();
    }

    /// Removes the request headers `names` (any case) before requests reach the server,
    /// which then behaves as a server that does not know them (e.g. `if-match`).
    pub fn drop_request_headers(&self, names: &[&str]) {
        self.shared.config.lock().unwrap().dropped_headers =
            names.iter().map(|n| n.to_ascii_lowercase()).collect();
    }

    /// Keeps a copy of every request from now on whose method is `method` and whose target
    /// contains `target` (`Stats::recorded`): what the client really sent.
    pub fn record(&self, method: &'static str, target: &'static str) {
        self.shared
            .config
            .lock()
            .unwrap()
            .recording
            .push(Match { method, target });
    }

    /// How long `Stall` holds an answer and `StallBody` holds a body.
    pub fn set_stall(&self, stall: Duration) {
        self.shared.config.lock().unwrap().stall = stall;
    }

    /// Injects `fault` into the next request that matches, whatever the rate.
    pub fn force(&self, method: &'static str, target: &'static str, fault: Fault) {
        self.shared
            .config
            .lock()
            .unwrap()
            .forced
            .push_back((Match { method, target }, fault));
    }

    /// Drops the forced faults that no request has matched yet.
    pub fn clear_forced(&self) {
        self.shared.config.lock().unwrap().forced.clear();
    }

    /// Forced faults that no request has matched yet.
    pub fn pending_forced(&self) -> usize {
        self.shared.config.lock().unwrap().forced.len()
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats.lock().unwrap().clone()
    }

    /// Sends an agent pointed at the server (`S3Server::agent`) through this proxy.
    pub fn configure(&self, command: &mut super::TestCommand) {
        command.env("GWB_S3_ENDPOINT", &self.endpoint);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.listener.take() {
            let _ = thread.join();
        }
    }
}

struct Request {
    method: String,
    target: String,
    /// The head and body exactly as received.
    raw: Vec<u8>,
}

fn serve(client: TcpStream, shared: &Shared) {
    // Bound every wait, so a test that goes wrong cannot leave threads hanging forever.
    client
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let Some(mut request) = read_request(&mut reader) else {
        return;
    };
    record_if_asked(shared, &request);
    let dropped = shared.config.lock().unwrap().dropped_headers.clone();
    if !dropped.is_empty() {
        request.raw = without_headers(&request.raw, &dropped);
    }
    let mut client = client;
    let (fault, stall) = decide(shared, &request);
    match fault {
        None => {
            if let Some(response) = forward(shared.upstream, &request) {
                let _ = client.write_all(&response);
            }
        }
        Some(Fault::ServerError) => respond_error(&mut client, 500, "InternalError"),
        Some(Fault::SlowDown) => respond_error(&mut client, 503, "SlowDown"),
        Some(Fault::Reset) => reset(client),
        Some(Fault::LostResponse) => {
            forward(shared.upstream, &request);
            reset(client);
        }
        Some(Fault::Stall) => {
            let response = forward(shared.upstream, &request);
            std::thread::sleep(stall);
            if let Some(response) = response {
                let _ = client.write_all(&response);
            }
        }
        Some(fault @ (Fault::CutBody | Fault::StallBody)) => {
            let Some(response) = forward(shared.upstream, &request) else {
                return reset(client);
            };
            let head = head_length(&response);
            let body = response.len() - head;
            // Somewhere strictly inside the body (an empty body is cut after the head).
            let cut = head + if body > 1 { 1 + body / 3 } else { 0 };
            let _ = client.write_all(&response[..cut]);
            let _ = client.flush();
            if fault == Fault::StallBody {
                std::thread::sleep(stall);
            }
            reset(client);
        }
    }
}

fn record_if_asked(shared: &Shared, request: &Request) {
    let wanted = shared
        .config
        .lock()
        .unwrap()
        .recording
        .iter()
        .any(|m| m.method == request.method && request.target.contains(m.target));
    if !wanted {
        return;
    }
    let end = head_length(&request.raw);
    let head = String::from_utf8_lossy(&request.raw[..end]);
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    shared.stats.lock().unwrap().recorded.push(Recorded {
        method: request.method.clone(),
        target: request.target.clone(),
        headers,
        body: request.raw[end..].to_vec(),
    });
}

/// The request without the header lines named in `dropped` (lower case).
fn without_headers(raw: &[u8], dropped: &[String]) -> Vec<u8> {
    let end = head_length(raw);
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut kept = String::new();
    for line in head.split_inclusive("\r\n") {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !dropped.contains(&name) {
            kept.push_str(line);
        }
    }
    let mut out = kept.into_bytes();
    out.extend_from_slice(&raw[end..]);
    out
}

/// Picks the fault for this request: a forced one that matches, else a random draw.
fn decide(shared: &Shared, request: &Request) -> (Option<Fault>, Duration) {
    let mut config = shared.config.lock().unwrap();
    let forced = config
        .forced
        .iter()
        .position(|(m, _)| m.method == request.method && request.target.contains(m.target));
    let fault = match forced {
        Some(index) => config.forced.remove(index).map(|(_, fault)| fault),
        None => {
            let (rate, kinds) = (config.rate, config.kinds.len());
            if kinds > 0 && config.rng.random_bool(rate.clamp(0.0, 1.0)) {
                let index = config.rng.random_range(0..kinds);
                Some(config.kinds[index])
            } else {
                None
            }
        }
    };
    let stall = config.stall;
    drop(config);
    let mut stats = shared.stats.lock().unwrap();
    stats.requests += 1;
    if let Some(fault) = fault {
        *stats.injected.entry(format!("{fault:?}")).or_default() += 1;
        stats
            .log
            .push(format!("{fault:?} {} {}", request.method, request.target));
    }
    (fault, stall)
}

/// Reads one HTTP/1.1 request (head, then a Content-Length body).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut raw = Vec::new();
    let mut content_length = 0usize;
    let mut first = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        raw.extend_from_slice(line.as_bytes());
        if first.is_empty() {
            first = line.trim_end().to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            content_length = value.trim().parse().ok()?;
        }
        assert!(
            !lower.starts_with("transfer-encoding:"),
            "fault proxy: chunked request bodies are not supported: {first}"
        );
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body).ok()?;
    raw.extend_from_slice(&body);
    let mut parts = first.split(' ');
    Some(Request {
        method: parts.next()?.to_string(),
        target: parts.next()?.to_string(),
        raw,
    })
}

/// Sends the request to the server and returns its whole answer (the server closes the
/// connection after it).
fn forward(upstream: u16, request: &Request) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    server
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    server.write_all(&request.raw).ok()?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).ok()?;
    Some(response)
}

fn head_length(response: &[u8]) -> usize {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4)
}

fn respond_error(client: &mut TcpStream, status: u16, code: &str) {
    let reason = if status == 503 {
        "Service Unavailable"
    } else {
        "Internal Server Error"
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test's fault proxy</Message><RequestId>fault</RequestId></Error>"
    );
    let _ = write!(
        client,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Write);
}

/// Closes with a TCP RST instead of a clean FIN, as a crashed peer or a middlebox would.
fn reset(client: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized option value.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(client);
}

/// A bucket on a real S3 server (moto), with a fault proxy in front of it that injects
/// nothing until told to; the repository is `s3://<bucket>/<prefix>`.
pub struct Bucket {
    pub server: S3Server,
    pub proxy: FaultProxy,
    pub repo: String,
}

impl Bucket {
    /// The repository `s3://<name>/ghostwire`; `seed` drives the proxy's random faults.
    pub fn new(name: &str, seed: u64) -> Self {
        Self::with_prefix(name, "ghostwire", seed)
    }

    pub fn with_prefix(name: &str, prefix: &str, seed: u64) -> Self {
        let server = S3Server::with_bucket(name);
        let proxy = FaultProxy::start(&server, seed);
        let repo = format!("s3://{name}/{prefix}");
        Self {
            server,
            proxy,
            repo,
        }
    }

    /// The agent talking to the server directly.
    pub fn direct(&self) -> TestCommand {
        self.server.agent(&self.repo)
    }

    /// The agent talking to the server through the proxy.
    pub fn through_proxy(&self) -> TestCommand {
        let mut agent = self.direct();
        self.proxy.configure(&mut agent);
        agent
    }
}
