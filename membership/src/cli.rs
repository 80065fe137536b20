//! The command line of a node whose cluster can change (this stage's binary and
//! limecached's): how it finds its cluster (`--peers`, `--bootstrap` or `--join`), and
//! running it.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use compaction::cli::{SnapshotArgs, open_snapshots};
use kv_client::{Client, ClusterClient, RetryPolicy};
use kv_server::process::StartError;
use kv_server::protocol::{Consistency, ErrorCode, NodeId, Op, Role, Status, parse_host_port};
use raft_election::cli::{ElectionArgs, Opened};
use raft_election::durable::{log_emptied, log_written};
use replication_naive::config::parse_peers;
use replication_naive::driver::DriverConfig;
use tracing::{info, warn};

/// Every flag of a node: who it is, where it listens, how it finds its cluster, its
/// timing, its data directory and its snapshots.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// This node's id: a positive integer, unique among the members. A removed node's id
    /// may serve again, for that node or a replacement, started with --join on an empty
    /// data directory.
    #[arg(long)]
    pub id: NodeId,
    /// The node's one address, host:port: clients and peers both connect here.
    #[arg(long, value_parser = parse_host_port)]
    pub listen: String,
    /// The address the cluster knows this node by, when it differs from --listen (a node
    /// behind a proxy or NAT): what --peers lists for it, what --join registers, and what
    /// clients are redirected to. Defaults to --listen.
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub advertise: Option<String>,
    /// How a new node finds its cluster.
    #[command(flatten)]
    pub founding: Founding,
    /// Timing and the data directory.
    #[command(flatten)]
    pub election: ElectionArgs,
    /// When to snapshot.
    #[command(flatten)]
    pub snapshots: SnapshotArgs,
}

impl MemberArgs {
    /// Runs the node the flags describe, on `driver`, until `shutdown`.
    pub async fn run(
        self,
        driver: DriverConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let data_dir = self.election.data_dir(self.id);
        let fresh = is_fresh(&data_dir);
        let advertised = self.advertise.as_deref().unwrap_or(&self.listen);
        let joins_itself = self
            .founding
            .join
            .as_ref()
            .filter(|&j| fresh && (*j == self.listen || j == advertised));
        if let Some(own) = joins_itself {
            // It would ask itself, which knows no cluster, for ever.
            return Err(StartError::usage(format!(
                "--join {own} is this node's own address: give the address of a running member of the cluster to join"
            )));
        }
        let founders = self.founding.founders(self.id, advertised, fresh)?;
        let mut config = self.election.config(self.id, founders, &driver)?;
        config.snapshots = Some(self.snapshots.policy());
        config.membership_changes = true;
        // A node whose driver forwards (limecached) relays writes and linearizable reads over
        // the peer link itself: the driver forwards only membership changes and transfers
        // (`replication_naive::forward::is_forwarded`).
        config.followers_relay = driver.forward_to_leader;
        tokio::pin!(shutdown);
        let opened = Opened::open(config, &self.listen, &data_dir, open_snapshots).await?;
        // A member's address is in its configuration, which peers and clients go by: a
        // restart elsewhere would leave the node cut off for good, and its clients sent to
        // where it no longer is.
        if let Some(known) = opened.member_addr().filter(|&known| known != advertised) {
            let id = self.id;
            return Err(StartError::usage(format!(
                "the cluster knows node {id} at {known} (its data directory's configuration), but it listens at (or advertises) {advertised}: restart it with --listen {known} (or --advertise {known}, behind a proxy); to move it, remove it (kv-client ... remove-member {id}) and start it at the new address with --join on an empty directory"
            )));
        }
        // `--join` counts only for a node with no state yet.
        let joins_through = self.founding.join.as_ref().filter(|_| fresh);
        if let Some(through) = joins_through {
            // Before the node serves: once it does, its peers' messages reach it, and a
            // voter that lost its data would answer their vote requests at once. Until then
            // they wait in the listener's backlog.
            tokio::select! {
                checked = refuse_a_lost_voter(self.id, through) => checked?,
                () = &mut shutdown => return Ok(()),
            }
        }
        // A node that asks to join serves meanwhile (the leader replicates to it once it is
        // added), and stops if the cluster refuses it for good.
        let joining = async {
            if let Some(through) = joins_through {
                if let Err(refused) = join(self.id, advertised.to_owned(), through.clone()).await {
                    return refused;
                }
            }
            std::future::pending().await
        };
        let serving = opened.serve(driver, shutdown);
        tokio::select! {
            served = serving => served,
            refused = joining => Err(refused),
        }
    }
}

