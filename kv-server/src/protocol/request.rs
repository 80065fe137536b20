//! Requests: what a client may ask, parsed and checked once at the edge.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::response::Failure;
use super::status::NodeId;

/// The `id` a client puts on a request; the response echoes it unchanged.
///
/// The contract allows any JSON number or string. The id is kept as the exact JSON text the
/// client sent (`1e2` stays `1e2`, `18446744073709551616` keeps every digit), so the echo is
/// byte for byte, whatever the number.
#[derive(Debug, Clone)]
pub struct RequestId(Box<RawValue>);

impl RequestId {
    /// The id `n`.
    pub fn number(n: u64) -> Self {
        RequestId(RawValue::from_string(n.to_string()).expect("an integer is valid JSON"))
    }

    /// The id `"s"`.
    pub fn string(s: &str) -> Self {
        let json = serde_json::to_string(s).expect("a string serializes");
        RequestId(RawValue::from_string(json).expect("a serialized string is valid JSON"))
    }

    /// The id as a `u64`, when it is written as a plain non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        self.0.get().parse().ok()
    }
}

impl From<u64> for RequestId {
    fn from(n: u64) -> Self {
        RequestId::number(n)
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for RequestId {}

impl std::hash::Hash for RequestId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.get().hash(state);
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        match raw.get().as_bytes().first() {
            Some(b'"' | b'-' | b'0'..=b'9') => Ok(RequestId(raw)),
            _ => Err(de::Error::custom("`id` must be a number or a string")),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

/// The names of the contract's operations, as they appear in `"op"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `get`
    Get,
    /// `put`
    Put,
    /// `delete`
    Delete,
    /// `cas`
    Cas,
    /// `status`
    Status,
    /// `add_member`
    AddMember,
    /// `remove_member`
    RemoveMember,
    /// `transfer_leader`: limecached's extension to the contract (docs/EXTENSIONS.md).
    TransferLeader,
}

impl OpKind {
    /// The name as written in `"op"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Cas => "cas",
            OpKind::Status => "status",
            OpKind::AddMember => "add_member",
            OpKind::RemoveMember => "remove_member",
            OpKind::TransferLeader => "transfer_leader",
        }
    }
}

/// How fresh a `get` must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// The default: the read reflects every write acknowledged before it was sent.
    #[default]
    Linearizable,
    /// `"consistency":"stale"`: any node answers from its local state, maybe out of date.
    Stale,
}

/// A change to the key/value map: what a replicated server puts in its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: String,
    },
    /// Set `key` to `value` only if its current value is `expected` (`None`: only if absent).
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold for the swap to happen; `None` means "absent".
        expected: Option<String>,
        /// The new value.
        value: String,
    },
}

impl Command {
    /// The key this command changes.
    pub fn key(&self) -> &str {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
    }

    /// Which operation it is.
    pub fn kind(&self) -> OpKind {
        match self {
            Command::Put { .. } => OpKind::Put,
            Command::Delete { .. } => OpKind::Delete,
            Command::Cas { .. } => OpKind::Cas,
        }
    }

    /// The bytes of its key and values, for bounding batches of commands.
    pub fn data_bytes(&self) -> usize {
        match self {
            Command::Put { key, value } => key.len() + value.len(),
            Command::Delete { key } => key.len(),
            Command::Cas {
                key,
                expected,
                value,
            } => key.len() + value.len() + expected.as_ref().map_or(0, String::len),
        }
    }
}

/// The `client`/`seq` pair a write may carry so that a retry is applied at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The client's name, unique among the clients of a cluster.
    pub client: String,
    /// The client's sequence number for this write; a retry repeats it.
    pub seq: u64,
}

/// A parsed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read one key.
    Get {
        /// The key.
        key: String,
        /// How fresh the answer must be.
        consistency: Consistency,
    },
    /// `put`, `delete` or `cas`.
    Write {
        /// What to change.
        command: Command,
        /// Present when the client wants the write applied at most once.
        session: Option<Session>,
    },
    /// Report the node's role, term, indexes and members.
    Status,
    /// Add a node to the cluster (as a learner first).
    AddMember {
        /// The new node's id (the request's `id` field, per the contract).
        id: NodeId,
        /// The new node's address, `host:port`.
        addr: String,
    },
    /// Remove a node from the cluster.
    RemoveMember {
        /// The node to remove (the request's `id` field, per the contract).
        id: NodeId,
    },
    /// Hand leadership to a voter (thesis §3.10); an extension to the contract, naming the
    /// node in `id` as the membership requests do.
    TransferLeader {
        /// The voter that should lead.
        id: NodeId,
    },
}

