//! [`Membership`]: who is in the cluster, where each member listens, and who votes.
//!
//! From stage 8 a configuration is a log entry ([`crate::types::Payload::Config`]) and part of
//! every snapshot's metadata, so every node learns the members, and their addresses, from
//! the log. Stages 3 to 7 use one fixed configuration given on the command line.

use std::collections::BTreeMap;

use kv_server::protocol::{Member, NodeId};
use replication_naive::transport::ClusterId;
use serde::{Deserialize, Serialize};

/// What the cluster knows of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Where it listens, for clients and peers alike.
    pub addr: String,
    /// Whether it votes and counts toward majorities. A member that does not is a learner:
    /// it receives the log (or a snapshot) until it has caught up, and is then promoted.
    pub voter: bool,
    /// The index of the configuration that made it a member: 1 for a founder, the change's
    /// own for one added later (again, if it was removed before). 0 in fixed configurations
    /// and in ones written before it was recorded. A member added again may come back with
    /// a new data directory ([`replication_naive::incarnation`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub since: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A cluster configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The cluster: set in the founding configuration, kept by every change after it.
    /// Unknown in fixed configurations, and in logs written before it was recorded.
    #[serde(default, skip_serializing_if = "ClusterId::is_unknown")]
    cluster: ClusterId,
    members: BTreeMap<NodeId, MemberInfo>,
}

impl Membership {
    /// A new cluster's first configuration: every one of `founders` voting, in a cluster
    /// named by the founders (each id and address) and `salt`. Founders started with the
    /// same `--peers` cannot agree on anything else without talking, so they pass no salt and
    /// name the same cluster; a lone founder (`--bootstrap`) passes a random one, so that
    /// two clusters founded at one address are told apart.
    pub fn founding(founders: &BTreeMap<NodeId, String>, salt: u64) -> Membership {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |bytes: &[u8]| {
            for &byte in bytes {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (id, addr) in founders {
            mix(&id.0.to_le_bytes());
            mix(addr.as_bytes());
            mix(&[0]);
        }
        mix(&salt.to_le_bytes());
        let mut founding = Membership {
            cluster: ClusterId(hash.max(1)),
            ..Membership::voters(founders)
        };
        for member in founding.members.values_mut() {
            member.since = 1;
        }
        founding
    }

    /// The cluster this configuration belongs to.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// Every one of `voters` voting, at its address.
    pub fn voters(voters: &BTreeMap<NodeId, String>) -> Membership {
        Membership {
            members: voters
                .iter()
                .map(|(&id, addr)| {
                    let info = MemberInfo {
                        addr: addr.clone(),
                        voter: true,
                        since: 0,
                    };
                    (id, info)
                })
                .collect(),
            cluster: ClusterId::UNKNOWN,
        }
    }

    /// Whether `id` is a member, voting or not.
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// Whether `id` is a voting member.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.voter)
    }

    /// Where `id` listens.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.addr.as_str())
    }

    /// Every member's id.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.keys().copied()
    }

    /// The voting members' ids.
    pub fn voter_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.voter)
            .map(|(&id, _)| id)
    }

    /// The learners' ids.
    pub fn learner_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| !m.voter)
            .map(|(&id, _)| id)
    }

    /// How many voters make a majority.
    pub fn majority(&self) -> usize {
        self.voter_ids().count() / 2 + 1
    }

    /// Every member with its address.
    pub fn addrs(&self) -> BTreeMap<NodeId, String> {
        self.members
            .iter()
            .map(|(&id, m)| (id, m.addr.clone()))
            .collect()
    }

    /// The members as the client contract lists them.
    pub fn to_members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(&id, m)| Member {
                id,
                addr: m.addr.clone(),
                voter: m.voter,
            })
            .collect()
    }

    /// This configuration with `id` added as a learner at `addr`, by the configuration that
    /// will be at index `at`.
    pub fn with_learner(&self, id: NodeId, addr: String, at: u64) -> Membership {
        let mut next = self.clone();
        let info = MemberInfo {
            addr,
            voter: false,
            since: at,
        };
        next.members.insert(id, info);
        next
    }

    /// Every member with the index of the configuration that made it one
    /// ([`MemberInfo::since`]).
    pub fn since(&self) -> BTreeMap<NodeId, u64> {
        self.members.iter().map(|(&id, m)| (id, m.since)).collect()
    }

    /// This configuration with learner `id` made a voter.
    pub fn with_promoted(&self, id: NodeId) -> Membership {
        let mut next = self.clone();
        if let Some(member) = next.members.get_mut(&id) {
            member.voter = true;
        }
        next
    }

    /// This configuration without `id`.
    pub fn without(&self, id: NodeId) -> Membership {
        let mut next = self.clone();
        next.members.remove(&id);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        Membership::voters(
            &(1..=3)
                .map(|i| (NodeId(i), format!("127.0.0.1:700{i}")))
                .collect(),
        )
    }

    #[test]
    fn learners_are_members_but_not_voters_and_do_not_change_the_majority() {
        let config = three().with_learner(NodeId(4), "127.0.0.1:7004".into(), 9);
        assert!(config.contains(NodeId(4)) && !config.is_voter(NodeId(4)));
        assert_eq!(config.majority(), 2);
        assert_eq!(config.learner_ids().collect::<Vec<_>>(), [NodeId(4)]);
        let promoted = config.with_promoted(NodeId(4));
        assert!(promoted.is_voter(NodeId(4)));
        assert_eq!(promoted.majority(), 3);
    }

    #[test]
    fn removing_changes_the_majority() {
        let two = three().without(NodeId(3));
        assert_eq!(two.voter_ids().collect::<Vec<_>>(), [NodeId(1), NodeId(2)]);
        assert_eq!(two.majority(), 2);
        assert_eq!(two.without(NodeId(2)).majority(), 1);
        assert_eq!(Membership::default().majority(), 1);
    }

    fn founders(ports: &[u16]) -> BTreeMap<NodeId, String> {
        (1..)
            .zip(ports)
            .map(|(i, port)| (NodeId(i), format!("127.0.0.1:{port}")))
            .collect()
    }

    #[test]
    fn founders_name_their_cluster_and_every_later_configuration_keeps_it() {
        let cluster = Membership::founding(&founders(&[7001, 7002, 7003]), 0).cluster();
        assert!(!cluster.is_unknown());
        // Every founder computes the same name from the same --peers.
        assert_eq!(
            Membership::founding(&founders(&[7001, 7002, 7003]), 0).cluster(),
            cluster
        );
        // Other founders, or another salt, another cluster.
        for other in [
            Membership::founding(&founders(&[7001, 7002, 7004]), 0),
            Membership::founding(&founders(&[7001, 7002]), 0),
            Membership::founding(&founders(&[7001, 7002, 7003]), 1),
        ] {
            assert_ne!(other.cluster(), cluster);
        }
        let changed = Membership::founding(&founders(&[7001, 7002, 7003]), 0)
            .with_learner(NodeId(4), "127.0.0.1:7004".into(), 9)
            .with_promoted(NodeId(4))
            .without(NodeId(1));
        assert_eq!(changed.cluster(), cluster);
        // Kept through the log and snapshots, and unknown in configurations written before.
        let json = serde_json::to_string(&changed).expect("encodes");
        let decoded: Membership = serde_json::from_str(&json).expect("decodes");
        assert_eq!(decoded.cluster(), cluster);
        let old: Membership =
            serde_json::from_str(&serde_json::to_string(&three()).expect("encodes"))
                .expect("decodes");
        assert!(old.cluster().is_unknown());
        assert_eq!(old, three());
    }
}