/// The three ways to start a node of a new or existing cluster. All are ignored when the
/// data directory already holds the node's state: it rejoins with its saved configuration.
#[derive(Debug, Clone, clap::Args)]
#[group(multiple = false)]
pub struct Founding {
    /// Start a new cluster of these voters, this node included (every founding node gets
    /// the same list): `1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003`.
    #[arg(long, value_parser = parse_peers)]
    pub peers: Option<BTreeMap<NodeId, String>>,
    /// Start a new cluster of this node alone; add others with `--join` or `add-member`.
    #[arg(long)]
    pub bootstrap: bool,
    /// Join an existing cluster through any of its members (host:port): the node asks to
    /// be added, catches up as a learner, and is promoted to voter.
    #[arg(long, value_name = "ADDR", value_parser = parse_host_port)]
    pub join: Option<String>,
}

impl Founding {
    /// The founding voters for node `id`, known to the cluster as `addr` (its --listen, or
    /// its --advertise): empty when it joins, or when its data directory is not `fresh`
    /// (the flags are then ignored).
    pub fn founders(
        &self,
        id: NodeId,
        addr: &str,
        fresh: bool,
    ) -> Result<BTreeMap<NodeId, String>, StartError> {
        if !fresh {
            return Ok(BTreeMap::new());
        }
        match (&self.peers, self.bootstrap, &self.join) {
            (Some(peers), _, _) => match peers.get(&id) {
                Some(listed) if listed == addr => Ok(peers.clone()),
                Some(listed) => Err(StartError::usage(format!(
                    "--peers gives node {id} the address {listed}, but it listens at (or advertises) {addr}; they must be the same"
                ))),
                None => Err(StartError::usage(format!(
                    "--peers does not list this node's --id {id}"
                ))),
            },
            (None, true, _) => Ok(BTreeMap::from([(id, addr.to_owned())])),
            (None, false, Some(_)) => Ok(BTreeMap::new()),
            (None, false, None) => Err(StartError::usage(
                "a new node needs --peers, --bootstrap or --join",
            )),
        }
    }
}

/// Whether the data directory `dir` holds no log yet: a node that has never run there, or
/// that stopped before it wrote anything past its log's first record but a founding write
/// that a crash cut short ([`log_written`]). A
/// log that cannot be read, and one that was emptied after the node's first start
/// ([`log_emptied`]), are not fresh: opening them fails with the reason, whatever the
/// founding flags say.
pub fn is_fresh(dir: &Path) -> bool {
    matches!(log_written(dir), Ok(false)) && matches!(log_emptied(dir), Ok(false))
}

