//! A real gRPC service for the tests: a tiny `Greeter` proto written by hand
//! as `tonic-build` would generate it (prost messages, a client over
//! `tonic::client::Grpc`, a server over `tonic::server::Grpc`), so no protoc
//! is needed to build the tests; and [`GrpcServer`], that service served by
//! tonic's own server on 127.0.0.1, with a [`Fault`] switchable at run time
//! and a count of calls.
//!
//! ```text
//! package palisade.test;
//! service Greeter {
//!   rpc SayHello (HelloRequest) returns (HelloReply);
//!   rpc SayMany (HelloRequest) returns (stream HelloReply);  // `count` replies
//!   rpc Chat (stream HelloRequest) returns (stream HelloReply); // one reply each
//! }
//! message HelloRequest { string name = 1; uint32 count = 2; }
//! message HelloReply { string message = 1; string server = 2; uint32 seq = 3; }
//! ```
//!
//! No import from the rest of `tests/support`: the `tonic_client` example
//! includes this file too.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use http::HeaderMap;
use http::uri::PathAndQuery;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::{Code, GrpcMethod, Status};
use tonic_prost::ProstCodec;
use tower::Service;

/// What generated code calls `tonic::codegen::StdError` (that module needs
/// tonic's `codegen` feature, which nothing else here needs).
type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The service's full name.
pub const SERVICE: &str = "palisade.test.Greeter";
const SAY_HELLO: &str = "/palisade.test.Greeter/SayHello";
const SAY_MANY: &str = "/palisade.test.Greeter/SayMany";
const CHAT: &str = "/palisade.test.Greeter/Chat";

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How many replies `SayMany` streams back.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// One reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// `hello <name>`.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The address of the server that answered.
    #[prost(string, tag = "2")]
    pub server: String,
    /// The reply's number in its stream, from 0.
    #[prost(uint32, tag = "3")]
    pub seq: u32,
}

/// The client, as `tonic-build` would generate it: any channel (any
/// `GrpcService`) goes.
#[derive(Debug, Clone)]
pub struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> GreeterClient<T>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    /// A client over `channel`.
    pub fn new(channel: T) -> Self {
        GreeterClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))
    }

    /// `SayHello`: one reply.
    pub async fn say_hello(
        &mut self,
        request: impl tonic::IntoRequest<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, Status> {
        self.ready().await?;
        let mut req = request.into_request();
        req.extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "SayHello"));
        let path = PathAndQuery::from_static(SAY_HELLO);
        self.inner.unary(req, path, ProstCodec::default()).await
    }

    /// `SayMany`: `count` replies, streamed.
    pub async fn say_many(
        &mut self,
        request: impl tonic::IntoRequest<HelloRequest>,
    ) -> Result<tonic::Response<tonic::Streaming<HelloReply>>, Status> {
        self.ready().await?;
        let mut req = request.into_request();
        req.extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "SayMany"));
        let path = PathAndQuery::from_static(SAY_MANY);
        self.inner
            .server_streaming(req, path, ProstCodec::default())
            .await
    }

    /// `Chat`: a reply for each request, as it arrives (both directions
    /// stream at once).
    pub async fn chat(
        &mut self,
        requests: impl futures::Stream<Item = HelloRequest> + Send + 'static,
    ) -> Result<tonic::Response<tonic::Streaming<HelloReply>>, Status> {
        self.ready().await?;
        let mut req = tonic::Request::new(requests);
        req.extensions_mut()
            .insert(GrpcMethod::new(SERVICE, "Chat"));
        let path = PathAndQuery::from_static(CHAT);
        self.inner.streaming(req, path, ProstCodec::default()).await
    }

    /// A `SayMany` of `count`, read to its end: the sequence numbers
    /// received, and the status it failed with, if it did.
    pub async fn many(&mut self, count: u32) -> (Vec<u32>, Option<Status>) {
        let mut stream = match self.say_many(hello("many", count)).await {
            Ok(rsp) => rsp.into_inner(),
            Err(status) => return (Vec::new(), Some(status)),
        };
        let mut seqs = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(reply)) => seqs.push(reply.seq),
                Ok(None) => return (seqs, None),
                Err(status) => return (seqs, Some(status)),
            }
        }
    }
}

/// A request for `name`, asking for `count` streamed replies.
pub fn hello(name: impl Into<String>, count: u32) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        count,
    }
}

