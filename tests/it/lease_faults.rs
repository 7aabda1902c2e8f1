//! The lease's compare-and-swap writes through a bad network (the fault proxy in front of a
//! real S3 server). A conditional write whose answer is lost is retried by the SDK, and the
//! retry finds the object changed, by the very write it repeats: that must not read as
//! "another instance took the lease". A lease read whose body is cut must be resumed.

use std::time::Duration;

use ghostwire_backup::lease::Held;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::{S3Server, open_in_process};

#[tokio::test(flavor = "multi_thread")]
async fn lease_writes_survive_lost_answers_and_cut_reads() {
    let server = S3Server::with_bucket("fence");
    let proxy = FaultProxy::start(&server, 5);
    let repo = open_in_process("s3://fence/ghostwire", &proxy.endpoint, 6).await;

    // Acquire: the lease does not exist yet (If-None-Match: *), and the answer is lost.
    proxy.force("PUT", "/lease.json", Fault::LostResponse);
    let mut held = Held::acquire(&repo, "ghostwire-0", Duration::from_secs(600))
        .await
        .expect("a lost answer to our own lease write is not a conflict");
    // Renew: If-Match on the version we hold; the answer is lost again. Then the read
    // before a second acquire is cut mid-body.
    proxy.force("PUT", "/lease.json", Fault::LostResponse);
    held.renew(&repo)
        .await
        .expect("a lost answer to our own renewal is not a conflict");
    proxy.force("GET", "/lease.json", Fault::CutBody);
    Held::acquire(&repo, "ghostwire-0", Duration::from_secs(600))
        .await
        .expect("a cut read of the lease is resumed");
    assert_eq!(proxy.pending_forced(), 0, "a forced fault never happened");
    assert_eq!(proxy.stats().count(Fault::LostResponse), 2);
}
