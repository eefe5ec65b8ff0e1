//! eStargz written from real tar streams and read back through random access: the blob
//! is still an ordinary gzip layer, the TOC describes every entry exactly, every chunk
//! verifies; hostile TOCs, chunks and sources are refused with clear errors.

mod blobs;

use std::io::Read;

use blobs::MemSource;
use strata_proto::{Digest, ErrorKind};
use strata_snapshotter::BlobSource;
use strata_snapshotter::estargz::{
    self, NodeKind, TocJson, TocLimits, Tree, WriteOptions, decode_chunk, fetch_tree, footer,
    write_estargz,
};
use strata_testkit::{Tar, sha256};

fn sample_tar() -> Vec<u8> {
    let mut t = Tar::new();
    let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let long = format!("deep/{}/file", "d".repeat(120));
    t.dir("etc")
        .file_mode("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
        .file("empty", b"")
        .owner(1000, 1001)
        .file_mode("bin/tool", &big, 0o4755)
        .owner(0, 0)
        .symlink("bin/link", "../etc/passwd")
        .hardlink("bin/hard", "bin/tool")
        .device(b'3', "dev/null", 1, 3)
        .fifo("run/pipe", 0o600)
        .pax(&[("SCHILY.xattr.user.note", b"hello")])
        .file("with-xattr", b"x")
        .file(&long, b"long name")
        .dir("gone-dir")
        .file(".wh.removed", b"")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/kept", b"k");
    t.finish()
}

fn written(tar: &[u8], opts: &WriteOptions) -> (Vec<u8>, estargz::Written) {
    let mut blob = Vec::new();
    let w = write_estargz(tar, &mut blob, opts).unwrap();
    (blob, w)
}

fn read_file(src: &MemSource, tree: &Tree, path: &str) -> Vec<u8> {
    let ino = tree
        .resolve(path)
        .unwrap_or_else(|| panic!("{path} not in the tree"));
    let node = tree.node(u64::from(ino)).unwrap();
    let mut out = Vec::new();
    for c in &node.chunks {
        let member = src
            .read_range(&src.remote(), c.blob_offset..c.blob_end)
            .unwrap();
        out.extend(decode_chunk(&member, c).unwrap());
    }
    out
}

#[test]
fn a_written_blob_is_an_ordinary_gzip_layer_with_a_toc() {
    let tar = sample_tar();
    let opts = WriteOptions {
        chunk_size: 4096,
        ..Default::default()
    };
    let (blob, w) = written(&tar, &opts);
    assert_eq!(w.size, blob.len() as u64);
    assert_eq!(w.digest.to_string(), sha256(&blob));

    // Any gzip reader sees one tar: the input's entries, then the TOC.
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(w.diff_id.to_string(), sha256(&plain));
    assert_eq!(w.uncompressed_size, plain.len() as u64);
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(&plain[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        if name == "bin/tool" {
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            assert_eq!(body.len(), 40_000);
            assert_eq!(e.header().mode().unwrap(), 0o4755);
            assert_eq!(e.header().uid().unwrap(), 1000);
        }
        if name == "with-xattr" {
            let x: Vec<_> = e
                .pax_extensions()
                .unwrap()
                .unwrap()
                .map(|x| x.unwrap().key().unwrap().to_owned())
                .collect();
            assert_eq!(x, ["SCHILY.xattr.user.note"]);
        }
        names.push(name);
    }
    assert_eq!(names.first().unwrap(), ".no.prefetch.landmark");
    assert_eq!(names.last().unwrap(), "stargz.index.json");
    assert!(names.iter().any(|n| n.ends_with("d/file") && n.len() > 100));

    // The TOC read back through ranges verifies and describes every entry.
    let src = MemSource::new(blob);
    let tree = fetch_tree(&src, &src.remote(), &w.toc_digest, &TocLimits::default()).unwrap();
    let node = |p: &str| {
        tree.node(u64::from(tree.resolve(p).unwrap()))
            .unwrap()
            .clone()
    };
    let tool = node("bin/tool");
    assert_eq!(
        (tool.kind, tool.mode, tool.uid, tool.gid, tool.size),
        (NodeKind::File, 0o4755, 1000, 1001, 40_000)
    );
    assert_eq!(tool.chunks.len(), 10, "4 KiB chunks of a 40 000-byte file");
    assert_eq!(tool.nlink, 2, "bin/hard links to it");
    assert_eq!(tree.resolve("bin/hard"), tree.resolve("bin/tool"));
    assert_eq!(tool.mtime, 1_600_000_000);
    let link = node("bin/link");
    assert_eq!(
        (link.kind, link.link.as_slice()),
        (NodeKind::Symlink, &b"../etc/passwd"[..])
    );
    let dev = node("dev/null");
    assert_eq!((dev.kind, dev.rdev), (NodeKind::Char, (1, 3)));
    assert_eq!(node("run/pipe").kind, NodeKind::Fifo);
    assert_eq!(node("run/pipe").mode, 0o600);
    assert_eq!(
        node("with-xattr").xattrs,
        vec![(b"user.note".to_vec(), b"hello".to_vec())]
    );
    // Whiteouts as overlayfs sees them in a lower dir; metadata files hidden.
    let wh = node("removed");
    assert_eq!((wh.kind, wh.rdev, wh.mode), (NodeKind::Char, (0, 0), 0));
    assert_eq!(
        node("opq").xattrs,
        vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())]
    );
    for hidden in [".wh.removed", "stargz.index.json", ".no.prefetch.landmark"] {
        assert!(tree.resolve(hidden).is_none(), "{hidden} shown");
    }
    assert_eq!(tree.prefetch, None);

    // Every file's chunks rebuild its content.
    assert_eq!(read_file(&src, &tree, "bin/tool").len(), 40_000);
    let ours: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(read_file(&src, &tree, "bin/tool"), ours);
    assert_eq!(
        read_file(&src, &tree, "etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert!(read_file(&src, &tree, "empty").is_empty());
    let long = format!("deep/{}/file", "d".repeat(120));
    assert_eq!(read_file(&src, &tree, &long), b"long name");
}

#[test]
fn prioritized_files_go_before_the_landmark() {
    let mut t = Tar::new();
    t.dir("a")
        .file("a/one", &[1; 3000])
        .dir("b")
        .file("b/two", &[2; 3000])
        .file("b/three", &[3; 3000]);
    let tar = t.finish();
    let opts = WriteOptions {
        prefetch: vec!["b/three".into(), "/a/one".into(), "missing".into()],
        ..Default::default()
    };
    let (blob, w) = written(&tar, &opts);
    let src = MemSource::new(blob.clone());
    let tree = fetch_tree(&src, &src.remote(), &w.toc_digest, &TocLimits::default()).unwrap();
    let landmark = tree.prefetch.expect("a prefetch landmark");
    let at = |p: &str| {
        tree.node(u64::from(tree.resolve(p).unwrap()))
            .unwrap()
            .chunks[0]
            .blob_offset
    };
    assert!(at("b/three") < at("a/one"));
    assert!(at("a/one") < landmark);
    assert!(landmark < at("b/two"));
    // The prefetched range alone rebuilds the prioritized files.
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..landmark as usize])
        .read_to_end(&mut plain)
        .unwrap();
    // It ends inside the landmark, whose header comes before its payload's member.
    let names: Vec<String> = tar::Archive::new(&plain[..])
        .entries()
        .unwrap()
        .map_while(|e| e.ok())
        .map(|e| String::from_utf8(e.path_bytes().into_owned()).unwrap())
        .collect();
    assert_eq!(
        names,
        ["b/", "b/three", "a/", "a/one", ".prefetch.landmark"]
    );
}

