//! Local-store behaviour beyond the conformance suite: garbage collection, leases,
//! ingest healing after a crash, on-disk invariants.

mod common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use strata_content::testsuite::{content, digest_of, write_blob};
use strata_content::{
    ContentStore, ErrorKind, GC_EXPIRE, GC_FLAT, GC_ROOT, Ingester, Labels, LeaseManager,
    LocalStore, Manager, Provider, Resource, Scope, SharingPolicy, StoreOptions, WriterOptions,
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn wopts(r: &str) -> WriterOptions {
    WriterOptions {
        r#ref: r.into(),
        ..Default::default()
    }
}

fn ingest_data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir.join("content/ingest"))
        .unwrap()
        .map(|e| e.unwrap().path().join("data"))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn gc_follows_roots_references_and_leases() {
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let ns = Scope::ns("default");
    let child = write_blob(s, &ns, "child", b"child", Labels::new()).unwrap();
    let root = write_blob(
        s,
        &ns,
        "root",
        b"root",
        labels(&[
            (GC_ROOT, "now"),
            ("containerd.io/gc.ref.content.l.0", &child.to_string()),
        ]),
    )
    .unwrap();
    let orphan = write_blob(s, &ns, "orphan", b"orphan", Labels::new()).unwrap();
    s.create_lease(&ns, "keep", Labels::new()).unwrap();
    let leased = write_blob(
        s,
        &ns.clone().with_lease("keep"),
        "leased",
        b"leased",
        Labels::new(),
    )
    .unwrap();
    let global = write_blob(s, &Scope::global(), "global", b"global", Labels::new()).unwrap();

    let r = s.garbage_collect().unwrap();
    assert_eq!((r.records, r.blobs), (1, 1), "only the orphan goes: {r:?}");
    assert_eq!(
        s.info(&ns, &orphan).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!s.blob_path(&orphan).exists());
    for d in [&child, &root, &leased] {
        s.info(&ns, d).unwrap();
    }
    s.info(&Scope::global(), &global).unwrap();

    // Deleting the lease with sync collects what it held.
    s.delete_lease(&ns, "keep", true).unwrap();
    assert_eq!(
        s.info(&ns, &leased).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!s.blob_path(&leased).exists());

    // Dropping the root label releases the root and what it referenced.
    s.update(&ns, &root, Labels::new(), &["labels".into()])
        .unwrap();
    let r = s.garbage_collect().unwrap();
    assert_eq!(r.blobs, 2);
    s.info(&Scope::global(), &global).unwrap();
}

#[test]
fn gc_keeps_blob_files_another_space_holds() {
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let a = Scope::ns("a");
    let b = Scope::ns("b");
    let d = write_blob(s, &a, "x", b"shared bytes", labels(&[(GC_ROOT, "1")])).unwrap();
    write_blob(s, &b, "x", b"shared bytes", Labels::new()).unwrap();
    assert_eq!(s.garbage_collect().unwrap().records, 1);
    assert!(s.blob_path(&d).exists(), "namespace a still holds the file");
    assert_eq!(s.info(&b, &d).unwrap_err().kind(), ErrorKind::NotFound);

    // A blob a proxied client has seen (global Info) is never collected.
    let e = write_blob(s, &b, "y", b"seen by containerd", Labels::new()).unwrap();
    s.info(&Scope::global(), &e).unwrap();
    s.garbage_collect().unwrap();
    assert!(s.blob_path(&e).exists());
    assert_eq!(fs::read(s.blob_path(&e)).unwrap(), b"seen by containerd");
}

#[test]
fn expired_and_flat_leases() {
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let ns = Scope::ns("default");
    s.create_lease(&ns, "old", labels(&[(GC_EXPIRE, "2000-01-01T00:00:00Z")]))
        .unwrap();
    s.create_lease(&ns, "flat", labels(&[(GC_FLAT, "")]))
        .unwrap();
    let child = write_blob(s, &ns, "c", b"c", Labels::new()).unwrap();
    let old = write_blob(s, &ns.clone().with_lease("old"), "o", b"o", Labels::new()).unwrap();
    let top = write_blob(
        s,
        &ns.clone().with_lease("flat"),
        "t",
        b"t",
        labels(&[("containerd.io/gc.ref.content.x", &child.to_string())]),
    )
    .unwrap();
    let r = s.garbage_collect().unwrap();
    assert_eq!(r.leases, 1);
    assert!(
        !s.blob_path(&old).exists(),
        "expired lease protects nothing"
    );
    assert!(
        !s.blob_path(&child).exists(),
        "a flat lease does not follow references"
    );
    assert!(s.blob_path(&top).exists());
    let ids: Vec<_> = s
        .list_leases(&ns, &[])
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, vec!["flat"]);
}

