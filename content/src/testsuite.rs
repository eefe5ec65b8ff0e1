//! containerd's content store conformance cases (`core/content/testsuite`), one function
//! per case, for any [`ContentStore`]: the local store in-process and the daemon through
//! [`crate::GrpcStore`] run the same code.
//!
//! Each function panics with a message on the first violated expectation, so it reads as
//! a test body; call it from a `#[test]`. Stores must be fresh (empty) for each case.

use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use strata_proto::{Algorithm, Digest};

use crate::ErrorKind;
use crate::api::{ContentStore, Labels, Scope, WriterOptions, read_all};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn content(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// SHA-256 digest of `b`.
pub fn digest_of(b: &[u8]) -> Digest {
    Digest::from_bytes(Algorithm::Sha256, &Sha256::digest(b)).expect("sha256 length")
}

fn opts(r: &str, total: u64, expected: Option<&Digest>) -> WriterOptions {
    WriterOptions {
        r#ref: r.to_owned(),
        total,
        expected: expected.cloned(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn assert_kind<T>(r: crate::Result<T>, kind: ErrorKind, what: &str) {
    match r {
        Err(e) if e.kind() == kind => {}
        Err(e) => panic!("{what}: expected {kind:?}, got {e:?}"),
        Ok(_) => panic!("{what}: expected {kind:?}, got success"),
    }
}

/// Asserts `t` is within `[start, end]`, allowing for clock granularity.
fn within(t: SystemTime, start: SystemTime, end: SystemTime, what: &str) {
    let slack = Duration::from_millis(5);
    assert!(
        t + slack >= start && t <= end + slack,
        "{what} {t:?} outside [{start:?}, {end:?}]"
    );
}

/// Commits `data` under `r` with `labels` and returns its digest.
pub fn write_blob(
    s: &dyn ContentStore,
    scope: &Scope,
    r: &str,
    data: &[u8],
    l: Labels,
) -> crate::Result<Digest> {
    let d = digest_of(data);
    let mut w = s.writer(scope, opts(r, data.len() as u64, Some(&d)))?;
    let off = w.status()?.offset as usize;
    w.write(&data[off..])?;
    let got = w.commit(data.len() as u64, Some(&d), l)?;
    w.close()?;
    Ok(got)
}

/// `Writer`: five writers (ref only; +size; +digest; +both; a 32 MiB blob) copied through
/// a 32-byte buffer, committed with labels, Info inside the commit window.
pub fn writer(s: &dyn ContentStore, scope: &Scope) {
    let cases: [(usize, bool, bool); 5] = [
        (256, false, false),
        (1024, true, false),
        (4096, false, true),
        (65_536, true, true),
        (16 << 21, true, true),
    ];
    for (i, (size, with_size, with_digest)) in cases.into_iter().enumerate() {
        let data = content(size, i as u64 + 1);
        let d = digest_of(&data);
        let r = format!("writer-{i}");
        let mut w = s
            .writer(
                scope,
                opts(
                    &r,
                    if with_size { size as u64 } else { 0 },
                    with_digest.then_some(&d),
                ),
            )
            .unwrap_or_else(|e| panic!("open writer {r}: {e:?}"));
        let chunk = if size > (1 << 20) { 1 << 20 } else { 32 };
        for c in data.chunks(chunk) {
            w.write(c).unwrap();
        }
        assert_eq!(w.digest(), d, "writer digest before commit");
        let start = SystemTime::now();
        let l = labels(&[
            ("name", "value"),
            ("containerd.io/gc.root", "2024-01-01T00:00:00Z"),
        ]);
        let got = w.commit(size as u64, Some(&d), l.clone()).unwrap();
        let end = SystemTime::now();
        w.close().unwrap();
        assert_eq!(got, d);
        let info = s.info(scope, &d).unwrap();
        assert_eq!(info.size, size as u64);
        assert_eq!(info.labels, l);
        within(info.created_at, start, end, "created_at");
        within(info.updated_at, start, end, "updated_at");
        if size <= 65_536 {
            assert_eq!(read_all(s, scope, &d).unwrap(), data);
        }
    }
}

/// `UpdateStatus`: Status after partial writes tracks offset, total and expected, and
/// the writer's digest is the hash of the prefix.
pub fn update_status(s: &dyn ContentStore, scope: &Scope) {
    let data = content(256, 7);
    let d = digest_of(&data);
    let mut w = s
        .writer(scope, opts("update-status", 256, Some(&d)))
        .unwrap();
    let mut written = 0;
    for upto in [64usize, 192, 256] {
        w.write(&data[written..upto]).unwrap();
        written = upto;
        let st = w.status().unwrap();
        assert_eq!(st.offset, upto as u64);
        assert_eq!(st.total, 256);
        assert_eq!(st.expected.as_ref(), Some(&d));
        assert_eq!(w.digest(), digest_of(&data[..upto]));
        let listed = s.status(scope, "update-status").unwrap();
        assert_eq!(listed.offset, upto as u64, "IngestManager::status offset");
    }
    w.commit(256, Some(&d), Labels::new()).unwrap();
    w.close().unwrap();
    assert_kind(
        s.status(scope, "update-status"),
        ErrorKind::NotFound,
        "status after commit",
    );
}

/// `CommitExists`: committing content that exists is `AlreadyExists`, with and without
/// an expected digest.
pub fn commit_exists(s: &dyn ContentStore, scope: &Scope) {
    let data = content(1024, 3);
    let d = write_blob(
        s,
        scope,
        "exists-1",
        &data,
        labels(&[("containerd.io/gc.root", "x")]),
    )
    .unwrap();
    // With the digest: refused when opening.
    assert_kind(
        s.writer(scope, opts("exists-2", 0, Some(&d))),
        ErrorKind::AlreadyExists,
        "open with existing digest",
    );
    // Without it: refused at commit.
    let mut w = s.writer(scope, opts("exists-3", 0, None)).unwrap();
    w.write(&data).unwrap();
    assert_kind(
        w.commit(data.len() as u64, None, Labels::new()),
        ErrorKind::AlreadyExists,
        "commit existing content",
    );
    drop(w);
}

/// `Resume`: close after half, reopen: offset and started_at preserved, digest of the
/// prefix; finish and commit.
pub fn resume(s: &dyn ContentStore, scope: &Scope) {
    let data = content(256, 11);
    let d = digest_of(&data);
    let mut w = s.writer(scope, opts("resume", 256, Some(&d))).unwrap();
    w.write(&data[..128]).unwrap();
    let st1 = w.status().unwrap();
    w.close().unwrap();
    let mut w = s.writer(scope, opts("resume", 256, Some(&d))).unwrap();
    let st2 = w.status().unwrap();
    assert_eq!(st2.offset, 128);
    assert_eq!(st2.total, 256);
    assert_eq!(st2.expected.as_ref(), Some(&d));
    assert_eq!(w.digest(), digest_of(&data[..128]));
    let diff = st1
        .started_at
        .duration_since(st2.started_at)
        .unwrap_or_else(|e| e.duration());
    assert!(
        diff < Duration::from_micros(1),
        "started_at changed by {diff:?}"
    );
    w.write(&data[128..]).unwrap();
    assert_eq!(w.commit(256, Some(&d), Labels::new()).unwrap(), d);
    w.close().unwrap();
    assert_eq!(read_all(s, scope, &d).unwrap(), data);
}

/// How a resumed writer is fed in the resume grid.
#[derive(Clone, Copy, Debug)]
pub enum ResumeMode {
    /// `ResumeTruncate`: `truncate(0)` and rewrite everything.
    Truncate,
    /// `ResumeDiscard`: append only the missing tail.
    Discard,
    /// `ResumeCopy`: a plain reader, discarding up to the offset.
    Copy,
    /// `ResumeCopySeeker`: a seekable reader, seeking to the offset.
    CopySeeker,
    /// `ResumeCopyReaderAt`: reads at offsets.
    CopyReaderAt,
}

/// The resume grid: sizes {500, 5000, 50000} x written fractions {0, .1, .5, .9, 1}.
pub fn resume_grid(s: &dyn ContentStore, scope: &Scope, mode: ResumeMode) {
    use std::io::{Cursor, Read, Seek, SeekFrom};
    for (si, size) in [500usize, 5000, 50000].into_iter().enumerate() {
        for (fi, frac) in [0.0f64, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            let data = content(size, (si * 10 + fi) as u64 + 100);
            let d = digest_of(&data);
            let r = format!("resume-{mode:?}-{size}-{fi}");
            let written = (size as f64 * frac) as usize;
            let mut w = s.writer(scope, opts(&r, size as u64, Some(&d))).unwrap();
            w.write(&data[..written]).unwrap();
            w.close().unwrap();
            let mut w = s.writer(scope, opts(&r, size as u64, Some(&d))).unwrap();
            let off = w.status().unwrap().offset as usize;
            assert_eq!(off, written, "{r}: resumed offset");
            match mode {
                ResumeMode::Truncate => {
                    w.truncate(0).unwrap();
                    assert_eq!(w.status().unwrap().offset, 0, "{r}: offset after truncate");
                    w.write(&data).unwrap();
                }
                ResumeMode::Discard => w.write(&data[off..]).unwrap(),
                ResumeMode::Copy => {
                    let mut rd = Cursor::new(&data);
                    std::io::copy(&mut (&mut rd).take(off as u64), &mut std::io::sink()).unwrap();
                    let mut rest = Vec::new();
                    rd.read_to_end(&mut rest).unwrap();
                    w.write(&rest).unwrap();
                }
                ResumeMode::CopySeeker => {
                    let mut rd = Cursor::new(&data);
                    rd.seek(SeekFrom::Start(off as u64)).unwrap();
                    let mut rest = Vec::new();
                    rd.read_to_end(&mut rest).unwrap();
                    w.write(&rest).unwrap();
                }
                ResumeMode::CopyReaderAt => {
                    let mut pos = off;
                    while pos < size {
                        let end = (pos + 1000).min(size);
                        w.write(&data[pos..end]).unwrap();
                        pos = end;
                    }
                }
            }
            assert_eq!(
                w.commit(size as u64, Some(&d), Labels::new()).unwrap(),
                d,
                "{r}"
            );
            w.close().unwrap();
            assert_eq!(read_all(s, scope, &d).unwrap(), data, "{r}: content");
        }
    }
}

/// `SmallBlob`: reading past a small blob's end returns exactly the blob.
pub fn small_blob(s: &dyn ContentStore, scope: &Scope) {
    let data = b"foobar";
    let d = write_blob(s, scope, "small", data, Labels::new()).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read_at(scope, &d, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], data);
    let n = s.read_at(scope, &d, 3, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"bar");
    assert_eq!(s.read_at(scope, &d, 6, &mut buf).unwrap(), 0);
    assert_kind(
        s.read_at(scope, &d, 7, &mut buf),
        ErrorKind::OutOfRange,
        "read past end",
    );
}

/// `Labels`: commit with labels, replace them all, then update single keys; updated_at
/// moves and created_at doesn't.
pub fn labels_case(s: &dyn ContentStore, scope: &Scope) {
    let data = content(100, 21);
    let l = labels(&[("containerd.io/gc.root", "2024"), ("k1", "v1")]);
    let d = write_blob(s, scope, "labels", &data, l.clone()).unwrap();
    let info = s.info(scope, &d).unwrap();
    assert_eq!(info.labels, l);
    let created = info.created_at;

    let all = labels(&[("k2", "v2"), ("k3", "v3")]);
    std::thread::sleep(Duration::from_millis(2));
    let u = s.update(scope, &d, all.clone(), &[]).unwrap();
    assert_eq!(u.labels, all);
    assert!(u.updated_at > info.updated_at, "updated_at advances");
    assert_eq!(u.created_at, created);

    let patch = labels(&[("k1", "v1b"), ("k3", "")]);
    let u2 = s
        .update(scope, &d, patch, &["labels.k3".into(), "labels.k1".into()])
        .unwrap();
    assert_eq!(u2.labels, labels(&[("k1", "v1b"), ("k2", "v2")]));
    assert_eq!(s.info(scope, &d).unwrap().labels, u2.labels);
    assert_eq!(u2.created_at, created);

    let u3 = s
        .update(scope, &d, labels(&[("only", "this")]), &["labels".into()])
        .unwrap();
    assert_eq!(u3.labels, labels(&[("only", "this")]));
    for bad in ["size", "digest", "created_at", "bogus"] {
        assert_kind(
            s.update(scope, &d, Labels::new(), &[bad.into()]),
            ErrorKind::InvalidArgument,
            bad,
        );
    }
    assert_eq!(
        s.info(scope, &d).unwrap().labels,
        u3.labels,
        "failed updates changed nothing"
    );
}

/// `CommitErrorState`: the writer state machine around a locked ref and failed commits.
pub fn commit_error_state(s: &dyn ContentStore, scope: &Scope) {
    let data = content(4096, 31);
    let d = digest_of(&data);
    let r = "commit-error";
    let mut w = s.writer(scope, opts(r, 0, None)).unwrap();
    assert_kind(
        s.writer(scope, opts(r, 0, None)),
        ErrorKind::Unavailable,
        "second writer on a locked ref",
    );
    w.write(&data[..2048]).unwrap();

    // Wrong digest and wrong size: FailedPrecondition, ingest intact.
    let wrong = digest_of(b"not it");
    w.write(&data[2048..]).unwrap();
    assert_kind(
        w.commit(4096, Some(&wrong), Labels::new()),
        ErrorKind::FailedPrecondition,
        "wrong digest",
    );
    assert_kind(
        w.commit(4097, Some(&d), Labels::new()),
        ErrorKind::FailedPrecondition,
        "wrong size",
    );
    assert_eq!(w.status().unwrap().offset, 4096);
    w.close().unwrap();

    // Reopen and commit for real.
    let mut w = s.writer(scope, opts(r, 0, None)).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        4096,
        "ingest survived failed commits"
    );
    assert_eq!(w.commit(4096, Some(&d), Labels::new()).unwrap(), d);
    w.close().unwrap();

    // Committing existing content again: AlreadyExists, and the ref is free afterwards.
    let mut w = s.writer(scope, opts(r, 0, None)).unwrap();
    w.write(&data).unwrap();
    assert_kind(
        w.commit(4096, Some(&d), Labels::new()),
        ErrorKind::AlreadyExists,
        "commit existing",
    );
    w.close().unwrap();

    // Truncate(0) + close frees the ref and leaves an empty ingest.
    let mut w = s.writer(scope, opts(r, 0, None)).unwrap();
    w.write(b"garbage").unwrap();
    w.truncate(0).unwrap();
    w.close().unwrap();
    let w = s.writer(scope, opts(r, 0, None)).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    w.close().unwrap();
    s.abort(scope, r).unwrap();
    assert_kind(
        s.status(scope, r),
        ErrorKind::NotFound,
        "status after abort",
    );
}

/// Containerd's `TestWriterTruncateRecoversFromIncompleteWrite`: bad data, close, reopen,
/// truncate, good data, commit.
pub fn truncate_recovers(s: &dyn ContentStore, scope: &Scope) {
    let data = content(3000, 41);
    let d = digest_of(&data);
    let mut w = s.writer(scope, opts("trunc", 3000, Some(&d))).unwrap();
    w.write(&content(1500, 99)).unwrap();
    w.close().unwrap();
    let mut w = s.writer(scope, opts("trunc", 3000, Some(&d))).unwrap();
    w.truncate(0).unwrap();
    w.write(&data).unwrap();
    assert_eq!(w.commit(3000, Some(&d), Labels::new()).unwrap(), d);
    w.close().unwrap();
}

/// Walk with filters, and Delete.
pub fn walk_and_delete(s: &dyn ContentStore, scope: &Scope) {
    let a = write_blob(
        s,
        scope,
        "walk-a",
        b"aaaa",
        labels(&[("role", "a"), ("x.y", "1")]),
    )
    .unwrap();
    let b = write_blob(s, scope, "walk-b", b"bbbbbbbb", labels(&[("role", "b")])).unwrap();
    let list = |f: &[&str]| {
        let f: Vec<String> = f.iter().map(|s| (*s).to_owned()).collect();
        let mut v = Vec::new();
        s.walk(scope, &f, &mut |i| {
            v.push(i.digest);
            Ok(())
        })
        .unwrap();
        v.sort();
        v
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(&[]), both);
    assert_eq!(list(&["labels.role==a"]), vec![a.clone()]);
    assert_eq!(list(&["labels.role==a", "labels.role==b"]), both);
    assert_eq!(list(&["labels.role==a,size==8"]), Vec::<Digest>::new());
    assert_eq!(list(&["size==8"]), vec![b.clone()]);
    assert_eq!(list(&[&format!("digest=={b}")]), vec![b.clone()]);
    assert_eq!(list(&["labels.\"x.y\""]), vec![a.clone()]);
    assert_eq!(list(&["labels.role~=^[ab]$"]), both);
    let bad: Vec<String> = vec!["labels.role==".into()];
    assert_kind(
        s.walk(scope, &bad, &mut |_| Ok(())),
        ErrorKind::InvalidArgument,
        "bad filter",
    );

    s.delete(scope, &a).unwrap();
    assert_kind(s.info(scope, &a), ErrorKind::NotFound, "info after delete");
    assert_kind(s.delete(scope, &a), ErrorKind::NotFound, "second delete");
    assert_eq!(list(&[]), vec![b]);
}

/// `CrossNamespaceAppend` (shared policy): ns2 opens ns1's blob by digest, appends bytes
/// and commits a new blob; each namespace sees what it committed.
pub fn cross_namespace_append(s: &dyn ContentStore, ns1: &Scope, ns2: &Scope) {
    let data = content(1000, 51);
    let d = write_blob(s, ns1, "ref-1000", &data, Labels::new()).unwrap();
    let mut w = s.writer(ns2, opts("ref-1000", 1000, Some(&d))).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        1000,
        "shared content is offered whole"
    );
    let extra = b"appended bytes";
    w.write(extra).unwrap();
    let mut all = data.clone();
    all.extend_from_slice(extra);
    let d2 = digest_of(&all);
    assert_eq!(
        w.commit(all.len() as u64, Some(&d2), Labels::new())
            .unwrap(),
        d2
    );
    w.close().unwrap();
    assert_eq!(read_all(s, ns2, &d2).unwrap(), all);
    assert_eq!(read_all(s, ns1, &d).unwrap(), data);
    assert_kind(
        s.info(ns1, &d2),
        ErrorKind::NotFound,
        "ns1 must not see ns2's blob",
    );
}

/// `CrossNamespaceShare` (shared policy): ns2 opening a known digest+size sees offset ==
/// size and commits without re-upload.
pub fn cross_namespace_share(s: &dyn ContentStore, ns1: &Scope, ns2: &Scope) {
    let data = content(1000, 61);
    let d = write_blob(s, ns1, "share", &data, Labels::new()).unwrap();
    assert_kind(s.info(ns2, &d), ErrorKind::NotFound, "not yet in ns2");
    let mut w = s.writer(ns2, opts("share", 1000, Some(&d))).unwrap();
    assert_eq!(w.status().unwrap().offset, 1000);
    let start = SystemTime::now();
    assert_eq!(w.commit(1000, Some(&d), Labels::new()).unwrap(), d);
    let end = SystemTime::now();
    w.close().unwrap();
    let info = s.info(ns2, &d).unwrap();
    assert_eq!(info.size, 1000);
    within(info.created_at, start, end, "ns2 created_at");
    assert_eq!(read_all(s, ns2, &d).unwrap(), data);
}

/// `CrossNamespaceIsolate` (isolated policy): ns2 gets a new writer and must upload.
pub fn cross_namespace_isolate(s: &dyn ContentStore, ns1: &Scope, ns2: &Scope) {
    let data = content(1000, 71);
    let d = write_blob(s, ns1, "isolate", &data, Labels::new()).unwrap();
    let mut w = s.writer(ns2, opts("isolate", 1000, Some(&d))).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        0,
        "isolated namespaces upload their own copy"
    );
    w.write(&data).unwrap();
    assert_eq!(w.commit(1000, Some(&d), Labels::new()).unwrap(), d);
    w.close().unwrap();
    assert_eq!(read_all(s, ns2, &d).unwrap(), data);
}

