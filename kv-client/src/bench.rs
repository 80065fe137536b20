//! `kv-client bench`: a load generator in the manner of `redis-benchmark`.
//!
//! `clients` connections each keep up to `pipeline` requests in flight against one node (the
//! leader, found through `status` when several addresses are given). Keys are drawn uniformly
//! from `keys` names like `key:000000000042`; values are `value_size` bytes. A `get` or
//! `mixed` run first writes every key once, outside the measurement, so reads find values.
//!
//! Latency is measured per request, from the moment it is queued on its connection to the
//! moment its answer is read, retries included, and recorded in an HDR histogram
//! (microsecond resolution). Using [`crate::Connection`] directly, with no task per request,
//! keeps the generator's own cost low: on a 2-core machine it shares the CPU with the server
//! it measures.
//!
//! What goes wrong goes to a [`ClusterClient`], one per bench client (module `lane`): a
//! killed leader, a lost connection or a node that stops answering costs a pause while it
//! finds the new leader and retries, as `kv-client put` would, and the run goes on. The
//! retry policy's deadline bounds each request from its first send, retries included; a
//! request that fails for good is counted under its error's kind (`timeout`, `unavailable`,
//! `no_answer`, ...), and the report is printed all the same.

mod lane;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kv_server::protocol::{Command, Consistency, Op};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{ClusterClient, Error, RetryPolicy};
use lane::Lane;

/// Which requests a run sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Only puts.
    Put,
    /// Only gets.
    Get,
    /// Gets with probability `read_ratio`, puts otherwise.
    Mixed {
        /// The share of gets, in [0, 1].
        read_ratio: f64,
    },
}

impl Workload {
    fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Get => "get".into(),
            Workload::Mixed { read_ratio } => format!("mixed (reads {:.0}%)", read_ratio * 100.0),
        }
    }

    fn read_ratio(&self) -> f64 {
        match self {
            Workload::Put => 0.0,
            Workload::Get => 1.0,
            Workload::Mixed { read_ratio } => *read_ratio,
        }
    }
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// After this many requests in all.
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// A benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Members to benchmark: each bench client sends to the leader among them, and follows
    /// it when it changes.
    pub addrs: Vec<String>,
    /// Concurrent connections.
    pub clients: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// When to stop.
    pub length: Length,
    /// Size of the key space.
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Which requests.
    pub workload: Workload,
    /// Send gets with `"consistency":"stale"`.
    pub stale_reads: bool,
    /// How each request is retried: its `deadline` bounds one request, from its first send
    /// to its final answer, retries included.
    pub retry: RetryPolicy,
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    config: BenchConfig,
    target: String,
    ok: u64,
    failed: BTreeMap<String, u64>,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

