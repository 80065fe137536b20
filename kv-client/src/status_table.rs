//! `kv-client status`: asks every member for its status and prints one row per member; and
//! `kv-client members`' table of the configuration.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use kv_server::protocol::{NodeId, Role, Status};

use futures::future::join_all;

use crate::{ClusterClient, RetryPolicy};

/// One member's answer, or why there was none.
#[derive(Debug)]
pub struct Row {
    /// The address asked.
    pub addr: String,
    /// Its status, or the error met asking for it.
    pub status: Result<Status, String>,
}

/// Asks each address in `addrs`, then every member those answers list, for its status, and
/// returns one row per node, in table order.
///
/// The addresses given are asked all at once, then the members their answers list, all at
/// once, and so on: a round waits (`policy`'s request timeout) for its silent nodes
/// together, however many there are.
///
/// A node is told apart by its id where known, not by the address asked: given as
/// `localhost:7001` and listed by the members as `127.0.0.1:7001`, node 1 is one row, under
/// the address the user gave (those are asked first). A listed member whose id already has
/// a row is not asked again; a node that turns out to have one at another address is left
/// out. Unreachable addresses have no id and are told apart by address only.
pub async fn collect(policy: RetryPolicy, addrs: &[String]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut asked: HashSet<String> = HashSet::new();
    let mut ids: HashSet<NodeId> = HashSet::new();
    let mut wave: Vec<(String, Option<NodeId>)> =
        addrs.iter().map(|addr| (addr.clone(), None)).collect();
    while !wave.is_empty() {
        // One address per listed id in a round: another listed for the same id is asked
        // in the next round only if this one gives the id no row.
        let mut listed_now: HashSet<NodeId> = HashSet::new();
        let mut deferred = Vec::new();
        let mut to_ask = Vec::new();
        for (addr, listed_as) in wave {
            if listed_as.is_some_and(|id| ids.contains(&id)) || asked.contains(&addr) {
                continue;
            }
            if listed_as.is_some_and(|id| !listed_now.insert(id)) {
                deferred.push((addr, listed_as));
                continue;
            }
            asked.insert(addr.clone());
            to_ask.push(addr);
        }
        let answers = join_all(to_ask.iter().map(|addr| status_of(policy, addr))).await;
        wave = deferred;
        for (addr, status) in to_ask.into_iter().zip(answers) {
            if let Ok(status) = &status {
                if status.id.is_some_and(|id| !ids.insert(id)) {
                    continue;
                }
                let members = status.members.iter().flatten();
                wave.extend(members.map(|m| (m.addr.clone(), Some(m.id))));
            }
            rows.push(Row { addr, status });
        }
    }
    in_table_order(&mut rows);
    rows
}

/// The status of the node at `addr`, asked on a connection of its own.
async fn status_of(policy: RetryPolicy, addr: &str) -> Result<Status, String> {
    let mut client = ClusterClient::new(vec![addr.to_owned()], policy);
    client.status_of(addr).await.map_err(|e| e.to_string())
}

/// A node's ROLE: the role it reports, except for a follower that says it was removed
/// (`removed`) or whose member list leaves it out (`non-member`: started with `--join` and
/// not yet added, say), which the contract can only call a follower. A leader or a
/// candidate shows as one, removed or not: a leader that removed itself leads until it
/// has handed over.
fn role(status: &Status) -> String {
    let outside = status
        .id
        .zip(status.members.as_ref())
        .is_some_and(|(id, members)| members.iter().all(|m| m.id != id));
    match status.role {
        Role::Follower if status.removed => "removed".to_owned(),
        Role::Follower if outside => "non-member".to_owned(),
        role => role.to_string(),
    }
}

/// Sorts `rows` as the table shows them: the nodes that answered by id (one without an id,
/// a standalone server, first), then the unreachable ones by address, so that the working
/// cluster is read first and the failures sit next to their reasons below the table.
fn in_table_order(rows: &mut [Row]) {
    rows.sort_by_key(|r| {
        let id = r.status.as_ref().ok().and_then(|s| s.id);
        (r.status.is_err(), id, r.addr.clone())
    });
}