/// A blob whose TOC is `toc` (its data the sample's), and the TOC's digest.
fn with_toc(toc: &TocJson) -> (MemSource, Digest) {
    let (blob, _) = written(&sample_tar(), &WriteOptions::default());
    let toc_offset = estargz::parse_footer(&blob[blob.len() - 51..], blob.len() as u64).unwrap();
    let json = serde_json::to_vec(toc).unwrap();
    let mut t = Tar::new();
    t.file("stargz.index.json", &json);
    let mut toc_tar = t.finish();
    toc_tar.truncate(512 + json.len().div_ceil(512) * 512 + 1024);
    let mut out = blob[..toc_offset as usize].to_vec();
    out.extend(strata_testkit::gzip(&toc_tar));
    out.extend(footer(toc_offset));
    (MemSource::new(out), Digest::parse(&sha256(&json)).unwrap())
}

fn sample_toc() -> TocJson {
    let (blob, w) = written(&sample_tar(), &WriteOptions::default());
    let off = estargz::parse_footer(&blob[blob.len() - 51..], blob.len() as u64).unwrap();
    let json =
        estargz::toc_json(&blob[off as usize..blob.len() - 51], &TocLimits::default()).unwrap();
    assert_eq!(Digest::parse(&sha256(&json)).unwrap(), w.toc_digest);
    serde_json::from_slice(&json).unwrap()
}

