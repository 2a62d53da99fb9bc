//! The Info Mart subset raa reads (`../shared/spec/infomart.md`), as data.
//!
//! Each table lists only the columns raa uses, by name: the decoder maps a
//! relation's columns onto these *slots* by name, so a table with extra,
//! re-ordered or widened columns still decodes. The primary key is always
//! slot 0 and is a single integer column.

use serde::{Deserialize, Serialize};

/// A table raa reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    // Facts first: `Irf` must stay the smallest (the engine's index scans start there).
    Irf,
    Msf,
    SmResState,
    SmResSession,
    Tenant,
    Resource,
    TechnicalDescriptor,
    ResourceState,
}

/// How a column is read: text in the stream, typed from a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// smallint, integer or bigint, read as i64.
    Int,
    /// text or varchar.
    Text,
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

#[derive(Debug)]
pub struct TableSpec {
    pub table: Table,
    /// The unqualified table name in Info Mart.
    pub name: &'static str,
    /// The columns raa uses; slot 0 is the primary key.
    pub columns: &'static [Column],
}

impl TableSpec {
    /// The slot of the column called `name`.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

const fn int(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Int,
    }
}

const fn text(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Text,
    }
}

/// Slots of `interaction_resource_fact`.
pub mod irf {
    pub const ID: usize = 0;
    pub const TENANT_KEY: usize = 1;
    pub const INTERACTION_ID: usize = 2;
    pub const MEDIA_TYPE_KEY: usize = 3;
    pub const INTERACTION_TYPE_KEY: usize = 4;
    pub const RESOURCE_KEY: usize = 5;
    pub const TECHNICAL_DESCRIPTOR_KEY: usize = 6;
    pub const INTERACTION_DESCRIPTOR_KEY: usize = 7;
    pub const START_DATE_TIME_KEY: usize = 8;
    pub const START_TS: usize = 9;
    pub const END_TS: usize = 10;
    pub const IRF_ANCHOR: usize = 11;
    pub const RING_COUNT: usize = 12;
    pub const RING_DURATION: usize = 13;
    pub const TALK_COUNT: usize = 14;
    pub const TALK_DURATION: usize = 15;
    pub const HOLD_COUNT: usize = 16;
    pub const HOLD_DURATION: usize = 17;
    pub const AFTER_CALL_WORK_COUNT: usize = 18;
    pub const AFTER_CALL_WORK_DURATION: usize = 19;
    pub const CONS_INIT_COUNT: usize = 20;
    pub const CONS_RCV_COUNT: usize = 21;
}

pub static IRF: TableSpec = TableSpec {
    table: Table::Irf,
    name: "interaction_resource_fact",
    columns: &[
        int("interaction_resource_id"),
        int("tenant_key"),
        int("interaction_id"),
        int("media_type_key"),
        int("interaction_type_key"),
        int("resource_key"),
        int("technical_descriptor_key"),
        int("interaction_descriptor_key"),
        int("start_date_time_key"),
        int("start_ts"),
        int("end_ts"),
        int("irf_anchor"),
        int("ring_count"),
        int("ring_duration"),
        int("talk_count"),
        int("talk_duration"),
        int("hold_count"),
        int("hold_duration"),
        int("after_call_work_count"),
        int("after_call_work_duration"),
        int("cons_init_count"),
        int("cons_rcv_count"),
    ],
};

/// Slots of `mediation_segment_fact`.
pub mod msf {
    pub const ID: usize = 0;
    pub const TENANT_KEY: usize = 1;
    pub const INTERACTION_ID: usize = 2;
    pub const MEDIA_TYPE_KEY: usize = 3;
    pub const INTERACTION_TYPE_KEY: usize = 4;
    pub const RESOURCE_KEY: usize = 5;
    pub const TECHNICAL_DESCRIPTOR_KEY: usize = 6;
    pub const START_DATE_TIME_KEY: usize = 7;
    pub const START_TS: usize = 8;
    pub const END_TS: usize = 9;
    pub const MEDIATION_DURATION: usize = 10;
    pub const MET_SERVICE_OBJECTIVE_FLAG: usize = 11;
    pub const SHORT_ABANDONED_FLAG: usize = 12;
    pub const TARGET_IRF_ID: usize = 13;
}

