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

/// Parses `1=host:port,2=host:port,...`: every item an id and an address, each id and
/// each address listed once. An empty item (a stray comma) is refused, as `kv-client
/// --addr` refuses one; so is a second id at an address already listed, which would give
/// one process two votes' worth of peer links to itself (and a node that campaigns for
/// ever, waiting for a vote from itself under another id). Addresses are compared as
/// written: `localhost:7001` and `127.0.0.1:7001` are not recognised as one.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, String> {
    if s.trim().is_empty() {
        return Err("no peers given".into());
    }
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err("an empty item (a stray comma?); expected id=host:port,...".into());
        }
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not id=host:port"))?;
        let id: NodeId = id.trim().parse()?;
        let addr = parse_host_port(addr.trim())?;
        if peers.contains_key(&id) {
            return Err(format!("node {id} is listed twice"));
        }
        if let Some((other, _)) = peers.iter().find(|(_, known)| **known == addr) {
            return Err(format!(
                "nodes {other} and {id} are both at {addr}; each node needs its own address"
            ));
        }
        peers.insert(id, addr);
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

    #[test]
    fn a_stray_comma_is_refused_as_kv_client_refuses_it() {
        // An empty item anywhere: between two peers, first, last, or alone.
        for bad in ["1=h:1,,2=h:2", ",1=h:1", "1=h:1,", "1=h:1, ,2=h:2", ","] {
            let error = parse_peers(bad).expect_err(bad);
            assert!(error.contains("stray comma"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn two_nodes_at_one_address_are_refused() {
        // A node listed twice at its own address would open a peer link to itself and
        // wait for ever for that "peer's" vote.
        let error = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7001").unwrap_err();
        assert_eq!(
            error,
            "nodes 1 and 2 are both at 127.0.0.1:7001; each node needs its own address"
        );
        assert!(
            parse_peers("1=h:1,2=h:2,3=g:1").is_ok(),
            "same host, or port, is fine"
        );
    }
}
