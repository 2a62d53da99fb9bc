//! The aggregate catalog: every family raa maintains, declared once.
//!
//! Adding a measure is one line here; the engine, the DDL, the sink statements
//! and `raa verify`'s reference SQL all follow from it.

use super::family::{Agg, Attribution, Cmp, Dim, Family, IntExpr, Measure, Operand, Param, Pred};
use crate::schema::{
    irf, msf, resource, resource_state as rs, session_fact, state_fact, technical_descriptor as td,
    Table,
};

const RECEIVED: Pred = Pred::DimIn(Dim::TechnicalDescriptor, td::RESOURCE_ROLE, &["Received"]);
const TALKED: Pred = Pred::Int(irf::TALK_COUNT, Cmp::Gt, Operand::Lit(0));
const HANDLE_TIME: IntExpr = IntExpr::Add(&[
    irf::TALK_DURATION,
    irf::HOLD_DURATION,
    irf::AFTER_CALL_WORK_DURATION,
]);

const ABANDONED: Pred = Pred::DimIn(
    Dim::TechnicalDescriptor,
    td::TECHNICAL_RESULT,
    &["Abandoned", "CustomerAbandoned"],
);

const fn sum(name: &'static str, slot: usize) -> Measure {
    Measure {
        name,
        agg: Agg::Sum(IntExpr::Col(slot), Pred::Always),
    }
}

const fn count(name: &'static str, pred: Pred) -> Measure {
    Measure {
        name,
        agg: Agg::Count(pred),
    }
}

