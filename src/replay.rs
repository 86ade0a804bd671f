//! A request body that can be sent again.
//!
//! [`ReplayBody`] wraps a request body so that a retry layer can send it on
//! more than one attempt. The first attempt streams the body as it arrives;
//! every data frame (and the trailers) it reads is kept in a buffer shared by
//! all handles, up to a byte limit, so that a later attempt can send the same
//! frames again from the start. Past the limit the buffer is freed and the
//! body is no longer replayable, but the attempt that is reading it still
//! sends it completely, once.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;
use crate::error::CallerError;

/// A request body that a retry layer can send again, buffering up to a
/// byte limit.
///
/// [`ReplayBody::new`] makes the first handle. It does not read the body
/// upfront: frames are passed on to whoever polls the handle as soon as the
/// wrapped body yields them, and a copy of each is kept in a buffer shared by
/// all handles. [`ReplayBody::try_clone`] makes another handle that sends the
/// body again from the start: it replays the buffered frames, then goes on
/// reading the wrapped body where the others left off. Every handle sees
/// exactly the wrapped body's frames, in order, even while an older attempt's
/// handle is still being polled by the HTTP client.
///
/// Once more than `limit` bytes of data have been read (or if the wrapped
/// body's [`size_hint`](Body::size_hint) says upfront that it is longer than
/// `limit`), the buffer is freed and nothing more is kept:
/// [`is_replayable`](ReplayBody::is_replayable) turns false and `try_clone`
/// returns `None`. The handle that is reading the body still sends all of it;
/// a handle that falls behind after that fails with an error instead of
/// sending wrong bytes. If the wrapped body fails, the handle that read the
/// failure gets the wrapped error, and the body is no longer replayable.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade::retry::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade::BoxError> {
/// let mut body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 64 * 1024);
///
/// // The first attempt streams the body...
/// let first = (&mut body).collect().await?.to_bytes();
/// assert_eq!(first, "hello");
///
/// // ...and a retry sends it again from the start.
/// let retry = body.try_clone().expect("5 bytes fit in the limit");
/// let again = retry.collect().await?.to_bytes();
/// assert_eq!(again, "hello");
/// # Ok(())
/// # }
/// ```
pub struct ReplayBody<B> {
    inner: Arc<Inner<B>>,
    /// Index of the next frame of the canonical sequence this handle sends.
    pos: usize,
    /// Data bytes this handle has sent so far.
    sent: u64,
    /// This handle has returned an error; it yields nothing more.
    failed: bool,
}

/// What all handles of one body share.
struct Inner<B> {
    state: Mutex<State<B>>,
    /// The tasks of every handle that is waiting for the wrapped body.
    waiters: Arc<Waiters>,
    /// A waker that wakes all of `waiters`; the wrapped body is always
    /// polled with it, so no waiting handle is forgotten when several
    /// handles poll it in turn.
    waker: Waker,
}

struct State<B> {
    /// The part of the wrapped body not read yet; `None` once it ended or
    /// failed.
    body: Option<Pin<Box<B>>>,
    /// The frames read so far, in order, while `!overflowed`.
    frames: Vec<Buffered>,
    /// How many frames have been read from the wrapped body.
    read: usize,
    /// How many data bytes have been read from the wrapped body.
    bytes: u64,
    /// The buffering limit, in bytes.
    limit: u64,
    /// More than `limit` bytes were (or will be) read: `frames` is freed and
    /// stays empty.
    overflowed: bool,
    /// The wrapped body returned `None`.
    ended: bool,
    /// The wrapped body returned an error after `read` frames.
    errored: bool,
}

/// One frame of the canonical sequence.
#[derive(Clone)]
enum Buffered {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// Why a handle could not send its body.
#[derive(Debug)]
enum ReplayError {
    /// The handle fell behind after the buffer was freed.
    NotBuffered { limit: u64 },
    /// The wrapped body failed while another handle was reading it.
    EarlierFailure,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::NotBuffered { limit } => write!(
                f,
                "request body cannot be replayed: it is larger than the replay buffer \
                 limit of {limit} bytes, and the part this attempt still needs was not kept"
            ),
            ReplayError::EarlierFailure => f.write_str("request body failed on an earlier attempt"),
        }
    }
}

impl StdError for ReplayError {}

/// The wakers of the tasks waiting for the wrapped body.
#[derive(Default)]
struct Waiters {
    wakers: Mutex<Vec<Waker>>,
}

