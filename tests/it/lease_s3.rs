//! The lease against a real S3 server: conditional writes keep two instances apart.

use std::time::Duration;

use bytes::Bytes;
use ghostwire_backup::lease::{Held, check_restore};
use ghostwire_backup::store::{Retention, StoreError};

use crate::common::{S3Server, open_in_process};

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
    let refused = check_restore(&repo, "ghostwire-green-0", false)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("held by ghostwire-0"));
    // Someone overwrites the lease behind blue's back: blue's next renewal notices.
    let (bytes, _) = store
        .get_versioned("lease.json", 1 << 20)
        .await
        .unwrap()
        .unwrap();
    let mut lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    lease["owner"] = "intruder".into();
    store
        .put(
            "lease.json",
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
