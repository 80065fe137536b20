//! A linearizability checker for key/value histories.
//!
//! A history is what clients saw: each operation with the time it was sent, the time its
//! answer came back, and the answer. It is linearizable if every operation can be given a
//! single instant between its call and its return such that, taken in that order, the
//! answers are those of one sequential key/value map (Herlihy & Wing). An operation whose
//! outcome is unknown (a `timeout`, a lost connection) may take effect at any instant after
//! its call, or never. Operations that failed with a definite "nothing happened"
//! (`not_leader`, `unavailable`, ...) are left out of the history by the caller.
//!
//! Keys are independent objects and linearizability is local (Herlihy & Wing, Theorem 1), so
//! each key's sub-history is checked on its own. Each check is the Wing & Gong search with
//! Lowe's memoization: depth first over "which pending operation takes effect next", where
//! an operation may go next only if no pending operation returned before it was called, and
//! a (set of operations done, value) pair already explored is not explored again. Beyond
//! Lowe's, a state is not explored when one with the same value, the same operations of
//! known outcome done and fewer of unknown outcome was: operations of unknown outcome are
//! optional, so that one can do all this one can (without it, a few dozen of them on a key
//! made the search try their subsets).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What an operation asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Read the key.
    Get,
    /// Set the key.
    Put(String),
    /// Remove the key.
    Delete,
    /// Set the key to `new` if it holds `expected` (`None`: if absent).
    Cas {
        /// The value expected.
        expected: Option<String>,
        /// The value to set.
        new: String,
    },
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A get's value.
    Value(Option<String>),
    /// A put succeeded.
    Done,
    /// A delete succeeded; whether the key existed.
    Existed(bool),
    /// A cas succeeded: whether it swapped.
    Swapped(bool),
    /// A cas did not swap, and said the key held this (`None`: absent).
    Mismatch(Option<String>),
    /// No answer that says whether it happened.
    Unknown,
}

/// One operation of a history. Times are in any monotonic unit (nanoseconds since the test
/// started, say), the same for every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Which client issued it (for reports).
    pub client: usize,
    /// The key.
    pub key: String,
    /// What it asked.
    pub call: Call,
    /// What came back.
    pub answer: Answer,
    /// When it was sent.
    pub start: u64,
    /// When its answer came back; ignored when the answer is [`Answer::Unknown`].
    pub end: u64,
}

/// Why a history is not linearizable: the key whose operations admit no order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Its operations, by start time.
    pub operations: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "no linearization of key {:?}:", self.key)?;
        for op in &self.operations {
            let end = match op.answer {
                Answer::Unknown => "?".to_owned(),
                _ => op.end.to_string(),
            };
            writeln!(
                f,
                "  client {} [{}, {end}] {:?} -> {:?}",
                op.client, op.start, op.call, op.answer
            )?;
        }
        Ok(())
    }
}

/// Why [`check`] could not show a history linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// No order exists: the history is not linearizable.
    Violation(Violation),
    /// The search for one key explored its whole budget of states without an answer: the
    /// history is too long or too concurrent to decide (the problem is NP-complete), so the
    /// test that made it should make a shorter one.
    GaveUp {
        /// The key.
        key: String,
        /// The budget of states it used up.
        budget: usize,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Violation(violation) => violation.fmt(f),
            CheckError::GaveUp { key, budget } => write!(
                f,
                "gave up on key {key:?} after {budget} states: the history is too long or too concurrent to check"
            ),
        }
    }
}

/// States one key's search may explore in [`check`]: a hundred times the largest search of
/// the chaos and simulator suites (under 19,000 states, measured), and a few hundred MB at
/// most. A history whose search goes past it is reported, not searched for hours.
pub const STATE_BUDGET: usize = 2_000_000;

/// Checks `history`; on failure, names a key whose operations cannot be ordered.
pub fn check(history: &[Operation]) -> Result<(), CheckError> {
    check_within(history, STATE_BUDGET)
}

