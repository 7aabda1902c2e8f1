//! Hostile and odd input, end to end, beyond failures.rs: a repository someone
//! tampered with (a zstd bomb, archives that try to write outside the target, manifests
//! from the future or broken), and homes with odd names (invalid UTF-8, paths longer than
//! PATH_MAX, FIFOs). Plus a property test of the unpacker on random archives.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ghostwire_backup::commands::restore::MARKER;

use crate::common::*;

/// A small profile backed up once to the local repository.
fn backed_up() -> (Fixture, String) {
    Fixture::backed_up(&["--messages", "200", "--attachments", "4"])
}

/// A restore into `target` that must fail: its stderr (see `assert_restore_fails`).
fn restore_fails(fx: &Fixture, target: &Path) -> String {
    fx.assert_restore_fails(&mut fx.restore(target), target)
}

/// Appends an entry with a raw name (and link name), as a hostile archive would:
/// `tar::Builder`'s own path methods refuse such names.
fn raw_entry(tar: &mut Tar, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut h = tar_header(kind, data.len() as u64, 0o644);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    gnu.linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

/// Bytes of regular-file content below `dir`.
fn content_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            let metadata = std::fs::symlink_metadata(e.path()).unwrap();
            if metadata.is_dir() {
                content_bytes(&e.path())
            } else {
                metadata.len()
            }
        })
        .sum()
}

#[test]
fn a_zstd_bomb_is_refused_before_it_fills_the_disk() {
    let (fx, id) = backed_up();
    let declared = fx.manifest(&id)["content"]["bytes"].as_u64().unwrap();
    // 1 GiB of zeros: about 100 KiB once compressed, over 100 times what the manifest
    // allows.
    let bomb: u64 = 1 << 30;
    let build = |tar: &mut Tar| {
        let mut h = tar_header(tar::EntryType::Regular, bomb, 0o644);
        tar.append_data(&mut h, "bomb", std::io::repeat(0).take(bomb))
            .unwrap();
    };
    fx.plant(&id, build, |_| {});
    let archive = fx.archive_bytes(&id).len();
    assert!(archive < 1 << 20, "the bomb is {archive} bytes");
    let target = fx.root.join("target");
    let err = restore_fails(&fx, &target);
    assert!(err.contains("decompression bomb"), "{err}");
    let written = content_bytes(&target);
    assert!(
        written <= declared + 1,
        "{written} bytes written, the manifest declares {declared}"
    );

    // The same bomb with a manifest that lies about its size too: the free-space check
    // refuses it before anything is written.
    fx.plant(&id, build, |m| m["content"]["bytes"] = (1u64 << 60).into());
    let fresh = fx.root.join("fresh");
    let err = restore_fails(&fx, &fresh);
    assert!(err.contains("use a larger volume"), "{err}");
    assert_eq!(content_bytes(&fresh), 0);
}

