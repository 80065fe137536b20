//! The command line of a Raft node binary, shared by this stage's binary and the later ones
//! that add to it: the flags of elections and durability, and running the node they
//! describe.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_server::process::{StartError, bind};
use kv_server::protocol::NodeId;
use raft_log::membership::Membership;
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use replication_naive::config::NodeArgs;
use replication_naive::driver::{self, DriverConfig};
use replication_naive::incarnation::{self, Incarnations};
use tokio::net::TcpListener;
use tracing::info;

use crate::durable::{DurableStorage, LOG_FILE};
use crate::node::{Config, RaftNode, SnapshotPolicy};

/// The flags for elections and durable state.
#[derive(Debug, Clone, clap::Args)]
pub struct ElectionArgs {
    /// Directory for this node's durable state (created if missing; refused if it belongs
    /// to another node id, if another process uses it, or, with membership changes, if
    /// another stage of the tutorial wrote it) [default: data/n<ID>]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Base election timeout in ms: a follower that hears from no leader for a random time
    /// in [N, 2N) starts an election.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub election_timeout_ms: u64,
    /// Milliseconds between a leader's heartbeats; must be well below the election timeout.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: u64,
    /// Campaign without asking for pre-votes first (to see what pre-vote prevents).
    #[arg(long)]
    pub no_pre_vote: bool,
    /// Keep leading without hearing from a majority (to see what check-quorum prevents).
    #[arg(long)]
    pub no_check_quorum: bool,
}

impl ElectionArgs {
    /// Node `id`'s data directory: `--data-dir`, or `data/n<ID>` under the working
    /// directory (as in the contract's examples).
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Path::new("data").join(format!("n{id}")))
    }

    /// The configuration of node `id` with `members` that the flags describe, with times in
    /// `driver`'s ticks.
    pub fn config(
        &self,
        id: NodeId,
        members: BTreeMap<NodeId, String>,
        driver: &DriverConfig,
    ) -> Result<Config, StartError> {
        let election_ticks = driver.ticks(self.election_timeout_ms);
        let heartbeat_ticks = driver.ticks(self.heartbeat_ms);
        if heartbeat_ticks >= election_ticks {
            return Err(StartError::usage(format!(
                "--heartbeat-ms ({}) must be below --election-timeout-ms ({}), by at least the {} ms tick",
                self.heartbeat_ms,
                self.election_timeout_ms,
                driver.tick.as_millis()
            )));
        }
        let mut config = Config::new(id, members, rand::random());
        config.election_ticks = election_ticks;
        config.heartbeat_ticks = heartbeat_ticks;
        config.pre_vote = !self.no_pre_vote;
        config.check_quorum = !self.no_check_quorum;
        Ok(config)
    }
}

/// Runs the node that `node` and `election` describe until `shutdown`: opens its data
/// directory (its log, and its snapshots through `open_snapshots`), binds, recovers, serves.
/// `policy` says when it snapshots (`None`: never).
pub async fn run<P: Snapshots + Send + 'static>(
    node: &NodeArgs,
    election: &ElectionArgs,
    policy: Option<SnapshotPolicy>,
    open_snapshots: impl FnOnce(&Path) -> Result<P, StartError>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    node.validate()?;
    let driver = DriverConfig::default();
    let mut config = election.config(node.id, node.peers.clone(), &driver)?;
    config.snapshots = policy;
    Opened::open(
        config,
        &node.listen,
        &election.data_dir(node.id),
        open_snapshots,
    )
    .await?
    .serve(driver, shutdown)
    .await
}

/// The node's [`Incarnations`], from its file, or made at its first start, before it writes
/// anything past its log's first record (so before a new cluster's founding entry). `None`
/// for a directory with a written log and no file, which
/// [`incarnations_of_a_used_directory`] settles once the node's configuration is recovered.
fn incarnations_before_recovery(dir: &Path) -> Result<Option<Incarnations>, StartError> {
    let written = crate::durable::log_written(dir)
        .map_err(|e| cannot_use(&format!("{}: {e}", dir.join(LOG_FILE).display())))?;
    if written && !dir.join(incarnation::FILE).exists() {
        return Ok(None);
    }
    Incarnations::open(dir)
        .map(Some)
        .map_err(|e| cannot_use(&e))
}

