//! The writes of one batch too large to hold in memory, kept on disk until
//! the batch is committed.
//!
//! Why: a batch is whole source transactions, committed atomically (to the
//! sink and to the state), and one source transaction can be as large as the
//! ETL that wrote it. Its work grew with it, about 7 KiB a change, past any
//! pod's memory limit. The engine now moves its work here once it outgrows a
//! bound; reads of the batch look here between memory and the store, and
//! [`Store::commit_provisional`](crate::Store::commit_provisional) applies it
//! to the state a chunk at a time.
//!
//! It is a second sled tree of the state's database, so its writes share the
//! state's log and flush. Until the commit marks it, it is scratch: a crash
//! leaves it to be emptied on the next open; once marked, the next open
//! finishes applying it (its puts and removes are absolute).

use crate::store::{decode, encode, full_key, io, space_key, Batch, Space, StateError, StateKey};
use crate::writer::{Writes, CHUNK};
use serde::de::DeserializeOwned;

/// The sled tree that holds a provisional batch.
pub(crate) const TREE: &str = "provisional";

const REMOVE: u8 = 0;
const PUT: u8 = 1;

/// One batch's writes on disk: puts and removes of state keys, the newest
/// write of each key winning. Made by [`Store::provisional`](crate::Store::provisional).
pub struct Provisional {
    pub(crate) tree: sled::Tree,
}

impl Provisional {
    /// Adds `batch`'s puts and removes, replacing earlier writes of the same
    /// keys. Written a chunk at a time: sled holds every node a batch copies
    /// until the batch ends.
    pub fn write(&mut self, batch: Batch) -> Result<(), StateError> {
        let writes: Vec<_> = batch.into_writes().into_iter().collect();
        for chunk in writes.chunks(CHUNK) {
            let mut b = sled::Batch::default();
            for (k, v) in chunk {
                b.insert(k.as_slice(), tagged(v.as_deref()));
            }
            crate::reclaim::apply(&self.tree, b, chunk.len()).map_err(io("spill"))?;
        }
        Ok(())
    }

    /// The batch's write of `key`: `None` if it has none, `Some(None)` if it
    /// removes the key.
    pub fn get<K: StateKey, V: DeserializeOwned>(
        &self,
        key: &K,
    ) -> Result<Option<Option<V>>, StateError> {
        match self.tree.get(full_key(key)).map_err(io("get"))? {
            None => Ok(None),
            Some(v) => untag(K::SPACE, &v).map(Some),
        }
    }

    /// The batch's writes to `space` whose key starts with `prefix`, in key
    /// order, each key without its namespace byte (as [`crate::Store::scan`]).
    pub fn scan<V: DeserializeOwned + 'static>(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, Option<V>), StateError>> + '_ {
        let full = space_key(space, prefix);
        self.tree.scan_prefix(full).map(move |item| {
            let (k, v) = item.map_err(io("scan"))?;
            Ok((k[1..].to_vec(), untag(space, &v)?))
        })
    }

    /// The keys the batch writes (puts and removes) in `space` starting with
    /// `prefix`, without their namespace byte.
    pub fn scan_keys(
        &self,
        space: Space,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Vec<u8>, StateError>> + '_ {
        let full = space_key(space, prefix);
        self.tree
            .scan_prefix(full)
            .keys()
            .map(|k| k.map(|k| k[1..].to_vec()).map_err(io("scan")))
    }

    /// How many keys the batch writes.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

fn tagged(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 1);
            out.push(PUT);
            out.extend_from_slice(v);
            out
        }
        None => vec![REMOVE],
    }
}

fn untag<V: DeserializeOwned>(space: Space, bytes: &[u8]) -> Result<Option<V>, StateError> {
    match bytes.split_first() {
        Some((&PUT, body)) => decode(space, body).map(Some),
        Some((&REMOVE, [])) => Ok(None),
        _ => Err(StateError::CorruptProvisional),
    }
}

/// Applies the provisional tree to the state a chunk at a time, then seals
/// the batch: `seal` (its metadata and applied LSN) and the removal of its
/// marker in one atomic batch, flushed. The tree is emptied after.
pub(crate) fn apply(
    db: &sled::Db,
    state: &sled::Tree,
    provisional: &sled::Tree,
    seal: &Writes,
    marker: &[u8],
) -> Result<(), StateError> {
    let mut batch = sled::Batch::default();
    let mut pending = 0;
    for item in provisional.iter() {
        let (k, v) = item.map_err(io("commit"))?;
        match v.split_first() {
            Some((&PUT, body)) => batch.insert(k, body),
            Some((&REMOVE, [])) => batch.remove(k),
            _ => return Err(StateError::CorruptProvisional),
        }
        pending += 1;
        if pending == CHUNK {
            crate::reclaim::apply(state, std::mem::take(&mut batch), pending)
                .map_err(io("commit"))?;
            pending = 0;
        }
    }
    crate::reclaim::apply(state, batch, pending).map_err(io("commit"))?;
    let mut last = sled::Batch::default();
    for (k, v) in seal {
        match v {
            Some(v) => last.insert(k.as_slice(), v.as_slice()),
            None => last.remove(k.as_slice()),
        }
    }
    last.remove(marker);
    crate::reclaim::apply(state, last, seal.len() + 1).map_err(io("commit"))?;
    db.flush().map_err(io("flush"))?;
    provisional.clear().map_err(io("clear"))
}

/// Encodes the seal written in the marker.
pub(crate) fn encode_seal(seal: &Writes) -> Result<Vec<u8>, StateError> {
    encode(Space::Meta, seal)
}

/// Decodes a marker's seal.
pub(crate) fn decode_seal(bytes: &[u8]) -> Result<Writes, StateError> {
    decode(Space::Meta, bytes)
}
