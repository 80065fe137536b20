//! `kv-client bench`: a load generator in the manner of `redis-benchmark`.
//!
//! `clients` connections each keep up to `pipeline` requests in flight against one node (the
//! leader, found through `status` when several addresses are given). Keys are drawn uniformly
//! from `keys` names like `key:000000000042`; values are `value_size` bytes. A `get` or
//! `mixed` run first writes every key once, outside the measurement, so reads find values.
//!
//! Latency is measured per request, from the moment it is queued on its connection to the
//! moment its answer is read, and recorded in an HDR histogram (microsecond resolution).
//! Using [`Connection`] directly, with no task per request, keeps the generator's own cost
//! low: on a 2-core machine it shares the CPU with the server it measures.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kv_server::protocol::{Command, Consistency, Op, Request, RequestId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{ClusterClient, Connection, Error, RetryPolicy};

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
    /// Members to benchmark; the leader among them is the target.
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

/// Runs the benchmark described by `config`.
pub async fn run(config: BenchConfig) -> Result<BenchReport, Error> {
    let target = find_target(&config.addrs).await?;
    if config.workload != Workload::Put {
        preload(&target, &config).await?;
    }
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = match config.length {
        Length::Duration(d) => Some(start + d),
        Length::Requests(_) => None,
    };
    let workers: Vec<_> = (0..config.clients)
        .map(|i| {
            let (target, config, issued) = (target.clone(), config.clone(), issued.clone());
            tokio::spawn(async move {
                let budget = Budget {
                    issued,
                    deadline,
                    length: config.length,
                };
                worker(&target, &config, budget, i as u64).await
            })
        })
        .collect();
    let mut latency_us = new_histogram();
    let mut ok = 0;
    let mut failed = BTreeMap::new();
    for worker in workers {
        let result = worker
            .await
            .map_err(|e| Error::Protocol(format!("worker panicked: {e}")))??;
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

async fn find_target(addrs: &[String]) -> Result<String, Error> {
    if let [only] = addrs {
        return Ok(only.clone());
    }
    let mut cluster = ClusterClient::new(addrs.to_vec(), RetryPolicy::default());
    cluster
        .find_leader()
        .await
        .ok_or_else(|| Error::Protocol(format!("no member of {} knows a leader", addrs.join(","))))
}

/// Writes every key once so that reads find values.
async fn preload(target: &str, config: &BenchConfig) -> Result<(), Error> {
    let mut conn = Connection::connect(target).await?;
    let value = "x".repeat(config.value_size);
    for key in 0..config.keys {
        let command = Command::Put {
            key: key_name(key),
            value: value.clone(),
        };
        conn.send(&Request {
            id: None,
            op: Op::Write {
                command,
                session: None,
            },
            forwarded: false,
        })?;
        if conn.outstanding() >= 256 || key + 1 == config.keys {
            while conn.outstanding() > 0 {
                conn.recv().await??;
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

async fn worker(
    target: &str,
    config: &BenchConfig,
    budget: Budget,
    seed: u64,
) -> Result<WorkerResult, Error> {
    let mut conn = Connection::connect(target).await?;
    let mut rng = SmallRng::seed_from_u64(seed ^ rand::random::<u64>());
    let value = "x".repeat(config.value_size);
    let consistency = if config.stale_reads {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    };
    let read_ratio = config.workload.read_ratio();
    let mut sent_at = VecDeque::with_capacity(config.pipeline);
    let mut result = WorkerResult {
        ok: 0,
        failed: BTreeMap::new(),
        latency_us: new_histogram(),
    };
    let mut next_id = 0u64;
    loop {
        while sent_at.len() < config.pipeline && budget.take() {
            let key = key_name(rng.gen_range(0..config.keys));
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
            next_id += 1;
            conn.send(&Request {
                id: Some(RequestId::from(next_id)),
                op,
                forwarded: false,
            })?;
            sent_at.push_back(Instant::now());
        }
        let Some(sent) = sent_at.pop_front() else {
            break;
        };
        let outcome = conn.recv().await?;
        let micros = sent.elapsed().as_micros().max(1) as u64;
        result.latency_us.saturating_record(micros);
        match outcome {
            Ok(_) => result.ok += 1,
            Err(failure) => *result.failed.entry(failure.code.to_string()).or_insert(0) += 1,
        }
    }
    Ok(result)
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

    /// How many requests failed, all codes together.
    pub fn failed(&self) -> u64 {
        self.failed.values().sum()
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
        let _ = writeln!(out, "latency ms {}", header.join(""));
        let _ = writeln!(out, "           {}", values.join(""));
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