#[test]
fn ingests_expire_unless_leased_open_or_global() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(
        dir.path(),
        StoreOptions {
            ingest_expiry: Duration::ZERO,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let ns = Scope::ns("default");
    s.create_lease(&ns, "l", Labels::new()).unwrap();
    for (scope, r) in [(&ns, "stale"), (&Scope::global(), "proxied")] {
        let mut w = s.writer(scope, wopts(r)).unwrap();
        w.write(b"partial").unwrap();
        w.close().unwrap();
    }
    let mut w = s
        .writer(&ns.clone().with_lease("l"), wopts("leased"))
        .unwrap();
    w.write(b"partial").unwrap();
    w.close().unwrap();
    let mut open = s.writer(&ns, wopts("open")).unwrap();
    open.write(b"partial").unwrap();

    let r = s.garbage_collect().unwrap();
    assert_eq!(r.ingests, 1);
    use strata_content::IngestManager;
    assert_eq!(
        s.status(&ns, "stale").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    s.status(&ns, "leased").unwrap();
    s.status(&ns, "open").unwrap();
    s.status(&Scope::global(), "proxied").unwrap();
    drop(open);
}

#[test]
fn ingest_lease_moves_to_content_on_commit() {
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let ns = Scope::ns("default");
    s.create_lease(&ns, "pull", Labels::new()).unwrap();
    let scope = ns.clone().with_lease("pull");
    let mut w = s.writer(&scope, wopts("layer")).unwrap();
    w.write(b"layer bytes").unwrap();
    let res = s.list_resources(&ns, "pull").unwrap();
    assert_eq!(
        res,
        vec![Resource {
            id: "layer".into(),
            r#type: "ingests".into()
        }]
    );
    let d = w.commit(0, None, Labels::new()).unwrap();
    let res = s.list_resources(&ns, "pull").unwrap();
    assert_eq!(
        res,
        vec![Resource {
            id: d.to_string(),
            r#type: "content".into()
        }]
    );
    // A writer under a lease that does not exist is refused.
    let err = s
        .writer(&ns.clone().with_lease("nope"), wopts("x"))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn garbage_tail_after_crash_is_dropped_and_ingest_heals() {
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let ns = Scope::ns("default");
    let data = content(10_000, 5);
    let mut w = s.writer(&ns, wopts("crash")).unwrap();
    w.write(&data[..6000]).unwrap();
    w.close().unwrap();
    // A power loss can leave bytes past the last checkpoint that were never written.
    let files = ingest_data_files(h.dir.path());
    assert_eq!(files.len(), 1);
    fs::OpenOptions::new()
        .append(true)
        .open(&files[0])
        .unwrap()
        .write_all(&[0u8; 777])
        .unwrap();

    let mut w = s.writer(&ns, wopts("crash")).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        6000,
        "resumes at the checkpoint"
    );
    assert_eq!(w.digest(), digest_of(&data[..6000]));
    w.write(&data[6000..]).unwrap();
    assert_eq!(
        w.commit(10_000, Some(&digest_of(&data)), Labels::new())
            .unwrap(),
        digest_of(&data)
    );
}

#[test]
fn corrupted_ingest_restarts_at_zero() {
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let ns = Scope::ns("default");
    let data = content(5000, 6);
    let mut w = s.writer(&ns, wopts("rot")).unwrap();
    w.write(&data).unwrap();
    w.close().unwrap();
    let files = ingest_data_files(h.dir.path());
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&files[0], &bytes).unwrap();
    // Also: a truncated file (shorter than its checkpoint) heals the same way.
    let mut w = s.writer(&ns, wopts("rot")).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        0,
        "a corrupt prefix is never trusted"
    );
    w.write(&data).unwrap();
    w.commit(5000, Some(&digest_of(&data)), Labels::new())
        .unwrap();

    let mut w = s.writer(&ns, wopts("short")).unwrap();
    w.write(&data).unwrap();
    w.close().unwrap();
    let files = ingest_data_files(h.dir.path());
    fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap()
        .set_len(10)
        .unwrap();
    let w = s.writer(&ns, wopts("short")).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
}

#[test]
fn blobs_are_read_only_and_stay_under_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let s = LocalStore::open(&root, StoreOptions::default()).unwrap();
    let ns = Scope::ns("default");
    for (i, r) in ["../escape", "a/b/c", "..x", "x/.."].iter().enumerate() {
        let res = write_blob(&s, &ns, r, &content(10, i as u64), Labels::new());
        if r.split('/').any(|c| c == "..") {
            assert_eq!(res.unwrap_err().kind(), ErrorKind::InvalidArgument, "{r}");
        } else {
            res.unwrap();
        }
    }
    let d = write_blob(&s, &ns, "ro", b"read only", Labels::new()).unwrap();
    let mode = fs::metadata(s.blob_path(&d)).unwrap().permissions().mode();
    assert_eq!(mode & 0o333, 0, "blob files are read-only: {mode:o}");
    assert_eq!(
        fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let names: Vec<_> = fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("root")],
        "nothing beside the root"
    );
}

