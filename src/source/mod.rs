//! Source: the Info Mart database as a stream of committed transactions.
//!
//! - [`setup`] checks the server and creates raa's publication and slot.
//! - [`snapshot`] creates the slot with an exported snapshot and reads the
//!   facts as of its consistent point, for the initial backfill.
//! - [`stream`] runs the logical replication connection (pgwire-replication,
//!   `pgoutput` v1) and decodes it into [`crate::decode::Transaction`]s; it is
//!   the one place that acknowledges positions to the server.

pub mod setup;
pub mod snapshot;
pub mod stream;

use std::fmt;
use tokio_postgres::config::Host;

pub use setup::{SetupError, SlotInfo};
pub use stream::{SourceEvent, StreamError, StreamHandle};

/// Where and how raa reads Info Mart.
#[derive(Clone)]
pub struct SourceConfig {
    /// Connection settings (URL or key=value form), as tokio-postgres parses them.
    pub pg: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres' Config Debug already redacts the password.
        f.debug_struct("SourceConfig")
            .field("pg", &self.pg)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid source connection string")]
    Parse(#[source] tokio_postgres::Error),
    #[error("the source connection string names no host")]
    NoHost,
    #[error("the source connection string names no user")]
    NoUser,
    #[error("slot and publication names must be lower-case letters, digits and _ (got {0:?})")]
    BadName(String),
}

impl SourceConfig {
    pub fn new(url: &str, slot: &str, publication: &str) -> Result<SourceConfig, ConfigError> {
        let pg: tokio_postgres::Config = url.parse().map_err(ConfigError::Parse)?;
        if pg.get_hosts().is_empty() {
            return Err(ConfigError::NoHost);
        }
        if pg.get_user().is_none() {
            return Err(ConfigError::NoUser);
        }
        for name in [slot, publication] {
            let ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(ConfigError::BadName(name.to_owned()));
            }
        }
        Ok(SourceConfig {
            pg,
            slot: slot.to_owned(),
            publication: publication.to_owned(),
        })
    }

    /// An ordinary SQL connection to the source database; its connection task
    /// runs in the background and ends with the client.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.pg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "source SQL connection ended");
            }
        });
        Ok(client)
    }

    /// The replication connection settings for pgwire-replication.
    pub(crate) fn replication(&self) -> pgwire_replication::ReplicationConfig {
        let host = match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        let password = self
            .pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        pgwire_replication::ReplicationConfig::new(
            host,
            self.pg.get_user().unwrap_or("postgres"),
            password,
            self.pg
                .get_dbname()
                .or(self.pg.get_user())
                .unwrap_or("postgres"),
            self.slot.clone(),
            self.publication.clone(),
        )
        .with_port(self.pg.get_ports().first().copied().unwrap_or(5432))
        .with_application_name(format!("raa:{}", self.slot))
    }
}
