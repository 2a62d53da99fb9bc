//! The PostgreSQL sink against a real server: a batch's statements are sent
//! together, yet a batch is still all or nothing, a failure names the
//! statement that failed (not the ones the aborted transaction refused after
//! it), and a batch behind the recorded progress is refused.

mod support;

use raa::aggregate::catalog::FAMILIES;
use raa::aggregate::{Level, OutputRow, Settings};
use raa::sink::{PgSink, Sink, SinkError};
use raa::Lsn;
use support::TestDb;

const SLOT: &str = "raa";

/// One row in every aggregate table (35: more than the 30 futures up to
/// which `join_all` polls them in a plain loop).
fn rows_everywhere(bucket: i64) -> Vec<OutputRow> {
    let mut rows = Vec::new();
    for (f, family) in FAMILIES.iter().enumerate() {
        for level in Level::ALL {
            rows.push(OutputRow {
                family: f as u16,
                level,
                bucket,
                group: vec![Some(1); family.group_by.len()],
                values: Some(vec![Some(7); family.measures.len()]),
            });
        }
    }
    rows
}

async fn total_rows(db: &TestDb) -> i64 {
    let mut total = 0;
    for family in FAMILIES {
        for level in Level::ALL {
            let table = family.table_name(level);
            total += db.count(&format!("SELECT count(*) FROM {table}")).await;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_atomic_name_the_failed_statement_and_never_go_back() {
    let db = TestDb::new().await;
    let settings = Settings::default();
    db.init(&settings).await;
    let mut sink = PgSink::new(db.client().await, SLOT, &settings)
        .await
        .expect("prepare the sink");

    sink.write(Lsn(200), &rows_everywhere(100))
        .await
        .expect("first batch");
    assert_eq!(total_rows(&db).await, 35);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));

    // The second batch: a new bucket everywhere, and one row of the first
    // batch deleted.
    let mut second = rows_everywhere(200);
    let gone = OutputRow {
        values: None,
        ..rows_everywhere(100).swap_remove(3)
    };
    let gone_table = FAMILIES[usize::from(gone.family)].table_name(gone.level);
    second.push(gone);

    // A constraint the new bucket breaks, in one table at a time: the batch
    // fails whole, and the error names that table's upsert.
    let admin = db.client().await;
    for (f, level) in [(0, Level::Subhr), (2, Level::Day), (4, Level::Year)] {
        let table = FAMILIES[f].table_name(level);
        admin
            .batch_execute(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT no_200 CHECK (date_time_key <> 200)"
            ))
            .await
            .unwrap();
        match sink.write(Lsn(300), &second).await {
            Err(SinkError::Sql { what, source }) => {
                assert_eq!(what, format!("upsert into {table}"), "{source}");
            }
            other => panic!("a failed batch must report its statement, got {other:?}"),
        }
        assert_eq!(total_rows(&db).await, 35, "nothing of a failed batch stays");
        assert_eq!(sink.progress().await.unwrap(), Some(Lsn(200)));
        admin
            .batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT no_200"))
            .await
            .unwrap();
    }

    sink.write(Lsn(300), &second).await.expect("second batch");
    assert_eq!(total_rows(&db).await, 69);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM {gone_table} WHERE date_time_key = 100"
        ))
        .await,
        0
    );
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));

    // A batch behind the recorded progress changes nothing.
    match sink.write(Lsn(250), &rows_everywhere(300)).await {
        Err(SinkError::ProgressRegressed { recorded, lsn, .. }) => {
            assert_eq!((recorded, lsn), (Lsn(300), Lsn(250)));
        }
        other => panic!("a batch behind the progress must be refused, got {other:?}"),
    }
    assert_eq!(total_rows(&db).await, 69);
    assert_eq!(sink.progress().await.unwrap(), Some(Lsn(300)));
}
