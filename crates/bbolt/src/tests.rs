//! Round trips through the writer and reader, files damaged in each way the reader guards
//! against, and the replay of the fuzz target's kept corpus.

use std::io::Cursor;

use super::*;

/// A bucket's name and sorted entries.
type Contents<'a> = (&'a [u8], Vec<(Vec<u8>, Vec<u8>)>);

fn write(buckets: &[Contents<'_>]) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
    for (name, entries) in buckets {
        let mut b = w.bucket(name).expect("bucket");
        for (k, v) in entries {
            b.put(k, v).expect("put");
        }
        b.finish().expect("finish bucket");
    }
    w.finish().expect("finish").into_inner()
}

fn kv(n: usize, vlen: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("k{i:08}").into_bytes(), vec![(i % 251) as u8; vlen]))
        .collect()
}

fn read_all<'a>(db: &Db<'a>, name: &[u8]) -> Vec<(&'a [u8], &'a [u8])> {
    db.bucket(name)
        .expect("bucket")
        .expect("present")
        .entries()
        .expect("entries")
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

#[test]
fn small_large_and_empty_buckets_round_trip() {
    let many = kv(5000, 20);
    let big = kv(3, 10_000);
    let file = write(&[
        (b"many", many.clone()),
        (b"big", big.clone()),
        (b"empty", vec![]),
    ]);
    assert_eq!(file.len() % PAGE_SIZE, 0);
    let db = Db::open(&file).expect("open");
    let got = read_all(&db, b"many");
    assert_eq!(got.len(), many.len());
    for ((k, v), (wk, wv)) in got.iter().zip(&many) {
        assert_eq!((*k, *v), (wk.as_slice(), wv.as_slice()));
    }
    assert_eq!(read_all(&db, b"big").len(), 3);
    assert_eq!(read_all(&db, b"big")[2].1, big[2].1.as_slice());
    assert!(read_all(&db, b"empty").is_empty());
    assert!(db.bucket(b"absent").expect("lookup").is_none());
    let names: Vec<_> = db
        .root()
        .entries()
        .expect("root")
        .iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        names,
        vec![&b"big"[..], b"empty", b"many"],
        "sorted by name"
    );
}

#[test]
fn every_page_below_the_high_water_mark_is_used_once() {
    // What `bbolt check` verifies: walk every tree and count the pages it covers.
    let file = write(&[(b"a", kv(3000, 40)), (b"b", kv(2, 9000))]);
    let pages = file.len() / PAGE_SIZE;
    let mut used = vec![0u32; pages];
    used[0] += 1;
    used[1] += 1;
    used[2] += 1;
    for id in 3..pages {
        let at = id * PAGE_SIZE;
        let own = u64::from_le_bytes(file[at..at + 8].try_into().expect("8"));
        if own as usize == id {
            let overflow = u32::from_le_bytes(file[at + 12..at + 16].try_into().expect("4"));
            for n in &mut used[id..=id + overflow as usize] {
                *n += 1;
            }
        }
    }
    assert!(used.iter().all(|n| *n == 1), "{used:?}");
}

#[test]
fn keys_must_ascend_and_buckets_be_unique() {
    let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
    let mut b = w.bucket(b"x").expect("bucket");
    b.put(b"b", b"1").expect("put");
    assert!(matches!(b.put(b"a", b"1"), Err(BoltError::Misuse(_))));
    assert!(matches!(b.put(b"b", b"1"), Err(BoltError::Misuse(_))));
    b.finish().expect("finish");
    assert!(w.bucket(b"x").is_err());
}

/// A hand-built file whose bucket `in` is inline, as bbolt writes small buckets.
fn with_inline_bucket() -> Vec<u8> {
    let mut inline = Vec::new();
    inline.extend_from_slice(&0u64.to_le_bytes()); // root 0: inline
    inline.extend_from_slice(&0u64.to_le_bytes());
    let mut page = vec![0u8; PAGE_HEADER + ELEMENT];
    page[8..10].copy_from_slice(&FLAG_LEAF.to_le_bytes());
    page[10..12].copy_from_slice(&1u16.to_le_bytes());
    page[PAGE_HEADER + 4..PAGE_HEADER + 8].copy_from_slice(&16u32.to_le_bytes());
    page[PAGE_HEADER + 8..PAGE_HEADER + 12].copy_from_slice(&1u32.to_le_bytes());
    page[PAGE_HEADER + 12..PAGE_HEADER + 16].copy_from_slice(&2u32.to_le_bytes());
    page.extend_from_slice(b"kvv");
    inline.extend_from_slice(&page);
    // Patch it in as the value of a bucket element written through the writer's page code.
    let mut w = Writer::new(Cursor::new(Vec::new())).expect("writer");
    let mut tree = write::tests_support::tree();
    write::tests_support::push(&mut tree, &mut w, ELEMENT_BUCKET, b"in", &inline);
    write::tests_support::finish_as_root(tree, w)
}

