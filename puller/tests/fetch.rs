//! Fetching into a real content store from sources that misbehave the way registries
//! and networks do: cut connections, ignored ranges, wrong or long bodies, and two pulls
//! of one blob at once.

use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use strata_content::testsuite::{content, digest_of};
use strata_content::{Labels, LocalStore, Provider, Scope, StoreOptions};
use strata_puller::fetch::CHUNKED_MIN;
use strata_puller::{Blob, FetchSource, Fetched, Result, fetch_blob};
use strata_testkit::{NOISE_SEED, noise};

/// Serves `data`, honouring ranges or not, cutting each connection after `cut` bytes.
struct Source {
    data: Vec<u8>,
    honour_range: bool,
    cut: Option<usize>,
    opens: AtomicUsize,
    offsets: Mutex<Vec<u64>>,
    ranges: Mutex<Vec<(u64, u64)>>,
}

impl Source {
    fn new(data: Vec<u8>) -> Self {
        Source {
            data,
            honour_range: true,
            cut: None,
            opens: AtomicUsize::new(0),
            offsets: Mutex::new(Vec::new()),
            ranges: Mutex::new(Vec::new()),
        }
    }
}

impl FetchSource for Source {
    fn open(&self, _: &Blob, offset: u64) -> Result<(Box<dyn Read + Send>, u64)> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.offsets.lock().unwrap().push(offset);
        let start = if self.honour_range {
            offset as usize
        } else {
            0
        };
        let mut body = self.data[start..].to_vec();
        if let Some(c) = self.cut {
            body.truncate(c);
        }
        Ok((Box::new(std::io::Cursor::new(body)), start as u64))
    }

    fn open_range(
        &self,
        _: &Blob,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        if !self.honour_range {
            return Ok(None);
        }
        self.ranges.lock().unwrap().push((range.start, range.end));
        let mut body = self.data[range.start as usize..range.end as usize].to_vec();
        if let Some(c) = self.cut {
            body.truncate(c);
        }
        Ok(Some(Box::new(std::io::Cursor::new(body))))
    }
}

#[test]
fn large_blobs_come_in_parallel_ranges_written_in_order() {
    let (_d, store, scope) = setup();
    let data = noise(CHUNKED_MIN as usize + (9 << 20) + 4321, NOISE_SEED);
    let b = blob(&data);
    let mut src = Source::new(data.clone());
    // Every connection breaks after 3 MiB: each chunk resumes where it broke.
    src.cut = Some(3 << 20);
    let seen = Mutex::new(Vec::new());
    let got = fetch_blob(
        &store,
        &scope,
        &b,
        &src,
        &Labels::new(),
        &|n| seen.lock().unwrap().push(n),
        None,
    )
    .unwrap();
    assert_eq!(got, Fetched::Downloaded);
    assert!(strata_content::api::read_all(&store, &scope, &b.digest).unwrap() == data);
    let ranges = src.ranges.lock().unwrap().clone();
    assert!(ranges.len() > 5, "{ranges:?}");
    // Every byte was asked for; nothing twice.
    let mut covered: Vec<(u64, u64)> = ranges.clone();
    covered.sort();
    let mut at = 0;
    for (s, e) in covered {
        assert_eq!(s, at, "gap or overlap at {at}: {ranges:?}");
        at = (s + (3 << 20)).min(e);
    }
    assert_eq!(at, data.len() as u64);
    // No single stream was opened: the source serves ranges.
    assert_eq!(src.opens.load(Ordering::SeqCst), 0);
    // Progress only moves forward, to the end.
    let seen = seen.into_inner().unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(seen.last(), Some(&(data.len() as u64)));
}

#[test]
fn large_blobs_from_a_source_without_ranges_come_in_one_stream() {
    let (_d, store, scope) = setup();
    let data = noise(CHUNKED_MIN as usize + 1, NOISE_SEED);
    let b = blob(&data);
    let mut src = Source::new(data.clone());
    src.honour_range = false;
    let got = fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap();
    assert_eq!(got, Fetched::Downloaded);
    assert!(strata_content::api::read_all(&store, &scope, &b.digest).unwrap() == data);
    assert!(src.ranges.lock().unwrap().is_empty());
    assert_eq!(*src.offsets.lock().unwrap(), vec![0]);
}

fn setup() -> (tempfile::TempDir, LocalStore, Scope) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, store, Scope::ns("fetch"))
}

fn blob(data: &[u8]) -> Blob {
    Blob {
        media_type: "application/octet-stream".into(),
        digest: digest_of(data),
        size: data.len() as u64,
    }
}

#[test]
fn cut_connections_resume_at_the_stored_offset() {
    let (_d, store, scope) = setup();
    let data = content(5 << 20, 1);
    let mut src = Source::new(data.clone());
    src.cut = Some(2 << 20);
    let b = blob(&data);
    let got = fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap();
    assert_eq!(got, Fetched::Downloaded);
    let offsets = src.offsets.lock().unwrap().clone();
    assert_eq!(offsets, vec![0, 2 << 20, 4 << 20]);
    let mut back = vec![0; data.len()];
    assert_eq!(
        store.read_at(&scope, &b.digest, 0, &mut back).unwrap(),
        data.len()
    );
    assert_eq!(back, data);
    // Fetching again finds it.
    assert_eq!(
        fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap(),
        Fetched::Exists
    );
}

#[test]
fn a_server_ignoring_ranges_is_skipped_ahead() {
    let (_d, store, scope) = setup();
    let data = content(3 << 20, 2);
    let mut src = Source::new(data.clone());
    src.honour_range = false;
    src.cut = Some((1 << 20) + 5);
    let b = blob(&data);
    // Each connection restarts at 0 and is cut a little later than the last offset, so
    // progress needs the skip; MAX_RESUMES bounds the attempts.
    let err = fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None);
    assert!(err.is_err(), "a source that never gets further must fail");
    src.cut = None;
    assert_eq!(
        fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap(),
        Fetched::Downloaded
    );
    assert_eq!(
        store.info(&scope, &b.digest).unwrap().size,
        data.len() as u64
    );
}

#[test]
fn wrong_short_and_long_bodies_never_become_blobs() {
    let (_d, store, scope) = setup();
    let data = content(100_000, 3);
    let b = blob(&data);
    // Same length, different bytes.
    let src = Source::new(content(100_000, 4));
    let e = fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap_err();
    assert_eq!(e.kind(), strata_proto::ErrorKind::InvalidArgument, "{e:?}");
    assert!(store.info(&scope, &b.digest).is_err());
    // Short: the body ends early every time.
    let src = Source::new(data[..50_000].to_vec());
    let e = fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap_err();
    assert_eq!(e.kind(), strata_proto::ErrorKind::Unavailable, "{e:?}");
    assert!(store.info(&scope, &b.digest).is_err());
    // Long: only `size` bytes are read, and they verify.
    let mut long = data.clone();
    long.extend_from_slice(b"trailing garbage");
    let src = Source::new(long);
    assert_eq!(
        fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap(),
        Fetched::Downloaded
    );
}

#[test]
fn two_pulls_of_one_blob_download_it_once() {
    let (_d, store, scope) = setup();
    let data = content(8 << 20, 5);
    let b = blob(&data);
    let src = Source::new(data);
    let results: Vec<Fetched> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    fetch_blob(&store, &scope, &b, &src, &Labels::new(), &|_| {}, None).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.contains(&Fetched::Downloaded));
    assert_eq!(
        src.opens.load(Ordering::SeqCst),
        1,
        "downloaded twice: {results:?}"
    );
}
