//! The accumulator of one output row, and its retractable arithmetic.
//!
//! Counts and sums retract by subtraction. A maximum cannot, so each `Max`
//! measure keeps the multiset of its facts' values (value → count): O(log n)
//! per change, and exact when the fact holding the maximum goes away.

use super::family::{Agg, Family};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// A multiset of values: value → how many facts hold it.
type Multiset = BTreeMap<i64, u32>;

/// Stored as `{facts, sums, multisets}` with one multiset per measure (empty
/// but for `Max` measures), as it always was. In memory only the non-empty
/// multisets are kept: a large source transaction holds hundreds of
/// thousands of accumulators, and a slot per measure was ~250 bytes each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "Stored")]
pub struct Accum {
    /// Facts contributing; the row exists exactly when this is above zero.
    pub facts: i64,
    /// Per measure (aligned with the family's measures); unused for `Max`.
    pub sums: Vec<i64>,
    /// The non-empty multisets of `Max` measures, by measure index.
    maxima: Vec<(usize, Multiset)>,
}

/// The stored shape of an [`Accum`].
#[derive(Deserialize)]
struct Stored {
    facts: i64,
    sums: Vec<i64>,
    multisets: Vec<Multiset>,
}

impl From<Stored> for Accum {
    fn from(s: Stored) -> Accum {
        Accum {
            facts: s.facts,
            sums: s.sums,
            maxima: s
                .multisets
                .into_iter()
                .enumerate()
                .filter(|(_, m)| !m.is_empty())
                .collect(),
        }
    }
}

impl Serialize for Accum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("Accum", 3)?;
        out.serialize_field("facts", &self.facts)?;
        out.serialize_field("sums", &self.sums)?;
        out.serialize_field("multisets", &Multisets(self))?;
        out.end()
    }
}

/// An accumulator's multisets in the stored shape: one per measure.
struct Multisets<'a>(&'a Accum);