#[test]
fn inline_buckets_are_read() {
    let file = with_inline_bucket();
    let db = Db::open(&file).expect("open");
    assert_eq!(read_all(&db, b"in"), vec![(&b"k"[..], &b"vv"[..])]);
    assert!(fuzz_read(&file) >= 2);
}

fn err_of(file: &[u8]) -> String {
    match Db::open(file).and_then(|db| {
        for e in db.root().entries()? {
            db.root().open(&e)?.entries()?;
        }
        Ok(())
    }) {
        Ok(()) => panic!("damage went unnoticed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_files_are_clear_errors() {
    let good = write(&[(b"a", kv(2000, 30))]);
    assert!(err_of(&good[..100]).contains("truncated"));
    assert!(err_of(&[0u8; 8192]).contains("not a bbolt database"));
    let truncated = &good[..good.len() - PAGE_SIZE];
    assert!(
        err_of(truncated).contains("truncated"),
        "{}",
        err_of(truncated)
    );
    // Both metas' checksums broken.
    let mut bad = good.clone();
    bad[PAGE_HEADER + 20] ^= 1;
    bad[PAGE_SIZE + PAGE_HEADER + 20] ^= 1;
    assert!(err_of(&bad).contains("checksum"));
    // One meta broken: the other is used.
    let mut one = good.clone();
    one[PAGE_HEADER + 20] ^= 1;
    assert!(Db::open(&one).is_ok());
    // A data page that lies about its id, then one of the wrong type.
    let mut liar = good.clone();
    liar[3 * PAGE_SIZE] ^= 0x40;
    assert!(err_of(&liar).contains("calls itself"));
    let mut typed = good.clone();
    typed[3 * PAGE_SIZE + 8] = 0x10;
    assert!(err_of(&typed).contains("flags"));
    // An element pointing outside its page.
    let mut far = good.clone();
    far[3 * PAGE_SIZE + PAGE_HEADER + 4..3 * PAGE_SIZE + PAGE_HEADER + 8]
        .copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(err_of(&far).contains("outside the page"));
    // A count larger than the page.
    let mut many = good.clone();
    many[3 * PAGE_SIZE + 10..3 * PAGE_SIZE + 12].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(err_of(&many).contains("do not fit"));
}

#[test]
fn a_branch_cycle_is_refused() {
    let good = write(&[(b"a", kv(2000, 30))]);
    let db = Db::open(&good).expect("open");
    let e = db.root().entries().expect("root")[0];
    let root = u64::from_le_bytes(e.value[..8].try_into().expect("8")) as usize;
    let mut cyc = good.clone();
    // Point the branch root's second child at the root itself.
    let at = root * PAGE_SIZE + PAGE_HEADER + ELEMENT + 8;
    cyc[at..at + 8].copy_from_slice(&(root as u64).to_le_bytes());
    assert!(
        err_of(&cyc).contains("referenced twice"),
        "{}",
        err_of(&cyc)
    );
}

fn corpus_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/bbolt")
}

/// The kept corpus of the `bbolt` fuzz target, replayed on every test run.
#[test]
fn the_bbolt_fuzz_corpus_reads_without_panic() {
    let dir = corpus_dir();
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    assert!(!inputs.is_empty());
    for input in inputs {
        fuzz_read(&input);
        for cut in [16, 4096, 4096 + 100, input.len() / 2] {
            fuzz_read(&input[..cut.min(input.len())]);
        }
    }
}

/// Writes the `bbolt` fuzz target's writer-made seed
/// (`cargo test -p berth-bbolt -- --ignored write_bbolt_fuzz_seed`).
#[test]
#[ignore]
fn write_bbolt_fuzz_seed() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(
        dir.join("seed-writer"),
        write(&[(b"a", kv(300, 8)), (b"b", kv(1, 5000))]),
    )
    .expect("seed");
    std::fs::write(dir.join("seed-inline"), with_inline_bucket()).expect("seed");
}
