//! Test helpers: servers on 127.0.0.1:0, real or scripted.
#![allow(dead_code)] // each test file uses its own subset

use std::future::{self, Future};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_client::RetryPolicy;
use kv_server::protocol::{Op, Outcome, Reply, Role, Status};
use kv_server::serve::{Handler, ServeConfig, serve};
use kv_server::server::Standalone;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A policy for tests: a short deadline and request timeout, and quick retries.
pub fn quick() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(2),
        request_timeout: Duration::from_millis(500),
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// A scripted node's answer to `status`: its role, and the leader's address it knows.
pub fn status(role: Role, leader_addr: Option<String>) -> Outcome {
    Ok(Reply::Status(Box::new(Status {
        role,
        leader_addr,
        term: Some(1),
        ..Status::standalone()
    })))
}

/// A handler answering with a function of the op: a scripted fake node.
pub struct Scripted<F>(pub F);

impl<F: Fn(Op) -> Outcome + Send + Sync + 'static> Handler for Scripted<F> {
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<F> {
        future::ready((self.0)(op))
    }
}

/// A server task on the current runtime; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Server {
    pub async fn start<H: Handler>(handler: H) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            Arc::new(handler),
            ServeConfig::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Server { addr, _stop: stop }
    }

    pub async fn standalone() -> Server {
        Server::start(Standalone::new()).await
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// A standalone kv-server on a runtime of its own thread, for tests that block (running the
/// CLI binary). Lives as long as the test process.
pub fn background_standalone() -> String {
    background(Standalone::new())
}

/// A server with `handler` on a runtime of its own thread, as [`background_standalone`].
pub fn background<H: Handler>(handler: H) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let server = Server::start(handler).await;
            tx.send(server.addr()).unwrap();
            future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// A node that accepts connections and reads requests but never answers one, as a process
/// stopped with SIGSTOP would. It records every line it reads, to tell what reached it.
pub struct Silent {
    pub addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    /// How many accepted connections are still open.
    open: watch::Receiver<usize>,
    accepting: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (open_tx, open) = watch::channel(0usize);
        let open_tx = Arc::new(open_tx);
        let seen = lines.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                open_tx.send_modify(|n| *n += 1);
                let (seen, open_tx) = (seen.clone(), open_tx.clone());
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream).lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        seen.lock().unwrap().push(line);
                    }
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        Silent {
            addr,
            lines,
            open,
            accepting,
        }
    }

    /// Every line read, once each connection accepted so far has been closed by its client
    /// (so nothing still in flight on it is missed).
    pub async fn lines_once_closed(&mut self) -> Vec<String> {
        self.open.wait_for(|&open| open == 0).await.unwrap();
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