impl Op {
    /// Whether `op` may change the cluster's state: a write, a membership change, a
    /// leadership transfer. One left unanswered has an unknown outcome (`timeout`); a read
    /// or `status` left unanswered changed nothing.
    pub fn changes_state(&self) -> bool {
        match self {
            Op::Write { .. }
            | Op::AddMember { .. }
            | Op::RemoveMember { .. }
            | Op::TransferLeader { .. } => true,
            Op::Get { .. } | Op::Status => false,
        }
    }

    /// A linearizable get of `key` (the default consistency).
    pub fn get(key: &str) -> Op {
        Op::Get {
            key: key.into(),
            consistency: Consistency::Linearizable,
        }
    }

    /// A put of `key` = `value`, without a session.
    pub fn put(key: &str, value: &str) -> Op {
        Op::Write {
            command: Command::Put {
                key: key.into(),
                value: value.into(),
            },
            session: None,
        }
    }

    /// Which contract operation this is.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Get { .. } => OpKind::Get,
            Op::Write { command, .. } => command.kind(),
            Op::Status => OpKind::Status,
            Op::AddMember { .. } => OpKind::AddMember,
            Op::RemoveMember { .. } => OpKind::RemoveMember,
            Op::TransferLeader { .. } => OpKind::TransferLeader,
        }
    }
}

/// Size limits a server enforces. The contract requires limits; they may be raised, never
/// removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes of UTF-8 (default 4 KiB).
    pub max_key_bytes: usize,
    /// Longest value, in bytes of UTF-8 (default 1 MiB).
    pub max_value_bytes: usize,
    /// Longest request line, in bytes, newline excluded. The default, 8 MiB, lets through any
    /// request whose key and value are within their limits even when every character of the
    /// value is written as a six-byte `\uXXXX` escape.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            max_line_bytes: 8 << 20,
        }
    }
}

/// One request: the echoed id and the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the response; `None` when the client sent none.
    pub id: Option<RequestId>,
    /// What to do.
    pub op: Op,
    /// Sent by a follower on a client's behalf (`"forwarded":true`, an extension to the
    /// contract): the receiver answers it itself and never forwards it again.
    pub forwarded: bool,
}

/// The flat shape of every request line; [`Request::parse`] checks which fields an op needs.
#[derive(Deserialize)]
struct WireRequest {
    #[serde(default, deserialize_with = "given_id")]
    id: Option<RequestId>,
    #[serde(deserialize_with = "named")]
    op: OpKind,
    key: Option<String>,
    value: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expected: Option<Option<String>>,
    client: Option<String>,
    seq: Option<u64>,
    #[serde(default, deserialize_with = "given_name")]
    consistency: Option<Consistency>,
    addr: Option<String>,
    forwarded: Option<bool>,
}

/// Tells a field that is `null` (`Some(None)`) from one that is missing (`None`).
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// An `id` that is present must be a number or a string: `null` is refused like `true`, not
/// taken for a missing id.
fn given_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RequestId>, D::Error> {
    RequestId::deserialize(d).map(Some)
}

/// A value written as a JSON string naming one of `T`'s variants: serde's own enum form
/// would also take `{"put":null}` for `"put"`, and call a number a syntax error.
fn named<'de, D: Deserializer<'de>, T: de::DeserializeOwned>(d: D) -> Result<T, D::Error> {
    struct Name<T>(std::marker::PhantomData<T>);
    impl<T: de::DeserializeOwned> de::Visitor<'_> for Name<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, name: &str) -> Result<T, E> {
            T::deserialize(de::IntoDeserializer::<E>::into_deserializer(name))
        }
    }
    d.deserialize_str(Name(std::marker::PhantomData))
}