/// The builder of a palisade gRPC client.
pub type GrpcBuilder = palisade::stack::Builder<
    palisade::discover::Static,
    palisade::http::HttpEndpoints<palisade::stack::tonic::GrpcTransport>,
    palisade::classify::HttpClassify,
>;

/// The builder of a gRPC client named "greeter" over `addrs`.
pub fn builder(addrs: impl IntoIterator<Item = SocketAddr>) -> GrpcBuilder {
    palisade::Client::builder("greeter")
        .endpoints(addrs.into_iter().map(palisade::discover::Endpoint::from))
        .grpc()
}

/// Builds the client and waits until it sees its `n` endpoints.
pub async fn ready(builder: GrpcBuilder, n: usize) -> palisade::Grpc {
    let channel = builder.build().expect("client");
    tokio::time::timeout(
        Duration::from_secs(10),
        channel.wait_until(|c| c.endpoint_count() == n),
    )
    .await
    .expect("the client never saw every endpoint");
    channel
}

/// How a [`GrpcServer`] answers; switch with [`GrpcServer::set`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer every call.
    Normal,
    /// `UNAVAILABLE` as Trailers-Only: the status in the response head,
    /// no body.
    Unavailable,
    /// Send `messages` replies (of what the call would send), then end with
    /// `code` in the trailers. A unary call with `messages: 1` gets its
    /// reply and then the failure.
    FailAfter {
        /// Replies sent before the failure.
        messages: u32,
        /// The status in the trailers.
        code: Code,
    },
    /// Send `messages` replies, then (50 ms later, so that they leave
    /// first) reset the stream: RST_STREAM INTERNAL_ERROR, as the response
    /// body fails on the server.
    ResetAfter {
        /// Replies sent before the reset.
        messages: u32,
    },
    /// Answer normally, but wait this long before each reply.
    Slow(Duration),
}

const NORMAL: u8 = 0;
const UNAVAILABLE: u8 = 1;
const FAIL_AFTER: u8 = 2;
const RESET_AFTER: u8 = 3;
const SLOW: u8 = 4;

/// A server's shared state: its fault (a mode and its parameters, the
/// parameters written before the mode) and its counts.
#[derive(Debug)]
struct Control {
    addr: SocketAddr,
    mode: AtomicU8,
    messages: AtomicU32,
    code: AtomicI32,
    delay_us: AtomicU64,
    calls: AtomicU64,
    /// Replies the streaming methods have produced (handed to tonic).
    produced: AtomicU64,
}

impl Control {
    fn set(&self, fault: Fault) {
        let mode = match fault {
            Fault::Normal => NORMAL,
            Fault::Unavailable => UNAVAILABLE,
            Fault::FailAfter { messages, code } => {
                self.messages.store(messages, Ordering::Relaxed);
                self.code.store(code as i32, Ordering::Relaxed);
                FAIL_AFTER
            }
            Fault::ResetAfter { messages } => {
                self.messages.store(messages, Ordering::Relaxed);
                RESET_AFTER
            }
            Fault::Slow(delay) => {
                let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
                self.delay_us.store(us, Ordering::Relaxed);
                SLOW
            }
        };
        self.mode.store(mode, Ordering::Release);
    }

    fn fault(&self) -> Fault {
        let mode = self.mode.load(Ordering::Acquire);
        let messages = self.messages.load(Ordering::Relaxed);
        match mode {
            UNAVAILABLE => Fault::Unavailable,
            FAIL_AFTER => Fault::FailAfter {
                messages,
                code: Code::from_i32(self.code.load(Ordering::Relaxed)),
            },
            RESET_AFTER => Fault::ResetAfter { messages },
            SLOW => Fault::Slow(Duration::from_micros(self.delay_us.load(Ordering::Relaxed))),
            _ => Fault::Normal,
        }
    }
}

