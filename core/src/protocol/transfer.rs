//! Migration transfers (source -> destination) and their acks, as JSON or in the binary form a node
//! sends; docs/PROTOCOL.md, "Transfer" and "Binary transfer".

use super::messages::ActorRef;
use super::{Bytes, ErrorReply, VERSION, decode};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One actor's captured state inside a [`Transfer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSnapshot {
    /// Which actor.
    pub actor: ActorRef,
    /// Number of events folded into `state`.
    pub version: u64,
    /// Stream sequence of the actor's last event (0: none): the destination's first append expects it.
    pub seq: u64,
    /// Serialised state.
    pub state: Bytes,
}

/// A chunk of a shard's actors, source -> destination (`{prefix}.node.{pod}.migrate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Protocol version.
    pub v: u16,
    /// Plan epoch the move belongs to; the destination refuses older ones.
    pub epoch: u64,
    /// The source's attempt at this move: a chunk of another attempt than the one staged starts
    /// the staging afresh, so a source that restarts and moves the shard again never has the
    /// staged copy of its earlier attempt committed.
    #[serde(default)]
    pub attempt: u64,
    /// Shard.
    pub shard: u32,
    /// Source pod.
    pub from: String,
    /// Chunk number, from 0.
    pub chunk: u32,
    /// True on the last chunk: the destination installs the actors, but does not serve them yet.
    pub last: bool,
    /// Actors in this chunk.
    pub actors: Vec<ActorSnapshot>,
    /// The commit, sent after the last chunk's ack (no actors): the source has given the shard up and
    /// the destination serves it from now on. Until then exactly one node, the source, serves it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commit: bool,
    /// A copy taken while the source still serves the shard (its first round): a later chunk of the
    /// same attempt (sent once the source paused) replaces or drops what it staged, and a copy that
    /// arrives after such a chunk (a late duplicate) is acked and not staged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy: bool,
}

/// First byte of a binary [`Transfer`]; JSON messages start with `{`.
pub const TRANSFER_MAGIC: u8 = 0xAE;

/// Fixed part of a binary [`Transfer`] before the source's name.
const TRANSFER_HEADER: usize = 1 + 1 + 1 + 8 + 8 + 4 + 4 + 2;

fn too_long(what: &str, len: usize) -> Error {
    Error::Malformed(format!("{what} too long: {len} bytes"))
}

/// Writes a binary [`Transfer`] actor by actor, each actor's state serialised straight into the
/// message (no copy per actor). Little-endian throughout (docs/PROTOCOL.md, "Binary transfer"):
/// `0xAE, v: u8, flags: u8 (1 last, 2 commit, 4 copy), epoch: u64, attempt: u64, shard: u32, chunk: u32, from: u16 len +
/// UTF-8, actors: u32 count`, then per actor `kind: u8 len + UTF-8, id: u32 len + UTF-8, version: u64,
/// seq: u64, state: u32 len + bytes`.
#[derive(Debug)]
pub struct TransferWriter {
    out: Vec<u8>,
    count: u32,
}

impl TransferWriter {
    /// Offset of the flags byte.
    const FLAGS_AT: usize = 2;

    /// Starts a chunk; `capacity` is a hint of its final size in bytes.
    pub fn new(
        epoch: u64,
        attempt: u64,
        shard: u32,
        from: &str,
        chunk: u32,
        capacity: usize,
    ) -> Result<Self> {
        let from_len =
            u16::try_from(from.len()).map_err(|_| too_long("source name", from.len()))?;
        let mut out = Vec::with_capacity(capacity.max(TRANSFER_HEADER + from.len() + 4));
        out.push(TRANSFER_MAGIC);
        // VERSION is 1: it fits the version byte.
        out.push(VERSION as u8);
        out.push(0);
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&attempt.to_le_bytes());
        out.extend_from_slice(&shard.to_le_bytes());
        out.extend_from_slice(&chunk.to_le_bytes());
        out.extend_from_slice(&from_len.to_le_bytes());
        out.extend_from_slice(from.as_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        Ok(Self { out, count: 0 })
    }

