//! Micro-benchmarks of the pure stages, per change: pgoutput decode + column
//! mapping, and aggregation into the state (sled in a temp dir, no sink).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raa::aggregate::{Engine, Level, Settings, Work};
use raa::decode::pgoutput::{self, encode, ColumnDef, Datum, Message, RelationBody, TupleData};
use raa::decode::{Transaction, TxnAssembler};
use raa::schema::IRF;
use raa_state::Lsn;
use std::sync::Arc;

fn relation() -> Message<'static> {
    Message::Relation(RelationBody {
        id: 1,
        namespace: "public",
        name: "interaction_resource_fact",
        replica_identity: b'd',
        columns: IRF
            .columns
            .iter()
            .map(|c| ColumnDef {
                flags: 0,
                name: c.name,
                type_oid: 20,
                type_modifier: -1,
            })
            .collect(),
    })
}

fn insert_bytes(id: i64) -> Vec<u8> {
    let texts: Vec<String> = (0..IRF.columns.len())
        .map(|i| match i {
            0 => id.to_string(),
            9 => (1_774_569_600 + id * 7 % 86_400).to_string(),
            5 => (1 + id % 50).to_string(),
            _ => ((id + i as i64) % 40).to_string(),
        })
        .collect();
    let tuple = TupleData(texts.iter().map(|t| Datum::Text(t.as_bytes())).collect());
    encode::message(&Message::Insert {
        relation_id: 1,
        new: tuple,
    })
}

fn transaction(n: i64) -> Transaction {
    let mut asm = TxnAssembler::default();
    asm.push(&relation()).unwrap();
    asm.begin(Lsn(100), 1, 0).unwrap();
    for id in 0..n {
        let bytes = insert_bytes(id);
        asm.push(&pgoutput::decode(&bytes).unwrap()).unwrap();
    }
    asm.commit(Lsn(100), Lsn(108), 0).unwrap()
}

fn bench(c: &mut Criterion) {
    let msgs: Vec<Vec<u8>> = (0..1_000).map(insert_bytes).collect();
    let mut g = c.benchmark_group("per change");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("decode + map 1000 IRF inserts", |b| {
        let mut asm = TxnAssembler::default();
        asm.push(&relation()).unwrap();
        b.iter(|| {
            asm.begin(Lsn(100), 1, 0).unwrap();
            for m in &msgs {
                asm.push(&pgoutput::decode(m).unwrap()).unwrap();
            }
            asm.commit(Lsn(100), Lsn(108), 0).unwrap()
        })
    });
    let txn = transaction(1_000);
    g.bench_function("aggregate 1000 IRF inserts (sled, no sink)", |b| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(raa_state::Store::open(dir.path()).unwrap());
        let mut engine = Engine::open(store, Settings::default()).unwrap();
        b.iter(|| {
            let mut work = Work::default();
            engine.apply(&mut work, &txn).unwrap();
            engine.finish(work).unwrap()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("interval split");
    let tz = raa::aggregate::bucket::zone(Some("America/New_York")).unwrap();
    let start = 1_793_480_000; // the evening before New York's 2026 fall-back
    for (name, hours) in [
        ("15 minutes", 0.25),
        ("8-hour session", 8.0),
        ("4-day session", 96.0),
    ] {
        let end = start + (hours * 3600.0) as i64;
        g.bench_function(format!("{name}, seven levels"), |b| {
            b.iter(|| raa::aggregate::interval::split(start, end, &Level::ALL, &tz, 900).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