/// The `Greeter` service on tonic's server, on 127.0.0.1; stopped when
/// dropped.
pub struct GrpcServer {
    control: Arc<Control>,
    stop: Option<oneshot::Sender<()>>,
    /// Set to cut every connection: see [`GrpcServer::kill`].
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GrpcServer {
    /// Starts a server on a free port of 127.0.0.1, answering normally.
    pub async fn spawn() -> GrpcServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let control = Arc::new(Control {
            addr,
            mode: AtomicU8::new(NORMAL),
            messages: AtomicU32::new(0),
            code: AtomicI32::new(0),
            delay_us: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            produced: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let (cut, cut_rx) = watch::channel(false);
        let service = Greeter(control.clone());
        // TCP_NODELAY, as tonic's own `serve` sets by default: without it,
        // Nagle's algorithm holds a reply's last frame back ~40 ms.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(move |tcp| tcp.map(|io| Cuttable::new(io, cut_rx.clone())));
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("gRPC test server {addr}: {e}");
            }
        });
        GrpcServer {
            control,
            stop: Some(stop),
            cut,
            task,
        }
    }

    /// Starts `n` servers.
    pub async fn fleet(n: usize) -> Vec<GrpcServer> {
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            servers.push(GrpcServer::spawn().await);
        }
        servers
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.control.addr
    }

    /// Changes how it answers, from the next call on.
    pub fn set(&self, fault: Fault) {
        self.control.set(fault);
    }

    /// Replies its streaming methods have produced so far: with
    /// backpressure, no more than the transport can hold beyond what the
    /// caller has read.
    pub fn produced(&self) -> u64 {
        self.control.produced.load(Ordering::Relaxed)
    }

    /// Calls received (every method, whatever the fault).
    pub fn calls(&self) -> u64 {
        self.control.calls.load(Ordering::Relaxed)
    }

    /// Reads [`GrpcServer::calls`], and goes on reading it after the
    /// server is stopped or killed.
    pub fn call_counter(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let control = self.control.clone();
        move || control.calls.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets calls in flight finish, and waits for that.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl GrpcServer {
    /// Dies as a killed process does: stops accepting (connections are
    /// refused from now on) and cuts every connection it has, with the
    /// calls in flight on them; no GOAWAY.
    pub fn kill(self) {
        let _ = self.cut.send(true);
        self.task.abort();
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server's connection, cut (every read and write fails, so that hyper
/// drops it and the socket closes) once its server is killed.
struct Cuttable {
    io: tokio::net::TcpStream,
    /// Ends when the server is killed; `None` once it has.
    killed: Option<BoxFuture<'static, ()>>,
}

impl Cuttable {
    fn new(io: tokio::net::TcpStream, mut cut: watch::Receiver<bool>) -> Cuttable {
        let killed = Box::pin(async move {
            if cut.wait_for(|cut| *cut).await.is_err() {
                // The server was dropped, not killed: leave the connection be.
                std::future::pending::<()>().await;
            }
        });
        Cuttable {
            io,
            killed: Some(killed),
        }
    }

    /// Whether the server was killed (registering for the news if not).
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(killed) = &mut self.killed {
            if killed.as_mut().poll(cx).is_pending() {
                return false;
            }
            self.killed = None;
        }
        true
    }
}

fn cut_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "server killed")
}

impl AsyncRead for Cuttable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Cuttable {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// An address on 127.0.0.1 where nothing listens: connections are refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local address")
}