/// Asks the cluster, through the member at `through`, to add node `id` at `addr`, until it
/// says yes (`Ok`) or refuses for good (`Err`: the id is a member at another address, say).
/// The cluster then replicates its log (or a snapshot) to this node and promotes it to voter
/// once it has caught up. Each try is a [`ClusterClient`] command, which itself retries
/// for 30 s; past that (no member reachable, no leader), the node tries again a second
/// later, for as long as it runs.
pub async fn join(id: NodeId, addr: String, through: String) -> Result<(), StartError> {
    loop {
        let mut client = ClusterClient::new(vec![through.clone()], join_policy());
        match client.add_member(id, &addr).await {
            Ok(()) => {
                info!(%id, %through, "added to the cluster as a learner; catching up");
                return Ok(());
            }
            Err(error) if error.code() == Some(ErrorCode::BadRequest) => {
                return Err(StartError::failure(format!(
                    "the cluster refuses to add node {id} at {addr}: {error}"
                )));
            }
            Err(error) => {
                warn!(%id, %through, %error, "cannot join yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How hard each of a joining node's requests tries: [`ClusterClient`]'s defaults, for 30 s.
fn join_policy() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(30),
        ..RetryPolicy::default()
    }
}

/// Before a node with an empty data directory serves and joins: refuses when the cluster
/// already counts it as a voter. Its data was lost (wiped, or a new disk), and with it its
/// term, its vote and the entries it acknowledged; joining again would make it a voter
/// that has none of them, whose vote could elect a leader missing committed entries
/// (§5.4.1 relies on every voter keeping what it acknowledged). Removing it first and then
/// joining brings it back as a learner that catches up. Only the leader's view clears it
/// ([`lost_voter`]), once it has confirmed that it still leads ([`still_leads`]); a retry of
/// this node's own add cannot be mistaken for this, since it comes later, from the loop in
/// [`join`].
async fn refuse_a_lost_voter(id: NodeId, through: &str) -> Result<(), StartError> {
    loop {
        let mut client = ClusterClient::new(vec![through.to_owned()], join_policy());
        let why = match client.leader_status().await {
            Ok(status) => match lost_voter(id, &status) {
                Some(true) => {
                    let at = status
                        .members
                        .iter()
                        .flatten()
                        .find(|m| m.id == id)
                        .map_or_else(String::new, |m| format!(" at {}", m.addr));
                    return Err(StartError::failure(format!(
                        "node {id} is already a voter of the cluster (asked through {through}){at}, and this data directory is empty. If another node runs as {id}{at}, this --id is a mistake: give this node an unused one. If node {id} lost its data, what it acknowledged is lost: remove it first (kv-client --addr {through} remove-member {id}), then start it again with --join"
                    )));
                }
                Some(false) => match still_leads(&mut client, &status).await {
                    Ok(()) => return Ok(()),
                    Err(why) => why,
                },
                None => "no member knows a leader".to_owned(),
            },
            Err(error) => error.to_string(),
        };
        warn!(%id, %through, %why, "cannot reach the cluster yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Confirms that the leader whose `status` cleared a joining node still leads: it serves a
/// linearizable read, then reports itself leader in the same term again. A leader serves
/// such a read only once a majority has answered a heartbeat of its term sent after the read
/// arrived (ReadIndex, thesis §6.4), so no later leader existed when `status` was taken, and
/// the configuration it listed was the newest. A deposed leader cut off from the majority
/// still calls itself leader for up to an election timeout (for ever with
/// `--no-check-quorum`), but cannot confirm, and its stale view clears nothing.
async fn still_leads(client: &mut ClusterClient, status: &Status) -> Result<(), String> {
    if status.role == Role::Standalone {
        return Ok(()); // a server without elections: no one else can lead
    }
    let addr = status
        .leader_addr
        .clone()
        .ok_or("the leader's status names no address")?;
    let read = async {
        // Any key: what counts is that the leader serves a linearizable read.
        let get = Op::Get {
            key: String::new(),
            consistency: Consistency::Linearizable,
        };
        Client::connect(&addr).await?.request(get).await
    };
    match tokio::time::timeout(join_policy().request_timeout, read).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(format!("the leader at {addr} did not confirm: {error}")),
        Err(_) => return Err(format!("the leader at {addr} did not confirm in time")),
    }
    let again = client.status_of(&addr).await.map_err(|e| e.to_string())?;
    if again.role == status.role && again.term == status.term {
        Ok(())
    } else {
        Err(format!("the leader at {addr} changed while confirming"))
    }
}

/// Whether `status` shows node `id` as a voter: `Some(true)` if any view lists it so,
/// `Some(false)` if the leader's does not, `None` if only a follower's view is at hand
/// and it does not (a follower may not have the configuration that promoted it).
fn lost_voter(id: NodeId, status: &Status) -> Option<bool> {
    let members = status.members.as_deref().unwrap_or_default();
    if members.iter().any(|m| m.id == id && m.voter) {
        Some(true)
    } else if matches!(status.role, Role::Leader | Role::Standalone) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::Member;
    use raft_election::durable::LOG_FILE;

    use super::*;

    #[test]
    fn only_the_leader_s_view_clears_a_joining_node_and_any_view_can_refuse_it() {
        let view = |role, voter| Status {
            id: Some(NodeId(1)),
            role,
            term: Some(3),
            leader: None,
            leader_addr: None,
            commit_index: Some(9),
            last_applied: Some(9),
            members: Some(vec![Member {
                id: NodeId(4),
                addr: "127.0.0.1:7004".into(),
                voter,
            }]),
            removed: false,
        };
        let (node, other) = (NodeId(4), NodeId(5));
        assert_eq!(lost_voter(node, &view(Role::Leader, true)), Some(true));
        assert_eq!(lost_voter(node, &view(Role::Follower, true)), Some(true));
        assert_eq!(lost_voter(node, &view(Role::Leader, false)), Some(false));
        assert_eq!(lost_voter(other, &view(Role::Leader, true)), Some(false));
        // A follower that knows no leader may lag behind the promotion: ask again.
        assert_eq!(lost_voter(node, &view(Role::Follower, false)), None);
        assert_eq!(lost_voter(node, &view(Role::Candidate, false)), None);
    }

    #[test]
    fn a_log_of_only_zeros_is_fresh_and_one_with_a_record_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        assert!(is_fresh(dir.path()), "no log");
        std::fs::write(&log, b"").unwrap();
        assert!(is_fresh(dir.path()), "an empty log");
        // The first write lost, the zeros ahead of it kept.
        std::fs::write(&log, vec![0u8; 1 << 20]).unwrap();
        assert!(is_fresh(dir.path()), "zeros only");
        let mut record = vec![0u8; 1 << 20];
        record[3] = 0x80; // a length with the write-start bit
        std::fs::write(&log, record).unwrap();
        assert!(!is_fresh(dir.path()), "a record");
    }

    #[test]
    fn a_first_start_s_own_record_is_fresh_and_an_emptied_log_with_an_id_is_not() {
        use raft_election::durable::DurableStorage;
        let dir = tempfile::tempdir().unwrap();
        // A first start that stopped before writing anything past its log's first record:
        // its founding flags still count.
        drop(DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap());
        assert!(is_fresh(dir.path()), "only the first record");
        // Its log emptied since: not a new directory (opening it is refused), whatever
        // --peers, --bootstrap or --join say.
        std::fs::write(dir.path().join(LOG_FILE), b"").unwrap();
        assert!(!is_fresh(dir.path()), "an id and an emptied log");
    }

    #[test]
    fn a_founding_start_cut_short_inside_its_founding_write_is_fresh() {
        use raft_election::durable::DurableStorage;
        use raft_election::node::{Config, RaftNode};
        // Long addresses: the founding entry spans more than its first sector.
        let founders: BTreeMap<NodeId, String> = (1..=16)
            .map(|i| {
                (
                    NodeId(i),
                    format!("node-{i}.a-long-host-name.example.internal:7001"),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let storage = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
        let mut config = Config::new(NodeId(1), founders, 1);
        config.membership_changes = true;
        drop(RaftNode::new(config, storage));
        assert!(!is_fresh(dir.path()), "founded");
        // A crash kept the first sector of that write (the first record, the founder's
        // hard state, the entry's start) and lost the rest: the flags found it again.
        let log = dir.path().join(LOG_FILE);
        let mut torn = std::fs::read(&log).unwrap();
        torn[512..].fill(0);
        std::fs::write(&log, torn).unwrap();
        assert!(is_fresh(dir.path()), "the founding entry torn");
    }
}
