//! [`Incarnations`]: which data directory each member runs on, so that a member whose data
//! directory was lost cannot come back as if nothing happened.
//!
//! Raft assumes a voter keeps what it acknowledged (§5.1, "persistent state on all
//! servers"). A voter restarted on an empty data directory with the founding `--peers`
//! looks, to itself, like a founder starting late for the first time; but its votes and the
//! entries it acknowledged are gone, and its vote can elect a node that lacks a committed
//! write. So every data directory gets a random *incarnation* at its first start, said in
//! the peer hello, and every node remembers, durably, the incarnation each member first
//! connected with. A member that connects with another one is refused until it has been
//! removed from the cluster (which forgets its incarnation) and added again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use kv_server::protocol::NodeId;
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
    members: BTreeMap<NodeId, Incarnation>,
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
                std::io::Error::other(format!("{} is unreadable: {e}", path.display()))
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

    /// Whether member `id`, connecting as `incarnation`, is the member this node knows: the
    /// first incarnation a member connects with is remembered (saved before this returns),
    /// and another one is refused, with the reason.
    pub fn admit(&self, id: NodeId, incarnation: Incarnation) -> Result<(), String> {
        if incarnation.is_none() {
            return Ok(());
        }
        let mut saved = self.lock();
        match saved.members.get(&id) {
            Some(&known) if known == incarnation => Ok(()),
            Some(_) => Err(format!(
                "node {id} came back with another data directory: what it acknowledged is lost, and it may not vote as if nothing happened; remove it from the cluster (kv-client ... remove-member {id}), then start it with --join on an empty directory"
            )),
            None => {
                saved.members.insert(id, incarnation);
                save(&self.path, &saved).map_err(|e| {
                    saved.members.remove(&id);
                    format!("cannot remember node {id}'s incarnation: {e}")
                })
            }
        }
    }

    /// Forgets the members not in `members`: removed, they may come back with a new data
    /// directory once added again.
    pub fn keep_only(&self, members: &BTreeSet<NodeId>) -> std::io::Result<()> {
        let mut saved = self.lock();
        let before = saved.members.len();
        saved.members.retain(|id, _| members.contains(id));
        if saved.members.len() == before {
            return Ok(());
        }
        save(&self.path, &saved)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `saved` to `path` durably: aside, synced, renamed into place, the directory synced.
fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(saved).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_known_by_its_first_incarnation_until_it_is_removed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let memory = Incarnations::open(dir.path()).expect("made");
        let own = memory.own();
        assert!(!own.is_none());
        assert_eq!(memory.admit(NodeId(2), Incarnation(7)), Ok(()));
        assert_eq!(memory.admit(NodeId(2), Incarnation(7)), Ok(()));
        assert_eq!(memory.admit(NodeId(3), Incarnation::NONE), Ok(()));
        // Remembered across restarts.
        drop(memory);
        let memory = Incarnations::open(dir.path()).expect("loaded");
        assert_eq!(memory.own(), own);
        let refused = memory.admit(NodeId(2), Incarnation(8)).unwrap_err();
        assert!(refused.contains("another data directory"), "{refused}");
        // Removed, it is forgotten, and may come back anew.
        memory
            .keep_only(&BTreeSet::from([NodeId(1), NodeId(3)]))
            .expect("saved");
        assert_eq!(memory.admit(NodeId(2), Incarnation(8)), Ok(()));
    }
}
