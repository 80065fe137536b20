//! The key/value map: the meaning of each operation, written once.
//!
//! [`KvMap`] is the state machine every stage applies commands to; it has no locking because
//! a Raft node owns its state machine from one task. [`Store`] wraps it for kv-server, where
//! every connection task reads and writes it directly.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use imbl::OrdSet;
use triomphe::ThinArc;

use crate::protocol::{CasOutcome, Command, Text, WriteOutcome};

/// A map of strings and the contract's operations on it.
///
/// A persistent B-tree ([`imbl::OrdSet`]) of key/value pairs, not a `HashMap`, for two reasons
/// that matter from stage 7 on, where the map holds millions of keys:
/// - `clone` is O(1): the tree's nodes are shared and copied only when one side writes to
///   them. A snapshot is taken by cloning the map and writing the clone out on another
///   thread, so the node never stops to copy its whole state (a `HashMap` clone of a million
///   keys held the node task for over 100 ms, long enough to cause elections).
/// - it grows a node at a time: a `HashMap` rehashes every key at once when it doubles.
///
/// It also iterates in key order, so the same state always serializes to the same bytes.
///
/// Each key and its value share one allocation, behind a one-pointer handle (a private
/// `Pair`). That is what keeps a node's memory under twice the bytes of its keys and values
/// (issue 7): with a shared string for each (`OrdMap<Arc<str>, Arc<str>>`), an 11-byte key
/// and a 100-byte value cost 253 bytes of malloc'd memory, and 171 as one pair
/// (`examples/map_memory.rs`; the whole node's breakdown is in BENCHMARKS.md).
#[derive(Default, Clone)]
pub struct KvMap {
    entries: OrdSet<Pair>,
    /// The bytes of every key and value: the size of the state, for snapshot policies.
    bytes: usize,
}

impl KvMap {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key.as_bytes()).map(Pair::value)
    }

    /// The value of `key`, if present, as a `get` answer holds it: shared with the map, not
    /// copied.
    pub fn get_text(&self, key: &str) -> Option<Text> {
        let pair = self.entries.get(key.as_bytes()).cloned();
        pair.map(|pair| Text::Shared(SharedValue(pair)))
    }

    /// Applies a write and says what it did.
    pub fn apply(&mut self, command: Command) -> WriteOutcome {
        match command {
            Command::Put { key, value } => {
                self.insert(&key, &value);
                WriteOutcome::Put
            }
            Command::Delete { key } => {
                let old = self.entries.remove(key.as_bytes());
                if let Some(old) = &old {
                    self.bytes -= old.len();
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
                    self.insert(&key, &value);
                    WriteOutcome::Cas(CasOutcome::Swapped)
                } else {
                    WriteOutcome::Cas(CasOutcome::Mismatch {
                        current: current.map(str::to_owned),
                    })
                }
            }
        }
    }

    fn insert(&mut self, key: &str, value: &str) {
        let pair = Pair::new(key, value);
        self.bytes += pair.len();
        // `insert` replaces an equal element, so the new value is the one kept.
        if let Some(old) = self.entries.insert(pair) {
            self.bytes -= old.len();
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
        self.entries.iter().map(|pair| (pair.key(), pair.value()))
    }
}

/// Two maps are equal when they hold the same keys with the same values. Written out
/// because a `Pair` compares by key alone (it is ordered by key), so the set's own
/// equality would miss a different value.
impl PartialEq for KvMap {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for KvMap {}

impl fmt::Debug for KvMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A value held by a [`KvMap`], shared: a handle on the allocation that holds its key and
/// it, counted once more. It lives on if the map replaces or removes the key.
#[derive(Clone)]
pub struct SharedValue(Pair);

impl SharedValue {
    /// The value.
    pub fn as_str(&self) -> &str {
        self.0.value()
    }
}

/// A key and its value in one reference-counted allocation, ordered by key.
///
/// The allocation is triomphe's [`ThinArc`]: a count, the key's length (the header), the
/// slice's length, then the key's bytes followed by the value's. The handle is one pointer,
/// so a B-tree leaf spends 8 bytes per entry, not the 32 of two `Arc<str>` (each a pointer
/// and a length); and one allocation has one malloc header and one rounding, not two. A
/// `ThinArc` has no weak count, which a map never needs. Cloning a pair, as the B-tree does
/// when it copies a node shared with a snapshot, only counts a reference.
///
/// Equality and order are the key's alone, as the set needs: a `Pair` is found by its key
/// ([`Borrow<[u8]>`](Borrow)), and bytes order as `str` does (UTF-8 keeps code point
/// order), so a lookup by `key.as_bytes()` finds what `str` order would.
#[derive(Clone)]
struct Pair(ThinArc<usize, u8>);

impl Pair {
    fn new(key: &str, value: &str) -> Pair {
        let bytes = [key.as_bytes(), value.as_bytes()].concat();
        Pair(ThinArc::from_header_and_slice(key.len(), &bytes))
    }

