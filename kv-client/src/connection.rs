//! [`Connection`]: one TCP connection, no background task, the caller drives it.
//!
//! The building block of [`crate::Client`], and what the load generator uses directly so that
//! measuring a server costs as little client work as possible. A connection may have many
//! requests outstanding: [`Connection::send`] queues one (no I/O), [`Connection::recv`]
//! reads the oldest answer and writes queued requests while it waits. It remembers what it
//! sent, so each answer is checked against its request's id and read as the right kind of
//! reply.
//!
//! Writing only while also reading is what keeps a pipelining client from deadlocking with a
//! server: a server that cannot write its answers (because nobody reads them) stops reading
//! requests, so a client that insisted on writing all its requests first would wait forever.

use std::collections::VecDeque;

use futures::{SinkExt, StreamExt};
use kv_server::codec::{CodecError, JsonLinesCodec};
use kv_server::protocol::{Limits, OpKind, Outcome, Request, RequestId, WireResponse};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use crate::Error;

/// A client connection with pipelining.
#[derive(Debug)]
pub struct Connection {
    reader: FramedRead<OwnedReadHalf, JsonLinesCodec>,
    writer: FramedWrite<OwnedWriteHalf, JsonLinesCodec>,
    encoder: JsonLinesCodec,
    /// Sent and unanswered, oldest first: the id the answer must echo, and its kind.
    outstanding: VecDeque<(Option<RequestId>, OpKind)>,
    addr: String,
}

impl Connection {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<Connection, Error> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_owned(),
            source,
        };
        let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (reader, writer) = stream.into_split();
        // Responses carry at most one value plus a little framing, so the request line limit
        // is a generous bound for them too.
        let codec = JsonLinesCodec::new(Limits::default().max_line_bytes);
        Ok(Connection {
            reader: FramedRead::new(reader, codec.clone()),
            writer: FramedWrite::new(writer, codec.clone()),
            encoder: codec,
            outstanding: VecDeque::new(),
            addr: addr.to_owned(),
        })
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queues `request` without writing it: it goes out during the next
    /// [`Connection::recv`].
    pub fn send(&mut self, request: &Request) -> Result<(), Error> {
        self.encoder
            .encode(request, self.writer.write_buffer_mut())
            .map_err(lost)?;
        self.outstanding
            .push_back((request.wire_id(), request.op.kind()));
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.writer.write_buffer().len()
    }

    /// How many requests were sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Reads the answer to the oldest outstanding request, writing queued requests while it
    /// waits. Cancel-safe: dropping the future loses no answer and no queued request.
    pub async fn recv(&mut self) -> Result<Outcome, Error> {
        let Some((id, kind)) = self.outstanding.front().cloned() else {
            return Err(Error::Protocol("recv with no request outstanding".into()));
        };
        let line = loop {
            tokio::select! {
                biased;
                line = self.reader.next() => break line,
                flushed = SinkExt::<&Request>::flush(&mut self.writer),
                    if !self.writer.write_buffer().is_empty() => flushed.map_err(lost)?,
            }
        };
        let line = match line {
            Some(Ok(line)) => line,
            Some(Err(error)) => return Err(lost(error)),
            None => return Err(Error::ConnectionLost("closed by the server".into())),
        };
        self.outstanding.pop_front();
        let wire: WireResponse = serde_json::from_slice(&line).map_err(|e| {
            Error::Protocol(format!(
                "unreadable response {:?}: {e}",
                String::from_utf8_lossy(&line)
            ))
        })?;
        // A line without an id answers a request the server could not read (an oversized
        // line); otherwise the id must be the one sent.
        if let Some(got) = wire.id.as_ref().filter(|&got| Some(got) != id.as_ref()) {
            let sent = id
                .as_ref()
                .map_or_else(|| "none".to_owned(), |id| id.to_string());
            return Err(Error::Protocol(format!(
                "answer for id {got} arrived where id {sent} was expected"
            )));
        }
        wire.into_outcome(kind)
            .map_err(|e| Error::Protocol(e.to_string()))
    }

    /// Sends one request and waits for its answer. Refused while other requests are
    /// outstanding, since their answers come first.
    pub async fn call(&mut self, request: &Request) -> Result<Outcome, Error> {
        if !self.outstanding.is_empty() {
            return Err(Error::Protocol("call with requests outstanding".into()));
        }
        self.send(request)?;
        self.recv().await
    }
}

fn lost(error: CodecError) -> Error {
    Error::ConnectionLost(error.to_string())
}
