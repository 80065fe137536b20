//! The replicated state as a snapshot's data section: first the session table, as
//! `len: u32 LE | JSON list of [client, write]`, every kept write (one whose outcome was
//! let go marked `let_go`), in the order `Sessions::iter` gives (an older version's
//! snapshot lists one write per client, and reads the same way); then the key/value map,
//! one record per key, in key order, `key_len: u32 LE | key | value_len: u32 LE | value`,
//! streamed in and out so that neither side needs a second copy of the map in memory.

use std::io::{self, Read, Write};

use kv_server::protocol::Command;
use kv_server::store::KvMap;
use raft_log::apply::Machine;
use raft_log::sessions::{KeptWrite, Sessions};

/// Writes `state`, sessions then map, to `out`.
pub fn write_state(state: &Machine, out: &mut impl Write) -> io::Result<()> {
    let sessions: Vec<(&str, &KeptWrite)> = state.sessions.iter().collect();
    let json = serde_json::to_vec(&sessions).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(|_| io::Error::other("sessions over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)?;
    write_map(&state.map, out)
}

/// Reads a state written by [`write_state`]. Fails, rather than return part of a state, on
/// data cut short or not what `write_state` writes.
pub fn read_state(input: &mut impl Read) -> io::Result<Machine> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    // Read up to the length, not allocated from it: a received snapshot's length is the
    // sender's word, and a wrong one must fail, not ask for 4 GiB.
    let len = u64::from(u32::from_le_bytes(len));
    let mut json = Vec::new();
    input.take(len).read_to_end(&mut json)?;
    if json.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let list: Vec<(String, KeptWrite)> =
        serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let sessions = Sessions::rebuilt(list);
    let map = read_map(input)?;
    Ok(Machine { map, sessions })
}

/// Writes every key and value of `map` to `out`.
pub fn write_map(map: &KvMap, out: &mut impl Write) -> io::Result<()> {
    // `KvMap` iterates in key order, so the same state always makes the same bytes,
    // whichever node writes it: snapshots can be compared byte for byte, and simulated runs
    // replay exactly.
    for (key, value) in map.iter() {
        for field in [key, value] {
            let len =
                u32::try_from(field.len()).map_err(|_| io::Error::other("a string over 4 GiB"))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(field.as_bytes())?;
        }
    }
    Ok(())
}

/// Reads a map written by [`write_map`]. Fails on a record cut short or a string that is
/// not UTF-8, rather than returning part of a map.
pub fn read_map(input: &mut impl Read) -> io::Result<KvMap> {
    let mut map = KvMap::default();
    while let Some(key) = read_field(input, true)? {
        let value = read_field(input, false)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        map.apply(Command::Put { key, value });
    }
    Ok(map)
}

/// The next length-prefixed string; `None` at a clean end when `may_end`.
fn read_field(input: &mut impl Read, may_end: bool) -> io::Result<Option<String>> {
    // Only a stream that ends before a record's first byte ends cleanly: `read_exact`
    // alone would report a length cut after one byte the same way as no length at all.
    let mut len = [0u8; 4];
    let first = loop {
        match input.read(&mut len[..1]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if first == 0 {
        return if may_end {
            Ok(None)
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        };
    }
    input.read_exact(&mut len[1..])?;
    let len = u32::from_le_bytes(len) as usize;
    let mut bytes = Vec::new();
    input.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