    /// The key's bytes and the value's.
    fn split(&self) -> (&[u8], &[u8]) {
        self.0.slice.split_at(self.0.header.header)
    }

    fn key(&self) -> &str {
        text(self.split().0)
    }

    fn value(&self) -> &str {
        text(self.split().1)
    }

    /// The bytes of the key and the value.
    fn len(&self) -> usize {
        self.0.slice.len()
    }
}

/// The bytes of a key or a value as the string they were copied from. Checking them again
/// (rather than trusting them with `unsafe`) costs a pass over bytes already in cache.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("a Pair holds two strings' bytes, split where they meet")
}

impl Borrow<[u8]> for Pair {
    fn borrow(&self) -> &[u8] {
        self.split().0
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.split().0 == other.split().0
    }
}

impl Eq for Pair {}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.split().0.cmp(other.split().0)
    }
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pair")
            .field(&self.key())
            .field(&self.value())
            .finish()
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
    pub fn get(&self, key: &str) -> Option<Text> {
        self.lock().get_text(key)
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
    fn keys_and_values_that_make_the_same_bytes_stay_apart() {
        // A pair keeps the key and the value in one buffer: "a"+"bc" and "ab"+"c" are the
        // same three bytes, told apart only by where the key ends.
        let mut map = KvMap::default();
        map.apply(put("a", "bc"));
        map.apply(put("ab", "c"));
        map.apply(put("", "abc"));
        assert_eq!(map.len(), 3);
        assert_eq!(map.get("a"), Some("bc"));
        assert_eq!(map.get("ab"), Some("c"));
        assert_eq!(map.get(""), Some("abc"));
        assert_eq!(map.get("abc"), None);
        assert_eq!(map.bytes(), 9);
    }

    #[test]
    fn iteration_is_in_the_order_of_the_keys_as_strings() {
        // Snapshots are written in this order, so it must be `str`'s order, also for keys
        // outside ASCII and keys that are prefixes of others.
        let keys = ["z", "é", "a", "ab", "a\0", "", "\u{10000}", "Z", "\u{ff}"];
        let mut map = KvMap::default();
        for (i, key) in keys.iter().enumerate() {
            map.apply(put(key, &i.to_string()));
        }
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable();
        let iterated: Vec<&str> = map.iter().map(|(k, _)| k).collect();
        assert_eq!(iterated, sorted);
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(map.get(key), Some(i.to_string().as_str()));
        }
    }

    #[test]
    fn maps_with_the_same_keys_and_other_values_are_not_equal() {
        // Pairs compare by key alone (that is how the set orders them); the map's equality
        // must still see the values.
        let mut one = KvMap::default();
        one.apply(put("k", "1"));
        let mut other = KvMap::default();
        other.apply(put("k", "2"));
        assert_ne!(one, other);
        other.apply(put("k", "1"));
        assert_eq!(one, other);
        other.apply(put("j", "1"));
        assert_ne!(one, other);
    }

    #[test]
    fn a_clone_keeps_its_state_while_the_original_changes() {
        // What a snapshot relies on: it writes out a clone while the node goes on writing.
        let mut map = KvMap::default();
        for i in 0..1000 {
            map.apply(put(&format!("k{i:04}"), "old"));
        }
        let snapshot = map.clone();
        map.apply(put("k0500", "new"));
        map.apply(Command::Delete {
            key: "k0001".into(),
        });
        map.apply(put("k1000", "added"));
        assert_eq!(snapshot.get("k0500"), Some("old"));
        assert_eq!(snapshot.get("k0001"), Some("old"));
        assert_eq!(snapshot.get("k1000"), None);
        assert_eq!((snapshot.len(), snapshot.bytes()), (1000, 8000));
        assert_eq!(map.get("k0500"), Some("new"));
        assert_eq!(map.len(), 1000);
        assert!(snapshot.iter().all(|(_, v)| v == "old"));
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