#[test]
fn sha512_expected_digest() {
    use sha2::Digest as _;
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let ns = Scope::ns("default");
    let data = content(3000, 9);
    let d512 = strata_proto::Digest::from_bytes(
        strata_proto::Algorithm::Sha512,
        &sha2::Sha512::digest(&data),
    )
    .unwrap();
    let mut w = s.writer(&ns, wopts("512")).unwrap();
    w.write(&data).unwrap();
    assert_eq!(w.commit(3000, Some(&d512), Labels::new()).unwrap(), d512);
    assert_eq!(strata_content::api::read_all(s, &ns, &d512).unwrap(), data);
}

#[test]
fn reopen_keeps_committed_content() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Scope::ns("default");
    let data = content(70_000, 8);
    let d = {
        let s = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        let d = write_blob(&s, &ns, "persist", &data, labels(&[("k", "v")])).unwrap();
        let mut w = s.writer(&ns, wopts("half")).unwrap();
        w.write(&data[..30_000]).unwrap();
        d
    };
    let s = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.info(&ns, &d).unwrap().labels, labels(&[("k", "v")]));
    assert_eq!(strata_content::api::read_all(&s, &ns, &d).unwrap(), data);
    let w = s.writer(&ns, wopts("half")).unwrap();
    assert_eq!(
        w.status().unwrap().offset,
        30_000,
        "dropped writers checkpoint"
    );
    let _: &dyn ContentStore = &s;
}

#[test]
fn images_are_gc_roots_per_namespace() {
    use strata_content::{Image, Namespace, Target};
    let h = common::local(SharingPolicy::Shared);
    let s = &h.local;
    let scope = Scope::ns("imgs");
    let ns = Namespace::new("imgs").unwrap();
    let layer = write_blob(s, &scope, "l", &content(1000, 1), Labels::new()).unwrap();
    let config = write_blob(s, &scope, "c", &content(100, 2), Labels::new()).unwrap();
    let manifest = write_blob(
        s,
        &scope,
        "m",
        &content(200, 3),
        labels(&[
            ("containerd.io/gc.ref.content.config", &config.to_string()),
            ("containerd.io/gc.ref.content.l.0", &layer.to_string()),
        ]),
    )
    .unwrap();
    let orphan = write_blob(s, &scope, "o", &content(50, 4), Labels::new()).unwrap();
    let img = Image {
        name: "127.0.0.1:5000/demo/app:1".into(),
        target: Target {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: manifest.clone(),
            size: 200,
        },
        labels: labels(&[("k", "v")]),
        created_at: std::time::UNIX_EPOCH,
        updated_at: std::time::UNIX_EPOCH,
    };
    let stored = s.put_image(&ns, &img).unwrap();
    assert_eq!(stored.target, img.target);
    assert!(stored.created_at > std::time::UNIX_EPOCH);
    // Replacing keeps the creation time.
    let again = s.put_image(&ns, &img).unwrap();
    assert_eq!(again.created_at, stored.created_at);
    assert_eq!(s.get_image(&ns, &img.name).unwrap(), again);
    let other = Namespace::new("other").unwrap();
    assert_eq!(
        s.get_image(&other, &img.name).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(s.list_images(&ns, &[]).unwrap().len(), 1);
    assert_eq!(
        s.list_images(&ns, &["labels.k==v".into()]).unwrap().len(),
        1
    );
    assert_eq!(
        s.list_images(&ns, &[format!("target.digest=={}", manifest)])
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.list_images(&ns, &["name~=^docker".into()])
            .unwrap()
            .is_empty()
    );
    assert!(s.list_images(&other, &[]).unwrap().is_empty());

    // The image keeps its manifest and everything the manifest references.
    s.garbage_collect().unwrap();
    for d in [&manifest, &config, &layer] {
        assert!(
            s.info(&scope, d).is_ok(),
            "{d} collected while an image holds it"
        );
    }
    assert_eq!(
        s.info(&scope, &orphan).unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // Hostile names and labels are refused without a trace.
    for bad in ["", "a\nb", &"x".repeat(5000)] {
        let mut i = img.clone();
        i.name = bad.to_owned();
        assert_eq!(
            s.put_image(&ns, &i).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
    let mut i = img.clone();
    i.labels = labels(&[("big", &"v".repeat(5000))]);
    assert_eq!(
        s.put_image(&ns, &i).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        s.list_images(&ns, &["name==\"unterminated".into()])
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(s.list_images(&ns, &[]).unwrap(), vec![again]);

    // Deleting the image lets the GC take its blobs.
    s.delete_image(&ns, &img.name).unwrap();
    assert_eq!(
        s.delete_image(&ns, &img.name).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    s.garbage_collect().unwrap();
    for d in [&manifest, &config, &layer] {
        assert_eq!(s.info(&scope, d).unwrap_err().kind(), ErrorKind::NotFound);
    }
}