/// Runs the benchmark described by `config`. Requests that fail are counted in the report;
/// the run itself fails only if the preload of a `get` or `mixed` run does.
pub async fn run(config: BenchConfig) -> Result<BenchReport, Error> {
    let leader = find_leader(&config).await;
    // The addresses given, not the leader found: a leader named at the start may be stale,
    // or replaced during the run.
    let target = config.addrs.join(",");
    if config.workload != Workload::Put {
        preload(leader.as_deref(), &config).await?;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match config.length {
        Length::Duration(d) => Some(start + d),
        Length::Requests(_) => None,
    };
    let workers: Vec<_> = (0..config.clients)
        .map(|i| {
            let (leader, config, issued) = (leader.clone(), config.clone(), issued.clone());
            tokio::spawn(async move {
                let budget = Budget {
                    issued,
                    deadline,
                    length: config.length,
                };
                let lane = Lane::open(config.addrs.clone(), leader.as_deref(), config.retry).await;
                worker(lane, &config, budget, i as u64).await
            })
        })
        .collect();
    let mut latency_us = new_histogram();
    let mut ok = 0;
    let mut failed = BTreeMap::new();
    for worker in workers {
        let result = worker
            .await
            .map_err(|e| Error::Protocol(format!("worker panicked: {e}")))?;
        latency_us
            .add(&result.latency_us)
            .expect("histograms share bounds");
        ok += result.ok;
        for (code, n) in result.failed {
            *failed.entry(code).or_insert(0) += n;
        }
    }
    Ok(BenchReport {
        config,
        target,
        ok,
        failed,
        elapsed: start.elapsed(),
        latency_us,
    })
}

/// The leader among `config.addrs` (the only address, when there is one), or `None` when
/// no member named one in time: the lanes then start without a connection, and their
/// cluster clients look for it.
async fn find_leader(config: &BenchConfig) -> Option<String> {
    if let [only] = config.addrs.as_slice() {
        return Some(only.clone());
    }
    let mut cluster = ClusterClient::new(config.addrs.clone(), config.retry);
    cluster.find_leader().await
}

/// Writes every key once so that reads find values, up to 256 writes in flight. A write that
/// fails for good (retries included) ends the run with its error: reads would miss its key.
async fn preload(leader: Option<&str>, config: &BenchConfig) -> Result<(), Error> {
    let mut lane = Lane::open(config.addrs.clone(), leader, config.retry).await;
    let value = "x".repeat(config.value_size);
    for key in 0..config.keys {
        lane.send(Op::Write {
            command: Command::Put {
                key: key_name(key),
                value: value.clone(),
            },
            session: None,
        });
        if lane.len() >= 256 || key + 1 == config.keys {
            while let Some((_, outcome)) = lane.recv().await {
                outcome?;
            }
        }
    }
    Ok(())
}

fn key_name(n: u64) -> String {
    format!("key:{n:012}")
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Shared among workers: whether another request may be sent.
struct Budget {
    issued: Arc<AtomicU64>,
    deadline: Option<Instant>,
    length: Length,
}

impl Budget {
    fn take(&self) -> bool {
        match (self.length, self.deadline) {
            (Length::Requests(n), _) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            (Length::Duration(_), Some(deadline)) => Instant::now() < deadline,
            (Length::Duration(_), None) => false,
        }
    }
}

struct WorkerResult {
    ok: u64,
    failed: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
}

async fn worker(mut lane: Lane, config: &BenchConfig, budget: Budget, seed: u64) -> WorkerResult {
    let mut rng = SmallRng::seed_from_u64(seed ^ rand::random::<u64>());
    let value = "x".repeat(config.value_size);
    let consistency = if config.stale_reads {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let read_ratio = config.workload.read_ratio();
    let mut result = WorkerResult {
        ok: 0,
        failed: BTreeMap::new(),
        latency_us: new_histogram(),
    };
    loop {
        while lane.len() < config.pipeline && budget.take() {
            let key = key_name(rng.gen_range(0..config.keys));
            // Puts go without a `client`/`seq`: a put applied twice after a retry leaves the
            // same value, and the servers' session tables stay out of the measurement.
            let op = if rng.gen_bool(read_ratio) {
                Op::Get { key, consistency }
            } else {
                Op::Write {
                    command: Command::Put {
                        key,
                        value: value.clone(),
                    },
                    session: None,
                }
            };
            lane.send(op);
        }
        let Some((issued, outcome)) = lane.recv().await else {
            break;
        };
        let micros = issued.elapsed().as_micros().max(1) as u64;
        result.latency_us.saturating_record(micros);
        match outcome {
            Ok(_) => result.ok += 1,
            Err(error) => *result.failed.entry(failure_kind(&error)).or_insert(0) += 1,
        }
    }
    result
}

/// The name a failed request is counted under: the server's error code when it answered
/// with one (a change whose outcome is unknown is `timeout`), else what kept an answer away.
fn failure_kind(error: &Error) -> String {
    match error {
        Error::Server(failure) => failure.code.to_string(),
        Error::Connect { .. } => "cannot_connect".into(),
        Error::ConnectionLost(_) => "connection_lost".into(),
        Error::RequestTimeout(_) => "no_answer".into(),
        Error::Protocol(_) => "protocol_error".into(),
    }
}

impl BenchReport {
    fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentiles_us(&self) -> [(&'static str, u64); 5] {
        let h = &self.latency_us;
        [
            ("p50", h.value_at_quantile(0.50)),
            ("p90", h.value_at_quantile(0.90)),
            ("p99", h.value_at_quantile(0.99)),
            ("p99.9", h.value_at_quantile(0.999)),
            ("max", h.max()),
        ]
    }

    /// How many requests succeeded.
    pub fn ok(&self) -> u64 {
        self.ok
    }

    /// How many requests failed, all codes together.
    pub fn failed(&self) -> u64 {
        self.failed.values().sum()
    }

    /// How many requests failed, by kind: the server's error code (`timeout` for a write
    /// whose outcome is unknown), or `no_answer`, `connection_lost`, `cannot_connect`,
    /// `protocol_error` for a read that got none.
    pub fn failures(&self) -> &BTreeMap<String, u64> {
        &self.failed
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} against {}: {} clients, pipeline {}, {} keys, {}-byte values{}",
            c.workload.name(),
            self.target,
            c.clients,
            c.pipeline,
            c.keys,
            c.value_size,
            if c.stale_reads { ", stale reads" } else { "" },
        );
        let _ = writeln!(
            out,
            "{} ok, {} failed in {:.2} s: {:.0} ops/s",
            self.ok,
            self.failed(),
            self.elapsed.as_secs_f64(),
            self.ops_per_sec()
        );
        for (code, n) in &self.failed {
            let _ = writeln!(out, "  {n} {code}");
        }
        let percentiles = self.percentiles_us();
        let header: Vec<String> = percentiles
            .iter()
            .map(|(name, _)| format!("{name:>9}"))
            .collect();
        let values: Vec<String> = percentiles
            .iter()
            .map(|(_, us)| format!("{:>9.3}", *us as f64 / 1000.0))
            .collect();
        // A space between columns, so that a latency of 10 s or more (9 digits and more)
        // does not run into the next.
        let _ = writeln!(out, "latency ms {}", header.join(" "));
        let _ = writeln!(out, "           {}", values.join(" "));
        out
    }

    /// The report as one JSON object (latencies in microseconds).
    pub fn json(&self) -> serde_json::Value {
        let c = &self.config;
        let mut value = json!({
            "workload": match c.workload { Workload::Put => "put", Workload::Get => "get", Workload::Mixed { .. } => "mixed" },
            "read_ratio": c.workload.read_ratio(),
            "target": self.target,
            "clients": c.clients,
            "pipeline": c.pipeline,
            "keys": c.keys,
            "value_size": c.value_size,
            "stale_reads": c.stale_reads,
            "ok": self.ok,
            "failed": self.failed,
            "seconds": self.elapsed.as_secs_f64(),
            "ops_per_sec": self.ops_per_sec(),
        });
        for (name, us) in self.percentiles_us() {
            value[format!("{}_us", name.replace('.', ""))] = us.into();
        }
        value
    }
}