/// [`check`], with each key's search bounded to `budget` states.
pub fn check_within(history: &[Operation], budget: usize) -> Result<(), CheckError> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        // A read whose answer is unknown changed nothing and showed nothing.
        if op.answer == Answer::Unknown && op.call == Call::Get {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| op.start);
        match Search::new(&ops).run(budget) {
            Some(true) => {}
            Some(false) => {
                return Err(CheckError::Violation(Violation {
                    key: key.to_owned(),
                    operations: ops,
                }));
            }
            None => {
                return Err(CheckError::GaveUp {
                    key: key.to_owned(),
                    budget,
                });
            }
        }
    }
    Ok(())
}

/// The value after `op` takes effect on `value`, if its answer fits.
fn step(value: &Option<String>, op: &Operation) -> Option<Option<String>> {
    let unknown = op.answer == Answer::Unknown;
    match (&op.call, &op.answer) {
        (Call::Get, Answer::Value(seen)) => (seen == value).then(|| value.clone()),
        (Call::Put(new), Answer::Done | Answer::Unknown) => Some(Some(new.clone())),
        (Call::Delete, Answer::Existed(existed)) => (*existed == value.is_some()).then_some(None),
        (Call::Delete, Answer::Unknown) => Some(None),
        (Call::Cas { expected, new }, answer) => {
            let swaps = expected == value;
            match answer {
                Answer::Swapped(true) if swaps => Some(Some(new.clone())),
                Answer::Swapped(false) if !swaps => Some(value.clone()),
                Answer::Mismatch(current) if !swaps && current == value => Some(value.clone()),
                _ if unknown && swaps => Some(Some(new.clone())),
                _ if unknown => Some(value.clone()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A set of operations, by their index in the key's history: bit `i % 64` of word `i / 64`.
type OpSet = Vec<u64>;

/// The search over one key's operations.
struct Search<'a> {
    ops: &'a [Operation],
    /// The operations with a known outcome, as a set: they must all be placed.
    known: OpSet,
    /// Explored states: for each (known operations done, value), the sets of operations of
    /// unknown outcome done on the way, none a subset of another.
    seen: HashMap<(OpSet, Option<String>), Vec<OpSet>>,
    /// How many states have been visited (the budget counts them).
    states: usize,
    /// How many operations have a known outcome.
    required: usize,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Operation]) -> Search<'a> {
        let mut known = vec![0u64; ops.len().div_ceil(64)];
        for (i, _) in ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.answer != Answer::Unknown)
        {
            known[i / 64] |= 1 << (i % 64);
        }
        Search {
            ops,
            required: known.iter().map(|w| w.count_ones() as usize).sum(),
            known,
            seen: HashMap::new(),
            states: 0,
        }
    }

    /// Records the state of `done` operations and `value`, unless one as good was seen:
    /// the same known operations done, the same value, and a subset of these unknown ones.
    /// That one can do whatever this one can: an operation of unknown outcome may be left
    /// out, and which of them are done changes neither the value nor what may go next.
    fn first_visit(&mut self, done: &[u64], value: &Option<String>) -> bool {
        let known_done: OpSet = done.iter().zip(&self.known).map(|(d, k)| d & k).collect();
        let unknown_done: OpSet = done.iter().zip(&self.known).map(|(d, k)| d & !k).collect();
        let subset = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(a, b)| a & !b == 0);
        let sets = self.seen.entry((known_done, value.clone())).or_default();
        if sets.iter().any(|seen| subset(seen, &unknown_done)) {
            return false;
        }
        sets.retain(|seen| !subset(&unknown_done, seen));
        sets.push(unknown_done);
        self.states += 1;
        true
    }

    /// Whether the operations can be ordered; `None` if that is still unknown after
    /// exploring `budget` states.
    fn run(&mut self, budget: usize) -> Option<bool> {
        let words = self.ops.len().div_ceil(64);
        // Depth first with an explicit stack: histories can be longer than a safe
        // recursion depth.
        let mut stack = vec![(vec![0u64; words], None::<String>, 0usize)];
        while let Some((done, value, placed)) = stack.pop() {
            if placed == self.required {
                return Some(true);
            }
            if self.states >= budget {
                return None;
            }
            let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
            // An operation can take effect next only if it was called before every pending
            // operation with a known outcome returned.
            let horizon = (0..self.ops.len())
                .filter(|&i| !is_done(i) && self.ops[i].answer != Answer::Unknown)
                .map(|i| self.ops[i].end)
                .min()
                .unwrap_or(u64::MAX);
            let mut next_states = Vec::new();
            for i in (0..self.ops.len()).filter(|&i| !is_done(i)) {
                let op = &self.ops[i];
                if op.start > horizon {
                    // Sorted by start: no later one can go next either.
                    break;
                }
                let Some(next) = step(&value, op) else {
                    continue;
                };
                let mut now_done = done.clone();
                now_done[i / 64] |= 1 << (i % 64);
                let known = op.answer != Answer::Unknown;
                next_states.push((known, now_done, next));
            }
            // Operations of known outcome are tried first (pushed last): the first visit of
            // a state then tends to be the one with the fewest unknown ones done.
            next_states.sort_by_key(|(known, _, _)| *known);
            for (known, now_done, next) in next_states {
                if self.first_visit(&now_done, &next) {
                    stack.push((now_done, next, placed + usize::from(known)));
                }
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: Call, answer: Answer, start: u64, end: u64) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            answer,
            start,
            end,
        }
    }

    fn violated(result: Result<(), CheckError>) -> bool {
        matches!(result, Err(CheckError::Violation(_)))
    }

    fn put(v: &str) -> Call {
        Call::Put(v.into())
    }

    fn value(v: Option<&str>) -> Answer {
        Answer::Value(v.map(str::to_owned))
    }

    fn cas(expected: Option<&str>, new: &str) -> Call {
        Call::Cas {
            expected: expected.map(str::to_owned),
            new: new.into(),
        }
    }

    #[test]
    fn a_sequential_history_that_behaves_like_a_map_is_linearizable() {
        let history = [
            op(0, Call::Get, value(None), 0, 1),
            op(0, put("a"), Answer::Done, 2, 3),
            op(1, Call::Get, value(Some("a")), 4, 5),
            op(1, cas(Some("a"), "b"), Answer::Swapped(true), 6, 7),
            op(0, cas(Some("a"), "c"), Answer::Swapped(false), 8, 9),
            op(0, Call::Delete, Answer::Existed(true), 10, 11),
            op(1, Call::Delete, Answer::Existed(false), 12, 13),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn a_read_after_an_acknowledged_write_that_misses_it_is_not() {
        let history = [
            op(0, put("a"), Answer::Done, 0, 10),
            op(1, Call::Get, value(None), 11, 12),
        ];
        let violation = check(&history).expect_err("a stale read");
        assert!(
            matches!(&violation, CheckError::Violation(v) if v.key == "k"),
            "{violation}"
        );
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [None, Some("a")] {
            let history = [
                op(0, put("a"), Answer::Done, 0, 10),
                op(1, Call::Get, value(seen), 5, 6),
            ];
            assert_eq!(check(&history), Ok(()), "saw {seen:?}");
        }
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Both writes are concurrent with both reads, but once one read saw "b" after "a",
        // a later read cannot see "a" again.
        let history = [
            op(0, put("a"), Answer::Done, 0, 100),
            op(1, put("b"), Answer::Done, 0, 100),
            op(2, Call::Get, value(Some("a")), 10, 20),
            op(2, Call::Get, value(Some("b")), 30, 40),
            op(2, Call::Get, value(Some("a")), 50, 60),
        ];
        assert!(violated(check(&history)));
    }

    #[test]
    fn a_write_with_an_unknown_outcome_may_happen_late_or_never() {
        let late = [
            op(0, put("a"), Answer::Unknown, 0, 0),
            op(1, Call::Get, value(None), 10, 20),
            op(1, Call::Get, value(Some("a")), 1_000, 1_001),
        ];
        assert_eq!(check(&late), Ok(()));
        let never = [
            op(0, put("a"), Answer::Unknown, 0, 0),
            op(1, Call::Get, value(None), 1_000, 1_001),
        ];
        assert_eq!(check(&never), Ok(()));
        // But not before it was sent.
        let early = [
            op(1, Call::Get, value(Some("a")), 0, 10),
            op(0, put("a"), Answer::Unknown, 20, 0),
        ];
        assert!(violated(check(&early)));
    }

    #[test]
    fn two_swaps_from_the_same_value_cannot_both_succeed() {
        let history = [
            op(0, put("0"), Answer::Done, 0, 1),
            op(1, cas(Some("0"), "1"), Answer::Swapped(true), 2, 10),
            op(2, cas(Some("0"), "2"), Answer::Swapped(true), 2, 10),
        ];
        assert!(violated(check(&history)));
        // A retried write applied twice shows up the same way: the second copy of a swap
        // that succeeded cannot also succeed.
    }

    #[test]
    fn a_cas_that_did_not_swap_must_report_the_value_the_key_held() {
        let mismatch = |current: Option<&str>| {
            [
                op(0, put("a"), Answer::Done, 0, 1),
                op(
                    1,
                    cas(Some("z"), "b"),
                    Answer::Mismatch(current.map(str::to_owned)),
                    2,
                    3,
                ),
            ]
        };
        assert_eq!(check(&mismatch(Some("a"))), Ok(()));
        assert!(violated(check(&mismatch(None))), "the key was not absent");
        assert!(
            violated(check(&mismatch(Some("z")))),
            "it would have swapped"
        );
    }

    #[test]
    fn a_delete_must_report_whether_the_key_existed() {
        let history = [
            op(0, put("a"), Answer::Done, 0, 1),
            op(1, Call::Delete, Answer::Existed(false), 2, 3),
        ];
        assert!(violated(check(&history)));
    }

    #[test]
    fn keys_are_checked_independently_and_the_bad_one_is_named() {
        let mut other = op(0, put("x"), Answer::Done, 0, 1);
        other.key = "other".into();
        let history = [
            other,
            op(1, put("a"), Answer::Done, 0, 1),
            op(1, Call::Get, value(Some("b")), 2, 3),
        ];
        let error = check(&history).expect_err("k's read");
        assert!(
            matches!(&error, CheckError::Violation(v) if v.key == "k"),
            "{error}"
        );
    }

    #[test]
    fn a_long_history_of_overlapping_clients_is_linearizable() {
        // 8 clients incrementing a counter with cas, 2,000 operations, each overlapping the
        // next three: the memoized search must get through it (and did, in milliseconds).
        let mut history = vec![op(0, put("0"), Answer::Done, 0, 5)];
        let mut current = 0u64;
        for i in 1..2_000u64 {
            let client = (i % 8) as usize;
            let (start, end) = (i * 10, i * 10 + 35);
            if i % 3 == 0 {
                let seen = current.to_string();
                history.push(op(client, Call::Get, value(Some(&seen)), start, end));
            } else {
                let call = cas(Some(&current.to_string()), &(current + 1).to_string());
                history.push(op(client, call, Answer::Swapped(true), start, end));
                current += 1;
            }
        }
        assert_eq!(check(&history), Ok(()));
        // One read of a value from before the previous increment returned breaks it.
        let last = history.len() - 1;
        history.push(op(
            9,
            Call::Get,
            value(Some("1")),
            history[last].end + 1,
            history[last].end + 2,
        ));
        assert!(violated(check(&history)));
    }

    /// Thirty concurrent puts answered `answer` (called at 0, returning at `end`), then a
    /// read, from 10 to 20, of a value none of them wrote.
    fn thirty_puts_then_a_read_of_nobody(answer: Answer, end: u64) -> Vec<Operation> {
        let mut history: Vec<_> = (0..30)
            .map(|i| op(i, put(&i.to_string()), answer.clone(), 0, end))
            .collect();
        history.push(op(99, Call::Get, value(Some("nobody")), 10, 20));
        history
    }

    #[test]
    fn a_history_too_concurrent_to_decide_is_given_up_on_not_searched_for_ever() {
        // Thirty concurrent puts that all returned, then a read of a value nobody wrote: no
        // order explains it, and proving that means trying every subset of the puts.
        let history = thirty_puts_then_a_read_of_nobody(Answer::Done, 100);
        let error = check_within(&history, 10_000).expect_err("undecided within the budget");
        assert_eq!(
            error,
            CheckError::GaveUp {
                key: "k".into(),
                budget: 10_000
            }
        );
    }

    #[test]
    fn writes_of_unknown_outcome_are_not_tried_in_every_subset() {
        // Thirty concurrent puts of unknown outcome, then a read of a value nobody wrote:
        // each put may or may not have happened, but which others did changes nothing, so
        // the search sees through it in a few hundred states, not 2^30.
        let mut history = thirty_puts_then_a_read_of_nobody(Answer::Unknown, 0);
        assert!(violated(check_within(&history, 1_000)));
        // The same read of a value one of them wrote is fine.
        history.last_mut().unwrap().answer = value(Some("17"));
        assert_eq!(check_within(&history, 1_000), Ok(()));
    }

    /// Whether some subset of the unknown operations of `ops`, with all the known ones, has
    /// an order that respects real time (one that returned before another was called goes
    /// first; an unknown one never returned) and in which every answer is the map's. Tries
    /// every subset and every order: for a handful of operations only.
    fn brute_force(ops: &[Operation]) -> bool {
        fn orders(ops: &[Operation], chosen: &mut Vec<usize>, left: &[usize]) -> bool {
            if left.is_empty() {
                let mut value = None;
                return chosen.iter().all(|&i| match step(&value, &ops[i]) {
                    Some(next) => {
                        value = next;
                        true
                    }
                    None => false,
                });
            }
            let returned = |i: usize| ops[i].answer != Answer::Unknown;
            (0..left.len()).any(|n| {
                let i = left[n];
                // `i` may go next only if nothing left returned before it was called.
                let blocked = left
                    .iter()
                    .any(|&j| j != i && returned(j) && ops[j].end < ops[i].start);
                if blocked {
                    return false;
                }
                let rest: Vec<usize> = left.iter().copied().filter(|&j| j != i).collect();
                chosen.push(i);
                let found = orders(ops, chosen, &rest);
                chosen.pop();
                found
            })
        }
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].answer == Answer::Unknown)
            .collect();
        (0..1u32 << unknown.len()).any(|mask| {
            let left: Vec<usize> = (0..ops.len())
                .filter(|&i| {
                    let position = unknown.iter().position(|&u| u == i);
                    position.is_none_or(|bit| mask & (1 << bit) != 0)
                })
                .collect();
            orders(ops, &mut Vec::new(), &left)
        })
    }

    #[test]
    fn the_search_agrees_with_trying_every_order_on_small_random_histories() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        let mut rng = StdRng::seed_from_u64(11);
        let values = [None, Some("1"), Some("2")];
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..3_000 {
            let ops: Vec<Operation> = (0..rng.gen_range(1..=6))
                .map(|client| {
                    let pick = |rng: &mut StdRng| values[rng.gen_range(0..values.len())];
                    let (call, answer) = match rng.gen_range(0..4) {
                        0 => (Call::Get, value(pick(&mut rng))),
                        1 => (put(pick(&mut rng).unwrap_or("3")), Answer::Done),
                        2 => (Call::Delete, Answer::Existed(rng.gen_bool(0.5))),
                        _ => (
                            cas(pick(&mut rng), pick(&mut rng).unwrap_or("3")),
                            Answer::Swapped(rng.gen_bool(0.5)),
                        ),
                    };
                    let unknown = call != Call::Get && rng.gen_bool(0.35);
                    let start = rng.gen_range(0..12);
                    let answer = if unknown { Answer::Unknown } else { answer };
                    op(client, call, answer, start, start + rng.gen_range(1..6))
                })
                .collect();
            let expected = brute_force(&ops);
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| o.start);
            assert_eq!(
                check(&ops).is_ok(),
                expected,
                "the search and every order disagree on {sorted:#?}"
            );
            if expected {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        // Both kinds are well represented, or the agreement says little.
        assert!(linearizable > 500 && not > 500, "{linearizable} and {not}");
    }
}