impl Waiters {
    fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// Locks `mutex`, recovering the data if another thread panicked while
/// holding it: every update of the shared state is finished before anything
/// that could panic is called again, so the state is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B> ReplayBody<B>
where
    B: Body,
{
    /// Wraps `body`, keeping up to `limit` bytes of its data so that it can
    /// be sent again.
    ///
    /// Nothing is read here: the body streams through the returned handle
    /// as it is polled. If the body's [`size_hint`](Body::size_hint) already
    /// says it has more than `limit` bytes, nothing will ever be buffered and
    /// the handle is not replayable.
    pub fn new(body: B, limit: usize) -> Self {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let overflowed = body.size_hint().lower() > limit;
        // A body already at its end (a GET, most of the time) has nothing to
        // read or keep: no need to box it.
        let ended = body.is_end_stream();
        Self::from_state(State {
            body: (!ended).then(|| Box::pin(body)),
            frames: Vec::new(),
            read: 0,
            bytes: 0,
            limit,
            overflowed,
            ended,
            errored: false,
        })
    }
}

impl<B> ReplayBody<B> {
    /// Returns a body with no frames that is not replayable.
    ///
    /// A placeholder to leave behind when the one handle of a body that
    /// cannot be replayed is moved out: it sends nothing, and its
    /// [`try_clone`](Self::try_clone) returns `None`, so it is never
    /// mistaken for the real body.
    pub fn empty() -> Self {
        let state = State {
            body: None,
            frames: Vec::new(),
            read: 0,
            bytes: 0,
            limit: 0,
            overflowed: true,
            ended: true,
            errored: false,
        };
        Self::from_state(state)
    }

