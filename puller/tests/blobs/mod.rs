//! A layer blob in memory behind the [`BlobSource`] contract, with hooks to make it lie
//! and a record of the ranges read: what the lazy tests read eStargz through.

#![allow(dead_code, unreachable_pub)]

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use strata_proto::{Digest, Error};
use strata_snapshotter::{BlobSource, RemoteBlob, Result};
use strata_testkit::sha256;

type Tamper = Box<dyn Fn(Range<u64>, Vec<u8>) -> Vec<u8> + Send>;

/// A blob in memory, served by range; `tamper` rewrites what it answers.
pub struct MemSource {
    pub blob: Vec<u8>,
    pub tamper: Mutex<Option<Tamper>>,
    pub reads: Mutex<Vec<Range<u64>>>,
    /// While set, every read fails as an unreachable registry would.
    pub down: AtomicBool,
}

impl MemSource {
    pub fn new(blob: Vec<u8>) -> Self {
        MemSource {
            blob,
            tamper: Mutex::new(None),
            reads: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
        }
    }

    pub fn remote(&self) -> RemoteBlob {
        RemoteBlob {
            reference: "127.0.0.1:1/test:latest".into(),
            digest: Digest::parse(&sha256(&self.blob)).unwrap(),
            size: self.blob.len() as u64,
        }
    }
}

impl BlobSource for MemSource {
    fn read_range(&self, _blob: &RemoteBlob, range: Range<u64>) -> Result<Vec<u8>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(
                strata_proto::ErrorKind::Unavailable,
                "registry is down",
            ));
        }
        self.reads.lock().unwrap().push(range.clone());
        let b = self.blob[range.start as usize..range.end as usize].to_vec();
        Ok(match &*self.tamper.lock().unwrap() {
            Some(f) => f(range, b),
            None => b,
        })
    }

    fn blob_size(&self, _reference: &str, digest: &Digest) -> Result<u64> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(
                strata_proto::ErrorKind::Unavailable,
                "registry is down",
            ));
        }
        if digest.to_string() != sha256(&self.blob) {
            return Err(Error::not_found(format!("blob {digest}")));
        }
        Ok(self.blob.len() as u64)
    }
}
