//! The serve loop: accept connections, read request lines, answer them in order.
//!
//! Every stage's server is this loop with a different [`Handler`]. The loop owns everything
//! about connections (framing, parsing, size limits, ordering, flushing, shutdown); a handler
//! only turns an [`Op`] into a future of its [`Outcome`].
//!
//! Within one connection, requests are started as soon as they are read and their futures run
//! concurrently (a replicated handler may need a round trip to a majority), but responses are
//! written strictly in request order. Reads run together and writes run together, but a read
//! is started only once the writes sent before it on its connection are answered, and a write
//! only once the reads before it are: a pipelined `put` then `get` of a key reads what the
//! put wrote, and a `get` then `put` does not, as if each connection's requests ran one at a
//! time (Redis pipelines behave so). Requests of one kind overlap; writes keep their order
//! through the log. A membership change or a leadership transfer overlaps nothing: what
//! follows it waits for its answer, and it for what came before. Responses are buffered and flushed once nothing more is
//! ready, so a pipelined burst costs a few syscalls, not one per request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, Either};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use crate::codec::{CodecError, JsonLinesCodec};
use crate::protocol::{Failure, Limits, Op, Outcome, Request, RequestId, Response};

/// What a server does with a parsed request.
pub trait Handler: Send + Sync + 'static {
    /// Starts serving `op` and returns a future of its outcome.
    ///
    /// The work should start before this returns (send to the node's task, say) or inside the
    /// future; the serve loop polls the futures of one connection concurrently, so either way
    /// pipelined requests overlap.
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<Self>;

    /// Like [`Handler::handle`], for a request another node forwarded on its client's behalf
    /// (`"forwarded":true`): a handler that forwards requests must answer this one itself,
    /// so that no request goes round in circles.
    fn handle_forwarded(
        &self,
        op: Op,
    ) -> impl Future<Output = Outcome> + Send + 'static + use<Self> {
        self.handle(op)
    }
}

/// Which requests of one connection may be in flight together: reads with reads, writes with
/// writes. A membership change or a leadership transfer runs alone, so that what the
/// connection sends after it (a write to the new leader, say) sees its effect; unless
/// another node forwarded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Read,
    Write,
    Alone,
}

impl Lane {
    fn of(request: &Request) -> Lane {
        match request.op {
            Op::Get { .. } | Op::Status => Lane::Read,
            Op::Write { .. } => Lane::Write,
            // Another node's forwarder sends its clients' changes on one connection, each
            // client's in its order: unrelated clients' changes need not wait for each other.
            _ if request.forwarded => Lane::Write,
            Op::AddMember { .. } | Op::RemoveMember { .. } | Op::TransferLeader { .. } => {
                Lane::Alone
            }
        }
    }

    /// Whether `request` may start while requests of this lane are in flight.
    fn admits(self, request: &Request) -> bool {
        self != Lane::Alone && Lane::of(request) == self
    }
}

/// How the serve loop treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Size limits for keys, values and lines.
    pub limits: Limits,
    /// Requests of one connection started but not yet answered; past this the loop stops
    /// reading that connection until answers go out (backpressure).
    pub max_in_flight: usize,
    /// On shutdown, how long connections may take to answer what they have started before
    /// they are closed. A closed connection leaves its client with an unknown outcome, the
    /// same as a `timeout`.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            limits: Limits::default(),
            max_in_flight: 1024,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves clients on `listener` with `handler` until `shutdown` completes, then stops
/// accepting, lets every connection answer what it has started (within
/// [`ServeConfig::drain_timeout`]) and returns once all are closed.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) {
    accept_loop(listener, shutdown, move |stream, stop| {
        serve_client(stream, handler.clone(), config, stop)
    })
    .await
}

