//! Server checks and raa's replication objects: the publication over the
//! tables raa reads and the logical slot. Creation is idempotent.

use crate::schema::TABLES;
use raa_state::Lsn;
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what} failed")]
    Sql {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the source has wal_level = {0}; raa needs logical decoding: set wal_level = logical \
         in postgresql.conf and restart PostgreSQL"
    )]
    WalLevel(String),
    #[error(
        "role {0} may not start replication: ALTER ROLE {0} REPLICATION \
         (or connect as a role that has it)"
    )]
    NoReplication(String),
    #[error(
        "table {0} does not exist in the source database: raa reads it (see sql/infomart.sql)"
    )]
    MissingTable(&'static str),
    #[error("replication slot {slot} uses plugin {plugin}; raa needs a pgoutput slot: drop it or pick another --slot")]
    WrongPlugin { slot: String, plugin: String },
    #[error("replication slot {slot} belongs to database {database}, not this one")]
    WrongDatabase { slot: String, database: String },
    #[error(
        "replication slot {0} does not exist, but the state directory holds a state that streamed \
         from it: the slot was dropped and the WAL since the state is gone. Rebuild: stop raa, \
         empty the state directory and delete this slot's row from raa_progress; the next start \
         backfills from a new slot"
    )]
    NoSlot(String),
    #[error(
        "replication slot {slot} was invalidated (wal_status = lost): the WAL raa needed is gone \
         (max_slot_wal_keep_size?). Rebuild: stop raa, empty the state directory and delete this \
         slot's row from raa_progress; the next start drops the slot and backfills from a new one"
    )]
    SlotLost { slot: String },
    #[error(
        "replication slot {0} is in use by another session: is another raa running for this slot?"
    )]
    SlotActive(String),
    #[error("replication slot {slot} reports an unreadable position {text:?}")]
    BadLsn { slot: String, text: String },
}

fn sql(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SetupError {
    move |source| SetupError::Sql { what, source }
}

/// What the server says about raa's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Everything before this is acknowledged and will not be sent again.
    pub confirmed_flush: Lsn,
    pub active: bool,
}

/// Refuses a server raa cannot follow: wal_level below logical, a role
/// without REPLICATION, a missing table.
pub async fn check_server(client: &Client) -> Result<(), SetupError> {
    let wal: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(sql("reading wal_level"))?
        .get(0);
    if wal != "logical" {
        return Err(SetupError::WalLevel(wal));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql("reading role attributes"))?;
    let (role, may): (String, bool) = (row.get(0), row.get(1));
    if !may {
        return Err(SetupError::NoReplication(role));
    }
    for spec in TABLES {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&spec.name])
            .await
            .map_err(sql("looking up tables"))?
            .get(0);
        if !exists {
            return Err(SetupError::MissingTable(spec.name));
        }
    }
    Ok(())
}

/// Drops `slot` if it exists and no session uses it: a new state starts with
/// a new slot, whose exported snapshot it backfills from.
pub async fn drop_slot_if_exists(client: &Client, slot: &str) -> Result<(), SetupError> {
    match try_drop_slot(client, slot).await? {
        SlotDrop::Absent => Ok(()),
        SlotDrop::Active => Err(SetupError::SlotActive(slot.to_owned())),
        SlotDrop::Dropped => {
            tracing::info!(
                slot,
                "dropped the previous replication slot of an empty state"
            );
            Ok(())
        }
    }
}

/// Drops `slot` (if it exists) once no session holds it, waiting up to
/// [`RELEASE_WAIT`]: the server ends a replication session some time after
/// its client has gone, so a drop right after a stream ends can find the
/// slot still active and fail, leaving it to retain WAL.
pub async fn drop_slot_once_released(client: &Client, slot: &str) -> Result<(), SetupError> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        match try_drop_slot(client, slot).await? {
            SlotDrop::Absent | SlotDrop::Dropped => return Ok(()),
            SlotDrop::Active if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            SlotDrop::Active => return Err(SetupError::SlotActive(slot.to_owned())),
        }
    }
}

/// What [`try_drop_slot`] found.
enum SlotDrop {
    Absent,
    /// A session holds it: not dropped.
    Active,
    Dropped,
}

/// Drops `slot` unless it is missing or a session holds it.
async fn try_drop_slot(client: &Client, slot: &str) -> Result<SlotDrop, SetupError> {
    let row = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("looking up the slot"))?;
    match row.map(|r| r.get::<_, bool>(0)) {
        None => Ok(SlotDrop::Absent),
        Some(true) => Ok(SlotDrop::Active),
        Some(false) => {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .map_err(sql("dropping the replication slot"))?;
            Ok(SlotDrop::Dropped)
        }
    }
}

/// How long [`drop_slot_once_released`] waits for a slot's session to end.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates the publication, or adds the tables missing from it. The slot is
/// created by the first `raa run`, which backfills from its snapshot.
pub async fn create_publication(client: &Client, publication: &str) -> Result<(), SetupError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(sql("looking up the publication"))?
        .is_some();
    let names: Vec<&str> = TABLES.iter().map(|s| s.name).collect();
    if !exists {
        let stmt = format!(
            "CREATE PUBLICATION {publication} FOR TABLE {}",
            names.join(", ")
        );
        client
            .batch_execute(&stmt)
            .await
            .map_err(sql("creating the publication"))?;
        tracing::info!(publication, "created publication");
    } else {
        let rows = client
            .query(
                "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(sql("reading the publication"))?;
        let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !present.iter().any(|p| p == n))
            .collect();
        if !missing.is_empty() {
            let stmt = format!(
                "ALTER PUBLICATION {publication} ADD TABLE {}",
                missing.join(", ")
            );
            client
                .batch_execute(&stmt)
                .await
                .map_err(sql("extending the publication"))?;
            tracing::info!(publication, tables = ?missing, "added tables to publication");
        }
    }
    Ok(())
}

/// The slot's acknowledged position and state; refuses a missing, lost or
/// foreign (other plugin, other database) slot.
pub async fn slot_info(client: &Client, slot: &str) -> Result<SlotInfo, SetupError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active, coalesce(wal_status, ''), plugin::text, \
             database::text = current_database(), database::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql("reading the slot"))?
        .ok_or_else(|| SetupError::NoSlot(slot.to_owned()))?;
    let (text, active, status): (Option<String>, bool, String) =
        (row.get(0), row.get(1), row.get(2));
    let (plugin, here, database): (Option<String>, Option<bool>, Option<String>) =
        (row.get(3), row.get(4), row.get(5));
    if plugin.as_deref() != Some("pgoutput") {
        return Err(SetupError::WrongPlugin {
            slot: slot.to_owned(),
            plugin: plugin.unwrap_or_else(|| "none (physical)".into()),
        });
    }
    if here != Some(true) {
        return Err(SetupError::WrongDatabase {
            slot: slot.to_owned(),
            database: database.unwrap_or_default(),
        });
    }
    if status == "lost" {
        return Err(SetupError::SlotLost {
            slot: slot.to_owned(),
        });
    }
    let text = text.unwrap_or_default();
    let confirmed_flush = text.parse().map_err(|_| SetupError::BadLsn {
        slot: slot.to_owned(),
        text: text.clone(),
    })?;
    Ok(SlotInfo {
        confirmed_flush,
        active,
    })
}

/// The server's current WAL write position: everything committed before now lies below it.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, SetupError> {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(sql("reading the current WAL position"))?
        .get(0);
    text.parse().map_err(|_| SetupError::BadLsn {
        slot: String::new(),
        text,
    })
}