/// The server side: routes by path to `tonic::server::Grpc`, as generated
/// servers do, and applies the fault.
#[derive(Clone)]
struct Greeter(Arc<Control>);

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let control = self.0.clone();
        Box::pin(async move {
            control.calls.fetch_add(1, Ordering::Relaxed);
            let fault = control.fault();
            let delay = match fault {
                Fault::Unavailable => {
                    return Ok(Status::unavailable("injected: unavailable").into_http());
                }
                Fault::Slow(delay) => delay,
                _ => Duration::ZERO,
            };
            let server = control.addr.to_string();
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            let rsp = match req.uri().path() {
                SAY_HELLO => {
                    let handler = tower::service_fn(move |r: tonic::Request<HelloRequest>| {
                        let server = server.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, Status>(tonic::Response::new(reply(&r.into_inner(), server, 0)))
                        }
                    });
                    grpc.unary(handler, req).await
                }
                SAY_MANY => {
                    let control = control.clone();
                    let handler = tower::service_fn(move |r: tonic::Request<HelloRequest>| {
                        let server = server.clone();
                        let control = control.clone();
                        async move {
                            let ask = r.into_inner();
                            let replies: BoxStream<'static, Result<HelloReply, Status>> =
                                stream::iter(0..ask.count)
                                    .then(move |seq| {
                                        let reply = reply(&ask, server.clone(), seq);
                                        let control = control.clone();
                                        async move {
                                            tokio::time::sleep(delay).await;
                                            control.produced.fetch_add(1, Ordering::Relaxed);
                                            Ok(reply)
                                        }
                                    })
                                    .boxed();
                            Ok::<_, Status>(tonic::Response::new(replies))
                        }
                    });
                    grpc.server_streaming(handler, req).await
                }
                CHAT => {
                    let handler = tower::service_fn(
                        move |r: tonic::Request<tonic::Streaming<HelloRequest>>| {
                            let server = server.clone();
                            async move {
                                let replies: BoxStream<'static, Result<HelloReply, Status>> = r
                                    .into_inner()
                                    .enumerate()
                                    .map(move |(seq, ask)| {
                                        let seq = u32::try_from(seq).unwrap_or(u32::MAX);
                                        ask.map(|ask| reply(&ask, server.clone(), seq))
                                    })
                                    .boxed();
                                Ok::<_, Status>(tonic::Response::new(replies))
                            }
                        },
                    );
                    grpc.streaming(handler, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(match fault {
                Fault::FailAfter { messages, code } => {
                    let status = Status::new(code, "injected: failed after replies");
                    rsp.map(|b| Body::new(Cut::new(b, messages, Some(status))))
                }
                Fault::ResetAfter { messages } => {
                    rsp.map(|b| Body::new(Cut::new(b, messages, None)))
                }
                _ => rsp,
            })
        })
    }
}

fn reply(ask: &HelloRequest, server: String, seq: u32) -> HelloReply {
    HelloReply {
        message: format!("hello {}", ask.name),
        server,
        seq,
    }
}

/// How long a reset waits after the last message it lets through.
const RESET_PAUSE: Duration = Duration::from_millis(50);

/// A response body cut after `after` gRPC messages (counted by their
/// 5-byte length prefix, however the encoder grouped them into frames):
/// then trailers with `status`, or, with no status, an error, which makes
/// the server reset the stream. A reset drops what the server's HTTP/2
/// connection still has queued for the stream, so it comes [`RESET_PAUSE`]
/// after the last message was handed over.
struct Cut {
    inner: Body,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    after: u32,
    status: Option<Status>,
    /// Whole messages passed on.
    seen: u32,
    /// Bytes left of the current message's payload.
    payload: usize,
    /// The current message's prefix, as far as read.
    prefix: Vec<u8>,
    done: bool,
}

impl Cut {
    fn new(inner: Body, after: u32, status: Option<Status>) -> Cut {
        Cut {
            inner,
            pause: None,
            after,
            status,
            seen: 0,
            payload: 0,
            prefix: Vec::with_capacity(5),
            done: false,
        }
    }

    /// How many bytes of `data` to pass on before the cut (all of it when
    /// the cut is not reached), counting messages as they complete.
    fn keep(&mut self, data: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < data.len() {
            if self.payload == 0 {
                let take = (5 - self.prefix.len()).min(data.len() - at);
                self.prefix.extend_from_slice(&data[at..at + take]);
                at += take;
                if self.prefix.len() < 5 {
                    break;
                }
                let mut len = &self.prefix[1..5];
                self.payload = len.get_u32() as usize;
                self.prefix.clear();
            } else {
                let take = self.payload.min(data.len() - at);
                at += take;
                self.payload -= take;
            }
            if self.payload == 0 && self.prefix.is_empty() {
                self.seen += 1;
                if self.seen >= self.after {
                    return Some(at);
                }
            }
        }
        None
    }

    fn end(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.status.is_none() {
            let pause = self
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RESET_PAUSE)));
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.done = true;
        Poll::Ready(Some(match self.status.take() {
            Some(status) => {
                let mut trailers = HeaderMap::new();
                status
                    .add_header(&mut trailers)
                    .expect("a status fits in headers");
                Ok(Frame::trailers(trailers))
            }
            None => Err(Status::internal("injected: stream reset")),
        }))
    }
}

impl http_body::Body for Cut {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.seen >= this.after {
            return this.end(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            // The call sent fewer replies, or ended with its own trailers:
            // the fault replaces its end.
            Poll::Ready(None) => this.end(cx),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    if let Some(n) = this.keep(&data) {
                        data.truncate(n);
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(_trailers) => this.end(cx),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
        }
    }
}
