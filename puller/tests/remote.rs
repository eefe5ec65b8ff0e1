//! `RegistryBlobs`, the snapshotter's `BlobSource` over the registry client: exact ranges
//! from a server that ignores Range, the bounds, and the registry's errors, called from a
//! thread outside the runtime as a FUSE server's would be.

#[path = "../../registry/tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use strata_proto::{Digest, ErrorKind};
use strata_puller::RegistryBlobs;
use strata_puller::registry::{ClientOptions, RegistryClient};
use strata_snapshotter::{BlobSource, RemoteBlob};
use support::{MemImage, Reply, TestServer, sha256};

#[test]
fn ranges_are_exact_and_errors_keep_their_kind() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let img = MemImage::new(9, "amd64");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let served = img.layer.clone();
    let digest = sha256(&img.layer);
    let path = format!("/blobs/{digest}");
    let server = rt.block_on(TestServer::start(move |r| {
        h.fetch_add(1, Ordering::SeqCst);
        if r.path().ends_with(&path) {
            // Ignores Range: the whole blob every time.
            Reply::ok(served.clone())
        } else {
            Reply::new(404)
        }
    }));
    let blobs = RegistryBlobs::new(
        RegistryClient::new(ClientOptions::default()),
        rt.handle().clone(),
    );
    let blob = RemoteBlob {
        reference: format!("{}/lazy/app:1", server.hostport()),
        digest: Digest::parse(&digest).unwrap(),
        size: img.layer.len() as u64,
    };
    for range in [0..1u64, 10..4096, 99_000..100_000, 0..100_000] {
        let got = blobs.read_range(&blob, range.clone()).unwrap();
        assert_eq!(
            got,
            img.layer[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    // An empty range needs no request; one past the end is refused before any.
    let before = hits.load(Ordering::SeqCst);
    assert!(blobs.read_range(&blob, 5..5).unwrap().is_empty());
    let e = blobs.read_range(&blob, 99_999..100_001).unwrap_err();
    assert!(e.is(ErrorKind::OutOfRange), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), before);

    // A blob the registry does not have is NotFound, naming the range and digest.
    let missing = RemoteBlob {
        digest: Digest::parse(&sha256(b"nothing")).unwrap(),
        ..blob.clone()
    };
    let e = blobs.read_range(&missing, 0..10).unwrap_err();
    assert!(e.is(ErrorKind::NotFound), "{e:?}");
    assert!(e.to_string().contains(&missing.digest.to_string()), "{e}");

    // A malformed reference is InvalidArgument, and nothing is asked of any server.
    let before = hits.load(Ordering::SeqCst);
    let bad = RemoteBlob {
        reference: "UPPER/../case".into(),
        ..blob
    };
    let e = blobs.read_range(&bad, 0..10).unwrap_err();
    assert!(e.is(ErrorKind::InvalidArgument), "{e:?}");
    assert_eq!(hits.load(Ordering::SeqCst), before);
}
