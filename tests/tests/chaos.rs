//! limecached under faults, with real processes: concurrent clients (kv-client's
//! `ClusterClient`) run gets, puts, deletes and cas on a few keys while a nemesis kills
//! nodes with SIGKILL and restarts them from their data directories, pauses them with
//! SIGSTOP and resumes them, or cuts the network between them (every node sits behind a
//! proxy, [`tests::proxy`]; clients reach the nodes directly, so a cut-off leader still
//! hears its clients). A fault strikes one node, two (no quorum until they are back) or
//! all three (with kills, the whole cluster crashes at once). Every operation is recorded with its call and return times;
//! the history must be linearizable ([`tests::linearizability`]), which also means no
//! acknowledged write is lost: the final reads, after every fault is healed, must fit it.
//!
//! Each run takes `LIMECACHED_CHAOS_SECS` seconds of faults (default 15; set it higher to
//! soak locally). The nemesis's choices come from a seed, printed at the start and on
//! failure (`LIMECACHED_SEED` replays the same choices; the processes' timing still varies).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::{ClusterClient, Error, RetryPolicy};
use kv_server::protocol::{CasOutcome, Consistency, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::linearizability::{Answer, Call, Operation, check};
use tests::proxy::Network;
use tests::{ProcessCluster, eventually};

const KEYS: [&str; 3] = ["x", "y", "z"];
const CLIENTS: usize = 4;

fn seconds() -> u64 {
    std::env::var("LIMECACHED_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn seed() -> u64 {
    std::env::var("LIMECACHED_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

type History = Arc<Mutex<Vec<Operation>>>;

fn policy() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(3),
        request_timeout: Duration::from_secs(1),
        ..RetryPolicy::default()
    }
}

/// How a write's failure enters the history: unknown outcomes stay (the write may have
/// happened), definite failures (nothing happened) are left out. An answer that breaks
/// the protocol (a cas answered as a delete, say) is a server bug, not an unknown outcome.
fn failed_write(error: &Error) -> Option<Answer> {
    no_protocol_break(error);
    error.outcome_unknown().then_some(Answer::Unknown)
}

/// Fails the run on an answer that breaks the protocol (a cas answered as a delete, say): a
/// server bug, whatever the operation, not an outcome to leave out or call unknown.
fn no_protocol_break(error: &Error) {
    let text = error.to_string();
    assert!(
        !matches!(error, Error::Protocol(_)) && !text.contains("broke the protocol"),
        "a server broke the protocol: {text}"
    );
}

/// One client: random operations on random keys until `stop`, each recorded.
async fn client(
    id: usize,
    addrs: Vec<String>,
    history: History,
    start: Instant,
    stop: Instant,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ id as u64);
    let mut kv = ClusterClient::new(addrs, policy());
    // What this client last read of each key: a cas expects it, so that some swap.
    let mut last_seen: HashMap<&str, Option<String>> = HashMap::new();
    let mut n = 0;
    while Instant::now() < stop {
        n += 1;
        let key = KEYS[rng.gen_range(0..KEYS.len())];
        // Client 0 only reads, so it keeps to the node it reads from (a write that times
        // out is what moves a client elsewhere): it is the one to catch a cut-off leader
        // serving stale reads.
        let roll = if id == 0 { 0 } else { rng.gen_range(0..100) };
        let called = start.elapsed().as_nanos() as u64;
        let (call, answer) = if roll < 40 {
            let answer = match kv.get(key, Consistency::Linearizable).await {
                Ok(value) => {
                    last_seen.insert(key, value.clone());
                    Some(Answer::Value(value))
                }
                Err(error) => {
                    no_protocol_break(&error);
                    None
                }
            };
            (Call::Get, answer)
        } else if roll < 70 {
            let value = format!("c{id}-{n}");
            let answer = match kv.put(key, &value).await {
                Ok(()) => Some(Answer::Done),
                Err(error) => failed_write(&error),
            };
            (Call::Put(value), answer)
        } else if roll < 85 {
            let new = format!("c{id}-{n}");
            let expected = last_seen.get(key).cloned().flatten();
            let answer = match kv.cas(key, expected.as_deref(), &new).await {
                Ok(CasOutcome::Swapped) => Some(Answer::Swapped(true)),
                Ok(CasOutcome::Mismatch { current }) => Some(Answer::Mismatch(current)),
                Err(error) => failed_write(&error),
            };
            (Call::Cas { expected, new }, answer)
        } else {
            let answer = match kv.delete(key).await {
                Ok(existed) => Some(Answer::Existed(existed)),
                Err(error) => failed_write(&error),
            };
            (Call::Delete, answer)
        };
        if let Some(answer) = answer {
            let returned = start.elapsed().as_nanos() as u64;
            history
                .lock()
                .expect("no client panics holding it")
                .push(Operation {
                    client: id,
                    key: key.to_owned(),
                    call,
                    answer,
                    start: called,
                    end: returned,
                });
        }
    }
}

/// What the nemesis may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL the victims, restart them from their data directories later.
    Kill,
    /// SIGSTOP the victims, SIGCONT them later.
    Pause,
    /// Cut each victim off from every other node, both ways.
    Isolate,
    /// Cut what each victim hears from the others; it can still speak (a one-way
    /// partition).
    Deafen,
}

