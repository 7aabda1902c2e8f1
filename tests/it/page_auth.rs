//! The restore gate authenticates Signal's database pages itself (src/page_auth.rs), in the
//! same read that hashes them: it must say "good" exactly where SQLCipher's
//! `cipher_integrity_check` does, on a database made by Signal's driver, for damage in
//! every region of a page and for a wrong key; and a restore of a database damaged before
//! its backup read it is refused by the gate, with nothing moved into place.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use ghostwire_backup::cancel::Cancel;
use ghostwire_backup::page_auth;
use ghostwire_backup::profile::DbKey;

use crate::common::*;

const PAGE: u64 = 4096;

/// The pages SQLCipher's `cipher_integrity_check` finds bad, and how many (it names each).
fn sqlcipher_says(db: &Path, key: &DbKey) -> (BTreeSet<u32>, u64) {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags).unwrap();
    conn.execute_batch(&key.pragma()).unwrap();
    let mut statement = conn.prepare("PRAGMA cipher_integrity_check").unwrap();
    let rows: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let pages: Vec<u32> = rows
        .iter()
        .map(|row| {
            row.strip_prefix("HMAC verification failed for page ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cipher_integrity_check said {row:?}"))
        })
        .collect();
    let count = pages.len() as u64;
    (pages.into_iter().take(20).collect(), count)
}

/// The pages our one pass finds bad (the first 20), and how many.
fn ours_says(db: &Path, key: &DbKey) -> (BTreeSet<u32>, u64) {
    let file = File::open(db).unwrap();
    let pass = page_auth::hash_and_authenticate(&file, PAGE as u32, key, &Cancel::new()).unwrap();
    let listed =
        ghostwire_backup::raw_pages::RawPageList::of_file(&file, PAGE as u32, &Cancel::new())
            .unwrap();
    assert_eq!(
        pass.list, listed,
        "the pass hashes the pages as of_file does"
    );
    (pass.failed.first.into_iter().collect(), pass.failed.count)
}