impl Serialize for Multisets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let empty = Multiset::new();
        s.collect_seq((0..self.0.sums.len()).map(|i| self.0.multiset(i).unwrap_or(&empty)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("state is inconsistent: retracting value {value} of measure {measure} that the accumulator does not hold")]
pub struct RetractError {
    pub measure: &'static str,
    pub value: i64,
}

impl Accum {
    pub fn new(family: &Family) -> Accum {
        Accum {
            facts: 0,
            sums: vec![0; family.measures.len()],
            maxima: Vec::new(),
        }
    }

    fn multiset(&self, measure: usize) -> Option<&Multiset> {
        self.maxima
            .iter()
            .find(|(i, _)| *i == measure)
            .map(|(_, m)| m)
    }

    /// Adds (`sign` = 1) or retracts (`sign` = -1) one fact's values.
    pub fn apply(
        &mut self,
        family: &Family,
        values: &[i64],
        sign: i64,
    ) -> Result<(), RetractError> {
        self.facts += sign;
        for (i, m) in family.measures.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0);
            match m.agg {
                Agg::Count(_) | Agg::Sum(..) | Agg::Seconds(_) => self.sums[i] += sign * v,
                Agg::Max(_) => {
                    let slot = self.maxima.iter().position(|(j, _)| *j == i);
                    if sign > 0 {
                        let p = slot.unwrap_or_else(|| {
                            self.maxima.push((i, Multiset::new()));
                            self.maxima.len() - 1
                        });
                        *self.maxima[p].1.entry(v).or_insert(0) += 1;
                        continue;
                    }
                    let missing = || RetractError {
                        measure: m.name,
                        value: v,
                    };
                    let p = slot.ok_or_else(missing)?;
                    let set = &mut self.maxima[p].1;
                    match set.get_mut(&v) {
                        Some(c) if *c > 1 => *c -= 1,
                        Some(_) => {
                            set.remove(&v);
                        }
                        None => return Err(missing()),
                    }
                    // Only non-empty multisets are kept (equality depends on it).
                    if set.is_empty() {
                        self.maxima.swap_remove(p);
                    }
                }
            }
        }
        Ok(())
    }

    /// An estimate of the heap this accumulator holds, for bounding caches
    /// by bytes: its vectors' capacity, and its multisets' nodes (a B-tree
    /// leaf holds up to 11 entries in about 150 bytes).
    pub fn heap_bytes(&self) -> usize {
        let sets: usize = self
            .maxima
            .iter()
            .map(|(_, m)| m.len().div_ceil(11) * 150)
            .sum();
        self.sums.capacity() * std::mem::size_of::<i64>()
            + self.maxima.capacity() * std::mem::size_of::<(usize, Multiset)>()
            + sets
    }

    /// The output row's measure values, or `None` when no fact contributes.
    pub fn output(&self, family: &Family) -> Option<Vec<Option<i64>>> {
        if self.facts <= 0 {
            return None;
        }
        Some(
            family
                .measures
                .iter()
                .enumerate()
                .map(|(i, m)| match m.agg {
                    Agg::Max(_) => self
                        .multiset(i)
                        .and_then(|s| s.last_key_value())
                        .map(|(v, _)| *v),
                    _ => Some(self.sums[i]),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::catalog::{AGENT, FAMILIES, QUEUE};
    use proptest::prelude::*;

    fn values(family: &Family, seed: i64) -> Vec<i64> {
        (0..family.measures.len() as i64)
            .map(|i| (seed * 31 + i * 7) % 50)
            .collect()
    }

    /// The shape every accumulator was stored in (and still is).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Legacy {
        facts: i64,
        sums: Vec<i64>,
        multisets: Vec<BTreeMap<i64, u32>>,
    }

    proptest! {
        /// The stored bytes are the legacy shape's, both ways: states and
        /// checkpoints written by earlier builds read the same.
        #[test]
        fn stored_shape_is_unchanged(family in 0..FAMILIES.len(),
                                     seeds in proptest::collection::vec(0_i64..1000, 0..20),
                                     retract in proptest::collection::vec(any::<bool>(), 20)) {
            let f = FAMILIES[family];
            let mut acc = Accum::new(f);
            for s in &seeds {
                acc.apply(f, &values(f, *s), 1).unwrap();
            }
            for (s, _) in seeds.iter().zip(&retract).filter(|(_, r)| **r) {
                acc.apply(f, &values(f, *s), -1).unwrap();
            }
            let legacy = Legacy {
                facts: acc.facts,
                sums: acc.sums.clone(),
                multisets: (0..f.measures.len())
                    .map(|i| acc.multiset(i).cloned().unwrap_or_default())
                    .collect(),
            };
            let bytes = raa_state::codec::encode(&acc).unwrap();
            prop_assert_eq!(&bytes, &raa_state::codec::encode(&legacy).unwrap());
            let back: Accum = raa_state::codec::decode(&bytes).unwrap();
            prop_assert_eq!(back, acc);
        }

        /// In every family, adding facts then retracting any subset leaves
        /// exactly the accumulator of the remaining facts, maxima included.
        #[test]
        fn retraction_is_exact(family in 0..FAMILIES.len(),
                               seeds in proptest::collection::vec(0_i64..1000, 1..40),
                               keep in proptest::collection::vec(any::<bool>(), 40)) {
            let f = FAMILIES[family];
            let mut acc = Accum::new(f);
            for s in &seeds {
                acc.apply(f, &values(f, *s), 1).unwrap();
            }
            let mut expected = Accum::new(f);
            for (i, s) in seeds.iter().enumerate() {
                if keep[i] {
                    expected.apply(f, &values(f, *s), 1).unwrap();
                } else {
                    acc.apply(f, &values(f, *s), -1).unwrap();
                }
            }
            prop_assert_eq!(acc.output(f), expected.output(f));
            prop_assert_eq!(acc, expected);
        }
    }

    #[test]
    fn max_falls_back_when_its_fact_leaves_and_row_vanishes_at_zero() {
        for (family, measure) in [(&AGENT, "max_handle_time"), (&QUEUE, "max_mediation_time")] {
            let max_idx = family
                .measures
                .iter()
                .position(|m| m.name == measure)
                .unwrap();
            let mut a = values(family, 1);
            a[max_idx] = 10;
            let mut b = values(family, 2);
            b[max_idx] = 99;
            let mut c = values(family, 3);
            c[max_idx] = 99;
            let mut acc = Accum::new(family);
            for v in [&a, &b, &c] {
                acc.apply(family, v, 1).unwrap();
            }
            assert_eq!(acc.output(family).unwrap()[max_idx], Some(99));
            // Two facts hold the maximum: it stays until both are gone.
            acc.apply(family, &b, -1).unwrap();
            assert_eq!(acc.output(family).unwrap()[max_idx], Some(99));
            acc.apply(family, &c, -1).unwrap();
            assert_eq!(acc.output(family).unwrap()[max_idx], Some(10));
            acc.apply(family, &a, -1).unwrap();
            assert_eq!(acc.output(family), None);
            assert!(acc.apply(family, &a, -1).is_err());
        }
    }
}
