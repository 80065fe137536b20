//! Test helpers: servers on 127.0.0.1:0, real or scripted.
#![allow(dead_code)] // each test file uses its own subset

use std::future::{self, Future};
use std::net::SocketAddr;
use std::sync::Arc;

use kv_server::protocol::{Op, Outcome};
use kv_server::serve::{Handler, ServeConfig, serve};
use kv_server::server::Standalone;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let server = Server::standalone().await;
            tx.send(server.addr()).unwrap();
            future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}