fn refused(toc: &TocJson, expect: &str) {
    let (src, digest) = with_toc(toc);
    let err = fetch_tree(&src, &src.remote(), &digest, &TocLimits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
    assert!(format!("{err}").contains(expect), "{expect:?} not in {err}");
}

#[test]
fn hostile_tocs_are_refused_whole() {
    let good = sample_toc();
    let (src, digest) = with_toc(&good);
    fetch_tree(&src, &src.remote(), &digest, &TocLimits::default()).unwrap();

    let other = Digest::parse(&sha256(b"another toc")).unwrap();
    let err = fetch_tree(&src, &src.remote(), &other, &TocLimits::default()).unwrap_err();
    assert!(format!("{err}").contains("not the"), "{err}");

    let edit = |f: &dyn Fn(&mut TocJson)| {
        let mut t = good.clone();
        f(&mut t);
        t
    };
    let find = |t: &TocJson, name: &str| t.entries.iter().position(|e| e.name == name).unwrap();
    refused(
        &edit(&|t| t.entries[1].name = "../../etc/shadow".into()),
        "outside the layer",
    );
    refused(
        &edit(&|t| t.entries[1].name = "a/../../x".into()),
        "outside the layer",
    );
    refused(
        &edit(&|t| {
            let e = t.entries[find(t, "etc/passwd")].clone();
            t.entries.push(e);
        }),
        "duplicate",
    );
    refused(
        &edit(&|t| {
            let i = find(t, "with-xattr");
            let j = find(t, "etc/passwd");
            t.entries[i].offset = t.entries[j].offset;
        }),
        "out of blob order",
    );
    refused(
        &edit(&|t| {
            let i = find(t, "etc/passwd");
            t.entries[i].offset = 1 << 40;
        }),
        "past the blob",
    );
    refused(
        &edit(&|t| {
            let i = find(t, "etc/passwd");
            t.entries[i].chunk_size = 5;
        }),
        "cover",
    );
    refused(
        &edit(&|t| {
            let i = find(t, "etc/passwd");
            t.entries[i].chunk_size = t.entries[i].size + 1;
        }),
        "past the end",
    );
    refused(
        &edit(&|t| {
            let i = find(t, "bin/hard");
            t.entries[i].link_name = "nowhere".into();
        }),
        "not in the layer",
    );
    refused(
        &edit(&|t| t.entries[1].kind = "socket".into()),
        "unknown type",
    );
    refused(&edit(&|t| t.version = 2), "version 2");
    refused(
        &edit(&|t| {
            let i = find(t, "etc/passwd");
            t.entries[i].chunk_digest = "md5:abc".into();
        }),
        "chunkDigest",
    );
    refused(
        &edit(&|t| {
            let i = find(t, "etc/passwd");
            t.entries[i].uid = 1 << 40;
        }),
        "uid",
    );

    // Caps: a TOC with more entries, or more bytes, than allowed.
    let (src, digest) = with_toc(&good);
    let tight = TocLimits {
        max_entries: 3,
        ..TocLimits::default()
    };
    let err = fetch_tree(&src, &src.remote(), &digest, &tight).unwrap_err();
    assert!(format!("{err}").contains("over the cap"), "{err}");
    let tight = TocLimits {
        max_json: 100,
        ..TocLimits::default()
    };
    let err = fetch_tree(&src, &src.remote(), &digest, &tight).unwrap_err();
    assert!(format!("{err}").contains("over the cap"), "{err}");

    // Not JSON at all.
    let err = Tree::from_json(
        b"{\"version\":1,\"entries\":[{]",
        100,
        &TocLimits::default(),
    )
    .unwrap_err();
    assert!(format!("{err}").contains("not valid JSON"), "{err}");
}

#[test]
fn a_chunk_or_a_source_that_lies_is_refused() {
    let (blob, w) = written(&sample_tar(), &WriteOptions::default());
    let src = MemSource::new(blob);
    let tree = fetch_tree(&src, &src.remote(), &w.toc_digest, &TocLimits::default()).unwrap();
    let node = tree
        .node(u64::from(tree.resolve("etc/passwd").unwrap()))
        .unwrap();
    let c = &node.chunks[0];
    let member = src
        .read_range(&src.remote(), c.blob_offset..c.blob_end)
        .unwrap();
    decode_chunk(&member, c).unwrap();

    // The bytes of another member: inflates, but to other content.
    let other = tree
        .node(u64::from(tree.resolve("with-xattr").unwrap()))
        .unwrap();
    let oc = &other.chunks[0];
    let wrong = src
        .read_range(&src.remote(), oc.blob_offset..oc.blob_end)
        .unwrap();
    let err = decode_chunk(&wrong, c).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err:?}");
    // Garbage, and a member cut before its data ends.
    assert_eq!(
        decode_chunk(&[0u8; 40], c).unwrap_err().kind(),
        ErrorKind::DataLoss
    );
    assert_eq!(
        decode_chunk(&member[..14], c).unwrap_err().kind(),
        ErrorKind::DataLoss
    );
    // A wrong digest in the chunk itself.
    let mut lying = c.clone();
    lying.digest = Digest::parse(&sha256(b"something else")).unwrap();
    assert_eq!(
        decode_chunk(&member, &lying).unwrap_err().kind(),
        ErrorKind::DataLoss
    );

    // A source answering with the wrong length: refused before parsing.
    *src.tamper.lock().unwrap() = Some(Box::new(|_, mut b| {
        b.pop();
        b
    }));
    let err = fetch_tree(&src, &src.remote(), &w.toc_digest, &TocLimits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataLoss, "{err:?}");
    // ... or the right length of other bytes: the footer or the TOC digest catches it.
    *src.tamper.lock().unwrap() = Some(Box::new(|_, b| b.iter().map(|x| x ^ 0x55).collect()));
    assert!(fetch_tree(&src, &src.remote(), &w.toc_digest, &TocLimits::default()).is_err());
}

#[test]
fn hostile_layers_are_refused_by_the_writer() {
    let write = |tar: &[u8]| write_estargz(tar, &mut Vec::new(), &WriteOptions::default());
    let mut t = Tar::new();
    t.file("ok", b"1").file("../escape", b"2");
    let err = write(&t.finish()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
    assert!(format!("{err}").contains("outside the layer"), "{err}");
    let mut t = Tar::new();
    t.hardlink("link", "../../etc/passwd");
    assert!(write(&t.finish()).is_err());
    // Not a tar at all, and a tar cut inside an entry.
    assert!(write(&[0x42; 1500]).is_err());
    let mut t = Tar::new();
    t.file("big", &[7u8; 5000]);
    let tar = t.finish();
    assert!(write(&tar[..2048]).is_err());
    // Names a TOC cannot carry (not UTF-8).
    let mut t = Tar::new();
    t.entry(b'0', b"bad\xff", b"", b"x", 0o644);
    assert!(format!("{}", write(&t.finish()).unwrap_err()).contains("UTF-8"));
}