const NODES: [u64; 3] = [1, 2, 3];

/// Faults of the kinds in `kinds`, until `stop`. Returns what it did.
async fn nemesis(
    cluster: &mut ProcessCluster,
    network: &Network,
    kinds: &[Fault],
    rng: &mut StdRng,
    stop: Instant,
) -> Vec<String> {
    let mut done = Vec::new();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1_000))).await;
        // The first fault, and half the others, strike the leader: that is where faults cost
        // the most. The first lasts long enough (five election timeouts at least) that the
        // others must elect a new leader, or the deposed one must step down; it waits for
        // a leader to strike.
        let first = done.is_empty();
        let mut leader = cluster.leader().await;
        if first && leader.is_none() {
            eventually(
                "a leader to strike first",
                Duration::from_secs(10),
                || async { cluster.leader().await.is_some() },
            )
            .await;
            leader = cluster.leader().await;
        }
        let strike_leader = first || rng.gen_bool(0.5);
        let victims = victims(rng, leader.filter(|_| strike_leader), first);
        // Long enough, at the top, for the others to elect a leader and commit without it.
        let shortest = if first { 1_000 } else { 200 };
        let outage = Duration::from_millis(rng.gen_range(shortest..2_500));
        let fault = kinds[rng.gen_range(0..kinds.len())];
        for &victim in &victims {
            match fault {
                Fault::Kill => cluster.kill(victim),
                Fault::Pause => assert!(cluster.pause(victim), "node {victim} was not running"),
                // Each victim alone: two of three cut off leave no majority anywhere.
                Fault::Isolate => network.isolate(&[victim], &NODES),
                Fault::Deafen => {
                    for other in NODES.iter().filter(|&&n| n != victim) {
                        network.cut(*other, victim);
                    }
                }
            }
        }
        tokio::time::sleep(outage).await;
        for &victim in &victims {
            match fault {
                Fault::Kill => cluster.start_node(victim),
                Fault::Pause => assert!(cluster.resume(victim), "node {victim} was not running"),
                Fault::Isolate | Fault::Deafen => network.heal(),
            }
        }
        cluster.assert_running();
        done.push(format!("{fault:?} {victims:?} for {outage:?}"));
    }
    done
}

