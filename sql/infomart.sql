-- The Genesys Info Mart subset raa reads (see ../shared/spec/infomart.md).
-- For tests, demos and load tests: in production these tables already exist
-- (with more columns, which raa ignores), and raa only creates its own objects.

CREATE TABLE IF NOT EXISTS tenant (
    tenant_key   integer PRIMARY KEY,
    tenant_name  text,
    time_zone    text
);

CREATE TABLE IF NOT EXISTS media_type (
    media_type_key integer PRIMARY KEY,
    media_name     text
);

CREATE TABLE IF NOT EXISTS interaction_type (
    interaction_type_key integer PRIMARY KEY,
    interaction_type     text
);

CREATE TABLE IF NOT EXISTS resource_ (
    resource_key  integer PRIMARY KEY,
    resource_type text,
    resource_name text,
    employee_id   text
);

CREATE TABLE IF NOT EXISTS technical_descriptor (
    technical_descriptor_key integer PRIMARY KEY,
    technical_result         text,
    result_reason            text,
    resource_role            text
);

CREATE TABLE IF NOT EXISTS resource_state (
    resource_state_key integer PRIMARY KEY,
    state_type         text,
    state_name         text
);

CREATE TABLE IF NOT EXISTS interaction_resource_fact (
    interaction_resource_id    bigint PRIMARY KEY,
    tenant_key                 integer,
    interaction_id             bigint,
    media_type_key             integer,
    interaction_type_key       integer,
    resource_key               integer,
    technical_descriptor_key   integer,
    interaction_descriptor_key integer,
    start_date_time_key        integer,
    start_ts                   integer,
    end_ts                     integer,
    irf_anchor                 smallint,
    ring_count                 integer,
    ring_duration              integer,
    talk_count                 integer,
    talk_duration              integer,
    hold_count                 integer,
    hold_duration              integer,
    after_call_work_count      integer,
    after_call_work_duration   integer,
    cons_init_count            integer,
    cons_rcv_count             integer
);

CREATE TABLE IF NOT EXISTS mediation_segment_fact (
    mediation_segment_id       bigint PRIMARY KEY,
    tenant_key                 integer,
    interaction_id             bigint,
    media_type_key             integer,
    interaction_type_key       integer,
    resource_key               integer,
    technical_descriptor_key   integer,
    start_date_time_key        integer,
    start_ts                   integer,
    end_ts                     integer,
    mediation_duration         integer,
    met_service_objective_flag smallint,
    short_abandoned_flag       smallint,
    target_irf_id              bigint
);

CREATE TABLE IF NOT EXISTS sm_res_state_fact (
    sm_res_state_fact_key bigint PRIMARY KEY,
    tenant_key            integer,
    resource_key          integer,
    media_type_key        integer,
    resource_state_key    integer,
    start_ts              integer,
    end_ts                integer,
    total_duration        integer
);

CREATE TABLE IF NOT EXISTS sm_res_session_fact (
    sm_res_session_fact_key bigint PRIMARY KEY,
    tenant_key              integer,
    resource_key            integer,
    media_type_key          integer,
    start_ts                integer,
    end_ts                  integer,
    total_duration          integer
);