/// The rows as an aligned table, a line naming the leader, and why each unreachable node
/// was (kept out of the table, whose ROLE column would widen to the longest error). Lag is
/// how far a node's applied index trails the highest commit index any node reported. An
/// unreachable node shows the id the others' member lists give its address.
pub fn render(rows: &[Row]) -> String {
    let answered = || rows.iter().filter_map(|r| r.status.as_ref().ok());
    let top_commit = answered().filter_map(|s| s.commit_index).max();
    let listed: HashMap<&str, NodeId> = answered()
        .flat_map(|s| s.members.iter().flatten())
        .map(|m| (m.addr.as_str(), m.id))
        .collect();
    let dash = || "-".to_owned();
    let show = |n: Option<u64>| n.map_or_else(dash, |n| n.to_string());
    let mut table =
        vec![["ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"].map(String::from)];
    for row in rows {
        table.push(match &row.status {
            Ok(s) => [
                s.id.map_or_else(dash, |id| id.to_string()),
                row.addr.clone(),
                role(s),
                show(s.term),
                show(s.commit_index),
                show(s.last_applied),
                show(
                    top_commit
                        .zip(s.last_applied)
                        .map(|(top, applied)| top.saturating_sub(applied)),
                ),
            ],
            Err(_) => [
                listed
                    .get(row.addr.as_str())
                    .map_or_else(dash, |id| id.to_string()),
                row.addr.clone(),
                "unreachable".to_owned(),
                dash(),
                dash(),
                dash(),
                dash(),
            ],
        });
    }
    let mut out = aligned(&table);
    // The leader as a node that leads says, in the latest term; else as the followers of the
    // latest term say, who may still name a leader that has just died.
    let view = answered()
        .filter(|s| s.role == Role::Leader)
        .max_by_key(|s| s.term)
        .or_else(|| {
            answered()
                .filter(|s| s.leader.is_some())
                .max_by_key(|s| s.term)
        });
    if let Some((leader, addr)) = view.and_then(|s| Some((s.leader?, s.leader_addr.as_deref()))) {
        let silent = rows
            .iter()
            .any(|r| r.status.is_err() && Some(r.addr.as_str()) == addr);
        let _ = writeln!(
            out,
            "leader: {leader} at {}{}",
            addr.unwrap_or("?"),
            if silent {
                " (as the others last heard; it does not answer)"
            } else {
                ""
            }
        );
    } else if rows
        .iter()
        .all(|r| r.status.as_ref().is_ok_and(|s| s.term.is_some()))
    {
        let _ = writeln!(out, "no leader known");
    }
    for row in rows {
        if let Err(error) = &row.status {
            let _ = writeln!(out, "{}: {error}", row.addr);
        }
    }
    out
}

/// `kv-client members`: the configuration in `status`, one row per member, and a line
/// saying so when `status` is not the leader's (no leader answered).
pub fn members(status: &Status) -> String {
    let mut table = vec![["ID", "ADDRESS", "VOTER"].map(String::from)];
    for m in status.members.iter().flatten() {
        let voter = if m.voter { "yes" } else { "no (learner)" };
        table.push([m.id.to_string(), m.addr.clone(), voter.to_owned()]);
    }
    let mut out = aligned(&table);
    if status.role != Role::Leader {
        let id = status
            .id
            .map_or_else(|| "?".to_owned(), |id| id.to_string());
        let _ = writeln!(
            out,
            "no leader answered: this is node {id}'s view, which may be out of date"
        );
    }
    out
}

