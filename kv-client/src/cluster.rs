//! [`ClusterClient`]: one logical client of a cluster, given any of its members.
//!
//! Roadmap stage 4, "a client that knows every server". It finds the leader (from a
//! `not_leader` hint, or by asking `status`), retries what is safe to retry with backoff, and
//! tags every write with its session's `client`/`seq` so that a retry after an unknown
//! outcome is applied at most once by a server that deduplicates.
//!
//! | answer or failure                     | what the client does                                 |
//! |---------------------------------------|------------------------------------------------------|
//! | `not_leader` with a leader address    | retry there at once                                  |
//! | `not_leader` without, `unavailable`   | back off, try the next member                        |
//! | cannot connect                        | try the next member, backing off after a full round  |
//! | `timeout`, connection lost, no answer | the outcome is unknown: back off, retry, same `seq`  |
//! | `bad_request`, `too_large`            | give up at once; `timeout` after an unknown outcome  |
//! | `unavailable` to `transfer_leader`    | give up at once: it is about that transfer           |
//!
//! When no leader is known, every member is asked for `status` at once and the first answer
//! that names a leader wins, so a member that accepts connections and never answers costs no
//! time while another one answers. The deadline bounds that search as it bounds everything.
//!
//! Whether a change given up on may have taken effect follows one rule: **it may once an
//! attempt was handed to a connection and got no definite answer** (`timeout`, a lost
//! connection, no answer in time, an answer that cannot be read), and from then on it stays unknown whatever later attempts
//! hear; such a change ends in `timeout`. A retry refused with `bad_request` or `too_large`,
//! or answered with nonsense, settles nothing about an earlier copy: a server that no longer
//! keeps the outcome of a retried (client, seq) refuses it with `bad_request`
//! (docs/EXTENSIONS.md, "Where a retried (client, seq) does not get its first outcome"). A
//! change cannot have taken effect when no attempt was ever sent (the deadline passed while
//! members were asked for the leader, or none accepted a connection) or when every attempt
//! sent got a definite answer (`not_leader`, `unavailable`): the error is then that answer,
//! or `unavailable` when there was none. Reporting "unknown" for a write never sent would be
//! safe but useless to a caller deciding whether to redo it; reporting "nothing happened"
//! for one that reached a silent node would be a lie.
//!
//! Writes of one `ClusterClient` are sequential (`&mut self`): a session has one write in
//! flight, so a server that keeps only each client's last outcome serves it. Run one
//! `ClusterClient` per concurrent worker.
//!
//! One subtlety for servers: when an attempt times out, its connection is closed and the write
//! is retried elsewhere, but the first copy may already be on its way and can reach a server
//! after a *later* write of the same session. A deduplicating server must therefore never
//! apply any `seq` at or below the last one it applied for that client, not only an equal
//! one.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use kv_server::protocol::{
    CasOutcome, Command, Consistency, ErrorCode, Failure, NodeId, Op, Reply, Role, Session, Status,
    Text, WriteOutcome,
};
use rand::Rng;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use crate::error::Rounded;
use crate::{Client, Error};

/// How long after the deadline the hard stop of [`ClusterClient::execute`] fires, so that the
/// retry loop, which knows the last error, normally reports first.
const HARD_STOP_GRACE: Duration = Duration::from_millis(100);

/// What the attempts of one request may have done. It lives outside the retry loop so that
/// the hard stop of [`ClusterClient::execute`], which drops the loop mid-attempt, still knows.
#[derive(Debug, Default)]
struct Fate {
    /// An attempt was sent and got no definite answer: a change may have taken effect.
    unknown: bool,
    /// An attempt is out now: handed to a connection, not yet answered.
    in_flight: bool,
}

impl Fate {
    /// Whether a change could have taken effect, were the request given up now.
    fn may_have_happened(&self) -> bool {
        self.unknown || self.in_flight
    }
}

/// How long [`ClusterClient::read_anywhere`] goes on while every member fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounds {
    /// One round: each member asked once.
    One,
    /// Round after round, until the deadline.
    UntilDeadline,
}