fn damaged(original: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(original).unwrap();
    edit(&mut bytes);
    let path = dir.join(format!("{name}.sqlite"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn our_page_check_fails_exactly_where_cipher_integrity_check_does() {
    let dir = tempfile::tempdir().unwrap();
    let profile = make_profile(&dir.path().join("home"), &["--messages", "2000"]);
    open_and_quit(&profile.db(), &profile.key);
    let key = DbKey::from_hex(&profile.key).unwrap();
    let original = profile.db();
    let pages = std::fs::metadata(&original).unwrap().len() / PAGE;
    assert!(pages > 10, "a database of {pages} pages");
    let at = |pgno: u64, offset: u64| ((pgno - 1) * PAGE + offset) as usize;

    let mut cases: Vec<(&str, PathBuf, DbKey)> = vec![("untouched", original.clone(), key.clone())];
    let flips = [
        ("page 1's salt", at(1, 3)),
        ("page 1's content", at(1, 100)),
        ("page 5's content", at(5, 2000)),
        ("page 5's IV", at(5, PAGE - 80 + 7)),
        ("page 5's HMAC", at(5, PAGE - 1)),
        ("the last page's content", at(pages, 17)),
    ];
    for (what, offset) in flips {
        let path = damaged(&original, dir.path(), what, |b| b[offset] ^= 0x20);
        cases.push((what, path, key.clone()));
    }
    let swapped = damaged(&original, dir.path(), "swapped", |b| {
        let (three, four) = (at(3, 0), at(4, 0));
        let page3 = b[three..three + PAGE as usize].to_vec();
        b.copy_within(four..four + PAGE as usize, three);
        b[four..four + PAGE as usize].copy_from_slice(&page3);
    });
    cases.push(("pages 3 and 4 swapped", swapped, key.clone()));
    let wrong = DbKey::from_hex(&"5a".repeat(32)).unwrap();
    cases.push(("a wrong key", original.clone(), wrong));

    for (what, path, key) in &cases {
        let ours = ours_says(path, key);
        let sqlcipher = sqlcipher_says(path, key);
        eprintln!("{what}: ours {ours:?}, SQLCipher {sqlcipher:?}");
        assert_eq!(ours, sqlcipher, "{what}: ours and SQLCipher disagree");
        let expected = match *what {
            "untouched" => 0,
            "page 1's salt" | "a wrong key" => pages,
            "pages 3 and 4 swapped" => 2,
            _ => 1,
        };
        assert_eq!(ours.1, expected, "{what}");
    }
}

/// The pages a delta wrote are read again and checked: a damaged one fails, and one that
/// does not read back as it was hashed is an error.
#[test]
fn pages_read_again_after_a_delta_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let profile = make_profile(&dir.path().join("home"), &["--messages", "500"]);
    open_and_quit(&profile.db(), &profile.key);
    let key = DbKey::from_hex(&profile.key).unwrap();
    let cancel = Cancel::new();
    let good = File::open(profile.db()).unwrap();
    let pass = page_auth::hash_and_authenticate(&good, PAGE as u32, &key, &cancel).unwrap();
    assert!(pass.failed.is_empty(), "{:?}", pass.failed);
    let recheck =
        |file: &File, list| page_auth::recheck_pages(file, list, &[2, 3], pass.salt, &key, &cancel);
    assert!(recheck(&good, &pass.list).unwrap().is_empty());

    // Page 3 damaged, and hashed as it now is (as a delta that wrote it would list it).
    let path = damaged(&profile.db(), dir.path(), "damaged", |b| {
        b[(2 * PAGE + 9) as usize] ^= 1
    });
    let file = File::open(&path).unwrap();
    let list =
        ghostwire_backup::raw_pages::RawPageList::of_file(&file, PAGE as u32, &cancel).unwrap();
    let failed = recheck(&file, &list).unwrap();
    assert_eq!(failed.first, vec![3], "{failed:?}");
    // Listed with the hash it had before: it did not read back as written.
    let err = recheck(&file, &pass.list).unwrap_err().to_string();
    assert!(err.contains("page 3") && err.contains("read back"), "{err}");
}

/// A page of Signal's database damaged on disk before the backup read it (the backup
/// records its failed check and goes ahead: the snapshot is the best copy there is) is
/// found by the restore gate, which names the page SQLCipher found bad; the target is not
/// left looking restored.
#[test]
fn a_restore_of_a_database_damaged_before_its_backup_is_refused_by_the_gate() {
    let fx = Fixture::new(&["--messages", "3000"]);
    let db = fx.profile.db();
    open_and_quit(&db, &fx.profile.key);
    let page = page_nothing_reads_at_backup(&db, &fx.profile.key);
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[((page - 1) * PAGE + 1000) as usize] ^= 0x04;
    std::fs::write(&db, bytes).unwrap();

    let id = fx.backup().ok();
    let manifest = fx.manifest(&id);
    assert_ne!(manifest["signal_db"]["check"], "ok", "{manifest}");
    let target = fx.root.join("restored");
    let err = fx.assert_restore_fails(fx.restore(&target).args(["--snapshot", &id]), &target);
    assert!(
        err.contains("cipher_integrity_check")
            && err.contains(&format!("HMAC verification failed for page {page}")),
        "{err}"
    );
    assert!(
        err.contains("pages did not authenticate with the restored key"),
        "the gate's own check should have found it first: {err}"
    );
}

/// A page of an index on a column no attachment path is in: the backup reads Signal's
/// database through SQLCipher only for its schema and its attachment paths.
fn page_nothing_reads_at_backup(db: &Path, key: &str) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(&DbKey::from_hex(key).unwrap().pragma())
        .unwrap();
    let page: i64 = conn
        .query_row(
            "SELECT max(pageno) FROM dbstat WHERE name = 'messages_expires_at'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    conn.close().unwrap();
    page as u64
}

/// A restore of a full copy hashes and checks Signal's database as the unpack writes it
/// (the key from the `config.json` unpacked before it): the gate reads it no more.
#[test]
fn a_full_restore_checks_the_database_as_it_is_unpacked() {
    let (fx, id) = Fixture::backed_up(&["--messages", "2000"]);
    let target = fx.root.join("restored");
    let restored = fx.restore(&target).args(["--snapshot", &id]).run();
    assert!(restored.status.success(), "{restored}");
    assert!(
        restored.stderr.contains("as it was unpacked"),
        "the gate read the database again: {restored}"
    );
    assert_signal_db(&target, &fx.profile.key, fx.profile.messages);
}