#[test]
fn archives_that_reach_outside_the_target_are_refused_end_to_end() {
    use tar::EntryType::*;
    let (fx, id) = backed_up();
    let outside = fx.root.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("file"), "precious").unwrap();
    let outside_file = outside.join("file");
    let outside_file = outside_file.as_os_str().as_bytes();
    let long_name = vec![b'a'; 250];
    type Case<'a> = (
        &'a str,
        Vec<(Vec<u8>, tar::EntryType, Vec<u8>, Vec<u8>)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "hard link to an absolute path",
            vec![(b"h".to_vec(), Link, outside_file.to_vec(), vec![])],
            "outside the target",
        ),
        (
            "hard link through ..",
            vec![(b"h".to_vec(), Link, b"../outside/file".to_vec(), vec![])],
            "outside the target",
        ),
        (
            "hard link to a symlink that points outside",
            vec![
                (b"s".to_vec(), Symlink, outside_file.to_vec(), vec![]),
                (b"h".to_vec(), Link, b"s".to_vec(), vec![]),
            ],
            "not a file restored earlier",
        ),
        (
            "a file written through a symlinked directory",
            vec![
                (
                    b"d".to_vec(),
                    Symlink,
                    outside.as_os_str().as_bytes().to_vec(),
                    vec![],
                ),
                (b"d/file".to_vec(), Regular, vec![], b"pwned".to_vec()),
            ],
            "symlink escape",
        ),
        (
            "a FIFO",
            vec![(b"f".to_vec(), Fifo, vec![], vec![])],
            "FIFO",
        ),
        (
            "a device node",
            vec![(b"null".to_vec(), Char, vec![], vec![])],
            "device node",
        ),
        (
            "an absolute path",
            vec![(outside_file.to_vec(), Regular, vec![], b"pwned".to_vec())],
            "absolute path",
        ),
    ];
    for (name, entries, expected) in cases {
        fx.plant(
            &id,
            |tar| {
                for (path, kind, link, data) in &entries {
                    raw_entry(tar, path, *kind, link, data);
                }
            },
            |_| {},
        );
        let target = fx.root.join("target");
        let err = restore_fails(&fx, &target);
        assert!(err.contains(expected), "{name}: {err}");
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "precious",
            "{name}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "{name}");
        assert!(
            !target.exists(),
            "{name}: a failed restore left the target directory it created"
        );
    }
    // A path longer than PATH_MAX, as GNU long-name entries carry it: refused with an
    // error, never a crash or a write elsewhere.
    let deep: Vec<u8> = std::iter::repeat_n(long_name.as_slice(), 20)
        .collect::<Vec<_>>()
        .join(&b'/');
    fx.plant(
        &id,
        |tar| {
            let mut h = tar_header(Regular, 1, 0o644);
            tar.append_data(
                &mut h,
                Path::new(std::ffi::OsStr::from_bytes(&deep)),
                &b"x"[..],
            )
            .unwrap();
        },
        |_| {},
    );
    let err = restore_fails(&fx, &fx.root.join("target"));
    assert!(err.contains("too long"), "{err}");
}

#[test]
fn setuid_setgid_and_sticky_bits_are_never_restored() {
    let (fx, id) = backed_up();
    fx.plant(
        &id,
        |tar| {
            let mut h = tar_header(tar::EntryType::Regular, 2, 0o6777);
            tar.append_data(&mut h, "tool", &b"#!"[..]).unwrap();
        },
        // No Signal database in this "snapshot", so no gate stands in the way (and it is
        // restored by its id only).
        |m| m["signal_db"] = serde_json::Value::Null,
    );
    let target = fx.root.join("target");
    fx.restore(&target).args(["--snapshot", &id]).ok();
    let mode = std::fs::metadata(target.join("tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "mode {mode:o} kept setuid/setgid/sticky");
}

#[test]
fn an_owner_id_past_32_bits_is_refused_not_truncated_to_root() {
    let (fx, id) = backed_up();
    fx.plant(
        &id,
        |tar| {
            // 2^32 truncates to uid 0: root would own the file in the volume.
            let mut h = tar_header(tar::EntryType::Regular, 2, 0o644);
            h.set_uid(1 << 32);
            h.set_cksum();
            tar.append_data(&mut h, "tool", &b"#!"[..]).unwrap();
        },
        |m| m["signal_db"] = serde_json::Value::Null,
    );
    let target = fx.root.join("target");
    let err = fx.assert_restore_fails(fx.restore(&target).args(["--snapshot", &id]), &target);
    assert!(
        err.contains("tool") && err.contains("uid 4294967296"),
        "the error must name the entry and its owner: {err}"
    );
}

#[test]
fn a_manifest_from_the_future_or_a_broken_one_is_refused_clearly() {
    let (fx, id) = backed_up();
    let good = fx.manifest(&id);
    let target = fx.root.join("target");
    // Each one signed, as the backup side (a newer version of it, or a buggy one) would:
    // unsigned, they would be refused before their content is read (signed.rs).
    let write_signed = |text: &str| {
        std::fs::write(fx.manifest_path(&id), text).unwrap();
        sign_manifest(&fx.manifest_path(&id));
    };

    let mut future = good.clone();
    future["format"] = 99.into();
    write_signed(&future.to_string());
    let err = restore_fails(&fx, &target);
    assert!(
        err.contains("written by a newer ghostwire-backup") && err.contains("upgrade"),
        "{err}"
    );
    let err = fx.agent().arg("snapshots").fails();
    assert!(err.contains("newer ghostwire-backup"), "{err}");

    let text = good.to_string();
    write_signed(&text[..text.len() / 2]);
    let err = restore_fails(&fx, &target);
    assert!(
        err.contains(&Object::Manifest(id.to_string()).key()) && err.contains("not valid JSON"),
        "{err}"
    );

    let mut wrong_type = good.clone();
    wrong_type["content"]["bytes"] = "lots".into();
    write_signed(&wrong_type.to_string());
    let err = restore_fails(&fx, &target);
    assert!(err.contains("is malformed"), "{err}");
}

#[test]
fn names_that_are_not_utf8_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let home = root.join("home");
    let odd = [
        &b"caf\xe9.txt"[..],       // Latin-1
        &b"\xff\xfe\xfd"[..],      // no encoding at all
        &b"line\nbreak"[..],       // a newline in a name
        &b"back\\slash \"q\""[..], // quoting characters
    ];
    let docs = home.join("Documents");
    std::fs::create_dir_all(&docs).unwrap();
    for (i, name) in odd.iter().enumerate() {
        let dir = docs.join(std::ffi::OsStr::from_bytes(name));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(name)), format!("{i}")).unwrap();
    }
    let (identity, recipient) = keygen(root);
    let repo = root.join("backups");
    let id = backup_command(agent_for(&repo), &home, &recipient, &root.join("staging"))
        .arg("--allow-no-signal")
        .ok();
    let target = root.join("target");
    agent_for(&repo)
        .args(["restore", "--snapshot", &id])
        .arg("--identity")
        .arg(&identity)
        .arg("--target")
        .arg(&target)
        .ok();
    assert_same_tree(&tree(&target, &|p| p == MARKER), &tree(&home, &|_| false));
}

