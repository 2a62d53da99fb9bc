//! The aggregate catalog: every family raa maintains, declared once.
//!
//! Adding a measure is one line here; the engine, the DDL, the sink statements
//! and `raa verify`'s reference SQL all follow from it.

use super::family::{Agg, Attribution, Cmp, Dim, Family, IntExpr, Measure, Operand, Param, Pred};
use crate::schema::{irf, resource, technical_descriptor as td, Table};

const RECEIVED: Pred = Pred::DimIn(Dim::TechnicalDescriptor, td::RESOURCE_ROLE, &["Received"]);
const TALKED: Pred = Pred::Int(irf::TALK_COUNT, Cmp::Gt, Operand::Lit(0));
const HANDLE_TIME: IntExpr = IntExpr::Add(&[
    irf::TALK_DURATION,
    irf::HOLD_DURATION,
    irf::AFTER_CALL_WORK_DURATION,
]);

const fn sum(name: &'static str, slot: usize) -> Measure {
    Measure {
        name,
        agg: Agg::Sum(IntExpr::Col(slot), Pred::Always),
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

/// Every family, indexed by position (the index is stored in the state).
pub static FAMILIES: [&Family; 1] = [&AGENT];

/// The family called `name`.
pub fn by_name(name: &str) -> Option<(u16, &'static Family)> {
    FAMILIES
        .iter()
        .position(|f| f.name == name)
        .map(|i| (i as u16, FAMILIES[i]))
}