    fn from_state(state: State<B>) -> Self {
        let waiters = Arc::new(Waiters::default());
        let waker = Waker::from(Arc::clone(&waiters));
        ReplayBody {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                waiters,
                waker,
            }),
            pos: 0,
            sent: 0,
            failed: false,
        }
    }

    /// Returns another handle that sends the whole body again from the
    /// start, or `None` if the body is no longer replayable (see
    /// [`is_replayable`](Self::is_replayable)).
    ///
    /// This handle is not affected: it goes on from where it is.
    pub fn try_clone(&self) -> Option<Self> {
        if !self.is_replayable() {
            return None;
        }
        Some(ReplayBody {
            inner: Arc::clone(&self.inner),
            pos: 0,
            sent: 0,
            failed: false,
        })
    }

    /// Returns whether the body can still be sent again from the start.
    ///
    /// This turns false for good once more than `limit` bytes have been
    /// read (the buffer is then freed), if the body's size hint said upfront
    /// that it is longer than `limit`, or once the wrapped body has failed.
    pub fn is_replayable(&self) -> bool {
        let state = lock(&self.inner.state);
        !state.overflowed && !state.errored
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let inner = &*this.inner;
        let mut state = lock(&inner.state);

        // Behind the front: replay what was buffered.
        if this.pos < state.read {
            if state.overflowed {
                this.failed = true;
                let limit = state.limit;
                return Poll::Ready(Some(Err(ReplayError::NotBuffered { limit }.into())));
            }
            let frame = state.frames[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(send(&mut this.sent, frame))));
        }

        // At the front: read the wrapped body.
        if state.errored {
            this.failed = true;
            let error = CallerError::body(ReplayError::EarlierFailure);
            return Poll::Ready(Some(Err(error.into())));
        }
        loop {
            let Some(body) = state.body.as_mut() else {
                return Poll::Ready(None);
            };
            inner.waiters.register(cx.waker());
            let polled = body
                .as_mut()
                .poll_frame(&mut Context::from_waker(&inner.waker));
            let frame = match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    state.ended = true;
                    state.body = None;
                    inner.waiters.wake_all();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    state.errored = true;
                    state.body = None;
                    this.failed = true;
                    inner.waiters.wake_all();
                    // The caller's body failed: marked so, so that no layer
                    // blames the endpoint for it.
                    return Poll::Ready(Some(Err(CallerError::body(error).into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let frame = match frame.into_data() {
                Ok(mut data) => Buffered::Data(data.copy_to_bytes(data.remaining())),
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => Buffered::Trailers(trailers),
                    // A kind of frame this version does not know: skip it.
                    Err(_) => continue,
                },
            };
            state.record(&frame);
            this.pos = state.read;
            // Handles waiting at the front are behind now: let them replay.
            inner.waiters.wake_all();
            return Poll::Ready(Some(Ok(send(&mut this.sent, frame))));
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.failed {
            return true;
        }
        let state = lock(&self.inner.state);
        self.pos == state.read
            && !state.errored
            && (state.ended || state.body.as_ref().is_some_and(|b| b.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if self.failed {
            return SizeHint::with_exact(0);
        }
        let state = lock(&self.inner.state);
        // Data read from the wrapped body that this handle has not sent yet.
        let ahead = state.bytes.saturating_sub(self.sent);
        let mut hint = SizeHint::new();
        if state.errored {
            // The buffered part, then an error.
            hint.set_lower(ahead);
            return hint;
        }
        let rest = match &state.body {
            Some(body) => body.size_hint(),
            None => SizeHint::with_exact(0),
        };
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(ahead));
        }
        hint.set_lower(rest.lower().saturating_add(ahead));
        hint
    }
}

/// Turns a frame of the canonical sequence into one a handle sends, counting
/// its data bytes into `sent`.
fn send(sent: &mut u64, frame: Buffered) -> Frame<Bytes> {
    match frame {
        Buffered::Data(data) => {
            *sent = sent.saturating_add(data.len() as u64);
            Frame::data(data)
        }
        Buffered::Trailers(trailers) => Frame::trailers(trailers),
    }
}

impl<B> State<B> {
    /// Appends a frame just read from the wrapped body to the canonical
    /// sequence, freeing the buffer once it grows past the limit.
    fn record(&mut self, frame: &Buffered) {
        self.read += 1;
        if let Buffered::Data(data) = frame {
            self.bytes = self.bytes.saturating_add(data.len() as u64);
        }
        if self.overflowed {
            return;
        }
        if self.bytes > self.limit {
            self.overflowed = true;
            self.frames = Vec::new();
            return;
        }
        self.frames.push(frame.clone());
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.inner.state);
        f.debug_struct("ReplayBody")
            .field("position", &self.pos)
            .field("sent", &self.sent)
            .field("read", &state.read)
            .field("limit", &state.limit)
            .field("replayable", &(!state.overflowed && !state.errored))
            .field("ended", &state.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Full, StreamBody};
    use proptest::prelude::*;

    use super::*;

    type Chunk = Result<Frame<Bytes>, Infallible>;

    fn chunked(
        chunks: &[&'static [u8]],
    ) -> StreamBody<futures::stream::Iter<std::vec::IntoIter<Chunk>>> {
        let frames: Vec<Chunk> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    fn owned_chunks(
        chunks: &[Vec<u8>],
    ) -> StreamBody<futures::stream::Iter<std::vec::IntoIter<Chunk>>> {
        let frames: Vec<Chunk> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    /// Polls once with a no-op waker; the test bodies here are always ready.
    fn next<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        match Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(frame) => frame,
            Poll::Pending => panic!("test body unexpectedly pending"),
        }
    }

    /// Reads up to `n` frames, returning the data bytes read.
    fn read_frames<B: Body<Data = Bytes, Error = BoxError> + Unpin>(
        body: &mut B,
        n: usize,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n {
            match next(body) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        out.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("unexpected error: {e}"),
                None => break,
            }
        }
        out
    }

    /// Reads to the end: the data bytes and the trailers, or the first error.
    fn read_all<B: Body<Data = Bytes, Error = BoxError> + Unpin>(
        body: &mut B,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
        let mut out = Vec::new();
        let mut trailers = None;
        while let Some(frame) = next(body) {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => out.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((out, trailers))
    }

    #[test]
    fn handles_can_move_between_threads() {
        fn assert_send_sync_unpin<T: Send + Sync + Unpin + 'static>() {}
        assert_send_sync_unpin::<ReplayBody<Full<Bytes>>>();
        assert_send_sync_unpin::<ReplayBody<ChannelBody>>();
    }

    #[test]
    fn small_body_is_replayed_with_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames: Vec<Chunk> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let mut first = ReplayBody::new(StreamBody::new(futures::stream::iter(frames)), 1024);
        let second = first.try_clone().unwrap();
        let (data, got) = read_all(&mut first).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(got.as_ref(), Some(&trailers));
        assert!(first.is_end_stream());

        for mut handle in [second, first.try_clone().unwrap()] {
            assert_eq!(handle.size_hint().exact(), Some(11));
            assert!(!handle.is_end_stream());
            let (data, got) = read_all(&mut handle).unwrap();
            assert_eq!(data, b"hello world");
            assert_eq!(got.as_ref(), Some(&trailers));
            assert!(handle.is_end_stream());
            assert_eq!(handle.size_hint().exact(), Some(0));
        }
    }

    #[test]
    fn body_exactly_at_the_limit_is_replayable() {
        let mut first = ReplayBody::new(chunked(&[b"abc", b"de"]), 5);
        assert_eq!(read_all(&mut first).unwrap().0, b"abcde");
        assert!(first.is_replayable());
        let mut again = first.try_clone().unwrap();
        assert_eq!(read_all(&mut again).unwrap().0, b"abcde");
    }

    #[test]
    fn body_one_byte_over_is_sent_once_but_not_replayable() {
        let mut first = ReplayBody::new(chunked(&[b"abc", b"def"]), 5);
        let early = first.try_clone().unwrap();
        assert_eq!(read_all(&mut first).unwrap().0, b"abcdef");
        assert!(!first.is_replayable());
        assert!(first.try_clone().is_none());
        assert!(next(&mut first).is_none());

        // A handle made before the overflow that fell behind fails clearly.
        let mut early = early;
        let err = read_all(&mut early).unwrap_err();
        assert!(err.to_string().contains("limit of 5 bytes"), "{err}");
        assert!(early.is_end_stream());
    }

    #[test]
    fn exact_size_hint_over_the_limit_is_never_buffered() {
        let mut body = ReplayBody::new(Full::new(Bytes::from_static(b"0123456789")), 9);
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        assert_eq!(body.size_hint().exact(), Some(10));
        assert_eq!(read_all(&mut body).unwrap().0, b"0123456789");
        assert!(lock(&body.inner.state).frames.is_empty());
    }

    #[test]
    fn clone_after_failure_point_reads_the_whole_body() {
        let mut first = ReplayBody::new(chunked(&[b"ab", b"cd", b"ef"]), 100);
        assert_eq!(read_frames(&mut first, 2), b"abcd");
        let mut second = first.try_clone().unwrap();
        drop(first);
        assert_eq!(second.size_hint().lower(), 4);
        assert_eq!(read_all(&mut second).unwrap().0, b"abcdef");
    }

    #[test]
    fn older_handle_keeps_producing_correct_bytes() {
        let mut first = ReplayBody::new(chunked(&[b"a", b"b", b"c", b"d"]), 100);
        assert_eq!(read_frames(&mut first, 1), b"a");
        let mut second = first.try_clone().unwrap();
        // The new attempt overtakes the old one...
        assert_eq!(read_frames(&mut second, 3), b"abc");
        // ...which still sends the right bytes, partly replayed.
        assert_eq!(read_frames(&mut first, 1), b"b");
        assert_eq!(read_frames(&mut first, 1), b"c");
        assert_eq!(read_frames(&mut first, 1), b"d");
        assert_eq!(read_all(&mut second).unwrap().0, b"d");
        assert!(next(&mut first).is_none());
        assert!(first.is_end_stream() && second.is_end_stream());
    }

    #[test]
    fn body_error_is_reported() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ok"))),
            Err(std::io::Error::other("connection reset by client")),
        ];
        let mut first = ReplayBody::new(StreamBody::new(futures::stream::iter(frames)), 100);
        let mut second = first.try_clone().unwrap();
        // The caller's failure, marked so, with its cause.
        let err = read_all(&mut first).unwrap_err();
        assert!(err.is::<CallerError>(), "{err}");
        let cause = std::error::Error::source(&*err).unwrap();
        assert_eq!(cause.to_string(), "connection reset by client");
        assert!(first.is_end_stream());
        assert!(!first.is_replayable());
        assert!(first.try_clone().is_none());

        assert_eq!(read_frames(&mut second, 1), b"ok");
        let err = next(&mut second).unwrap().unwrap_err();
        assert!(err.is::<CallerError>(), "{err}");
        let cause = std::error::Error::source(&*err).unwrap();
        assert_eq!(
            cause.to_string(),
            "request body failed on an earlier attempt"
        );
        assert!(next(&mut second).is_none());
    }

    #[test]
    fn empty_placeholder_sends_nothing_and_is_not_replayable() {
        let mut body = ReplayBody::<Full<Bytes>>::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        assert!(next(&mut body).is_none());
    }

    #[test]
    fn poisoned_lock_is_recovered() {
        let body = ReplayBody::new(chunked(&[b"x"]), 10);
        let inner = Arc::clone(&body.inner);
        let _ = std::thread::spawn(move || {
            let _guard = inner.state.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(body.inner.state.is_poisoned());
        let mut body = body;
        assert_eq!(read_all(&mut body).unwrap().0, b"x");
    }

    /// A body fed through a channel, to test handles waiting concurrently.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn every_waiting_handle_is_woken() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let first = ReplayBody::new(ChannelBody(rx), 1024);
        let second = first.try_clone().unwrap();
        let a = tokio::spawn(async move { first.collect().await.map(|c| c.to_bytes()) });
        let b = tokio::spawn(async move { second.collect().await.map(|c| c.to_bytes()) });
        for chunk in ["one ", "two ", "three"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send(Bytes::from(chunk)).await.unwrap();
        }
        drop(tx);
        let within = Duration::from_secs(5);
        let a = tokio::time::timeout(within, a)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let b = tokio::time::timeout(within, b)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(a, "one two three");
        assert_eq!(b, "one two three");
    }

    /// One attempt in the property test: a handle, the data bytes it has
    /// sent, and how many frames it has read.
    struct Attempt<B> {
        body: ReplayBody<B>,
        sent: Vec<u8>,
        pos: usize,
    }

    proptest! {
        #[test]
        fn replays_match_the_original(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2000), 0..40),
            random_limit in 0usize..64 * 1024,
            // Or a limit within a byte of a chunk boundary: (boundary, -1..=1).
            near_boundary in prop::option::of((0usize..41, 0usize..3)),
            first_reads in 0usize..45,
            attempts in prop::collection::vec((0usize..45, any::<bool>()), 1..=3),
        ) {
            let original: Vec<u8> = chunks.concat();
            let n = chunks.len();
            let prefix = |frames: usize| -> usize { chunks.iter().take(frames).map(Vec::len).sum() };
            let limit = match near_boundary {
                Some((frames, delta)) => (prefix(frames) + delta).saturating_sub(1),
                None => random_limit,
            };

            // The first attempt reads `first_reads` frames: the failure point.
            let mut body = ReplayBody::new(owned_chunks(&chunks), limit);
            prop_assert!(body.is_replayable());
            let sent = read_frames(&mut body, first_reads);
            let pos = first_reads.min(n);
            prop_assert_eq!(&sent[..], &original[..prefix(pos)]);
            // Frames read from the wrapped body so far, in the model.
            let mut front = pos;
            let mut latest = Attempt { body, sent, pos };

            // Handles of earlier attempts that are kept alive.
            let mut kept = Vec::new();
            for (i, &(reads, keep_prev)) in attempts.iter().enumerate() {
                let replayable = prefix(front) <= limit;
                prop_assert_eq!(latest.body.is_replayable(), replayable);
                let clone = latest.body.try_clone();
                prop_assert_eq!(clone.is_some(), replayable);
                let Some(mut body) = clone else { break };
                prop_assert_eq!(body.size_hint().lower() as usize, prefix(front));

                // The last attempt reads to the end; the others stop early.
                let (sent, pos) = if i + 1 == attempts.len() {
                    let (sent, _) = read_all(&mut body).unwrap();
                    prop_assert!(body.is_end_stream());
                    (sent, n)
                } else {
                    (read_frames(&mut body, reads), reads.min(n))
                };
                prop_assert_eq!(&sent[..], &original[..prefix(pos)]);
                front = front.max(pos);
                let prev = std::mem::replace(&mut latest, Attempt { body, sent, pos });
                if keep_prev {
                    kept.push(prev);
                }
            }
            kept.push(latest);

            // Finish every live handle, the first one too if it is still
            // there: each yields exactly the original bytes, or fails because
            // it fell behind after the buffer was freed.
            for Attempt { mut body, mut sent, pos } in kept {
                let behind_unbuffered = pos < front && prefix(front) > limit;
                match read_all(&mut body) {
                    Ok((rest, _)) => {
                        prop_assert!(!behind_unbuffered);
                        sent.extend_from_slice(&rest);
                        prop_assert_eq!(&sent[..], &original[..]);
                        front = n;
                    }
                    Err(err) => {
                        prop_assert!(behind_unbuffered, "unexpected error: {}", err);
                        prop_assert!(err.to_string().contains("replay buffer limit"));
                    }
                }
                prop_assert!(body.is_end_stream());
            }
        }
    }
}
