//! The key/value map: the meaning of each operation, written once.
//!
//! [`KvMap`] is the state machine every stage applies commands to; it has no locking because
//! a Raft node owns its state machine from one task. [`Store`] wraps it for kv-server, where
//! every connection task reads and writes it directly.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use imbl::OrdMap;

use crate::protocol::{CasOutcome, Command, WriteOutcome};

/// A map of strings and the contract's operations on it.
///
/// A persistent B-tree ([`imbl::OrdMap`]) of shared strings, not a `HashMap`, for two reasons
/// that matter from stage 7 on, where the map holds millions of keys:
/// - `clone` is O(1): the tree's nodes are shared and copied only when one side writes to
///   them. A snapshot is taken by cloning the map and writing the clone out on another
///   thread, so the node never stops to copy its whole state (a `HashMap` clone of a million
///   keys held the node task for over 100 ms, long enough to cause elections).
/// - it grows a node at a time: a `HashMap` rehashes every key at once when it doubles.
///
/// It also iterates in key order, so the same state always serializes to the same bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvMap {
    entries: OrdMap<Arc<str>, Arc<str>>,
    /// The bytes of every key and value: the size of the state, for snapshot policies.
    bytes: usize,
}

impl KvMap {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(AsRef::as_ref)
    }

    /// Applies a write and says what it did.
    pub fn apply(&mut self, command: Command) -> WriteOutcome {
        match command {
            Command::Put { key, value } => {
                self.insert(key, value);
                WriteOutcome::Put
            }
            Command::Delete { key } => {
                let old = self.entries.remove(key.as_str());
                if let Some(old) = &old {
                    self.bytes -= key.len() + old.len();
                }
                WriteOutcome::Delete {
                    existed: old.is_some(),
                }
            }
            Command::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.get(&key);
                if current == expected.as_deref() {
                    self.insert(key, value);
                    WriteOutcome::Cas(CasOutcome::Swapped)
                } else {
                    WriteOutcome::Cas(CasOutcome::Mismatch {
                        current: current.map(str::to_owned),
                    })
                }
            }
        }
    }

    fn insert(&mut self, key: String, value: String) {
        self.bytes += key.len() + value.len();
        if let Some(old) = self.entries.insert(key.as_str().into(), value.into()) {
            self.bytes -= key.len() + old.len();
        }
    }

    /// How many keys are present.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The bytes of every key and value present (not counting the map's own overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

/// A [`KvMap`] shared by many tasks.
///
/// A std `Mutex`, not a tokio one: nothing awaits while it is held, and every critical
/// section is a single map operation, so contention is short. In profiles under 64
/// connections `Store::apply` is under 0.5% of the server's CPU, so sharding it would buy
/// nothing measurable (see BENCHMARKS.md).
#[derive(Debug, Default)]
pub struct Store {
    map: Mutex<KvMap>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store::default()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<String> {
        self.lock().get(key).map(str::to_owned)
    }

    /// Applies a write atomically and says what it did.
    pub fn apply(&self, command: Command) -> WriteOutcome {
        self.lock().apply(command)
    }

    /// How many keys are present.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, KvMap> {
        // A panic cannot leave the map half-changed (each operation is one map call), so a
        // poisoned lock still guards a consistent map.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn cas(key: &str, expected: Option<&str>, value: &str) -> Command {
        Command::Cas {
            key: key.into(),
            expected: expected.map(Into::into),
            value: value.into(),
        }
    }

    #[test]
    fn put_then_get_and_overwrite() {
        let mut map = KvMap::default();
        assert_eq!(map.get("k"), None);
        assert_eq!(map.apply(put("k", "1")), WriteOutcome::Put);
        assert_eq!(map.apply(put("k", "2")), WriteOutcome::Put);
        assert_eq!(map.get("k"), Some("2"));
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn bytes_count_every_present_key_and_value_once() {
        let mut map = KvMap::default();
        map.apply(put("ab", "123"));
        map.apply(put("c", "4"));
        assert_eq!(map.bytes(), 7);
        map.apply(put("ab", "1"));
        assert_eq!(
            map.bytes(),
            5,
            "an overwrite replaces the old value's bytes"
        );
        map.apply(cas("c", Some("4"), "456"));
        assert_eq!(map.bytes(), 7);
        map.apply(cas("c", Some("wrong"), "x"));
        assert_eq!(map.bytes(), 7, "a failed cas changes nothing");
        map.apply(Command::Delete { key: "ab".into() });
        map.apply(Command::Delete { key: "ab".into() });
        assert_eq!(map.bytes(), 4);
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut map = KvMap::default();
        map.apply(put("k", "v"));
        let delete = || Command::Delete { key: "k".into() };
        assert_eq!(map.apply(delete()), WriteOutcome::Delete { existed: true });
        assert_eq!(map.apply(delete()), WriteOutcome::Delete { existed: false });
        assert!(map.is_empty());
    }

    #[test]
    fn cas_swaps_only_on_a_match_and_reports_the_current_value() {
        let mut map = KvMap::default();
        map.apply(put("k", "old"));
        assert_eq!(
            map.apply(cas("k", Some("wrong"), "new")),
            WriteOutcome::Cas(CasOutcome::Mismatch {
                current: Some("old".into())
            })
        );
        assert_eq!(map.get("k"), Some("old"));
        assert_eq!(
            map.apply(cas("k", Some("old"), "new")),
            WriteOutcome::Cas(CasOutcome::Swapped)
        );
        assert_eq!(map.get("k"), Some("new"));
    }

    #[test]
    fn cas_with_expected_absent() {
        let mut map = KvMap::default();
        assert_eq!(
            map.apply(cas("k", None, "first")),
            WriteOutcome::Cas(CasOutcome::Swapped)
        );
        assert_eq!(
            map.apply(cas("k", None, "second")),
            WriteOutcome::Cas(CasOutcome::Mismatch {
                current: Some("first".into())
            })
        );
        assert_eq!(
            map.apply(cas("absent", Some("x"), "y")),
            WriteOutcome::Cas(CasOutcome::Mismatch { current: None })
        );
        assert_eq!(map.get("k"), Some("first"));
        assert_eq!(map.get("absent"), None);
    }

    #[test]
    fn empty_strings_are_values_not_absence() {
        let mut map = KvMap::default();
        assert_eq!(
            map.apply(cas("k", None, "")),
            WriteOutcome::Cas(CasOutcome::Swapped)
        );
        assert_eq!(map.get("k"), Some(""));
        assert_eq!(
            map.apply(cas("k", None, "x")),
            WriteOutcome::Cas(CasOutcome::Mismatch {
                current: Some(String::new())
            })
        );
    }

    #[test]
    fn store_is_shared_across_threads() {
        let store = std::sync::Arc::new(Store::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        store.apply(put(&format!("{t}-{i}"), "v"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.len(), 400);
    }
}