/// `SharedNamespaceIsolate` (isolated policy, ns1 labelled shareable): ns2 shares anyway.
/// The caller labels `ns1` `containerd.io/namespace.shareable=true` before calling.
pub fn shared_namespace_isolate(s: &dyn ContentStore, ns1: &Scope, ns2: &Scope) {
    let data = content(1000, 81);
    let d = write_blob(s, ns1, "shareable", &data, Labels::new()).unwrap();
    let mut w = s.writer(ns2, opts("shareable", 1000, Some(&d))).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        1000,
        "shareable namespace content is shared"
    );
    assert_eq!(w.commit(1000, Some(&d), Labels::new()).unwrap(), d);
    w.close().unwrap();
    assert_eq!(read_all(s, ns2, &d).unwrap(), data);
}

/// Namespaces are isolated for reads, statuses and labels even under the shared policy.
pub fn namespaces_are_separate(s: &dyn ContentStore, ns1: &Scope, ns2: &Scope) {
    let d = write_blob(s, ns1, "sep", b"separate", labels(&[("who", "ns1")])).unwrap();
    assert_kind(
        s.info(ns2, &d),
        ErrorKind::NotFound,
        "info across namespaces",
    );
    let mut buf = [0u8; 8];
    assert_kind(
        s.read_at(ns2, &d, 0, &mut buf),
        ErrorKind::NotFound,
        "read across namespaces",
    );
    assert_kind(
        s.delete(ns2, &d),
        ErrorKind::NotFound,
        "delete across namespaces",
    );
    let mut w = s.writer(ns1, opts("same-ref", 0, None)).unwrap();
    w.write(b"ns1 bytes").unwrap();
    // The same ref in another namespace is another ingest, not a locked one.
    let w2 = s.writer(ns2, opts("same-ref", 0, None)).unwrap();
    assert_eq!(w2.status().unwrap().offset, 0);
    w2.close().unwrap();
    w.close().unwrap();
    assert_eq!(s.status(ns1, "same-ref").unwrap().offset, 9);
    assert_eq!(s.status(ns2, "same-ref").unwrap().offset, 0);
    let refs = |sc: &Scope| -> Vec<String> {
        s.list_statuses(sc, &[])
            .unwrap()
            .into_iter()
            .map(|s| s.r#ref)
            .collect()
    };
    assert_eq!(refs(ns1), vec!["same-ref".to_owned()]);
    let only: Vec<String> = vec!["ref==nothing".into()];
    assert!(s.list_statuses(ns1, &only).unwrap().is_empty());
    assert_eq!(s.info(ns1, &d).unwrap().labels, labels(&[("who", "ns1")]));
}

/// Hostile input: bad refs, oversized labels, malformed filters and offsets out of range
/// are clear errors and change nothing.
pub fn hostile_input(s: &dyn ContentStore, scope: &Scope) {
    let long = "r".repeat(64 * 1024);
    for (r, what) in [
        ("", "empty ref"),
        ("../x", "traversal ref"),
        ("/etc/passwd", "absolute ref"),
        ("a/../../b", "embedded traversal"),
        ("nul\0ref", "NUL in ref"),
        ("line\nbreak", "newline in ref"),
        (long.as_str(), "64 KiB ref"),
    ] {
        assert_kind(
            s.writer(scope, opts(r, 0, None)),
            ErrorKind::InvalidArgument,
            what,
        );
        assert_kind(s.status(scope, r), ErrorKind::InvalidArgument, what);
        assert_kind(s.abort(scope, r), ErrorKind::InvalidArgument, what);
    }
    assert!(
        s.list_statuses(scope, &[]).unwrap().is_empty(),
        "no ingest was created"
    );

    let big = labels(&[("k", &"v".repeat(4096))]);
    let mut w = s.writer(scope, opts("hostile-labels", 0, None)).unwrap();
    w.write(b"payload").unwrap();
    assert_kind(
        w.commit(0, None, big.clone()),
        ErrorKind::InvalidArgument,
        "oversized label",
    );
    // Over gRPC a failed commit ends the session, as in containerd: reopen the ref.
    drop(w);
    let mut w = s.writer(scope, opts("hostile-labels", 0, None)).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        7,
        "ingest intact after a refused commit"
    );
    let d = w.commit(0, None, labels(&[("ok", "1")])).unwrap();
    w.close().unwrap();
    assert_kind(
        s.update(scope, &d, big, &[]),
        ErrorKind::InvalidArgument,
        "oversized label update",
    );
    let mut edge = Labels::new();
    edge.insert("k".into(), "v".repeat(4095));
    s.update(scope, &d, edge.clone(), &[]).unwrap();
    assert_eq!(
        s.info(scope, &d).unwrap().labels,
        edge,
        "a 4096-byte label fits exactly"
    );

    for f in ["labels.\"unterminated", "==x", "size==1,", "labels.k~=("] {
        assert_kind(
            s.walk(scope, &[f.to_owned()], &mut |_| Ok(())),
            ErrorKind::InvalidArgument,
            f,
        );
        assert_kind(
            s.list_statuses(scope, &[f.to_owned()]),
            ErrorKind::InvalidArgument,
            f,
        );
    }

    let mut buf = [0u8; 4];
    assert_kind(
        s.read_at(scope, &d, 8, &mut buf),
        ErrorKind::OutOfRange,
        "read past the end",
    );
    let missing = digest_of(b"missing");
    assert_kind(
        s.info(scope, &missing),
        ErrorKind::NotFound,
        "info of a missing blob",
    );
    assert_kind(
        s.delete(scope, &missing),
        ErrorKind::NotFound,
        "delete of a missing blob",
    );
}