/// [`named`], for a field that may be missing but, when present, is a name (not `null`).
fn given_name<'de, D: Deserializer<'de>, T: de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    named(d).map(Some)
}

/// Used only to find the id of a line that failed to parse, so the error can echo it.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<RequestId>,
}

impl Request {
    /// Parses and checks one request line (without its newline).
    ///
    /// On failure the error carries the request's id when it could be read, so the `bad_request`
    /// or `too_large` response can echo it.
    pub fn parse(line: &[u8], limits: &Limits) -> Result<Request, (Option<RequestId>, Failure)> {
        // serde would also read a struct from a JSON array; the contract wants an object.
        if line.trim_ascii_start().first() != Some(&b'{') {
            return Err((
                None,
                Failure::bad_request("a request is a JSON object on one line"),
            ));
        }
        let wire: WireRequest = match serde_json::from_slice(line) {
            Ok(wire) => wire,
            Err(e) => {
                let id = serde_json::from_slice::<IdOnly>(line)
                    .ok()
                    .and_then(|x| x.id);
                return Err((id, Failure::bad_request(parse_error_message(line, &e))));
            }
        };
        let id = wire.id.clone();
        let forwarded = wire.forwarded.unwrap_or(false);
        match wire.into_op(limits) {
            Ok(op) => Ok(Request { id, op, forwarded }),
            Err(failure) => Err((id, failure)),
        }
    }
}

impl WireRequest {
    fn into_op(self, limits: &Limits) -> Result<Op, Failure> {
        let op = self.op;
        let need = |field: Option<String>, name: &str| {
            field.ok_or_else(|| {
                Failure::bad_request(format!("`{}` needs a string `{name}`", op.as_str()))
            })
        };
        let key = |field: Option<String>| {
            let key = need(field, "key")?;
            check_size("key", &key, limits.max_key_bytes)?;
            Ok::<_, Failure>(key)
        };
        let value = |field: Option<String>| {
            let value = need(field, "value")?;
            check_size("value", &value, limits.max_value_bytes)?;
            Ok::<_, Failure>(value)
        };
        let session = match (self.client, self.seq) {
            (Some(client), Some(seq)) => {
                check_size("client", &client, limits.max_key_bytes)?;
                Some(Session { client, seq })
            }
            (None, None) => None,
            _ => {
                return Err(Failure::bad_request(
                    "`client` and `seq` must be sent together",
                ));
            }
        };
        let write = |command| {
            Ok(Op::Write {
                command,
                session: session.clone(),
            })
        };
        match op {
            OpKind::Get => Ok(Op::Get {
                key: key(self.key)?,
                consistency: self.consistency.unwrap_or_default(),
            }),
            OpKind::Put => write(Command::Put {
                key: key(self.key)?,
                value: value(self.value)?,
            }),
            OpKind::Delete => write(Command::Delete {
                key: key(self.key)?,
            }),
            OpKind::Cas => {
                let key = key(self.key)?;
                let expected = self.expected.ok_or_else(|| {
                    Failure::bad_request("`cas` needs `expected`: a string, or null for \"absent\"")
                })?;
                if let Some(expected) = &expected {
                    check_size("expected", expected, limits.max_value_bytes)?;
                }
                write(Command::Cas {
                    key,
                    expected,
                    value: value(self.value)?,
                })
            }
            OpKind::Status => Ok(Op::Status),
            OpKind::AddMember => {
                let id = node_id(self.id)?;
                let addr = need(self.addr, "addr")?;
                check_host_port(&addr)?;
                Ok(Op::AddMember { id, addr })
            }
            OpKind::RemoveMember => Ok(Op::RemoveMember {
                id: node_id(self.id)?,
            }),
            OpKind::TransferLeader => Ok(Op::TransferLeader {
                id: node_id(self.id)?,
            }),
        }
    }
}