/// `rows` as lines of columns, each as wide as its widest cell, two spaces apart.
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for cells in rows {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::Member;

    use super::*;

    fn node(id: u64, role: Role, commit: u64, applied: u64) -> Status {
        Status {
            id: Some(NodeId(id)),
            role,
            term: Some(3),
            leader: Some(NodeId(1)),
            leader_addr: Some("127.0.0.1:7001".into()),
            commit_index: Some(commit),
            last_applied: Some(applied),
            members: None,
            removed: false,
        }
    }

    #[test]
    fn renders_lag_against_the_highest_commit_index_and_names_the_leader() {
        let rows = vec![
            Row {
                addr: "127.0.0.1:7001".into(),
                status: Ok(node(1, Role::Leader, 10, 10)),
            },
            Row {
                addr: "127.0.0.1:7002".into(),
                status: Ok(node(2, Role::Follower, 9, 7)),
            },
            Row {
                addr: "127.0.0.1:7003".into(),
                status: Err("connection refused".into()),
            },
        ];
        let expected = "\
ID  ADDRESS         ROLE         TERM  COMMIT  APPLIED  LAG
1   127.0.0.1:7001  leader       3     10      10       0
2   127.0.0.1:7002  follower     3     9       7        3
-   127.0.0.1:7003  unreachable  -     -       -        -
leader: 1 at 127.0.0.1:7001
127.0.0.1:7003: connection refused
";
        assert_eq!(render(&rows), expected);
    }

    #[test]
    fn an_unreachable_node_shows_its_listed_id_and_a_dead_leader_is_named_as_such() {
        let members = Some(
            (1..=3)
                .map(|i| Member {
                    id: NodeId(i),
                    addr: format!("127.0.0.1:700{i}"),
                    voter: true,
                })
                .collect(),
        );
        let follower = |id| Status {
            leader: Some(NodeId(2)),
            leader_addr: Some("127.0.0.1:7002".into()),
            members: members.clone(),
            ..node(id, Role::Follower, 10, 10)
        };
        let mut rows = vec![
            Row {
                addr: "127.0.0.1:7001".into(),
                status: Ok(follower(1)),
            },
            Row {
                addr: "127.0.0.1:7002".into(),
                status: Err("connection refused".into()),
            },
            Row {
                addr: "127.0.0.1:7003".into(),
                status: Ok(follower(3)),
            },
        ];
        let expected = "\
ID  ADDRESS         ROLE         TERM  COMMIT  APPLIED  LAG
1   127.0.0.1:7001  follower     3     10      10       0
2   127.0.0.1:7002  unreachable  -     -       -        -
3   127.0.0.1:7003  follower     3     10      10       0
leader: 2 at 127.0.0.1:7002 (as the others last heard; it does not answer)
127.0.0.1:7002: connection refused
";
        assert_eq!(render(&rows), expected);
        // Node 3 now leads, in a later term; node 1 has not heard yet.
        rows[2].status = Ok(Status {
            term: Some(4),
            leader: Some(NodeId(3)),
            leader_addr: Some("127.0.0.1:7003".into()),
            ..node(3, Role::Leader, 11, 11)
        });
        assert!(
            render(&rows).contains("\nleader: 3 at 127.0.0.1:7003\n"),
            "{}",
            render(&rows)
        );
    }

    #[test]
    fn a_removed_node_and_one_missing_from_its_own_member_list_are_shown_so() {
        let two_members: Vec<Member> = (1..=2)
            .map(|i| Member {
                id: NodeId(i),
                addr: format!("127.0.0.1:700{i}"),
                voter: true,
            })
            .collect();
        let with_members = |status: Status| Status {
            members: Some(two_members.clone()),
            ..status
        };
        // Node 2 knows its removal committed, though its own list (it missed the entry)
        // still names it.
        let removed = Status {
            removed: true,
            ..with_members(node(2, Role::Follower, 8, 8))
        };
        // Node 4 leads, handing over after removing itself.
        let leaving = Status {
            removed: true,
            leader: Some(NodeId(4)),
            leader_addr: Some("127.0.0.1:7004".into()),
            ..with_members(node(4, Role::Leader, 10, 10))
        };
        let rows: Vec<Row> = [
            with_members(node(1, Role::Follower, 10, 10)),
            removed,
            with_members(node(3, Role::Follower, 8, 8)),
            leaving,
        ]
        .into_iter()
        .map(|status| Row {
            addr: format!("127.0.0.1:700{}", status.id.unwrap()),
            status: Ok(status),
        })
        .collect();
        let expected = "\
ID  ADDRESS         ROLE        TERM  COMMIT  APPLIED  LAG
1   127.0.0.1:7001  follower    3     10      10       0
2   127.0.0.1:7002  removed     3     8       8        2
3   127.0.0.1:7003  non-member  3     8       8        2
4   127.0.0.1:7004  leader      3     10      10       0
leader: 4 at 127.0.0.1:7004
";
        assert_eq!(render(&rows), expected);
    }

    #[test]
    fn unreachable_rows_sort_after_the_nodes_that_answered_which_sort_by_id() {
        let row = |addr: &str, status| Row {
            addr: addr.into(),
            status,
        };
        let mut rows = vec![
            row("127.0.0.1:7005", Err("connection refused".into())),
            row("127.0.0.1:7009", Ok(node(10, Role::Follower, 10, 10))),
            row("127.0.0.1:7004", Err("no answer".into())),
            row("127.0.0.1:7008", Ok(node(2, Role::Follower, 10, 10))),
            row("127.0.0.1:7007", Ok(node(1, Role::Leader, 10, 10))),
        ];
        in_table_order(&mut rows);
        let order: Vec<&str> = rows.iter().map(|r| r.addr.as_str()).collect();
        assert_eq!(
            order,
            [
                "127.0.0.1:7007",
                "127.0.0.1:7008",
                "127.0.0.1:7009",
                "127.0.0.1:7004",
                "127.0.0.1:7005"
            ]
        );
    }

    #[test]
    fn a_standalone_server_is_one_row_of_dashes() {
        let rows = vec![Row {
            addr: "127.0.0.1:7000".into(),
            status: Ok(Status::standalone()),
        }];
        let expected = "\
ID  ADDRESS         ROLE        TERM  COMMIT  APPLIED  LAG
-   127.0.0.1:7000  standalone  -     -       -        -
";
        assert_eq!(render(&rows), expected);
    }

    #[test]
    fn the_members_table_is_as_wide_as_its_longest_address() {
        let status = Status {
            members: Some(vec![
                Member {
                    id: NodeId(1),
                    addr: "127.0.0.1:7001".into(),
                    voter: true,
                },
                Member {
                    id: NodeId(12),
                    addr: "node-12.example.internal:7001".into(),
                    voter: false,
                },
            ]),
            ..node(1, Role::Leader, 1, 1)
        };
        let expected = "\
ID  ADDRESS                        VOTER
1   127.0.0.1:7001                 yes
12  node-12.example.internal:7001  no (learner)
";
        assert_eq!(members(&status), expected);
        // A follower's view, when no leader answered, says whose it is.
        let view = Status {
            role: Role::Candidate,
            ..status
        };
        assert_eq!(
            members(&view),
            format!(
                "{expected}no leader answered: this is node 1's view, which may be out of date\n"
            )
        );
    }
}
