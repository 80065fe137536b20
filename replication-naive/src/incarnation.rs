//! [`Incarnations`]: which data directory each member runs on, so that a member whose data
//! directory was lost cannot come back as if nothing happened.
//!
//! Raft assumes a voter keeps what it acknowledged (§5.1, "persistent state on all
//! servers"). A voter restarted on an empty data directory with the founding `--peers`
//! looks, to itself, like a founder starting late for the first time; but its votes and the
//! entries it acknowledged are gone, and its vote can elect a node that lacks a committed
//! write. So every data directory gets a random *incarnation* at its first start, said in
//! the peer hello, and every node remembers, durably, the incarnation each member first
//! connected with. A member that connects with another one is refused, unless the
//! configuration made it a member again since (it was removed and added back: the
//! configuration records, for each member, the index of the change that added it, which
//! every node learns through the log or a snapshot, even one that was down meanwhile).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use kv_server::protocol::NodeId;

use crate::files::replace_durably;
use serde::{Deserialize, Serialize};

/// One data directory's identity: random, fixed at its first start. 0: none (a node
/// without a data directory), which is never checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// No data directory.
    pub const NONE: Incarnation = Incarnation(0);

    /// Whether this is [`Incarnation::NONE`].
    pub fn is_none(&self) -> bool {
        *self == Incarnation::NONE
    }
}

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    own: Incarnation,
    members: BTreeMap<NodeId, Remembered>,
}

/// A member's incarnation, and the configuration that had made it a member when it was
/// first seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    incarnation: Incarnation,
    since: u64,
}

/// This node's incarnation and the members' it remembers, kept in a file of its data
/// directory.
#[derive(Debug)]
pub struct Incarnations {
    path: PathBuf,
    saved: Mutex<Saved>,
}

/// The file's name in the data directory.
pub const FILE: &str = "incarnations";

impl Incarnations {
    /// Loads the file in `dir`, or makes it, with a new random incarnation for this node,
    /// and saves it before returning.
    pub fn open(dir: &Path) -> std::io::Result<Incarnations> {
        let path = dir.join(FILE);
        let saved = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!(
                    "{} is unreadable ({e}): restore it from a copy, or remove this node from the cluster and start it again with --join on an empty data directory",
                    path.display()
                ))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let saved = Saved {
                    own: Incarnation(rand::random::<u64>().max(1)),
                    members: BTreeMap::new(),
                };
                save(&path, &saved)?;
                saved
            }
            Err(error) => return Err(error),
        };
        Ok(Incarnations {
            path,
            saved: Mutex::new(saved),
        })
    }

    /// This node's incarnation.
    pub fn own(&self) -> Incarnation {
        self.lock().own
    }

    /// Whether member `id`, connecting as `incarnation` while the configuration says the
    /// change at index `since` made it a member, is the member this node knows. The first
    /// incarnation a member connects with is remembered (saved before this returns), and
    /// so is a new one if a later change made it a member again; another one is refused,
    /// with the reason.
    pub fn admit(&self, id: NodeId, incarnation: Incarnation, since: u64) -> Result<(), String> {
        let mut saved = self.lock();
        let known = saved.members.get(&id).copied();
        if incarnation.is_none() {
            // A binary without incarnations: a member known by one must keep saying it.
            return match known {
                Some(_) => Err(format!(
                    "node {id} says no incarnation, but this node knows it by one (an older binary?)"
                )),
                None => Ok(()),
            };
        }
        match known {
            Some(known) if known.incarnation == incarnation => Ok(()),
            Some(known) if known.since >= since => Err(format!(
                "node {id} came back with another data directory: what it acknowledged is lost, and it may not vote as if nothing happened; remove it from the cluster (kv-client ... remove-member {id}), then start it with --join on an empty directory"
            )),
            // First seen, or made a member again since it was.
            _ => {
                let remembered = Remembered { incarnation, since };
                saved.members.insert(id, remembered);
                save(&self.path, &saved).map_err(|e| {
                    match known {
                        Some(known) => saved.members.insert(id, known),
                        None => saved.members.remove(&id),
                    };
                    format!("cannot remember node {id}'s incarnation: {e}")
                })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `saved` to `path` durably ([`replace_durably`]).
fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    replace_durably(
        path,
        &serde_json::to_vec(saved).map_err(std::io::Error::other)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_known_by_its_first_incarnation_until_it_is_made_a_member_again() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let memory = Incarnations::open(dir.path()).expect("made");
        let own = memory.own();
        assert!(!own.is_none());
        // A founder (made a member by the founding configuration, index 1).
        assert_eq!(memory.admit(NodeId(2), Incarnation(7), 1), Ok(()));
        assert_eq!(memory.admit(NodeId(2), Incarnation(7), 1), Ok(()));
        assert_eq!(memory.admit(NodeId(3), Incarnation::NONE, 1), Ok(()));
        // Remembered across restarts.
        drop(memory);
        let memory = Incarnations::open(dir.path()).expect("loaded");
        assert_eq!(memory.own(), own);
        let refused = memory.admit(NodeId(2), Incarnation(8), 1).unwrap_err();
        assert!(refused.contains("another data directory"), "{refused}");
        // Removed and added again by the change at index 40: its new directory is admitted,
        // and from then on it is the one known.
        assert_eq!(memory.admit(NodeId(2), Incarnation(8), 40), Ok(()));
        assert!(memory.admit(NodeId(2), Incarnation(7), 40).is_err());
        assert!(memory.admit(NodeId(2), Incarnation(9), 40).is_err());
    }
}