/// A message that says what is wrong with a line, naming the field when the JSON is valid.
/// Runs only on the error path, so the second parse costs nothing on good requests.
fn parse_error_message(line: &[u8], error: &serde_json::Error) -> String {
    if error.is_syntax() || error.is_eof() {
        return format!("not a JSON object on one line: {error}");
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    match serde_path_to_error::deserialize::<_, WireRequest>(&mut de) {
        Err(e) if e.path().iter().next().is_some() => format!("`{}`: {}", e.path(), e.inner()),
        _ => format!("invalid request: {error}"),
    }
}

fn check_size(name: &str, s: &str, max: usize) -> Result<(), Failure> {
    if s.len() > max {
        return Err(Failure::too_large(format!(
            "{name} is {} bytes; the limit is {max}",
            s.len()
        )));
    }
    Ok(())
}

/// Membership and transfer requests name the node in `id` (the contract's choice), so it must
/// be a node id.
fn node_id(id: Option<RequestId>) -> Result<NodeId, Failure> {
    id.and_then(|id| id.as_u64())
        .filter(|&n| n > 0)
        .map(NodeId)
        .ok_or_else(|| {
            Failure::bad_request("membership and transfer requests need `id`: a node id above 0")
        })
}

fn check_host_port(addr: &str) -> Result<(), Failure> {
    if is_host_port(addr) {
        Ok(())
    } else {
        Err(Failure::bad_request(format!(
            "`addr` must be host:port, not {addr:?}"
        )))
    }
}

/// `addr` if it has the shape `host:port`, or why not: a host without spaces (an IPv6
/// address in brackets, `[::1]:7000`, since it has colons of its own) and a port from 1 to
/// 65535 (port 0 would bind any port, and tell the others a port no one listens on). The
/// one check of addresses, for command lines and for `add_member`.
pub fn parse_host_port(addr: &str) -> Result<String, String> {
    if addr.is_empty() {
        return Err("an empty address (a stray comma?); expected host:port".into());
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} has no port; expected host:port"))?;
    let bare_ipv6 = host.contains(':') && !(host.starts_with('[') && host.ends_with(']'));
    if host.is_empty() || host.contains(char::is_whitespace) || bare_ipv6 {
        return Err(format!(
            "{addr:?} has no valid host; expected host:port ([addr]:port for IPv6)"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(addr.to_owned()),
        _ => Err(format!(
            "{addr:?}: the port must be a number from 1 to 65535"
        )),
    }
}

/// Whether `addr` has the shape `host:port` ([`parse_host_port`]).
pub fn is_host_port(addr: &str) -> bool {
    parse_host_port(addr).is_ok()
}

impl Request {
    /// The `id` this request carries on the wire, which its response echoes. Membership and
    /// transfer requests carry the node's id there (the contract's choice), whatever
    /// `self.id` says.
    pub fn wire_id(&self) -> Option<RequestId> {
        match &self.op {
            Op::AddMember { id, .. } | Op::RemoveMember { id } | Op::TransferLeader { id } => {
                Some(RequestId::from(id.0))
            }
            _ => self.id.clone(),
        }
    }
}

impl Serialize for Request {
    /// Writes the request as the contract's JSON object (used by clients).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(id) = self.wire_id() {
            map.serialize_entry("id", &id)?;
        }
        map.serialize_entry("op", &self.op.kind())?;
        match &self.op {
            Op::Get { key, consistency } => {
                map.serialize_entry("key", key)?;
                if *consistency == Consistency::Stale {
                    map.serialize_entry("consistency", consistency)?;
                }
            }
            Op::Write { command, session } => {
                match command {
                    Command::Put { key, value } => {
                        map.serialize_entry("key", key)?;
                        map.serialize_entry("value", value)?;
                    }
                    Command::Delete { key } => map.serialize_entry("key", key)?,
                    Command::Cas {
                        key,
                        expected,
                        value,
                    } => {
                        map.serialize_entry("key", key)?;
                        map.serialize_entry("expected", expected)?;
                        map.serialize_entry("value", value)?;
                    }
                }
                if let Some(Session { client, seq }) = session {
                    map.serialize_entry("client", client)?;
                    map.serialize_entry("seq", seq)?;
                }
            }
            Op::Status | Op::RemoveMember { .. } | Op::TransferLeader { .. } => {}
            Op::AddMember { addr, .. } => map.serialize_entry("addr", addr)?,
        }
        if self.forwarded {
            map.serialize_entry("forwarded", &true)?;
        }
        map.end()
    }
}