/// What asking one member came to ([`ClusterClient::ask_every_member`]): its address, and
/// the connection with the answer, or why no connection opened.
type Asked = (String, Result<(Client, Result<Reply, Error>), Error>);

/// Why a search for the leader ([`ClusterClient::ask_for_leader`]) found none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NoLeaderNamed {
    /// Members that answered in time.
    answered: usize,
    /// Members asked.
    asked: usize,
}

impl fmt::Display for NoLeaderNamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no member named the leader in time ({} of {} answered",
            self.answered, self.asked
        )?;
        match self.answered {
            0 => write!(f, ")"),
            1 => write!(f, ", and knew of none)"),
            _ => write!(f, ", and none knew of one)"),
        }
    }
}

/// How hard [`ClusterClient`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up on a request after this long, all retries included.
    pub deadline: Duration,
    /// Wait for one answer at most this long before treating the node as unresponsive.
    pub request_timeout: Duration,
    /// First pause between retries; doubled after each, with jitter.
    pub initial_backoff: Duration,
    /// Longest pause between retries.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The pause before the next try: half to all of `backoff`, at random; `backoff` then
    /// doubles for the one after, up to [`RetryPolicy::max_backoff`].
    fn pause(&self, backoff: &mut Duration) -> Duration {
        let pause = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        *backoff = (*backoff * 2).min(self.max_backoff);
        pause
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(3),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// A client of a whole cluster. See the module documentation for its retry rules.
#[derive(Debug)]
pub struct ClusterClient {
    members: Vec<String>,
    leader: Option<String>,
    /// Which member to try next when the leader is unknown.
    next: usize,
    /// The member the last attempt could not reach or got no answer from (down, paused, cut
    /// off): the next member in turn, if it is this one, is passed over once.
    unreached: Option<String>,
    connections: HashMap<String, Client>,
    client_id: String,
    next_seq: u64,
    policy: RetryPolicy,
}

impl ClusterClient {
    /// A client of the cluster whose members include `addrs` (at least one).
    pub fn new(addrs: Vec<String>, policy: RetryPolicy) -> ClusterClient {
        assert!(
            !addrs.is_empty(),
            "a cluster client needs at least one address"
        );
        let client_id = format!("kvc-{}-{:016x}", std::process::id(), rand::random::<u64>());
        ClusterClient {
            leader: (addrs.len() == 1).then(|| addrs[0].clone()),
            members: addrs,
            next: 0,
            unreached: None,
            connections: HashMap::new(),
            client_id,
            next_seq: 1,
            policy,
        }
    }

    /// The session name this client tags its writes with.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The address currently believed to be the leader.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Reads `key`; `consistency` says whether a stale local read is acceptable. A stale
    /// read is served by whichever member answers first: every member is asked at once.
    pub async fn get(
        &mut self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<String>, Error> {
        let op = Op::Get {
            key: key.to_owned(),
            consistency,
        };
        let reply = match consistency {
            Consistency::Linearizable => self.execute(op).await?,
            Consistency::Stale => {
                let until = Instant::now() + self.policy.deadline;
                self.read_anywhere(op, until, Rounds::UntilDeadline).await?
            }
        };
        match reply {
            Reply::Value(value) => Ok(value.map(Text::into_string)),
            other => Err(unexpected(other)),
        }
    }

    /// `op`, a read any member serves, asked of every member at once: the first answer.
    /// A round in which every member failed (refused connections, error answers) is
    /// followed by another after a backoff, until `until` ([`Rounds::UntilDeadline`]), or
    /// ends it ([`Rounds::One`]); then the error is the most telling one (a member's own
    /// answer, else no answer in time if a member stayed silent, else the last failure). A
    /// member that takes connections and never answers (a paused node) costs nothing while
    /// another answers. `until` is the policy's deadline from the command's start, which a
    /// timeout reports.
    async fn read_anywhere(
        &mut self,
        op: Op,
        until: Instant,
        rounds: Rounds,
    ) -> Result<Reply, Error> {
        let mut backoff = self.policy.initial_backoff;
        let mut answered: Option<Failure> = None;
        let mut failed: Option<Error> = None;
        let mut silent: HashSet<String> = HashSet::new();
        let read = async {
            loop {
                silent = self.members.iter().cloned().collect();
                let mut asks = self.ask_every_member(op.clone());
                while let Some((addr, asked)) = asks.next().await {
                    silent.remove(&addr);
                    match asked {
                        Ok((client, Ok(reply))) => {
                            self.connections.insert(addr, client);
                            return Some(Ok(reply));
                        }
                        // About the request itself: every member would say the same.
                        Ok((_, Err(Error::Server(failure))))
                            if matches!(
                                failure.code,
                                ErrorCode::BadRequest | ErrorCode::TooLarge
                            ) =>
                        {
                            return Some(Err(Error::Server(failure)));
                        }
                        Ok((_, Err(Error::Server(failure)))) => answered = Some(failure),
                        Ok((_, Err(error))) | Err(error) => {
                            // Broken or never opened: not to be reused.
                            self.connections.remove(&addr);
                            failed = Some(error);
                        }
                    }
                }
                if rounds == Rounds::One {
                    return None;
                }
                tokio::time::sleep(self.policy.pause(&mut backoff)).await;
            }
        };
        if let Ok(Some(read)) = timeout_at(until, read).await {
            return read;
        }
        // A connection with a request still unanswered is not reused (as after any timeout).
        for addr in &silent {
            self.connections.remove(addr);
        }
        Err(match (answered, failed) {
            (Some(failure), _) => Error::Server(failure),
            (None, _) if !silent.is_empty() => Error::RequestTimeout(self.policy.deadline),
            (None, Some(error)) => error,
            (None, None) => Error::RequestTimeout(self.policy.deadline),
        })
    }

    /// Sends `op` to every member at once, on its cached connection or a new one: each
    /// member's address, with the connection and the answer, or why none could be opened or
    /// no answer came within the request timeout, as they come.
    fn ask_every_member(&self, op: Op) -> FuturesUnordered<impl Future<Output = Asked> + use<>> {
        let patience = self.policy.request_timeout;
        self.members
            .iter()
            .map(|addr| {
                let cached = self.connections.get(addr).cloned();
                let (addr, op) = (addr.clone(), op.clone());
                async move {
                    let asked = async {
                        let client = match cached {
                            Some(client) => client,
                            None => Client::connect(&addr).await?,
                        };
                        let reply = client.request(op).await;
                        Ok::<_, Error>((client, reply))
                    };
                    let asked = timeout(patience, asked)
                        .await
                        .unwrap_or(Err(Error::RequestTimeout(patience)));
                    (addr, asked)
                }
            })
            .collect()
    }

    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.write(Command::Put {
            key: key.to_owned(),
            value: value.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Removes `key`; says whether it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, Error> {
        match self
            .write(Command::Delete {
                key: key.to_owned(),
            })
            .await?
        {
            WriteOutcome::Delete { existed } => Ok(existed),
            other => Err(unexpected(Reply::Write(other))),
        }
    }

    /// Sets `key` to `value` if it holds `expected` (`None`: if absent).
    pub async fn cas(
        &mut self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<CasOutcome, Error> {
        let command = Command::Cas {
            key: key.to_owned(),
            expected: expected.map(str::to_owned),
            value: value.to_owned(),
        };
        match self.write(command).await? {
            WriteOutcome::Cas(outcome) => Ok(outcome),
            other => Err(unexpected(Reply::Write(other))),
        }
    }

    /// The status of the node at `addr` (no retries, no redirection), waiting for it no longer
    /// than the policy's request timeout, nor than its deadline: a single request, so the
    /// deadline that bounds a whole command bounds it too (`kv-client status` sets both to
    /// its per-node wait).
    pub async fn status_of(&mut self, addr: &str) -> Result<Status, Error> {
        let wait = self.policy.request_timeout.min(self.policy.deadline);
        self.status_until(addr, Instant::now() + wait).await
    }

    /// [`ClusterClient::status_of`], connecting and waiting for the answer until `until`.
    async fn status_until(&mut self, addr: &str, until: Instant) -> Result<Status, Error> {
        // The wait as given, connecting included: what a timeout reports.
        let wait = until.saturating_duration_since(Instant::now());
        let client = self.connection(addr, until).await?;
        match timeout_at(until, client.request(Op::Status)).await {
            Ok(Ok(Reply::Status(status))) => Ok(*status),
            Ok(Ok(other)) => Err(unexpected(other)),
            Ok(Err(error)) => {
                self.forget(addr, &error);
                Err(error)
            }
            Err(_) => {
                self.connections.remove(addr);
                Err(Error::RequestTimeout(wait))
            }
        }
    }

    /// Adds node `id` at `addr`, through the leader.
    pub async fn add_member(&mut self, id: NodeId, addr: &str) -> Result<(), Error> {
        self.execute(Op::AddMember {
            id,
            addr: addr.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Removes node `id`, through the leader.
    pub async fn remove_member(&mut self, id: NodeId) -> Result<(), Error> {
        self.execute(Op::RemoveMember { id }).await.map(|_| ())
    }

    /// Hands leadership to voter `id`; returns once it leads.
    pub async fn transfer_leader(&mut self, id: NodeId) -> Result<(), Error> {
        self.execute(Op::TransferLeader { id }).await.map(|_| ())
    }

    /// Asks the members for the leader's address and remembers it. `None` when no member
    /// that answered within the request timeout knows one.
    pub async fn find_leader(&mut self) -> Option<String> {
        let until = Instant::now() + self.policy.deadline;
        self.ask_for_leader(until).await.ok().map(|(addr, _)| addr)
    }

    /// The leader's status: asked of the leader the members name (one request when the
    /// first member that answers is the leader). A named leader that does not answer
    /// (paused, cut off) is searched for again, as its followers elect another, while two
    /// request timeouts are left (one for the search and the named leader, one kept for
    /// what follows); then, or when no member knows a leader, the status of whichever
    /// member answers first, each asked once.
    ///
    /// The policy's deadline bounds it all, the search and the last request included.
    pub async fn leader_status(&mut self) -> Result<Status, Error> {
        let until = Instant::now() + self.policy.deadline;
        let patience = self.policy.request_timeout;
        let mut backoff = self.policy.initial_backoff;
        // Kept for the last resort once a named leader has been silent: a request timeout.
        let mut last_resort = until;
        loop {
            let leader = match self.ask_for_leader(until).await {
                Ok((_, Some(status))) => return Ok(status),
                Ok((leader, None)) => leader,
                Err(_) => break,
            };
            let wait = last_resort.min(Instant::now() + patience);
            if let Ok(status) = self.status_until(&leader, wait).await {
                return Ok(status);
            }
            self.leader = None;
            let pause = self.policy.pause(&mut backoff);
            if Instant::now() + pause + 2 * patience >= until {
                break;
            }
            last_resort = until - patience;
            tokio::time::sleep(pause).await;
        }
        // One round, as the search: a cluster none of whose members can be reached is
        // reported as such at once, not retried until the deadline.
        match self.read_anywhere(Op::Status, until, Rounds::One).await? {
            Reply::Status(status) => Ok(*status),
            other => Err(unexpected(other)),
        }
    }

    /// The leader's address, as [`ClusterClient::find_leader`], with its status when it was
    /// the leader that answered.
    ///
    /// Every member is asked at once and the first answer naming a leader wins: asked in
    /// turn, a member that accepts connections and never answers held up the search for a
    /// whole request timeout before the next was tried. The search ends by `until`, and
    /// within one request timeout.
    async fn ask_for_leader(
        &mut self,
        until: Instant,
    ) -> Result<(String, Option<Status>), NoLeaderNamed> {
        let until = until.min(Instant::now() + self.policy.request_timeout);
        let mut asks = self.ask_every_member(Op::Status);
        let mut unanswered: HashSet<String> = self.members.iter().cloned().collect();
        // Members whose answer came, a status or an error of theirs (not one of connecting).
        let mut answered = 0;
        let search = async {
            while let Some((addr, asked)) = asks.next().await {
                unanswered.remove(&addr);
                let status = match asked {
                    Ok((client, Ok(Reply::Status(status)))) => {
                        answered += 1;
                        self.connections.insert(addr.clone(), client);
                        *status
                    }
                    Ok((client, Err(Error::Server(_)))) => {
                        answered += 1;
                        self.connections.insert(addr, client);
                        continue;
                    }
                    _ => {
                        self.connections.remove(&addr);
                        continue;
                    }
                };
                let found = match status.role {
                    Role::Leader | Role::Standalone => Some((addr, Some(status))),
                    _ => status.leader_addr.map(|leader| (leader, None)),
                };
                if found.is_some() {
                    return found;
                }
            }
            None
        };
        let found = timeout_at(until, search).await.ok().flatten();
        // A connection with a status request still unanswered is not reused, as after any
        // request that timed out: the node is slow or silent.
        for addr in &unanswered {
            self.connections.remove(addr);
        }
        let (leader, status) = found.ok_or(NoLeaderNamed {
            answered,
            asked: self.members.len(),
        })?;
        self.leader = Some(leader.clone());
        Ok((leader, status))
    }

    async fn write(&mut self, command: Command) -> Result<WriteOutcome, Error> {
        let session = Session {
            client: self.client_id.clone(),
            seq: self.next_seq,
        };
        self.next_seq += 1;
        match self
            .execute(Op::Write {
                command,
                session: Some(session),
            })
            .await?
        {
            Reply::Write(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `op` to the leader until it succeeds, fails for good, or the deadline passes.
    /// Every retry of a write resends the same op, and so the same `seq`. How a change that
    /// fails is reported (unknown outcome or not) is the module documentation's rule.
    pub async fn execute(&mut self, op: Op) -> Result<Reply, Error> {
        let deadline = Instant::now() + self.policy.deadline;
        self.execute_until(op, deadline, None).await
    }

    /// [`ClusterClient::execute`] with a deadline of the caller's, for a request the caller
    /// may already have sent once on a connection of its own: `earlier` is what that attempt
    /// got. The load generator sends on pipelined [`crate::Connection`]s for speed and hands
    /// a request here when its attempt fails, so that leader finding and retries are this
    /// client's, with the request's deadline counted from its first send.
    ///
    /// An `earlier` attempt whose outcome is unknown counts as one of this client's own: a
    /// change that then fails ends in `timeout`, whatever later attempts hear. A deadline
    /// already past makes no attempt and reports `earlier` (or `unavailable`).
    pub async fn execute_until(
        &mut self,
        op: Op,
        deadline: Instant,
        earlier: Option<Error>,
    ) -> Result<Reply, Error> {
        let changes = op.changes_state();
        let mut fate = Fate {
            unknown: earlier.as_ref().is_some_and(Error::outcome_unknown),
            in_flight: false,
        };
        if Instant::now() >= deadline {
            let error = earlier.unwrap_or_else(|| self.nothing_happened("no time was left"));
            let why = format!("gave up after {}", Rounded(self.policy.deadline));
            return Err(self.final_error(changes, &fate, error, &why));
        }
        // The loop below keeps every wait within the deadline and reports the last error
        // when it passes; this is the hard stop, a little later, in case something it awaits
        // overruns its bound anyway.
        let result = timeout_at(
            deadline + HARD_STOP_GRACE,
            self.retry(op, deadline, earlier, &mut fate),
        )
        .await;
        match result {
            Ok(result) => result,
            Err(_) if !changes => Err(Error::RequestTimeout(self.policy.deadline)),
            Err(_) if fate.may_have_happened() => Err(self.unknown_outcome(&format!(
                "gave up after {} (no answer)",
                Rounded(self.policy.deadline)
            ))),
            Err(_) => Err(self.nothing_happened("no answer")),
        }
    }

    async fn retry(
        &mut self,
        op: Op,
        deadline: Instant,
        mut earlier: Option<Error>,
        fate: &mut Fate,
    ) -> Result<Reply, Error> {
        let changes = op.changes_state();
        let mut backoff = self.policy.initial_backoff;
        let mut redirects = 0;
        // `earlier`: the last error of an attempt the deadline did not cut short (the
        // caller's own attempt, at first, if it made one).
        if self.leader.is_none() {
            let search = self.ask_for_leader(deadline).await;
            if Instant::now() >= deadline {
                // No attempt was made here: an attempt now, with no time left, could still put
                // the request on the wire and leave its outcome unknown for nothing. (The
                // caller's own attempt, if it made one, may have left it unknown already.)
                let why = search.err().map_or_else(
                    || "the leader was found with no time left".to_owned(),
                    |none| none.to_string(),
                );
                let error = earlier.unwrap_or_else(|| self.nothing_happened(&why));
                return Err(self.final_error(changes, fate, error, &why));
            }
        }
        // The last error answer a member gave, which says more than one that cannot be
        // reached.
        let mut answered: Option<Failure> = None;
        loop {
            if self.leader.is_none() && matches!(op, Op::TransferLeader { .. }) {
                // A transfer goes to the leader itself, whose refusal is final (below); a
                // follower would forward it, and the refusal would come back as another
                // node's, to be retried, each retry stopping the leader's writes again.
                let _ = self.ask_for_leader(deadline).await;
            }
            let addr = self.target();
            let error = match self.attempt(&addr, op.clone(), deadline, fate).await {
                Ok(reply) => return Ok(reply),
                Err(error) => error,
            };
            debug!(%addr, %error, "attempt failed");
            if let Error::Server(failure) = &error {
                answered = Some(failure.clone());
            }
            let cut_short = matches!(error, Error::RequestTimeout(budget) if budget < self.policy.request_timeout);
            let retry_at_once = match &error {
                Error::Server(failure) => match failure.code {
                    // Definite for this attempt only: a retry refused with `bad_request` says
                    // nothing of an earlier copy (module documentation).
                    ErrorCode::BadRequest | ErrorCode::TooLarge => {
                        let why = "the retry was refused";
                        return Err(self.final_error(changes, fate, error, why));
                    }
                    ErrorCode::NotLeader => match &failure.leader {
                        Some(leader) if *leader != addr => {
                            self.leader = Some(leader.clone());
                            // Follow a hint at once, but not forever: during an election two
                            // nodes may name each other for a while.
                            redirects += 1;
                            redirects <= 2
                        }
                        _ => {
                            self.leader = None;
                            false
                        }
                    },
                    // The leader itself refuses a transfer with `unavailable` when the target
                    // cannot take over (silent, or did not within an election timeout) or
                    // another transfer is under way: retried, each try could stop its writes
                    // again. (It joins a retry of the same transfer to the one under way.)
                    // Another node's `unavailable` (an election under way) is retried.
                    ErrorCode::Unavailable
                        if matches!(op, Op::TransferLeader { .. })
                            && self.leader.as_deref() == Some(addr.as_str()) =>
                    {
                        let why = "the transfer was refused";
                        return Err(self.final_error(changes, fate, error, why));
                    }
                    ErrorCode::Unavailable => {
                        self.leader = None;
                        false
                    }
                    ErrorCode::Timeout => false,
                },
                Error::Protocol(_) => {
                    let why = "an answer broke the protocol";
                    return Err(self.final_error(changes, fate, error, why));
                }
                Error::Connect { .. } | Error::ConnectionLost(_) | Error::RequestTimeout(_) => {
                    self.leader = None;
                    self.unreached = Some(addr.clone());
                    // Another member may answer at once; pause only after a full round.
                    !self.next.is_multiple_of(self.members.len())
                }
            };
            if !retry_at_once {
                redirects = 0;
            }
            if !retry_at_once && Instant::now() < deadline {
                let pause = self.policy.pause(&mut backoff);
                tokio::time::sleep(pause.min(deadline - Instant::now())).await;
            }
            if Instant::now() >= deadline {
                // An attempt cut short by the deadline says less than the answer before it,
                // and a member that could not be reached (nothing was sent to it) less than
                // what another answered.
                let error = match (earlier, error, answered) {
                    (Some(earlier), _, _) if cut_short => earlier,
                    (_, Error::Connect { .. }, Some(failure)) => Error::Server(failure),
                    (_, error, _) => error,
                };
                let why = format!("gave up after {}", Rounded(self.policy.deadline));
                return Err(self.final_error(changes, fate, error, &why));
            }
            if !cut_short {
                earlier = Some(error);
            }
        }
    }

    /// What to report when retries end with `error` (`why` says how they ended): `error`
    /// itself, unless `op` changes state and an attempt's outcome is unknown, which no
    /// later answer can settle.
    fn final_error(&self, changes: bool, fate: &Fate, error: Error, why: &str) -> Error {
        if changes && fate.may_have_happened() {
            self.unknown_outcome(&format!("{why} (last error: {error})"))
        } else {
            error
        }
    }

    /// A change given up on whose outcome is unknown: `timeout`, as the contract names it.
    fn unknown_outcome(&self, why: &str) -> Error {
        Error::Server(Failure::timeout(format!(
            "{why}; an attempt got no definite answer, so the change may or may not have taken effect"
        )))
    }

    /// A request given up on before any attempt of it could take effect: `unavailable`, the
    /// contract's "nothing happened; retry later or elsewhere".
    fn nothing_happened(&self, why: &str) -> Error {
        Error::Server(Failure::unavailable(format!(
            "gave up after {}: {why}; nothing was changed",
            Rounded(self.policy.deadline)
        )))
    }

    /// The address to send to: the leader if known, else the next member in turn, passing
    /// over the one the last attempt could not reach.
    fn target(&mut self) -> String {
        if let Some(leader) = &self.leader {
            return leader.clone();
        }
        let mut addr = &self.members[self.next % self.members.len()];
        self.next += 1;
        if self.unreached.take().as_ref() == Some(addr) && self.members.len() > 1 {
            // A leader named before it went silent, say: its followers elect another.
            addr = &self.members[self.next % self.members.len()];
            self.next += 1;
        }
        addr.clone()
    }

    async fn attempt(
        &mut self,
        addr: &str,
        op: Op,
        deadline: Instant,
        fate: &mut Fate,
    ) -> Result<Reply, Error> {
        if !self.members.iter().any(|m| m == addr) {
            // A leader hint may name a member the user did not list.
            self.members.push(addr.to_owned());
        }
        let client = self.connection(addr, deadline).await?;
        let budget = self
            .policy
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        // From here on the request may reach the node, until an answer says what it did.
        fate.in_flight = true;
        let result = match timeout(budget, client.request(op)).await {
            Ok(result) => result,
            Err(_) => Err(Error::RequestTimeout(budget)),
        };
        fate.in_flight = false;
        if let Err(error) = &result {
            fate.unknown |= error.outcome_unknown();
            self.forget(addr, error);
        }
        result
    }

    /// The cached connection to `addr`, or a new one, connecting for a request timeout at
    /// most and not past `until`.
    async fn connection(&mut self, addr: &str, until: Instant) -> Result<Client, Error> {
        if let Some(client) = self.connections.get(addr) {
            return Ok(client.clone());
        }
        let until = until.min(Instant::now() + self.policy.request_timeout);
        let client = timeout_at(until, Client::connect(addr))
            .await
            .map_err(|_| Error::Connect {
                addr: addr.to_owned(),
                source: std::io::ErrorKind::TimedOut.into(),
            })??;
        self.connections.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Drops the cached connection to `addr` when `error` means it can no longer be trusted.
    fn forget(&mut self, addr: &str, error: &Error) {
        if !matches!(error, Error::Server(_)) {
            self.connections.remove(addr);
        }
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Protocol(format!("unexpected reply {reply:?}"))
}
