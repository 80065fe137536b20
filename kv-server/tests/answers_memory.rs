//! A client that pipelines `get`s of a large value and reads none of the answers costs the
//! server that value once, not once per answer waiting to be written.
//!
//! The heap is counted by a global allocator of this test binary's own: the bytes live
//! once every request has been handed to the server, against the bytes live before.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kv_server::protocol::{Command, Op, Outcome};
use kv_server::serve::{Handler, ServeConfig, serve};
use kv_server::server::Standalone;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The system allocator, counting the bytes it has handed out and not had back.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; the count only adds up the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees about `layout` hold for `System` too.
        let block = unsafe { System.alloc(layout) };
        if !block.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: `block` came from `alloc` above, that is, from `System`, with `layout`.
        unsafe { System.dealloc(block, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// kv-server's handler, telling when it has been handed `expected` requests.
struct Counted {
    server: Standalone,
    handed: AtomicUsize,
    expected: usize,
    all_handed: Arc<Notify>,
}

impl Handler for Counted {
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        let answer = self.server.handle(op);
        if self.handed.fetch_add(1, Ordering::SeqCst) + 1 == self.expected {
            self.all_handed.notify_one();
        }
        answer
    }
}

#[tokio::test]
async fn answers_waiting_for_a_client_that_does_not_read_hold_the_value_once() {
    const REQUESTS: usize = 200;
    const VALUE_BYTES: usize = 1 << 20;
    let server = Standalone::new();
    server.store().apply(Command::Put {
        key: "big".into(),
        value: "x".repeat(VALUE_BYTES),
    });
    let all_handed = Arc::new(Notify::new());
    let handler = Counted {
        server,
        handed: AtomicUsize::new(0),
        expected: REQUESTS,
        all_handed: all_handed.clone(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig {
        max_in_flight: REQUESTS,
        ..ServeConfig::default()
    };
    tokio::spawn(serve(
        listener,
        Arc::new(handler),
        config,
        std::future::pending(),
    ));

    let mut client = TcpStream::connect(addr).await.unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    let gets = "{\"op\":\"get\",\"key\":\"big\"}\n".repeat(REQUESTS);
    client.write_all(gets.as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), all_handed.notified())
        .await
        .expect("the server took every request");
    let grown = LIVE.load(Ordering::SeqCst).saturating_sub(before);
    // Shared with the map, the answers cost a few buffers and one encoded answer; copied,
    // they would cost REQUESTS × 1 MiB.
    assert!(
        grown < 16 << 20,
        "{} MiB more live with {REQUESTS} answers waiting",
        grown >> 20
    );
}
