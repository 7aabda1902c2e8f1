//! The lease against a real S3 server: conditional writes keep two instances apart.

use std::time::Duration;

use bytes::Bytes;
use ghostwire_backup::lease::{Held, NoConditionalWrites, check_conditional_writes, check_restore};
use ghostwire_backup::store::{Retention, StoreError};

use crate::common::faults::FaultProxy;
use crate::common::{Object, S3Server, open_in_process};

#[tokio::test(flavor = "multi_thread")]
async fn s3_conditional_writes_fence_a_second_writer() {
    let server = S3Server::with_bucket("fence");
    let repo = open_in_process("s3://fence/ghostwire", &server.endpoint, 2).await;
    let store = repo.store();

    // Compare-and-swap on the store itself.
    let v1 = store
        .put_if("probe", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let again = store
        .put_if("probe", Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::Conflict(_)), "{again:#}");
    store
        .put_if("probe", Bytes::from_static(b"2"), Some(&v1))
        .await
        .unwrap();
    let stale = store
        .put_if("probe", Bytes::from_static(b"3"), Some(&v1))
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::Conflict(_)), "{stale:#}");

    // The lease on top of it.
    let mut blue = Held::acquire(&repo, "ghostwire-0", Duration::from_secs(600))
        .await
        .unwrap();
    let refused = check_restore(&repo, "ghostwire-green-0", false, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("held by ghostwire-0"));
    // Someone overwrites the lease behind blue's back: blue's next renewal notices.
    let (bytes, _) = store
        .get_versioned(&Object::Lease.key(), 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let mut lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    lease["owner"] = "intruder".into();
    store
        .put(
            &Object::Lease.key(),
            Bytes::from(lease.to_string()),
            Retention::Replaceable,
        )
        .await
        .unwrap();
    assert!(
        blue.renew(&repo).await.is_err(),
        "a renewal over a changed lease must fail"
    );
}

/// A server that ignores conditional writes (here: moto behind a proxy that drops the
/// If-Match and If-None-Match headers, as a store without the feature would) would make
/// the lease last-writer-wins: the start-up probe finds out, and `run` refuses to go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_ignores_conditional_writes_is_refused_before_the_lease() {
    let server = S3Server::with_bucket("nocas");
    let proxy = FaultProxy::start(&server, 31);
    let direct = open_in_process("s3://nocas/ghostwire", &server.endpoint, 2).await;
    check_conditional_writes(&direct).await.unwrap();
    proxy.drop_request_headers(&["if-match", "if-none-match"]);
    let ignoring = open_in_process("s3://nocas/ghostwire", &proxy.endpoint, 2).await;
    let err = check_conditional_writes(&ignoring).await.unwrap_err();
    assert!(err.is::<NoConditionalWrites>(), "{err:#}");
    assert!(err.to_string().contains("ignores If-None-Match"), "{err:#}");
    // The probe leaves nothing behind (its object is deleted; it is never a lock).
    let keys = direct
        .store()
        .list(Object::prefix_of(Object::Lock))
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}