/// Leases: create/list/filters, resources, and that a leased blob survives GC is checked
/// by the caller (GC is not part of the trait).
pub fn leases(s: &(impl crate::api::LeaseManager + ?Sized), scope: &Scope) {
    use crate::api::Resource;
    let l = s
        .create_lease(scope, "lease-1", labels(&[("purpose", "test")]))
        .unwrap();
    assert_eq!(l.id, "lease-1");
    assert_kind(
        s.create_lease(scope, "lease-1", Labels::new()),
        ErrorKind::AlreadyExists,
        "dup",
    );
    for bad in ["", "../x", "a/b", "-x", &"l".repeat(100)] {
        assert_kind(
            s.create_lease(scope, bad, Labels::new()),
            ErrorKind::InvalidArgument,
            bad,
        );
    }
    s.create_lease(scope, "lease-2", Labels::new()).unwrap();
    let ids = |f: &[&str]| -> Vec<String> {
        let f: Vec<String> = f.iter().map(|s| (*s).to_owned()).collect();
        s.list_leases(scope, &f)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect()
    };
    assert_eq!(ids(&[]), vec!["lease-1", "lease-2"]);
    assert_eq!(ids(&["labels.purpose==test"]), vec!["lease-1"]);
    assert_eq!(ids(&["id==lease-2"]), vec!["lease-2"]);

    let d = digest_of(b"leased");
    let r = Resource {
        id: d.to_string(),
        r#type: "content".into(),
    };
    s.add_resource(scope, "lease-1", r.clone()).unwrap();
    let snap = Resource {
        id: "default/1/key".into(),
        r#type: "snapshots/overlayfs".into(),
    };
    s.add_resource(scope, "lease-1", snap.clone()).unwrap();
    let mut got = s.list_resources(scope, "lease-1").unwrap();
    got.sort();
    let mut want = vec![r.clone(), snap];
    want.sort();
    assert_eq!(got, want);
    for bad in [
        Resource {
            id: "not-a-digest".into(),
            r#type: "content".into(),
        },
        Resource {
            id: "x".into(),
            r#type: "bogus".into(),
        },
        Resource {
            id: String::new(),
            r#type: "content".into(),
        },
    ] {
        assert_kind(
            s.add_resource(scope, "lease-1", bad),
            ErrorKind::InvalidArgument,
            "bad resource",
        );
    }
    assert_kind(
        s.add_resource(scope, "nope", r.clone()),
        ErrorKind::NotFound,
        "missing lease",
    );
    s.delete_resource(scope, "lease-1", r).unwrap();
    assert_eq!(s.list_resources(scope, "lease-1").unwrap().len(), 1);
    s.delete_lease(scope, "lease-1", false).unwrap();
    assert_kind(
        s.delete_lease(scope, "lease-1", false),
        ErrorKind::NotFound,
        "second delete",
    );
    assert_kind(
        s.list_resources(scope, "lease-1"),
        ErrorKind::NotFound,
        "resources of deleted",
    );
    assert_eq!(ids(&[]), vec!["lease-2"]);
}