const fn result(name: &'static str, results: &'static [&'static str]) -> Measure {
    count(
        name,
        Pred::DimIn(Dim::TechnicalDescriptor, td::TECHNICAL_RESULT, results),
    )
}

/// Seconds spent in states of `state_type` (interval families over states).
const fn state_time(name: &'static str, state_type: &'static [&'static str]) -> Measure {
    Measure {
        name,
        agg: Agg::Seconds(Pred::DimIn(Dim::ResourceState, rs::STATE_TYPE, state_type)),
    }
}

/// `agent`: IRF rows whose resource is an agent, attributed to their start.
pub static AGENT: Family = Family {
    name: "agent",
    source: Table::Irf,
    group_by: &[
        irf::TENANT_KEY,
        irf::RESOURCE_KEY,
        irf::MEDIA_TYPE_KEY,
        irf::INTERACTION_TYPE_KEY,
        irf::TECHNICAL_DESCRIPTOR_KEY,
    ],
    filter: Pred::DimIn(Dim::Resource, resource::TYPE, &["Agent"]),
    attribution: Attribution::Disposition { ts: irf::START_TS },
    measures: &[
        Measure {
            name: "invite",
            agg: Agg::Count(Pred::Always),
        },
        sum("invite_time", irf::RING_DURATION),
        Measure {
            name: "accepted",
            agg: Agg::Count(Pred::All(&[TALKED, RECEIVED])),
        },
        Measure {
            name: "accepted_thr",
            agg: Agg::Count(Pred::All(&[
                TALKED,
                RECEIVED,
                Pred::Int(
                    irf::RING_DURATION,
                    Cmp::Le,
                    Operand::Param(Param::ServiceLevelThreshold),
                ),
            ])),
        },
        Measure {
            name: "not_accepted",
            agg: Agg::Count(Pred::All(&[
                Pred::Int(irf::TALK_COUNT, Cmp::Eq, Operand::Lit(0)),
                Pred::DimIn(
                    Dim::TechnicalDescriptor,
                    td::TECHNICAL_RESULT,
                    &["Redirected", "Rejected", "Abandoned", "CustomerAbandoned"],
                ),
            ])),
        },
        sum("engage_time", irf::TALK_DURATION),
        sum("hold", irf::HOLD_COUNT),
        sum("hold_time", irf::HOLD_DURATION),
        sum("wrap", irf::AFTER_CALL_WORK_COUNT),
        sum("wrap_time", irf::AFTER_CALL_WORK_DURATION),
        sum("consult_init", irf::CONS_INIT_COUNT),
        sum("consult_received", irf::CONS_RCV_COUNT),
        Measure {
            name: "transfer_init",
            agg: Agg::Count(Pred::DimIn(
                Dim::TechnicalDescriptor,
                td::TECHNICAL_RESULT,
                &["Transferred"],
            )),
        },
        Measure {
            name: "handle_time",
            agg: Agg::Sum(HANDLE_TIME, Pred::Always),
        },
        Measure {
            name: "max_handle_time",
            agg: Agg::Max(HANDLE_TIME),
        },
    ],
};

/// `queue`: every MSF row (a stay in a queue or routing point), attributed to its start.
pub static QUEUE: Family = Family {
    name: "queue",
    source: Table::Msf,
    group_by: &[
        msf::TENANT_KEY,
        msf::RESOURCE_KEY,
        msf::MEDIA_TYPE_KEY,
        msf::INTERACTION_TYPE_KEY,
    ],
    filter: Pred::Always,
    attribution: Attribution::Disposition { ts: msf::START_TS },
    measures: &[
        count("entered", Pred::Always),
        result("distributed", &["Diverted"]),
        count("accepted", Pred::NotNull(msf::TARGET_IRF_ID)),
        count(
            "accepted_thr",
            Pred::All(&[
                Pred::NotNull(msf::TARGET_IRF_ID),
                Pred::Int(msf::MET_SERVICE_OBJECTIVE_FLAG, Cmp::Eq, Operand::Lit(1)),
            ]),
        ),
        count("abandoned", ABANDONED),
        count(
            "short_abandoned",
            Pred::Int(msf::SHORT_ABANDONED_FLAG, Cmp::Eq, Operand::Lit(1)),
        ),
        result("cleared", &["Cleared"]),
        sum("mediation_time", msf::MEDIATION_DURATION),
        Measure {
            name: "max_mediation_time",
            agg: Agg::Max(IntExpr::Col(msf::MEDIATION_DURATION)),
        },
    ],
};

/// `i_state`: agent state periods whose `resource_state` row exists (an inner
/// join), split across the buckets they overlap.
pub static I_STATE: Family = Family {
    name: "i_state",
    source: Table::SmResState,
    group_by: &[
        state_fact::TENANT_KEY,
        state_fact::RESOURCE_KEY,
        state_fact::MEDIA_TYPE_KEY,
    ],
    filter: Pred::DimPresent(Dim::ResourceState),
    attribution: Attribution::Interval {
        start: state_fact::START_TS,
        end: state_fact::END_TS,
    },
    measures: &[
        state_time("ready_time", &["Ready"]),
        state_time("not_ready_time", &["NotReady"]),
        state_time("busy_time", &["Busy"]),
        state_time("wrap_time", &["AfterCallWork"]),
        count("state_count", Pred::Always),
    ],
};

/// `i_session`: agent login sessions, split across the buckets they overlap.
pub static I_SESSION: Family = Family {
    name: "i_session",
    source: Table::SmResSession,
    group_by: &[
        session_fact::TENANT_KEY,
        session_fact::RESOURCE_KEY,
        session_fact::MEDIA_TYPE_KEY,
    ],
    filter: Pred::Always,
    attribution: Attribution::Interval {
        start: session_fact::START_TS,
        end: session_fact::END_TS,
    },
    measures: &[
        Measure {
            name: "active_time",
            agg: Agg::Seconds(Pred::Always),
        },
        count("login_count", Pred::Always),
    ],
};

/// `id`: interactions, one IRF row each (the anchor: `irf_anchor = 1`),
/// attributed to their start.
pub static ID: Family = Family {
    name: "id",
    source: Table::Irf,
    group_by: &[
        irf::TENANT_KEY,
        irf::MEDIA_TYPE_KEY,
        irf::INTERACTION_TYPE_KEY,
        irf::INTERACTION_DESCRIPTOR_KEY,
    ],
    filter: Pred::Int(irf::IRF_ANCHOR, Cmp::Eq, Operand::Lit(1)),
    attribution: Attribution::Disposition { ts: irf::START_TS },
    measures: &[
        count("offered", Pred::Always),
        count("accepted", Pred::All(&[TALKED, RECEIVED])),
        count("abandoned", ABANDONED),
        result("transferred", &["Transferred"]),
        result("conferenced", &["Conferenced"]),
        Measure {
            name: "handle_time",
            agg: Agg::Sum(HANDLE_TIME, Pred::Always),
        },
    ],
};

/// Every family, indexed by position (the index is stored in the state:
/// append, never reorder).
pub static FAMILIES: [&Family; 5] = [&AGENT, &QUEUE, &I_STATE, &I_SESSION, &ID];

/// The family called `name`.
pub fn by_name(name: &str) -> Option<(u16, &'static Family)> {
    FAMILIES
        .iter()
        .position(|f| f.name == name)
        .map(|i| (i as u16, FAMILIES[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::family::Attribution;

    /// The declarations are well-formed: unique names, slots of their own
    /// table, and split measures only where periods are split.
    #[test]
    fn declarations_are_consistent() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
        for f in FAMILIES {
            let width = f.source_spec().columns.len();
            assert!(f.group_by.iter().all(|&s| s < width), "{}", f.name);
            let mut measures: Vec<&str> = f.measures.iter().map(|m| m.name).collect();
            measures.sort();
            measures.dedup();
            assert_eq!(measures.len(), f.measures.len(), "{}", f.name);
            let interval = matches!(f.attribution, Attribution::Interval { .. });
            for m in f.measures {
                if matches!(m.agg, Agg::Seconds(_)) {
                    assert!(
                        interval,
                        "{}.{} splits seconds of a disposition family",
                        f.name, m.name
                    );
                }
            }
            assert!(f.dims().contains(&Dim::Tenant), "{}", f.name);
            assert_eq!(by_name(f.name).map(|(_, g)| g.name), Some(f.name));
        }
        assert_eq!(by_name("nope").map(|(i, _)| i), None);
    }
}