/// The nodes a fault strikes: `leader` (if given) and others drawn at random. One node most
/// of the time; now and then two, which leaves no quorum until they are back, or all three:
/// with kills, a crash of the whole cluster at a random instant under load, which every
/// acknowledged write must survive. The first fault strikes the leader alone, so the others
/// must elect.
fn victims(rng: &mut StdRng, leader: Option<u64>, first: bool) -> Vec<u64> {
    let count = match rng.gen_range(0..10) {
        _ if first => 1,
        0 => 3,
        1 | 2 => 2,
        _ => 1,
    };
    let mut victims: Vec<u64> = leader.into_iter().collect();
    while victims.len() < count {
        let node = rng.gen_range(1..=3u64);
        if !victims.contains(&node) {
            victims.push(node);
        }
    }
    victims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_under_kills_and_pauses_is_linearizable() {
    chaos(&[Fault::Kill, Fault::Pause], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_under_partitions_is_linearizable() {
    chaos(&[Fault::Isolate, Fault::Deafen], &[]).await;
}

/// Without check-quorum a cut-off leader goes on leading, and taking reads, while the
/// others elect a new one and commit writes: only ReadIndex keeps its reads from going
/// stale. (With check-quorum it steps down before a new leader can exist, which hides a
/// missing ReadIndex round: this test fails without one, the default-flags one does not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_check_quorum_a_cut_off_leader_still_serves_no_stale_read() {
    chaos(&[Fault::Isolate], &["--no-check-quorum"]).await;
}

/// Members replaced while clients run: removed (the leader half the time), killed, their
/// data directory deleted, and a node with an id out of use, or back in use with an empty
/// directory, joining in their place; between replacements, members killed and restarted.
/// Every replacement must complete (the new node a voter) and the history stay linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_while_members_are_replaced_is_linearizable() {
    let seed = seed();
    eprintln!("chaos seed {seed} (LIMECACHED_SEED={seed} replays the nemesis)");
    // Two spare ids; a replaced member's id is used again later, on an empty directory.
    let args = ["--snapshot-threshold", "300"];
    let mut cluster = ProcessCluster::bootstrapped("limecached", 5, 3, &args).await;
    let mut members = vec![1, 2, 3];
    let run = Clients::start(cluster.all_addrs(), seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let changes = replacer(&mut cluster, &mut members, &mut rng, run.stop).await;
    run.finish_and_check(&mut cluster, &changes, seed).await;
    assert!(
        voters_are(&cluster, &members).await,
        "seed {seed}: the leader's voters are not {members:?} after {changes:?}"
    );
}

/// Whether a leader says its voters are exactly `members`.
async fn voters_are(cluster: &ProcessCluster, members: &[u64]) -> bool {
    let Some(leader) = cluster.leader().await else {
        return false;
    };
    let Some(listed) = cluster.status(leader).await.and_then(|s| s.members) else {
        return false;
    };
    let mut voters: Vec<u64> = listed.iter().filter(|m| m.voter).map(|m| m.id.0).collect();
    let mut expected = members.to_vec();
    voters.sort_unstable();
    expected.sort_unstable();
    voters == expected
}

/// Membership faults until `stop`, one at a time. Returns what it did.
async fn replacer(
    cluster: &mut ProcessCluster,
    members: &mut Vec<u64>,
    rng: &mut StdRng,
    stop: Instant,
) -> Vec<String> {
    let mut spares: Vec<u64> = cluster
        .addrs
        .keys()
        .filter(|id| !members.contains(id))
        .copied()
        .collect();
    let mut done = Vec::new();
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1_000))).await;
        let victim = match cluster.leader().await {
            Some(leader) if rng.gen_bool(0.5) => leader,
            _ => members[rng.gen_range(0..members.len())],
        };
        let others: Vec<String> = members
            .iter()
            .filter(|&&id| id != victim)
            .map(|id| cluster.addrs[id].clone())
            .collect();
        if rng.gen_bool(0.6) {
            let admin_policy = RetryPolicy {
                deadline: Duration::from_secs(20),
                ..RetryPolicy::default()
            };
            let mut admin = ClusterClient::new(others.clone(), admin_policy);
            if let Err(error) = admin.remove_member(NodeId(victim)).await {
                panic!("removing node {victim} after {done:?}: {error}");
            }
            cluster.kill(victim);
            let dir = cluster.data_dir(victim).expect("durable nodes");
            std::fs::remove_dir_all(&dir).expect("delete the removed node's data");
            members.retain(|&id| id != victim);
            spares.push(victim);
            let new = spares.remove(0);
            cluster.start_node_with(new, &["--join", &others[0]]);
            members.push(new);
            let what = format!("node {new} a voter in place of {victim} after {done:?}");
            eventually(&what, Duration::from_secs(30), || {
                voters_are(cluster, members)
            })
            .await;
            done.push(format!("replaced {victim} by {new}"));
        } else {
            let outage = Duration::from_millis(rng.gen_range(200..1_500));
            cluster.kill(victim);
            tokio::time::sleep(outage).await;
            cluster.start_node_with(victim, &["--join", &others[0]]);
            done.push(format!("Kill [{victim}] for {outage:?}"));
        }
        cluster.assert_running();
    }
    done
}

