//! The accumulator of one output row, and its retractable arithmetic.
//!
//! Counts and sums retract by subtraction. A maximum cannot, so each `Max`
//! measure keeps the multiset of its facts' values (value → count): O(log n)
//! per change, and exact when the fact holding the maximum goes away.

use super::family::{Agg, Family};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accum {
    /// Facts contributing; the row exists exactly when this is above zero.
    pub facts: i64,
    /// Per measure (aligned with the family's measures); unused for `Max`.
    pub sums: Vec<i64>,
    /// Per measure; non-empty only for `Max` measures.
    pub multisets: Vec<BTreeMap<i64, u32>>,
}

#[derive(Debug, thiserror::Error)]
#[error("state is inconsistent: retracting value {value} of measure {measure} that the accumulator does not hold")]
pub struct RetractError {
    pub measure: &'static str,
    pub value: i64,
}

impl Accum {
    pub fn new(family: &Family) -> Accum {
        let n = family.measures.len();
        Accum {
            facts: 0,
            sums: vec![0; n],
            multisets: vec![BTreeMap::new(); n],
        }
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
                    let set = &mut self.multisets[i];
                    if sign > 0 {
                        *set.entry(v).or_insert(0) += 1;
                    } else {
                        match set.get_mut(&v) {
                            Some(1) => {
                                set.remove(&v);
                            }
                            Some(c) => *c -= 1,
                            None => {
                                return Err(RetractError {
                                    measure: m.name,
                                    value: v,
                                })
                            }
                        }
                    }
                }
            }
        }
        Ok(())
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
                    Agg::Max(_) => self.multisets[i].last_key_value().map(|(v, _)| *v),
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

    proptest! {
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
