//! The smallest complete use of the engine: open, write, read, scan, snapshot,
//! and reopen to see that the data survived.
//!
//! Run with `cargo run --release --example quickstart [DIR]` (default: a
//! fresh directory under the system temp dir, removed at the end).

use strata_kv::engine::{Db, Options, WriteBatch, WriteOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("quickstart-db"));

    let db = Db::open(&dir, Options::default())?;
    println!("opened {}", dir.display());

    db.put("user:1", "ada")?;
    db.put("user:2", "grace")?;
    let mut batch = WriteBatch::new();
    batch.put("user:3", "barbara");
    batch.delete("user:2");
    db.write(batch, &WriteOptions { sync: true })?;
    println!("user:1 = {:?}", db.get("user:1")?.map(String::from_utf8));

    let snapshot = db.snapshot();
    db.put("user:1", "ada lovelace")?;

    for item in db.prefix("user:") {
        let (k, v) = item?;
        println!(
            "now      {} = {}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    for item in snapshot.prefix("user:").rev() {
        let (k, v) = item?;
        println!(
            "snapshot {} = {}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    drop(snapshot);

    let n = 100_000;
    let start = std::time::Instant::now();
    for i in 0..n {
        db.put(format!("bulk:{i:08}"), [b'x'; 100])?;
    }
    println!("{n} puts in {:.2?}", start.elapsed());
    db.flush()?;
    drop(db);

    let db = Db::open(&dir, Options::default())?;
    let count = db.prefix("bulk:").count();
    println!(
        "after reopen: {count} bulk keys, user:1 = {:?}",
        db.get("user:1")?.map(String::from_utf8)
    );
    Ok(())
}
