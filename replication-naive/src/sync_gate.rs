//! [`SyncGate`]: which of a node's messages may leave before its changes are durable, and
//! which wait for the sync that covers them.
//!
//! A node's sync ([`Node::start_sync`]) runs off the node's task while the node goes on
//! taking inputs, one sync at a time. A message produced after a change may depend on it (an
//! acknowledgement of an entry, a vote), so it waits until a sync started after the change
//! has finished; messages the node lets go early ([`Node::sends_before_sync`]) leave at
//! once. The driver and the simulator both run their nodes through a gate, so the tests see
//! the same ordering the binaries have.
//!
//! ```text
//!   batch 1: changes, messages A ─▶ sync 1 starts (A waits for it)
//!   batch 2: changes, messages B ─▶ sync 1 still running: B waits for sync 2
//!   sync 1 finishes ─▶ A leaves, sync 2 starts (covering batch 2's changes)
//!   sync 2 finishes ─▶ B leaves; nothing changed since, so no sync 3
//! ```

use kv_server::protocol::NodeId;

use crate::node::{Node, SyncJob};

/// The messages of one node that wait for its syncs, and the sync under way.
///
/// `S` is what the runner keeps of a running sync: the driver's join handle, which it
/// awaits; nothing in the simulator, which schedules the sync's end as an event. The gate
/// holds it so that "a sync is running" has one source.
#[derive(Debug)]
pub struct SyncGate<M, S = ()> {
    /// The sync under way, if any.
    running: Option<S>,
    /// Messages that wait for the running sync.
    covered: Vec<(NodeId, M)>,
    /// Messages that wait for the next sync, since the running one may not cover what they
    /// depend on.
    held: Vec<(NodeId, M)>,
}

impl<M, S> Default for SyncGate<M, S> {
    fn default() -> Self {
        SyncGate {
            running: None,
            covered: Vec::new(),
            held: Vec::new(),
        }
    }
}

impl<M, S> SyncGate<M, S> {
    /// The sync under way, if any (for the runner to wait on).
    pub fn running(&mut self) -> Option<&mut S> {
        self.running.as_mut()
    }

    /// After a batch of inputs to `node`: gives `send` the `messages` that may leave now,
    /// and holds the others. If no sync is running, starts one: `start` gets its work, to
    /// run off the node's task, and returns what the gate keeps of it until the runner
    /// reports its end to [`SyncGate::finished`] and [`Node::synced`]. If the node has
    /// nothing to make durable, everything held leaves at once.
    pub fn after_batch<N: Node<Message = M>>(
        &mut self,
        node: &mut N,
        messages: impl IntoIterator<Item = (NodeId, M)>,
        mut send: impl FnMut(NodeId, M),
        start: impl FnOnce(SyncJob) -> S,
    ) {
        for (to, message) in messages {
            if N::sends_before_sync(&message) {
                send(to, message);
            } else {
                self.held.push((to, message));
            }
        }
        if self.running.is_some() {
            return;
        }
        match node.start_sync() {
            Some(job) => {
                self.running = Some(start(job));
                self.covered.append(&mut self.held);
            }
            None => {
                for (to, message) in self.held.drain(..) {
                    send(to, message);
                }
            }
        }
    }

    /// The running sync has finished: gives `send` the messages it covered. The caller then
    /// ends the batch with [`SyncGate::after_batch`], which starts the next sync if one is
    /// needed.
    pub fn finished(&mut self, mut send: impl FnMut(NodeId, M)) {
        self.running = None;
        for (to, message) in self.covered.drain(..) {
            send(to, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::{Op, Reply};

    use super::*;
    use crate::node::{Outbox, RequestTag};

    /// A node whose every input is one change, and whose messages are numbered: even ones
    /// may leave before a sync, odd ones may not.
    #[derive(Default)]
    struct Counter {
        unsynced: bool,
    }

    impl Node for Counter {
        type Message = u32;

        fn id(&self) -> NodeId {
            NodeId(1)
        }

        fn tick(&mut self, _out: &mut Outbox<u32>) {}

        fn step(&mut self, _from: NodeId, _message: u32, _out: &mut Outbox<u32>) {}

        fn request(&mut self, tag: RequestTag, _op: Op, out: &mut Outbox<u32>) {
            out.reply(tag, Ok(Reply::Done));
        }

        fn start_sync(&mut self) -> Option<SyncJob> {
            std::mem::take(&mut self.unsynced).then(|| Box::new(|| Ok(())) as SyncJob)
        }

        fn sends_before_sync(message: &u32) -> bool {
            message.is_multiple_of(2)
        }
    }

    fn batch(
        gate: &mut SyncGate<u32>,
        node: &mut Counter,
        changed: bool,
        messages: &[u32],
    ) -> (Vec<u32>, bool) {
        node.unsynced |= changed;
        let (mut sent, mut started) = (Vec::new(), false);
        gate.after_batch(
            node,
            messages.iter().map(|&m| (NodeId(2), m)),
            |_, m| sent.push(m),
            |_| started = true,
        );
        (sent, started)
    }

    fn finish(gate: &mut SyncGate<u32>) -> Vec<u32> {
        let mut sent = Vec::new();
        gate.finished(|_, m| sent.push(m));
        sent
    }

    #[test]
    fn a_message_waits_for_a_sync_started_after_it() {
        let (mut gate, mut node) = (SyncGate::default(), Counter::default());
        // Batch 1 changes something: its odd message waits, its even one leaves.
        assert_eq!(batch(&mut gate, &mut node, true, &[1, 2]), (vec![2], true));
        // Batch 2, while sync 1 runs: its message depends on a change sync 1 may miss.
        assert_eq!(batch(&mut gate, &mut node, true, &[3]), (vec![], false));
        assert_eq!(finish(&mut gate), vec![1], "sync 1 covers only batch 1");
        // The batch that follows the finish starts sync 2, covering message 3.
        assert_eq!(batch(&mut gate, &mut node, false, &[]), (vec![], true));
        assert_eq!(finish(&mut gate), vec![3]);
    }

    #[test]
    fn with_nothing_to_sync_held_messages_leave_at_once() {
        let (mut gate, mut node) = (SyncGate::default(), Counter::default());
        assert_eq!(batch(&mut gate, &mut node, true, &[1]), (vec![], true));
        // No change in batch 2, but message 5 may depend on batch 1's: it waits too.
        assert_eq!(batch(&mut gate, &mut node, false, &[5]), (vec![], false));
        assert_eq!(finish(&mut gate), vec![1]);
        assert_eq!(
            batch(&mut gate, &mut node, false, &[7]),
            (vec![5, 7], false)
        );
        assert!(gate.running().is_none());
    }
}
