//! Shared harness: a fresh store per case, in-process or behind a real unix socket.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use strata_content::service::{ContentService, LeasesService, StoreCell};
use strata_content::{GrpcStore, LocalStore, SharingPolicy, StoreOptions};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// A store under test plus what keeps it alive.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub local: LocalStore,
    /// The gRPC adapter, when the case runs over a socket.
    pub grpc: Option<GrpcStore>,
    rt: Option<Arc<tokio::runtime::Runtime>>,
}

pub fn options(policy: SharingPolicy) -> StoreOptions {
    StoreOptions {
        sharing: policy,
        ..StoreOptions::default()
    }
}

/// A fresh local store.
pub fn local(policy: SharingPolicy) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(dir.path(), options(policy)).unwrap();
    Harness {
        dir,
        local,
        grpc: None,
        rt: None,
    }
}

/// Serves `store` on a unix socket at `sock` and returns a client over it.
pub fn serve(store: LocalStore, sock: &Path) -> (Arc<tokio::runtime::Runtime>, GrpcStore) {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let listener = rt.block_on(async { UnixListener::bind(sock).unwrap() });
    let cell = StoreCell::ready(store);
    rt.spawn(
        strata_proto::transport::server()
            .add_service(ContentService::new(cell.clone()).into_server())
            .add_service(LeasesService::new(cell).into_server())
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let channel = rt
        .block_on(strata_proto::transport::connect_unix(sock))
        .unwrap();
    let client = GrpcStore::new(channel, rt.handle().clone());
    (rt, client)
}

/// A fresh local store served over a real unix socket.
pub fn grpc(policy: SharingPolicy) -> Harness {
    let h = local(policy);
    let sock = h.dir.path().join("strata.sock");
    let (rt, client) = serve(h.local.clone(), &sock);
    Harness {
        grpc: Some(client),
        rt: Some(rt),
        ..h
    }
}

impl Harness {
    /// The store the case talks to.
    pub fn store(&self) -> &dyn strata_content::ContentStore {
        match &self.grpc {
            Some(g) => g,
            None => &self.local,
        }
    }

    pub fn leases(&self) -> &dyn strata_content::LeaseManager {
        match &self.grpc {
            Some(g) => g,
            None => &self.local,
        }
    }
}
