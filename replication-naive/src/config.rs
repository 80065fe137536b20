//! Command-line pieces every node binary shares: who am I, where do I listen, who are my
//! peers.

use std::collections::BTreeMap;

use clap::Args;
use kv_server::process::StartError;
use kv_server::protocol::{NodeId, parse_host_port};

/// `--id`, `--listen` and `--peers`, for every stage's node binary.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: NodeId,
    /// The node's one address, host:port: clients and peers both connect here.
    #[arg(long, value_parser = parse_host_port)]
    pub listen: String,
    /// Every member, this node included: `1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003`.
    #[arg(long, value_parser = parse_peers)]
    pub peers: BTreeMap<NodeId, String>,
}

impl NodeArgs {
    /// Checks that the flags agree with each other.
    pub fn validate(&self) -> Result<(), StartError> {
        match self.peers.get(&self.id) {
            None => Err(StartError::usage(format!(
                "--peers does not list this node's --id {}",
                self.id
            ))),
            Some(addr) if *addr != self.listen => Err(StartError::usage(format!(
                "--peers gives node {} the address {addr}, but --listen is {}; they must be the same",
                self.id, self.listen
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// [`NodeArgs`] plus `--leader`, for the stages whose leader is fixed (2 and 3).
#[derive(Debug, Clone, Args)]
pub struct FixedLeaderArgs {
    /// `--id`, `--listen`, `--peers`.
    #[command(flatten)]
    pub node: NodeArgs,
    /// The leader's id (fixed: these stages have no elections).
    #[arg(long)]
    pub leader: NodeId,
}

impl FixedLeaderArgs {
    /// Checks that the flags agree with each other.
    pub fn validate(&self) -> Result<(), StartError> {
        self.node.validate()?;
        if !self.node.peers.contains_key(&self.leader) {
            return Err(StartError::usage(format!(
                "--leader {} is not in --peers",
                self.leader
            )));
        }
        Ok(())
    }

    /// `"leader"` or `"follower"`, for the startup log line.
    pub fn role(&self) -> &'static str {
        if self.node.id == self.leader {
            "leader"
        } else {
            "follower"
        }
    }
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not id=host:port"))?;
        let id: NodeId = id.trim().parse()?;
        let addr = parse_host_port(addr.trim())?;
        if peers.insert(id, addr).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_peer_list() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=localhost:7002,3=[::1]:7003").unwrap();
        assert_eq!(peers[&NodeId(2)], "localhost:7002");
        assert_eq!(peers[&NodeId(3)], "[::1]:7003");
        assert_eq!(peers.len(), 3);
    }

    #[test]
    fn rejects_bad_peer_lists_with_a_reason() {
        for bad in [
            "",
            "1",
            "1=",
            "0=h:1",
            "x=h:1",
            "1=h",
            "1=h:99999",
            "1=h:1,1=h:2",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