    /// Appends one actor; `state` writes its serialised state into the buffer it is given. When
    /// `state` fails, or a field is too long for the format, the actor is left out and the error
    /// returned.
    pub fn actor<E: std::fmt::Display>(
        &mut self,
        actor: &ActorRef,
        version: u64,
        seq: u64,
        state: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), E>,
    ) -> Result<()> {
        let kind =
            u8::try_from(actor.kind.len()).map_err(|_| too_long("actor kind", actor.kind.len()))?;
        let id = u32::try_from(actor.id.len()).map_err(|_| too_long("actor id", actor.id.len()))?;
        let start = self.out.len();
        self.out.push(kind);
        self.out.extend_from_slice(actor.kind.as_bytes());
        self.out.extend_from_slice(&id.to_le_bytes());
        self.out.extend_from_slice(actor.id.as_bytes());
        self.out.extend_from_slice(&version.to_le_bytes());
        self.out.extend_from_slice(&seq.to_le_bytes());
        let len_at = self.out.len();
        self.out.extend_from_slice(&0u32.to_le_bytes());
        if let Err(e) = state(&mut self.out) {
            self.out.truncate(start);
            return Err(Error::Malformed(format!(
                "state of {} {:?} not serialisable: {e}",
                actor.kind, actor.id
            )));
        }
        let len = self.out.len() - len_at - 4;
        let Ok(len32) = u32::try_from(len) else {
            self.out.truncate(start);
            return Err(too_long("actor state", len));
        };
        self.out[len_at..len_at + 4].copy_from_slice(&len32.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True before anything is written (never: the header is written at once).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Actors written so far.
    #[must_use]
    pub fn actors(&self) -> u32 {
        self.count
    }

    /// The finished message.
    #[must_use]
    pub fn finish(self, last: bool, commit: bool) -> Vec<u8> {
        self.finish_flags(u8::from(last) | (u8::from(commit) << 1))
    }

    /// The finished message of a copy chunk (flag 4): see [`Transfer::copy`].
    #[must_use]
    pub fn finish_copy(self, last: bool) -> Vec<u8> {
        self.finish_flags(4 | u8::from(last))
    }

    fn finish_flags(mut self, flags: u8) -> Vec<u8> {
        self.out[Self::FLAGS_AT] = flags;
        let count_at = TRANSFER_HEADER + self.source_len();
        self.out[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.out
    }

    fn source_len(&self) -> usize {
        usize::from(u16::from_le_bytes([
            self.out[TRANSFER_HEADER - 2],
            self.out[TRANSFER_HEADER - 1],
        ]))
    }
}

/// A [`Transfer`] in its binary form (see [`TransferWriter`]).
pub fn encode_transfer(t: &Transfer) -> Result<Vec<u8>> {
    if t.v != VERSION {
        return Err(Error::UnsupportedVersion {
            got: t.v.into(),
            supported: VERSION,
        });
    }
    let size = TRANSFER_HEADER
        + t.from.len()
        + 4
        + t.actors
            .iter()
            .map(|a| 1 + a.actor.kind.len() + 4 + a.actor.id.len() + 16 + 4 + a.state.0.len())
            .sum::<usize>();
    let mut w = TransferWriter::new(t.epoch, t.attempt, t.shard, &t.from, t.chunk, size)?;
    for a in &t.actors {
        w.actor(&a.actor, a.version, a.seq, |out| {
            out.extend_from_slice(&a.state.0);
            Ok::<(), std::convert::Infallible>(())
        })?;
    }
    Ok(w.finish_flags(u8::from(t.last) | (u8::from(t.commit) << 1) | (u8::from(t.copy) << 2)))
}

/// Parses a [`Transfer`] in either form: binary (first byte [`TRANSFER_MAGIC`]) or JSON.
pub fn decode_transfer(bytes: &[u8]) -> Result<Transfer> {
    if bytes.first() != Some(&TRANSFER_MAGIC) {
        return decode(bytes);
    }
    let mut r = Reader { bytes, at: 1 };
    let v = r.u8()?;
    if u16::from(v) != VERSION {
        return Err(Error::UnsupportedVersion {
            got: v.into(),
            supported: VERSION,
        });
    }
    let flags = r.u8()?;
    if flags & !7 != 0 {
        return Err(Error::Malformed(format!(
            "binary transfer: unknown flags {flags:#04x}"
        )));
    }
    let epoch = r.u64()?;
    let attempt = r.u64()?;
    let shard = r.u32()?;
    let chunk = r.u32()?;
    let from_len = usize::from(r.u16()?);
    let from = r.text(from_len, "source name")?;
    let count = r.u32()? as usize;
    // Each actor takes at least 25 bytes: a count the rest cannot hold is refused before allocating.
    if count > (bytes.len() - r.at) / 25 {
        return Err(Error::Malformed(format!(
            "binary transfer: {count} actors do not fit in {} bytes",
            bytes.len() - r.at
        )));
    }
    let mut actors = Vec::with_capacity(count);
    for _ in 0..count {
        let kind_len = usize::from(r.u8()?);
        let kind = r.text(kind_len, "actor kind")?;
        let id_len = r.u32()? as usize;
        let id = r.text(id_len, "actor id")?;
        let version = r.u64()?;
        let seq = r.u64()?;
        let state_len = r.u32()? as usize;
        let state = r.take(state_len)?.to_vec();
        actors.push(ActorSnapshot {
            actor: ActorRef { kind, id },
            version,
            seq,
            state: Bytes(state),
        });
    }
    if r.at != bytes.len() {
        return Err(Error::Malformed(format!(
            "binary transfer: {} bytes after the last actor",
            bytes.len() - r.at
        )));
    }
    Ok(Transfer {
        v: VERSION,
        epoch,
        attempt,
        shard,
        from,
        chunk,
        last: flags & 1 != 0,
        actors,
        commit: flags & 2 != 0,
        copy: flags & 4 != 0,
    })
}

/// A bounds-checked cursor over a binary message.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Malformed(format!(
                "binary transfer truncated: {n} bytes wanted at offset {}, {} there",
                self.at,
                self.bytes.len() - self.at
            )));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self, n: usize, what: &str) -> Result<String> {
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| {
            Error::Malformed(format!(
                "binary transfer: {what} at offset {at} is not UTF-8"
            ))
        })
    }
}

/// The destination's answer to a [`Transfer`] chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAck {
    /// Protocol version.
    pub v: u16,
    /// Echo of the chunk's epoch.
    pub epoch: u64,
    /// Echo of the shard.
    pub shard: u32,
    /// Echo of the chunk number.
    pub chunk: u32,
    /// Installed actors, or why the chunk is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}
