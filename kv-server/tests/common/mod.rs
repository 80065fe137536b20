//! Test helpers: a server on 127.0.0.1:0 and a raw JSON-lines connection to it.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::sync::Arc;

use kv_server::serve::{Handler, ServeConfig, serve};
use kv_server::server::Standalone;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process until [`Running::stop`].
pub struct Running<H> {
    pub addr: SocketAddr,
    handler: Arc<H>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running<Standalone> {
    pub async fn standalone() -> Running<Standalone> {
        Running::with_handler(Standalone::new(), ServeConfig::default()).await
    }
}

impl<H: Handler> Running<H> {
    pub async fn with_handler(handler: H, config: ServeConfig) -> Running<H> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let handler = Arc::new(handler);
        let task = tokio::spawn(serve(listener, handler.clone(), config, shutdown));
        Running {
            addr,
            handler,
            stop,
            task,
        }
    }

    /// Signals shutdown now; the returned future completes, with the handler, once `serve`
    /// has returned (every connection closed).
    pub fn stop(self) -> impl std::future::Future<Output = Arc<H>> {
        let _ = self.stop.send(());
        async move {
            self.task.await.unwrap();
            self.handler
        }
    }
}

/// One client connection speaking raw JSON lines.
pub struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        let (reader, writer) = TcpStream::connect(addr).await.unwrap().into_split();
        Conn {
            reader: BufReader::new(reader),
            writer,
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends `requests` in one write: they arrive together, and the server reads them as
    /// one burst.
    pub async fn send_burst(&mut self, requests: &[Value]) {
        let mut burst = Vec::new();
        for request in requests {
            burst.extend_from_slice(format!("{request}\n").as_bytes());
        }
        self.send_raw(&burst).await;
    }

    pub async fn send(&mut self, request: Value) {
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    /// The next response line, exactly as sent (newline included).
    pub async fn recv_line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed while a response was expected");
        assert!(
            line.ends_with('\n'),
            "response line without newline: {line:?}"
        );
        line
    }

    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad response {line:?}: {e}"))
    }

    pub async fn call(&mut self, request: Value) -> Value {
        self.send(request).await;
        self.recv().await
    }

    /// Waits for the server to close the connection, with no further response.
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest).await {
            Ok(_) => assert!(rest.is_empty(), "unexpected data before close: {rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    /// Closes our side completely, dropping anything unsent or unread.
    pub fn abort(self) {
        drop(self);
    }
}

/// Asserts `response` is an error with `code` and a non-empty message.
pub fn assert_error(response: &Value, code: &str) {
    assert_eq!(response["ok"], false, "{response}");
    assert_eq!(response["error"], code, "{response}");
    assert!(
        response["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{response}"
    );
}
