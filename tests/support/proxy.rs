//! The `palisade proxy` binary as a child process, and a plain HTTP client
//! to talk to it (used by `proxy_bin.rs`, `reliability.rs` and `soak.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ID_HEADER, Outcome, Sender, read_body};

/// A running `palisade proxy` process; killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    /// What it logged, line by line, if started with
    /// [`Proxy::start_logging`]; empty otherwise.
    pub logs: Arc<Mutex<Vec<String>>>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh temporary config file path.
pub fn config_path() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("palisade-test-{}-{n}.toml", std::process::id()))
}

/// A config with listener and admin on free ports, a fast file watch, and
/// `body` appended (services and routes).
pub fn config_text(body: &str) -> String {
    format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [server]\nwatch_interval = \"100ms\"\ngrace_period = \"5s\"\nmax_header_bytes = 8192\n\n{body}"
    )
}

/// [`config_text`]`(body)` with the lines `extra` added to its `[server]`
/// table.
pub fn config_with_server(body: &str, extra: &str) -> String {
    config_text(body).replace(
        "max_header_bytes = 8192",
        &format!("max_header_bytes = 8192\n{extra}"),
    )
}

/// A `[[services]]` table named `name` over `backends`.
pub fn service(name: &str, backends: &[SocketAddr]) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[services]]\nname = \"{name}\"\nendpoints = [{}]\n\n",
        endpoints.join(", ")
    )
}

impl Proxy {
    /// Starts the proxy on [`config_text`]`(body)`.
    pub fn start(body: &str) -> Proxy {
        Proxy::start_with(&config_text(body))
    }

    /// Starts the proxy on exactly `text`, and waits for its first line
    /// (which names the addresses it bound).
    pub fn start_with(text: &str) -> Proxy {
        Proxy::spawn(text, false)
    }

    /// Like [`Proxy::start_with`], with the proxy's own log lines down to
    /// `info` collected in [`Proxy::logs`] (and passed on to stderr).
    pub fn start_logging(text: &str) -> Proxy {
        Proxy::spawn(text, true)
    }

    /// Like [`Proxy::start_with`], started with its soft descriptor limit
    /// lowered to `soft` (through `sh -c 'ulimit -Sn …; exec …'`).
    pub fn start_with_soft_nofile(text: &str, soft: u64) -> Proxy {
        Proxy::spawn_with(text, false, Some(soft))
    }

    fn spawn(text: &str, logging: bool) -> Proxy {
        Proxy::spawn_with(text, logging, None)
    }

    fn spawn_with(text: &str, logging: bool, soft_nofile: Option<u64>) -> Proxy {
        let config = config_path();
        std::fs::write(&config, text).unwrap();
        let bin = env!("CARGO_BIN_EXE_palisade");
        let mut command = match soft_nofile {
            None => Command::new(bin),
            Some(soft) => {
                let mut sh = Command::new("sh");
                sh.args([
                    "-c",
                    &format!("ulimit -Sn {soft} && exec \"$0\" \"$@\""),
                    bin,
                ]);
                sh
            }
        };
        command
            .args(["proxy", "--config"])
            .arg(&config)
            .stdout(Stdio::piped());
        if logging {
            command
                .env("RUST_LOG", "warn,palisade::proxy=info")
                .stderr(Stdio::piped());
        } else {
            command.stderr(Stdio::inherit());
        }
        let mut child = command.spawn().expect("start palisade");
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "palisade proxy: listening on 127.0.0.1:X (admin 127.0.0.1:Y)"
        let listen = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        let admin = line
            .split("(admin ")
            .nth(1)
            .and_then(|r| r.strip_suffix(")\n"))
            .unwrap()
            .parse()
            .unwrap();
        Proxy {
            child,
            listen,
            admin,
            config,
            logs,
        }
    }

    /// The logged lines that contain every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> Vec<String> {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs.iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    /// Replaces the config file with [`config_text`]`(body)`.
    pub fn rewrite(&self, body: &str) {
        std::fs::write(&self.config, config_text(body)).unwrap();
    }

