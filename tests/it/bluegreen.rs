//! Blue/green as the kubelet runs it, with processes standing in for the pods' containers:
//! each pod's init container (`restore --if-empty`) runs to the end first, then its native
//! sidecar (`run`) starts, and its Signal starts only once the sidecar's startupProbe
//! (`/startupz`) answers 200. On shutdown Signal stops first, then the sidecar gets SIGTERM
//! and takes the final snapshot that releases the lease. The lease is what keeps two
//! Signals off one identity; these tests try to get a second one past it.

use std::time::{Duration, Instant};

use ghostwire_backup::commands::restore::MARKER;
use serde_json::Value;

use crate::common::*;

fn snapshots(fx: &Fixture) -> Vec<Value> {
    let listed: Value =
        serde_json::from_str(&fx.agent().args(["snapshots", "--json"]).ok()).unwrap();
    listed.as_array().unwrap().clone()
}

#[test]
fn a_second_sidecar_never_starts_signal_while_the_first_holds_the_lease() {
    let (fx, scheduled) = Fixture::backed_up(&["--messages", "50"]);
    let blue = Sidecar::start(&fx, "ghostwire-0", fx.home(), &[]);
    wait_for("blue's sidecar to take the lease", SIDECAR_WAIT, || {
        blue.started().then_some(())
    });
    assert!(blue.get("/leasez").starts_with("HTTP/1.1 200"));

    let green_home = fx.root.join("green-home");
    copy_home(&fx, &green_home);
    let green = Sidecar::start(&fx, "ghostwire-green-0", &green_home, &[]);
    // A fresh daemon reports the repository's newest snapshot before it backs up, and
    // before it holds the lease: not zeros that page someone on every pod start.
    let newest = &snapshots(&fx)[0];
    assert_eq!(newest["id"], scheduled.as_str());
    let finished = chrono::DateTime::parse_from_rfc3339(newest["finished_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    assert_eq!(
        green.metric("ghostwire_backup_last_success_timestamp_seconds"),
        finished
    );
    assert_eq!(green.metric("ghostwire_backup_restore_gate_ok"), 1.0);
    // Green's lease attempts (one every 3 s) never let its Signal start: /startupz answers
    // 503 before the first attempt, then names the holder, and still does after several.
    let startupz_refuses = || {
        let startupz = green.get("/startupz");
        assert!(startupz.starts_with("HTTP/1.1 503"), "{startupz}");
        startupz.contains("held by ghostwire-0").then_some(())
    };
    wait_for(
        "/startupz to name the lease's holder",
        SIDECAR_WAIT,
        startupz_refuses,
    );
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        assert!(
            startupz_refuses().is_some(),
            "/startupz stopped naming the holder"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(green.metric("ghostwire_backup_lease_held"), 0.0);
    assert_eq!(blue.metric("ghostwire_backup_lease_held"), 1.0);

    // Blue's Signal stops, then its sidecar: the final snapshot releases the lease and
    // green's sidecar takes it over, cleanly handed over.
    blue.stop();
    wait_for("green's sidecar to take the lease", SIDECAR_WAIT, || {
        green.started().then_some(())
    });
    assert_eq!(green.metric("ghostwire_backup_lease_held"), 1.0);
    assert_eq!(green.metric("ghostwire_backup_handoff_missing"), 0.0);
    green.stop();
}

#[test]
fn green_restores_exactly_the_snapshot_blue_handed_over() {
    let fx = Fixture::new(&["--messages", "50"]);
    let restore = |volume: &std::path::Path, snapshot: &str| {
        let mut command = fx.restore(volume);
        command.args(["--snapshot", snapshot, "--require-snapshot"]);
        command
            .env("GWB_LEASE_OWNER", "ghostwire-green-0")
            .env("GWB_LEASE_CLOCK_SKEW", "0s");
        command
    };
    let blue = Sidecar::start(&fx, "ghostwire-0", fx.home(), &[]);
    wait_for("blue's sidecar to take the lease", SIDECAR_WAIT, || {
        blue.started().then_some(())
    });
    blue.stop();
    let handed_over = snapshots(&fx).pop().unwrap();
    assert_eq!(handed_over["final"], true);
    // A later snapshot (a CronJob, a manual backup) must not change what green restores.
    let later = fx.backup().ok();

    let volume = fx.root.join("green-volume");
    std::fs::create_dir(&volume).unwrap();
    assert_eq!(
        restore(&volume, "handoff").ok(),
        handed_over["id"].as_str().unwrap()
    );
    let marker: Value =
        serde_json::from_slice(&std::fs::read(volume.join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["snapshot"], handed_over["id"]);
    assert_eq!(marker["gate"], "ok");

    // An owner that dies without a final snapshot (SIGKILL, a node lost) leaves no
    // handoff: green must not silently start from an older state.
    let crashed = Sidecar::start(&fx, "ghostwire-1", fx.home(), &[("GWB_LEASE_TTL", "2s")]);
    wait_for("the sidecar to take the lease", SIDECAR_WAIT, || {
        crashed.started().then_some(())
    });
    drop(crashed); // SIGKILL
    let empty = fx.root.join("dr-volume");
    std::fs::create_dir(&empty).unwrap();
    // Until its TTL has passed, the dead owner's lease still counts as held: wait for the
    // restore itself to see it expired (never for a success, which would be the bug).
    let refused = wait_for("the dead owner's lease to expire", SIDECAR_WAIT, || {
        let ran = restore(&empty, "handoff").run();
        assert!(
            !ran.status.success(),
            "a lease without a handoff restored:\n{ran}"
        );
        ran.stderr.contains("lease expired").then_some(ran.stderr)
    });
    for words in [
        "no handoff snapshot",
        "ghostwire-1's lease expired",
        &format!("The newest snapshot is {later}"),
        "--snapshot latest",
    ] {
        assert!(refused.contains(words), "{refused}");
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // Choosing the newest snapshot explicitly is the documented way on.
    assert_eq!(restore(&empty, "latest").ok(), later);
}

#[test]
fn a_volume_with_data_is_never_started_while_another_owner_holds_the_lease() {
    let fx = Fixture::new(&["--messages", "20"]);
    let green = Sidecar::start(&fx, "ghostwire-green-0", fx.home(), &[]);
    wait_for("green's sidecar to take the lease", SIDECAR_WAIT, || {
        green.started().then_some(())
    });
    // Blue's pod is started again (Flux resumed before blue was removed) on its old
    // volume: its init container must fail, so neither its sidecar nor Signal start.
    let blue_volume = fx.root.join("blue-volume");
    copy_home(&fx, &blue_volume);
    let before = tree(&blue_volume, &|_| false);
    for if_empty in [true, false] {
        let mut restore = fx.restore(&blue_volume);
        restore.env("GWB_LEASE_OWNER", "ghostwire-0");
        if if_empty {
            restore.arg("--if-empty");
        }
        restore.fails_with_code(7, &["lease is held by ghostwire-green-0", "--break-lease"]);
    }
    assert_eq!(tree(&blue_volume, &|_| false), before);
    // Green itself restarting on its own volume is fine: the lease is its own.
    let mut own = fx.restore(fx.home());
    own.env("GWB_LEASE_OWNER", "ghostwire-green-0")
        .arg("--if-empty");
    own.ok();
    green.stop();
}

#[test]
fn an_empty_repository_never_starts_signal_on_an_empty_profile() {
    let fx = Fixture::new(&["--messages", "1"]);
    std::fs::create_dir(&fx.repo).unwrap();
    let volume = fx.root.join("volume");
    std::fs::create_dir(&volume).unwrap();
    let mut restore = fx.restore(&volume);
    restore.args(["--if-empty", "--require-snapshot"]);
    restore.fails_with(&["holds no snapshot", "--require-snapshot", "bucket, prefix"]);
    assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 0);
    // A first install says so explicitly: without --require-snapshot, nothing to restore.
    fx.restore(&volume).arg("--if-empty").ok();
    assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 0);
}

#[test]
fn a_prestaged_green_catches_up_with_blues_final_snapshot_at_the_switch() {
    let (fx, _) = Fixture::backed_up(&["--messages", "3000"]);
    let green_restore = |volume: &std::path::Path, flags: &[&str]| {
        let mut command = fx.restore(volume);
        command
            .args(flags)
            .env("GWB_LEASE_OWNER", "ghostwire-green-0");
        command
    };
    let blue = Sidecar::start(&fx, "ghostwire-0", fx.home(), &[]);
    wait_for("blue's sidecar to take the lease", SIDECAR_WAIT, || {
        blue.started().then_some(())
    });

    // While blue runs: green's volume is restored ahead (a Job), despite blue's lease; its
    // init container would still refuse to go on while blue holds it.
    let volume = fx.root.join("green-volume");
    let prestaged = green_restore(&volume, &["--prestage", "--snapshot", "latest"]).ok();
    let marker: Value =
        serde_json::from_slice(&std::fs::read(volume.join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["prestaged"], true, "{marker}");
    green_restore(&volume, &["--if-empty", "--snapshot", "handoff"])
        .fails_with(&["lease", "ghostwire-0"]);

    // Blue's Signal writes, then the switch: blue's final snapshot, green's init container.
    let ids = fx.root.join("ids.txt");
    let writer = Writer::start(&fx.profile.db(), &fx.profile.key, &ids);
    writer.wait_for(30);
    writer.stop();
    let switch = Instant::now();
    blue.stop();
    let final_taken = switch.elapsed();
    let handed_over = snapshots(&fx)
        .into_iter()
        .find(|s| s["final"] == true)
        .unwrap();
    assert!(
        handed_over["signal_db"]["delta_pages"].as_u64() > Some(0),
        "{handed_over}"
    );
    let caught_up = Instant::now();
    let out = green_restore(&volume, &["--if-empty", "--snapshot", "handoff"]).ok();
    let catch_up = caught_up.elapsed();
    eprintln!(
        "switch: blue's final snapshot {final_taken:?}, green's catch-up and gate {catch_up:?} \
         (pre-staged snapshot {prestaged})"
    );
    assert_eq!(out, handed_over["id"].as_str().unwrap());
    let marker: Value =
        serde_json::from_slice(&std::fs::read(volume.join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["snapshot"], handed_over["id"]);
    assert!(marker.get("prestaged").is_none(), "{marker}");
    let db = check_db(
        &volume.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        Some(&ids),
    );
    assert_eq!(db["integrity"], "ok", "{db}");
    assert_eq!(db["missingCount"], 0, "green lost what blue wrote: {db}");
    let fresh = fx.root.join("fresh");
    fx.restore(&fresh)
        .args(["--snapshot", handed_over["id"].as_str().unwrap()])
        .ok();
    assert_same_tree(
        &tree(&volume, &not_backed_up),
        &tree(&fresh, &not_backed_up),
    );

    // Green's pod restarts later, after its Signal ran: the volume is left alone.
    let writer = Writer::start(
        &volume.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        &fx.root.join("green-ids.txt"),
    );
    writer.wait_for(5);
    writer.stop();
    let before = tree(&volume, &not_backed_up);
    green_restore(&volume, &["--if-empty", "--snapshot", "handoff"]).ok();
    assert_same_tree(&tree(&volume, &not_backed_up), &before);
}

#[test]
fn blues_old_volume_after_green_handed_off_is_brought_to_greens_final_snapshot() {
    let fx = Fixture::new(&["--messages", "50"]);
    let marker_of = |volume: &std::path::Path| -> Value {
        serde_json::from_slice(&std::fs::read(volume.join(MARKER)).unwrap()).unwrap()
    };
    let init = |volume: &std::path::Path, owner: &str| {
        let mut command = fx.restore(volume);
        command
            .args(["--if-empty", "--snapshot", "handoff"])
            .env("GWB_LEASE_OWNER", owner);
        command
    };
    // Blue runs and hands off: the desktop quits (the kubelet stops it before the sidecar),
    // the final snapshot follows, and the volume records that it equals it.
    let blue = Sidecar::start(&fx, "ghostwire-0", fx.home(), &[]);
    blue.wait_started("blue");
    desktop_quits(fx.home(), &fx.profile.key);
    blue.stop();
    let blue_final = snapshots(&fx).pop().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(marker_of(fx.home())["snapshot"], blue_final.as_str());
    // A copy of blue's volume on which, say, a person ran Signal without the agent: data
    // no snapshot records.
    let tampered = fx.root.join("blue-tampered");
    copy_home(&fx, &tampered);
    std::fs::remove_file(tampered.join(MARKER)).unwrap();

    // Green: restored from the handoff, its sidecar marks the volume before Signal starts,
    // Signal writes, green hands off in turn.
    let green_volume = fx.root.join("green-volume");
    assert_eq!(init(&green_volume, "ghostwire-green-0").ok(), blue_final);
    let green = Sidecar::start(&fx, "ghostwire-green-0", &green_volume, &[]);
    green.wait_started("green");
    let started = marker_of(&green_volume);
    assert_eq!(
        started["signal_started"]["owner"], "ghostwire-green-0",
        "{started}"
    );
    let ids = fx.root.join("green-ids.txt");
    commit_messages(&green_volume, &fx.profile.key, &ids, 20);
    green.stop();
    let green_final = snapshots(&fx).pop().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(green_final, blue_final);
    assert_eq!(marker_of(&green_volume)["snapshot"], green_final.as_str());

    // Blue's pod starts again on its old volume ("going back to blue"): its init container
    // brings the volume to green's final snapshot; Signal never sees blue's old state.
    let tampered_before = tree(&tampered, &|_| false);
    assert_eq!(init(fx.home(), "ghostwire-0").ok(), green_final);
    assert_eq!(marker_of(fx.home())["snapshot"], green_final.as_str());
    let db = check_db(&fx.profile.db(), &fx.profile.key, Some(&ids));
    assert_eq!(db["integrity"], "ok", "{db}");
    assert_eq!(
        db["missingCount"], 0,
        "blue's volume lacks what green wrote: {db}"
    );
    // Started again, it is left as it is: it equals the handoff now.
    assert_eq!(init(fx.home(), "ghostwire-0").ok(), green_final);

    // A volume that diverged is refused, untouched, unless forced.
    init(&tampered, "ghostwire-0").fails_with_code(
        7,
        &[
            "cannot be brought to snapshot",
            "no snapshot records",
            "--force",
        ],
    );
    assert_eq!(tree(&tampered, &|_| false), tampered_before);
    let mut forced = init(&tampered, "ghostwire-0");
    forced.arg("--force");
    assert_eq!(forced.ok(), green_final);
    let db = check_db(
        &tampered.join(".config/Signal/sql/db.sqlite"),
        &fx.profile.key,
        Some(&ids),
    );
    assert_eq!(db["missingCount"], 0, "{db}");
}