pub static MSF: TableSpec = TableSpec {
    table: Table::Msf,
    name: "mediation_segment_fact",
    columns: &[
        int("mediation_segment_id"),
        int("tenant_key"),
        int("interaction_id"),
        int("media_type_key"),
        int("interaction_type_key"),
        int("resource_key"),
        int("technical_descriptor_key"),
        int("start_date_time_key"),
        int("start_ts"),
        int("end_ts"),
        int("mediation_duration"),
        int("met_service_objective_flag"),
        int("short_abandoned_flag"),
        int("target_irf_id"),
    ],
};

/// Slots of `sm_res_state_fact`.
pub mod state_fact {
    pub const ID: usize = 0;
    pub const TENANT_KEY: usize = 1;
    pub const RESOURCE_KEY: usize = 2;
    pub const MEDIA_TYPE_KEY: usize = 3;
    pub const RESOURCE_STATE_KEY: usize = 4;
    pub const START_TS: usize = 5;
    pub const END_TS: usize = 6;
    pub const TOTAL_DURATION: usize = 7;
}

pub static SM_RES_STATE: TableSpec = TableSpec {
    table: Table::SmResState,
    name: "sm_res_state_fact",
    columns: &[
        int("sm_res_state_fact_key"),
        int("tenant_key"),
        int("resource_key"),
        int("media_type_key"),
        int("resource_state_key"),
        int("start_ts"),
        int("end_ts"),
        int("total_duration"),
    ],
};

/// Slots of `sm_res_session_fact`.
pub mod session_fact {
    pub const ID: usize = 0;
    pub const TENANT_KEY: usize = 1;
    pub const RESOURCE_KEY: usize = 2;
    pub const MEDIA_TYPE_KEY: usize = 3;
    pub const START_TS: usize = 4;
    pub const END_TS: usize = 5;
    pub const TOTAL_DURATION: usize = 6;
}

pub static SM_RES_SESSION: TableSpec = TableSpec {
    table: Table::SmResSession,
    name: "sm_res_session_fact",
    columns: &[
        int("sm_res_session_fact_key"),
        int("tenant_key"),
        int("resource_key"),
        int("media_type_key"),
        int("start_ts"),
        int("end_ts"),
        int("total_duration"),
    ],
};

/// Slots of `tenant`.
pub mod tenant {
    pub const KEY: usize = 0;
    pub const NAME: usize = 1;
    pub const TIME_ZONE: usize = 2;
}

pub static TENANT: TableSpec = TableSpec {
    table: Table::Tenant,
    name: "tenant",
    columns: &[int("tenant_key"), text("tenant_name"), text("time_zone")],
};

/// Slots of `resource_`.
pub mod resource {
    pub const KEY: usize = 0;
    pub const TYPE: usize = 1;
    pub const NAME: usize = 2;
    pub const EMPLOYEE_ID: usize = 3;
}

pub static RESOURCE: TableSpec = TableSpec {
    table: Table::Resource,
    name: "resource_",
    columns: &[
        int("resource_key"),
        text("resource_type"),
        text("resource_name"),
        text("employee_id"),
    ],
};

/// Slots of `technical_descriptor`.
pub mod technical_descriptor {
    pub const KEY: usize = 0;
    pub const TECHNICAL_RESULT: usize = 1;
    pub const RESULT_REASON: usize = 2;
    pub const RESOURCE_ROLE: usize = 3;
}

pub static TECHNICAL_DESCRIPTOR: TableSpec = TableSpec {
    table: Table::TechnicalDescriptor,
    name: "technical_descriptor",
    columns: &[
        int("technical_descriptor_key"),
        text("technical_result"),
        text("result_reason"),
        text("resource_role"),
    ],
};

/// Slots of `resource_state`.
pub mod resource_state {
    pub const KEY: usize = 0;
    pub const STATE_TYPE: usize = 1;
    pub const STATE_NAME: usize = 2;
}