/// A used directory without its incarnations file. A node of an earlier stage without
/// membership changes (raft-election, compaction) wrote it, or the file was deleted. A node
/// that is its configuration's only member gets a new incarnation: no peer knows an old
/// one. Any other is refused, changing nothing: a log with no configuration would leave it
/// outside any cluster, and with a new incarnation its peers would refuse it for ever as a
/// node that lost its data, which it did not.
fn incarnations_of_a_used_directory(
    dir: &Path,
    id: NodeId,
    membership: &Membership,
) -> Result<Incarnations, StartError> {
    let mut members = membership.ids();
    let alone = members.next() == Some(id) && members.next().is_none();
    if !alone {
        let why = if membership.ids().next().is_none() {
            "a node of an earlier stage without membership changes (raft-election) wrote it: start this node on an empty data directory".to_owned()
        } else {
            format!(
                "a node of an earlier stage (compaction) wrote it, or the file was deleted. Restore the file from a copy; or remove node {id} from the cluster (kv-client ... remove-member {id}) and start it again with --join on an empty data directory; a directory an earlier stage left, start on an empty one"
            )
        };
        return Err(cannot_use(&format!(
            "{} holds a log but no {} file: {why}",
            dir.display(),
            incarnation::FILE
        )));
    }
    info!(path = %dir.join(incarnation::FILE).display(), "the only member, without an incarnations file: a new incarnation");
    Incarnations::open(dir).map_err(|e| cannot_use(&e))
}

/// A data directory that cannot be used, and why.
fn cannot_use(why: &dyn std::fmt::Display) -> StartError {
    StartError::failure(format!("cannot use --data-dir: {why}"))
}

/// A node whose data directory is open and recovered and whose address is bound, but that
/// serves nothing yet: connections wait in the listener's backlog. Opening first reports a
/// busy port or an unusable data directory at once, before any slower start-up check.
pub struct Opened<P: Snapshots> {
    id: NodeId,
    raft: RaftNode<DurableStorage, P>,
    listener: TcpListener,
    listen: String,
    dir: PathBuf,
}

impl<P: Snapshots + Send + 'static> Opened<P> {
    /// Opens the node `config` describes, with its durable state in `dir` (its log, and its
    /// snapshots through `open_snapshots`), recovers it, and binds `listen`.
    pub async fn open(
        config: Config,
        listen: &str,
        dir: &Path,
        open_snapshots: impl FnOnce(&Path) -> Result<P, StartError>,
    ) -> Result<Self, StartError> {
        let id = config.id;
        // Bound first: a node that cannot listen leaves its data directory untouched.
        let listener = bind(listen).await?;
        let storage = DurableStorage::open_dir(dir, id).map_err(|e| cannot_use(&e))?;
        // Only where a member whose data was lost can be removed and added again.
        let early = if config.membership_changes {
            Some(incarnations_before_recovery(dir)?)
        } else {
            None
        };
        let snapshots = open_snapshots(dir)?;
        let mut raft = RaftNode::with_snapshots(config, storage, snapshots)
            .map_err(|e| StartError::failure(format!("cannot recover from --data-dir: {e}")))?;
        if let Some(early) = early {
            let incarnations = match early {
                Some(incarnations) => incarnations,
                None => incarnations_of_a_used_directory(dir, id, raft.membership())?,
            };
            raft.set_incarnations(Arc::new(incarnations));
        }
        Ok(Opened {
            id,
            raft,
            listener,
            listen: listen.to_owned(),
            dir: dir.to_owned(),
        })
    }

    /// The address this node's configuration gives it, if it is a member: what peers and
    /// clients are told to use.
    pub fn member_addr(&self) -> Option<&str> {
        self.raft.membership().addr(self.id)
    }

    /// Serves clients and peers until `shutdown`.
    pub async fn serve(
        self,
        driver: DriverConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let Opened {
            id,
            raft,
            listener,
            listen,
            dir,
        } = self;
        // Read from the node, not the storage: a new cluster's bootstrap has written its
        // first term and entry by now.
        info!(
            %id,
            addr = %listen,
            term = %raft.term(),
            last_index = %raft.log().last_index(),
            last_applied = %raft.last_applied(),
            data_dir = %dir.display(),
            "node listening"
        );
        let peers = raft.membership().addrs();
        driver::run(raft, listener, peers, driver, shutdown).await?;
        info!("node stopped");
        Ok(())
    }
}
