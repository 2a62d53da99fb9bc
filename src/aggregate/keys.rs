//! Typed keys of the state store, with order-preserving encodings.
//!
//! Integers are written big-endian with the sign bit flipped so that byte
//! order equals numeric order; a prefix of a key (table, or dimension row)
//! selects a contiguous range for scans.

use super::bucket::Level;
use crate::schema::{RowKey, Table};
use raa_state::{Space, StateKey};

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

fn get_i64(bytes: &[u8]) -> Option<i64> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

/// A stable one-byte code per table; never renumber (it is stored).
pub fn table_code(t: Table) -> u8 {
    match t {
        Table::Irf => 1,
        Table::Msf => 2,
        Table::SmResState => 3,
        Table::SmResSession => 4,
        Table::Tenant => 10,
        Table::Resource => 11,
        Table::TechnicalDescriptor => 12,
        Table::ResourceState => 13,
    }
}

/// The table with stored code `code`.
pub fn table_of_code(code: u8) -> Option<Table> {
    crate::schema::TABLES
        .iter()
        .map(|s| s.table)
        .find(|&t| table_code(t) == code)
}

fn level_code(l: Level) -> u8 {
    l as u8
}

/// A fact row, by table and primary key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FactKey {
    pub table: Table,
    pub key: RowKey,
}

impl FactKey {
    /// The scan prefix of all facts of `table`.
    pub fn table_prefix(table: Table) -> Vec<u8> {
        vec![table_code(table)]
    }

    /// Decodes the primary key from a key returned by a scan of `table`.
    pub fn decode_key(bytes: &[u8]) -> Option<RowKey> {
        get_i64(bytes.get(1..)?).map(RowKey)
    }
}

impl StateKey for FactKey {
    const SPACE: Space = Space::Fact;
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.push(table_code(self.table));
        put_i64(out, self.key.0);
    }
}

/// A cached dimension row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DimKey {
    pub table: Table,
    pub key: RowKey,
}

impl StateKey for DimKey {
    const SPACE: Space = Space::Dim;
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.push(table_code(self.table));
        put_i64(out, self.key.0);
    }
}

/// "The fact `fact` references the dimension row `dim`."
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IndexKey {
    pub dim: DimKey,
    pub fact: FactKey,
}

impl IndexKey {
    /// The scan prefix of all facts referencing `dim`.
    pub fn dim_prefix(dim: DimKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.push(table_code(dim.table));
        put_i64(&mut out, dim.key.0);
        out
    }

    /// Decodes the fact part of a key returned by a scan of [`Self::dim_prefix`].
    pub fn decode_fact(bytes: &[u8]) -> Option<FactKey> {
        let rest = bytes.get(9..)?;
        Some(FactKey {
            table: table_of_code(*rest.first()?)?,
            key: RowKey(get_i64(rest.get(1..)?)?),
        })
    }
}

impl StateKey for IndexKey {
    const SPACE: Space = Space::Index;
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::dim_prefix(self.dim));
        self.fact.encode_key(out);
    }
}

/// One output row: family, level, bucket and group values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccumKey {
    pub family: u16,
    pub level: Level,
    pub bucket: i64,
    pub group: Vec<Option<i64>>,
}

impl AccumKey {
    /// Decodes a key returned by a scan of [`Space::Accum`].
    pub fn decode(bytes: &[u8]) -> Option<AccumKey> {
        let family = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?);
        let code = *bytes.get(2)?;
        let level = Level::ALL.into_iter().find(|&l| level_code(l) == code)?;
        let bucket = get_i64(bytes.get(3..)?)?;
        let mut rest = bytes.get(11..)?;
        let mut group = Vec::new();
        while let Some((&tag, tail)) = rest.split_first() {
            match tag {
                0 => {
                    group.push(None);
                    rest = tail;
                }
                1 => {
                    group.push(Some(get_i64(tail)?));
                    rest = tail.get(8..)?;
                }
                _ => return None,
            }
        }
        Some(AccumKey {
            family,
            level,
            bucket,
            group,
        })
    }
}

impl StateKey for AccumKey {
    const SPACE: Space = Space::Accum;
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.family.to_be_bytes());
        out.push(level_code(self.level));
        put_i64(out, self.bucket);
        for g in &self.group {
            match g {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    put_i64(out, *v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc<K: StateKey>(k: &K) -> Vec<u8> {
        let mut v = Vec::new();
        k.encode_key(&mut v);
        v
    }

    #[test]
    fn table_codes_are_unique_and_decode() {
        let mut codes: Vec<u8> = crate::schema::TABLES
            .iter()
            .map(|s| table_code(s.table))
            .collect();
        for spec in crate::schema::TABLES {
            assert_eq!(table_of_code(table_code(spec.table)), Some(spec.table));
        }
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), crate::schema::TABLES.len());
    }

    proptest! {
        #[test]
        fn fact_key_order_matches_numeric_order(a in any::<i64>(), b in any::<i64>()) {
            let ka = FactKey { table: Table::Irf, key: RowKey(a) };
            let kb = FactKey { table: Table::Irf, key: RowKey(b) };
            prop_assert_eq!(enc(&ka).cmp(&enc(&kb)), a.cmp(&b));
            prop_assert_eq!(FactKey::decode_key(&enc(&ka)), Some(RowKey(a)));
        }

        #[test]
        fn accum_key_round_trips(
            family in 0_u16..8,
            level in 0_usize..7,
            bucket in any::<i64>(),
            group in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..6),
        ) {
            let key = AccumKey { family, level: Level::ALL[level], bucket, group };
            prop_assert_eq!(AccumKey::decode(&enc(&key)), Some(key));
        }

        #[test]
        fn index_key_decodes_its_fact(d in any::<i64>(), f in any::<i64>()) {
            let dim = DimKey { table: Table::Resource, key: RowKey(d) };
            let fact = FactKey { table: Table::Irf, key: RowKey(f) };
            let bytes = enc(&IndexKey { dim, fact });
            prop_assert!(bytes.starts_with(&IndexKey::dim_prefix(dim)));
            prop_assert_eq!(IndexKey::decode_fact(&bytes), Some(fact));
        }
    }
}