async fn chaos(kinds: &[Fault], flags: &[&str]) {
    let seed = seed();
    eprintln!("chaos seed {seed} (LIMECACHED_SEED={seed} replays the nemesis)");
    let network = Network::default();
    // Small snapshots, so that nodes also restart from snapshots and catch up by them.
    let mut args = vec!["--snapshot-threshold", "300"];
    args.extend(flags);
    let mut cluster = ProcessCluster::start_behind_proxies("limecached", 3, &args, &network).await;
    eventually("a leader", Duration::from_secs(10), || async {
        cluster.leader().await.is_some()
    })
    .await;
    let term_before = highest_term(&cluster).await;
    let run = Clients::start(cluster.all_addrs(), seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let faults = nemesis(&mut cluster, &network, kinds, &mut rng, run.stop).await;
    run.finish_and_check(&mut cluster, &faults, seed).await;
    // The first fault struck the leader for five election timeouts or more: some node must
    // have campaigned, or the faults disturbed nothing.
    let term_after = highest_term(&cluster).await;
    assert!(
        term_after > term_before,
        "seed {seed}: the term stayed at {term_before}: no fault disturbed the leader"
    );
}

/// The clients of one run, recording one history.
struct Clients {
    addrs: Vec<String>,
    history: History,
    start: Instant,
    /// When the clients stop, and the nemesis with them.
    stop: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    /// [`CLIENTS`] clients on `addrs`, for [`seconds`] from now.
    fn start(addrs: Vec<String>, seed: u64) -> Clients {
        let history: History = Arc::default();
        let start = Instant::now();
        let stop = start + Duration::from_secs(seconds());
        let tasks = (0..CLIENTS)
            .map(|id| {
                tokio::spawn(client(
                    id,
                    addrs.clone(),
                    history.clone(),
                    start,
                    stop,
                    seed,
                ))
            })
            .collect();
        Clients {
            addrs,
            history,
            start,
            stop,
            tasks,
        }
    }

    /// Once the clients are done, and with every fault healed: every node runs (none died
    /// on the way), enough happened, and the history, with a final read of every key, is
    /// linearizable; so a write acknowledged and then lost shows in the final reads.
    async fn finish_and_check(self, cluster: &mut ProcessCluster, faults: &[String], seed: u64) {
        let Clients {
            addrs,
            history,
            start,
            tasks,
            ..
        } = self;
        for task in tasks {
            task.await.expect("a client panicked");
        }
        cluster.assert_running();
        let mut reader = ClusterClient::new(addrs, RetryPolicy::default());
        for key in KEYS {
            let called = start.elapsed().as_nanos() as u64;
            let value = reader
                .get(key, Consistency::Linearizable)
                .await
                .expect("healed cluster reads");
            history.lock().expect("clients are done").push(Operation {
                client: CLIENTS,
                key: key.to_owned(),
                call: Call::Get,
                answer: Answer::Value(value),
                start: called,
                end: start.elapsed().as_nanos() as u64,
            });
        }

        let history = history.lock().expect("clients are done").clone();
        let known = history
            .iter()
            .filter(|o| o.answer != Answer::Unknown)
            .count();
        eprintln!(
            "{} operations ({known} with known outcome); faults: {faults:?}",
            history.len()
        );
        assert!(
            faults.len() >= 3,
            "seed {seed}: too few faults to mean anything"
        );
        assert!(
            known >= 200,
            "seed {seed}: only {known} operations completed"
        );
        if let Err(violation) = check(&history) {
            panic!("seed {seed}: not linearizable after {faults:?}\n{violation}");
        }
    }
}

/// The highest term any node reports.
async fn highest_term(cluster: &ProcessCluster) -> u64 {
    let mut highest = 0;
    for &id in cluster.addrs.keys() {
        if let Some(term) = cluster.status(id).await.and_then(|s| s.term) {
            highest = highest.max(term);
        }
    }
    highest
}