    /// Sends a signal (`"-TERM"`, `"-HUP"`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The process's resident set size in KiB (`VmRSS` in
    /// `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A plain hyper-util client (no palisade in it).
pub type Plain = HttpClient<HttpConnector, Full<Bytes>>;

/// A [`Plain`] client with hyper-util's defaults.
pub fn plain() -> Plain {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

/// GETs `path` from `addr`: status, headers, body.
pub async fn get(client: &Plain, addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let rsp = client.request(req).await.expect("request");
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `check` every 50 ms for up to 10 s.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}

/// Waits until the proxy's admin `/ready` says 200.
pub async fn ready(client: &Plain, proxy: &Proxy) {
    eventually(async || get(client, proxy.admin, "/ready").await.0 == 200).await;
}

/// Sends through the proxy at `addr` with a [`Plain`] client, the id in
/// [`ID_HEADER`].
pub fn via_proxy(client: &Plain, addr: SocketAddr) -> Sender {
    let client = client.clone();
    Arc::new(move |method: Method, id: String| {
        let client = client.clone();
        Box::pin(async move { send(&client, addr, method, &id).await })
    })
}

/// Like [`via_proxy`], but a request whose connection was refused (nothing
/// was sent) is sent again after 10 ms, as a client riding out a restart
/// would; the returned map counts the refusals per id.
pub fn via_proxy_resending_refused(
    client: &Plain,
    addr: SocketAddr,
) -> (Sender, Arc<Mutex<HashMap<String, u32>>>) {
    let refusals = Arc::new(Mutex::new(HashMap::new()));
    let client = client.clone();
    let counts = refusals.clone();
    let sender: Sender = Arc::new(move |method: Method, id: String| {
        let (client, counts) = (client.clone(), counts.clone());
        Box::pin(async move {
            loop {
                match send(&client, addr, method.clone(), &id).await {
                    Outcome::Transport { unsent: true, .. } => {
                        *counts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id.clone())
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    outcome => return outcome,
                }
            }
        })
    });
    (sender, refusals)
}

async fn send(client: &Plain, addr: SocketAddr, method: Method, id: &str) -> Outcome {
    let body = if method == Method::POST {
        Bytes::from_static(b"payload")
    } else {
        Bytes::new()
    };
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .header(ID_HEADER, id)
        .body(Full::new(body))
        .expect("request");
    match client.request(req).await {
        Ok(rsp) => read_body(rsp).await,
        Err(e) => Outcome::Transport {
            unsent: e.is_connect(),
            error: format!("{e:?}"),
        },
    }
}

/// A counter from the proxy's `/metrics` (`name{labels} value`), 0 if
/// absent.
pub async fn metric(client: &Plain, proxy: &Proxy, series: &str) -> u64 {
    let (_, _, text) = get(client, proxy.admin, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Sends raw bytes and returns the status code of the response.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    status_of(&mut stream).await
}

/// The status of the next response head on `stream`.
pub async fn status_of(stream: &mut TcpStream) -> u16 {
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{head:?}"))
}

/// A request head of exactly `len` bytes: request line, `Host`, a padding
/// header, the blank line.
pub fn head(len: usize) -> Vec<u8> {
    let start = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ";
    let pad = len - start.len() - "\r\n\r\n".len();
    format!("{start}{}\r\n\r\n", "a".repeat(pad)).into_bytes()
}

/// Whether the proxy closes `stream` within 5 s (it reads to its end).
pub async fn closed(mut stream: TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// Asserts that a new connection to `addr` sending `request` is closed
/// without a byte of answer (within 5 s): refused over a connection cap.
pub async fn refused_at_once(addr: SocketAddr, request: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was held open, not refused");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// Serves every connection to a fresh port of 127.0.0.1 with `handle`, each
/// on its own task: the test backends below that hyper's server cannot
/// play.
pub async fn serve_raw<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}