pub static RESOURCE_STATE: TableSpec = TableSpec {
    table: Table::ResourceState,
    name: "resource_state",
    columns: &[
        int("resource_state_key"),
        text("state_type"),
        text("state_name"),
    ],
};

/// Every table raa reads; the publication covers exactly these.
pub static TABLES: [&TableSpec; 8] = [
    &IRF,
    &MSF,
    &SM_RES_STATE,
    &SM_RES_SESSION,
    &TENANT,
    &RESOURCE,
    &TECHNICAL_DESCRIPTOR,
    &RESOURCE_STATE,
];

impl Table {
    pub fn spec(self) -> &'static TableSpec {
        match self {
            Table::Irf => &IRF,
            Table::Msf => &MSF,
            Table::SmResState => &SM_RES_STATE,
            Table::SmResSession => &SM_RES_SESSION,
            Table::Tenant => &TENANT,
            Table::Resource => &RESOURCE,
            Table::TechnicalDescriptor => &TECHNICAL_DESCRIPTOR,
            Table::ResourceState => &RESOURCE_STATE,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Finds the table raa reads under `name`, if any.
    pub fn by_name(name: &str) -> Option<Table> {
        TABLES.iter().find(|s| s.name == name).map(|s| s.table)
    }
}

/// A column value as raa keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl Value {
    /// The integer, or `None` for NULL or text.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A full row of one table: one value per slot of its [`TableSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn get(&self, slot: usize) -> &Value {
        self.0.get(slot).unwrap_or(&Value::Null)
    }

    pub fn int(&self, slot: usize) -> Option<i64> {
        self.get(slot).as_int()
    }

    /// The integer at `slot`, with NULL read as 0 (for counts and durations).
    pub fn int_or_zero(&self, slot: usize) -> i64 {
        self.int(slot).unwrap_or(0)
    }
}

/// The primary key of a row of some table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowKey(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_constants_match_the_column_lists() {
        assert_eq!(IRF.slot("interaction_resource_id"), Some(irf::ID));
        assert_eq!(IRF.slot("cons_rcv_count"), Some(irf::CONS_RCV_COUNT));
        assert_eq!(IRF.slot("start_ts"), Some(irf::START_TS));
        assert_eq!(
            IRF.slot("technical_descriptor_key"),
            Some(irf::TECHNICAL_DESCRIPTOR_KEY)
        );
        assert_eq!(TENANT.slot("time_zone"), Some(tenant::TIME_ZONE));
        assert_eq!(RESOURCE.slot("resource_type"), Some(resource::TYPE));
        assert_eq!(
            TECHNICAL_DESCRIPTOR.slot("resource_role"),
            Some(technical_descriptor::RESOURCE_ROLE)
        );
        assert_eq!(MSF.slot("target_irf_id"), Some(msf::TARGET_IRF_ID));
        assert_eq!(MSF.slot("start_ts"), Some(msf::START_TS));
        assert_eq!(
            MSF.slot("met_service_objective_flag"),
            Some(msf::MET_SERVICE_OBJECTIVE_FLAG)
        );
        assert_eq!(
            SM_RES_STATE.slot("resource_state_key"),
            Some(state_fact::RESOURCE_STATE_KEY)
        );
        assert_eq!(SM_RES_STATE.slot("end_ts"), Some(state_fact::END_TS));
        assert_eq!(
            SM_RES_SESSION.slot("total_duration"),
            Some(session_fact::TOTAL_DURATION)
        );
        assert_eq!(
            RESOURCE_STATE.slot("state_type"),
            Some(resource_state::STATE_TYPE)
        );
        assert_eq!(Table::Irf, TABLES.iter().map(|s| s.table).min().unwrap());
        for spec in TABLES {
            assert_eq!(spec.table.spec().name, spec.name);
            assert_eq!(spec.columns[0].kind, Kind::Int, "{} key", spec.name);
            assert_eq!(Table::by_name(spec.name), Some(spec.table));
        }
    }
}
