//! The `status` payload.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id in a cluster. Ids start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    /// A node id as command lines take it: a positive integer.
    fn from_str(s: &str) -> Result<NodeId, String> {
        match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(NodeId(n)),
            _ => Err(format!("{s:?} is not a node id (a positive integer)")),
        }
    }
}

/// What part a node plays. Servers without roles (stage 0) are `standalone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves writes and linearizable reads.
    Leader,
    /// Replicates the leader's log.
    Follower,
    /// Asking for votes.
    Candidate,
    /// A non-voting member catching up.
    Learner,
    /// A single server with no replication.
    Standalone,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Standalone => "standalone",
        })
    }
}

/// A cluster member as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's id.
    pub id: NodeId,
    /// Its address (clients and peers both connect there).
    pub addr: String,
    /// Whether it votes (learners do not).
    pub voter: bool,
}

/// The `status` response. Fields a server does not have are `null` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This node's id.
    pub id: Option<NodeId>,
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: Option<u64>,
    /// The leader's id, when known.
    pub leader: Option<NodeId>,
    /// The leader's client address, when known.
    pub leader_addr: Option<String>,
    /// The highest log index known to be committed.
    pub commit_index: Option<u64>,
    /// The highest log index applied to the state machine.
    pub last_applied: Option<u64>,
    /// The cluster's members.
    pub members: Option<Vec<Member>>,
    /// Whether this node knows that a committed configuration leaves it out: it was
    /// removed, and serves no more as a member (it may not hold the entry that removed
    /// it, so `members` can still list it). Beyond the contract's fields; on the wire only
    /// when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl Status {
    /// The status of a server without replication.
    pub fn standalone() -> Self {
        Status {
            id: None,
            role: Role::Standalone,
            term: None,
            leader: None,
            leader_addr: None,
            commit_index: None,
            last_applied: None,
            members: None,
            removed: false,
        }
    }
}
