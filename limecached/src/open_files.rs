//! A node's open-files limit. Every client and peer connection holds a file descriptor, and
//! so do the log and snapshot files. Many systems start a process with a soft limit of 1,024
//! and a much higher hard limit, so a node left at the soft limit refuses clients (its
//! accepts fail with "too many open files") long before the machine runs out of anything.
//! As Go programs such as etcd do at start, a node raises its soft limit to the hard one,
//! which needs no privilege.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

/// Raises this process's soft limit on open files to its hard limit, and says so; warns
/// and goes on if the system refuses.
pub fn raise_to_hard_limit() {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    // `None` is unlimited: a soft limit that is already, or a hard one that Linux never
    // has for open files (it caps them at `fs.nr_open`).
    let (Some(current), Some(maximum)) = (current, maximum) else {
        return;
    };
    if current >= maximum {
        return;
    }
    let raised = Rlimit {
        current: Some(maximum),
        maximum: Some(maximum),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => info!(from = current, to = maximum, "raised the open-files limit"),
        Err(error) => warn!(
            %error,
            limit = current,
            "cannot raise the open-files limit; connections past it will be refused"
        ),
    }
}