/// Creates `depth` nested directories named `part` below `base` and a file at the bottom,
/// with *at() calls: the whole path is longer than PATH_MAX, which path-based calls refuse.
fn deep_tree(base: &Path, part: &str, depth: usize) {
    use std::ffi::CString;
    let name = CString::new(part).unwrap();
    let base = CString::new(base.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain *at() calls on descriptors we open and close here.
    unsafe {
        let mut fd = libc::open(base.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
        assert!(fd >= 0);
        for _ in 0..depth {
            assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o755), 0);
            let next = libc::openat(fd, name.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        let file = CString::new("deep.txt").unwrap();
        let out = libc::openat(fd, file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        assert!(out >= 0);
        assert_eq!(libc::write(out, b"deep".as_ptr().cast(), 4), 4);
        libc::close(out);
        libc::close(fd);
    }
}

#[test]
fn a_path_longer_than_path_max_in_the_home_does_not_stop_the_backup() {
    let (fx, _) = backed_up();
    let part = "d".repeat(200);
    deep_tree(fx.home(), &part, 24); // about 4,800 bytes below the home
    let backup = fx.backup().run();
    assert!(backup.status.success(), "{backup}");
    assert!(
        backup.stderr.contains("too long"),
        "the skipped path was not reported:\n{backup}"
    );
    let manifest = fx.manifest(backup.stdout_trimmed());
    assert_eq!(
        manifest["content"]["too_long_skipped"], 1,
        "the manifest must say what is missing"
    );
    let target = fx.root.join("target");
    fx.restore(&target).ok();
    assert!(target.join(".config/Signal/config.json").exists());
}

#[test]
fn a_fifo_in_the_home_is_skipped_without_blocking_the_backup() {
    let (fx, _) = backed_up();
    let fifo = fx.home().join(".config/Signal/pipe");
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let started = Instant::now();
    let id = fx.backup().ok();
    assert!(started.elapsed() < Duration::from_secs(60));
    let target = fx.root.join("target");
    let restored = fx.restore(&target).ok();
    assert_eq!(restored, id);
    assert!(!target.join(".config/Signal/pipe").exists());
}

mod unpack_property {
    //! Random archives built from names and links chosen to be dangerous ("..", absolute
    //! paths, symlinks to outside, hard links, special files, invalid UTF-8): whatever the
    //! unpacker decides, it never writes outside its directory, never panics, and never
    //! restores setuid bits or more content than its cap.

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use ghostwire_backup::unpack::{UnpackOptions, unpack};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Kind {
        File(Vec<u8>, u32),
        Dir,
        Symlink(Vec<u8>),
        HardLink(Vec<u8>),
        Fifo,
    }

    /// Mostly ordinary names, so archives get past their first entry; now and then a
    /// dangerous one.
    fn name() -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            4 => Just(b"a".to_vec()),
            4 => Just(b"b".to_vec()),
            3 => Just(b"link".to_vec()),
            1 => Just(b"..".to_vec()),
            1 => Just(b".".to_vec()),
            1 => Just(b"\xff\xfe".to_vec()),
            1 => Just(b".ghostwire-backup-restore.json".to_vec()),
        ];
        (prop::bool::weighted(0.1), prop::collection::vec(part, 1..4)).prop_map(
            |(absolute, parts)| {
                let mut name = if absolute { b"/".to_vec() } else { vec![] };
                name.extend(parts.join(&b'/'));
                name
            },
        )
    }

    fn link_target() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            name(),
            Just(b"OUTSIDE".to_vec()),
            Just(b"../outside/file".to_vec())
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            4 => (prop::collection::vec(any::<u8>(), 0..64), any::<u32>())
                .prop_map(|(data, mode)| Kind::File(data, mode & 0o7777)),
            2 => Just(Kind::Dir),
            2 => link_target().prop_map(Kind::Symlink),
            1 => link_target().prop_map(Kind::HardLink),
            1 => Just(Kind::Fifo),
        ]
    }

    fn build(entries: &[(Vec<u8>, Kind)], outside: &Path) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind) in entries {
            let (entry_type, link, data, mode) = match kind {
                Kind::File(data, mode) => (tar::EntryType::Regular, vec![], data.clone(), *mode),
                Kind::Dir => (tar::EntryType::Directory, vec![], vec![], 0o755),
                Kind::Symlink(t) => (tar::EntryType::Symlink, t.clone(), vec![], 0o777),
                Kind::HardLink(t) => (tar::EntryType::Link, t.clone(), vec![], 0o644),
                Kind::Fifo => (tar::EntryType::Fifo, vec![], vec![], 0o644),
            };
            let link = if link == b"OUTSIDE" {
                outside.as_os_str().as_encoded_bytes().to_vec()
            } else {
                link
            };
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(entry_type);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
            h.set_cksum();
            tar.append(&h, &data[..]).unwrap();
        }
        tar.into_inner().unwrap()
    }

    /// Every entry below `dir`, with content for files: to see that nothing changed.
    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = fs::symlink_metadata(&path).unwrap();
            let content = if metadata.is_file() {
                fs::read(&path).unwrap()
            } else {
                vec![]
            };
            found.push((path.display().to_string(), content));
            if metadata.is_dir() {
                found.extend(snapshot(&path));
            }
        }
        found.sort();
        found
    }

    fn check_modes(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = fs::symlink_metadata(&path).unwrap();
            if metadata.is_dir() {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
                check_modes(&path);
            } else if metadata.is_file() {
                assert_eq!(
                    metadata.permissions().mode() & 0o7000,
                    0,
                    "{}",
                    path.display()
                );
            }
        }
    }

    proptest! {
        // Few cases, so the suite stays fast; PROPTEST_CASES=5000 for a long run.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96)
        ))]

        #[test]
        fn unpack_never_writes_outside_its_directory(
            entries in prop::collection::vec((name(), kind()), 1..8)
        ) {
            let root = tempfile::tempdir().unwrap();
            let dest = root.path().join("dest");
            let outside = root.path().join("outside");
            fs::create_dir(&dest).unwrap();
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("file"), "precious").unwrap();
            let before = snapshot(root.path().join("outside").as_path());
            let bytes = build(&entries, &outside);
            let cap = 100;
            let options = UnpackOptions { chown: None, preserve_owner: false, max_content_bytes: cap, progress: Default::default() };
            let mut read_delta = |delta: &mut dyn std::io::Read, _| {
                std::io::copy(delta, &mut std::io::sink())?;
                Ok(())
            };
            let result = unpack(&mut tar::Archive::new(&bytes[..]), &dest, &options, &|_| true, &mut read_delta, &mut ghostwire_backup::unpack::NoWatch);
            prop_assert_eq!(snapshot(&outside), before);
            let top: Vec<_> = fs::read_dir(root.path()).unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            prop_assert_eq!(top.len(), 2, "{:?}", top);
            if let Ok(stats) = &result {
                prop_assert!(stats.bytes <= cap);
            }
            check_modes(&dest);
        }
    }
}