/// Accepts connections on `listener` and runs `on_connection` for each in its own task until
/// `shutdown` completes; then cancels the token every connection was given and waits for all
/// of them to end.
///
/// [`serve`] is this loop with [`serve_client`] for every connection; a node that also takes
/// peer connections on the same port routes each connection itself.
pub async fn accept_loop<F, C>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut on_connection: F,
) where
    F: FnMut(TcpStream, CancellationToken) -> C,
    C: Future<Output = ()> + Send + 'static,
{
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection = on_connection(stream, stop.clone());
                    connections.spawn(connection.instrument(tracing::debug_span!("conn", %peer)));
                }
                Err(error) => {
                    // Out of file descriptors, most likely: wait for connections to close
                    // instead of spinning on accept.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// Past this many bytes of unsent answers, a connection stops taking answers out of its
/// in-flight queue and stops reading requests until the client reads. A client that never
/// reads then costs bounded memory, and no branch of the loop waits on its socket, so stop
/// and the drain deadline still work.
const WRITE_HIGH_WATER: usize = 64 << 10;

/// After answering `too_large` to an overlong line, how long to keep reading (and
/// discarding) before closing. Closing with unread input makes the kernel send a reset,
/// which can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// At most this many requests that arrived but were not read when the server began to stop
/// are refused on a connection (the rest are dropped with it): a client that keeps its
/// socket full cannot keep the drain going.
const REFUSED_AT_STOP: usize = 4096;

/// Serves one client connection until the client closes it, it breaks, or `stop` is
/// cancelled (then started requests are answered, within the drain timeout, and it closes).
pub async fn serve_client<H: Handler>(
    mut stream: TcpStream,
    handler: Arc<H>,
    config: ServeConfig,
    stop: CancellationToken,
) {
    debug!("connected");
    // Responses are flushed in batches, so Nagle's delay would only add latency.
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.split();
    let mut encoder = JsonLinesCodec::new(config.limits.max_line_bytes);
    let mut requests = FramedRead::new(reader, encoder.clone());
    let mut responses = FramedWrite::new(writer, encoder.clone());
    let mut in_flight = FuturesOrdered::new();
    // Program order within a connection: the lane of the requests in flight; a request that
    // may not join them waits here, unstarted, until they are all answered.
    let mut in_flight_lane = Lane::Read;
    let mut held: Option<Request> = None;
    let mut reading = true;
    let mut overlong = false;
    let mut drain_deadline = None;
    // Created once: a fresh `cancelled()` future per loop turn would re-register with the
    // token on every request (a few percent of the server's CPU in profiles).
    let stopping = stop.cancelled();
    tokio::pin!(stopping);
    let result: Result<(), CodecError> = loop {
        let room = responses.write_buffer().len() < WRITE_HIGH_WATER;
        tokio::select! {
            // Reading first: a burst is read and started before its answers are written, so
            // they leave in one write.
            biased;
            _ = &mut stopping, if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + config.drain_timeout);
                let failure = || Failure::unavailable("the server is shutting down; retry elsewhere");
                // Read but not started: it is not started now, and nothing happened.
                if let Some(request) = held.take() {
                    in_flight.push_back(respond(&*handler, Err((request.id, failure()))));
                }
                // Sent before the stop and not read yet (a pipelining client's, behind the
                // in-flight limit): refused the same way, not left unanswered, as far as
                // they have arrived.
                if reading {
                    for _ in 0..REFUSED_AT_STOP {
                        let Some(Some(Ok(line))) = requests.next().now_or_never() else {
                            break;
                        };
                        let refused = match Request::parse(&line, &config.limits) {
                            Ok(request) => (request.id, failure()),
                            Err(refused) => refused,
                        };
                        in_flight.push_back(respond(&*handler, Err(refused)));
                    }
                }
                reading = false;
            }
            frame = requests.next(), if reading && held.is_none() && room && in_flight.len() < config.max_in_flight => {
                match frame {
                    Some(Ok(line)) => match Request::parse(&line, &config.limits) {
                        Ok(request) if in_flight.is_empty() || in_flight_lane.admits(&request) => {
                            in_flight_lane = Lane::of(&request);
                            in_flight.push_back(respond(&*handler, Ok(request)));
                        }
                        Ok(request) => held = Some(request),
                        Err(refused) => in_flight.push_back(respond(&*handler, Err(refused))),
                    },
                    Some(Err(CodecError::LineTooLong { limit })) => {
                        let failure = Failure::too_large(format!("line longer than {limit} bytes"));
                        in_flight.push_back(respond(&*handler, Err((None, failure))));
                        reading = false;
                        overlong = true;
                    }
                    Some(Err(error)) => break Err(error),
                    None => reading = false,
                }
            }
            // Encoding only appends to the write buffer; the socket is written by the flush
            // branch, which, like every branch, can be interrupted.
            Some(response) = in_flight.next(), if room => {
                if let Err(error) = encoder.encode(response, responses.write_buffer_mut()) {
                    break Err(error);
                }
                if in_flight.is_empty() {
                    if let Some(request) = held.take() {
                        in_flight_lane = Lane::of(&request);
                        in_flight.push_back(respond(&*handler, Ok(request)));
                    }
                }
            }
            flushed = SinkExt::<Response>::flush(&mut responses), if !responses.write_buffer().is_empty() => {
                if let Err(error) = flushed {
                    break Err(error);
                }
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)),
                if drain_deadline.is_some() => {
                debug!(unanswered = in_flight.len(), "closing with requests unanswered");
                break Ok(());
            }
            else => break Ok(()),
        }
        if !reading && in_flight.is_empty() && responses.write_buffer().is_empty() {
            break Ok(());
        }
    };
    match result {
        Ok(()) => debug!("closed"),
        Err(error) => debug!(%error, "closed on error"),
    }
    if overlong {
        let mut writer = responses.into_inner();
        let mut reader = requests.into_inner();
        let _ = writer.shutdown().await;
        let discard = async {
            let mut sink = [0u8; 8192];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(LINGER, discard).await;
    }
}

/// The response to one line: the handler's answer, or the parse error, with the id echoed.
fn respond<H: Handler>(
    handler: &H,
    request: Result<Request, (Option<RequestId>, Failure)>,
) -> impl Future<Output = Response> + Send + 'static + use<H> {
    match request {
        Ok(Request { id, op, forwarded }) => {
            let outcome = if forwarded {
                Either::Left(handler.handle_forwarded(op))
            } else {
                Either::Right(handler.handle(op))
            };
            Either::Left(outcome.map(move |outcome| Response { id, outcome }))
        }
        Err((id, failure)) => Either::Right(future::ready(Response {
            id,
            outcome: Err(failure),
        })),
    }
}
