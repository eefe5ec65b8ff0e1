//! Hostile layers: each must fail with a clear error (or have the documented safe
//! outcome) and leave everything outside the root as it was.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use strata_puller::{ApplyError, ErrorKind, Limit, Limits, WhiteoutMode, apply_layer, open_layer};
use strata_testkit::{Sandbox, Tar, require_root};

const MODES: [WhiteoutMode; 2] = [WhiteoutMode::Overlay, WhiteoutMode::Delete];

fn apply(
    sb: &Sandbox,
    tar: &[u8],
    mode: WhiteoutMode,
) -> strata_puller::ApplyResult<strata_puller::ApplyStats> {
    apply_layer(tar, &sb.root, mode, &Limits::default())
}

/// Applies `tar` in both whiteout modes; returns the errors.
fn refused_in_both_modes(tar: &[u8]) -> Vec<ApplyError> {
    MODES
        .iter()
        .map(|&mode| {
            let sb = Sandbox::new();
            let err = apply(&sb, tar, mode).expect_err("hostile layer applied");
            sb.assert_outside_untouched();
            err
        })
        .collect()
}

fn assert_refused(err: &ApplyError, needle: &str) {
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error {msg:?} does not mention {needle:?}"
    );
}

#[test]
fn dotdot_name_is_refused() {
    require_root!();
    let tar = Tar::new().file("../x", b"evil").finish();
    for err in refused_in_both_modes(&tar) {
        assert!(matches!(err, ApplyError::Refused { .. }), "{err:?}");
        assert_refused(&err, "'..'");
        assert_refused(&err, "\"../x\"");
    }
    let tar = Tar::new().file("a/../../x", b"evil").finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "'..'");
    }
    // The same through a PAX path and a GNU long name.
    let tar = Tar::new()
        .pax(&[("path", b"a/../../outside/keep")])
        .file("placeholder", b"evil")
        .finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "'..'");
    }
    let mut t = Tar::new();
    let long = format!("{}/../../../outside/keep", "d".repeat(150));
    let h = Tar::header(b'L', b"././@LongLink", b"", long.len() as u64 + 1, 0o644);
    t.raw(h, format!("{long}\0").as_bytes());
    let tar = t.file("placeholder", b"evil").finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "'..'");
    }
}

#[test]
fn absolute_name_lands_inside_the_root() {
    require_root!();
    let sb = Sandbox::new();
    let name = format!("{}/x", sb.outside_abs());
    let tar = Tar::new()
        .pax(&[("path", name.as_bytes())])
        .file("placeholder", b"safe")
        .finish();
    apply(&sb, &tar, WhiteoutMode::Delete).unwrap();
    sb.assert_outside_untouched();
    let inside = sb.root.join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"safe");
}

#[test]
fn write_through_absolute_symlink_stays_inside() {
    require_root!();
    for mode in MODES {
        // Pointing at the real outside dir: resolves to root/<that path>, missing there.
        let sb = Sandbox::new();
        let tar = Tar::new()
            .symlink("evil", &sb.outside_abs())
            .file("evil/x", b"evil")
            .finish();
        let err = apply(&sb, &tar, mode).unwrap_err();
        assert_refused(&err, "dangling symlink");
        sb.assert_outside_untouched();

        // Pointing at "/": resolves to the root itself.
        let sb = Sandbox::new();
        let x = sb.escape_name();
        let tar = Tar::new()
            .symlink("evil", "/")
            .file(&format!("evil/{x}"), b"safe")
            .finish();
        apply(&sb, &tar, mode).unwrap();
        sb.assert_no_escape();
        sb.assert_outside_untouched();
        assert_eq!(std::fs::read(sb.root.join(&x)).unwrap(), b"safe");

        // A symlink to an existing outside file, then a file entry over its name: the
        // symlink is replaced, the outside file untouched.
        let sb = Sandbox::new();
        let target = format!("{}/keep", sb.outside_abs());
        let tar = Tar::new()
            .symlink("evil", &target)
            .file("evil", b"replaced")
            .finish();
        apply(&sb, &tar, mode).unwrap();
        sb.assert_outside_untouched();
        assert_eq!(std::fs::read(sb.root.join("evil")).unwrap(), b"replaced");
    }
}

#[test]
fn write_through_relative_symlink_stays_inside() {
    require_root!();
    for mode in MODES {
        for target in [
            "../outside",
            "../../../../../../outside",
            "sub/../../outside",
        ] {
            let sb = Sandbox::new();
            let tar = Tar::new()
                .dir("sub")
                .symlink("sub/evil", target)
                .file("sub/evil/keep", b"evil")
                .finish();
            let err = apply(&sb, &tar, mode).unwrap_err();
            assert_refused(&err, "dangling symlink");
            sb.assert_outside_untouched();
        }
        // `..` past the root clamps at the root.
        let sb = Sandbox::new();
        let x = sb.escape_name();
        let tar = Tar::new()
            .dir("sub")
            .symlink("sub/up", "../../../../../../..")
            .file(&format!("sub/up/{x}"), b"safe")
            .finish();
        apply(&sb, &tar, mode).unwrap();
        sb.assert_no_escape();
        sb.assert_outside_untouched();
        assert_eq!(std::fs::read(sb.root.join(&x)).unwrap(), b"safe");
    }
}

#[test]
fn symlink_swapped_in_mid_archive_stays_inside() {
    require_root!();
    for mode in MODES {
        // A = dir, then A = symlink to "/", then A/file: lands at root/file.
        let sb = Sandbox::new();
        let x = sb.escape_name();
        let tar = Tar::new()
            .dir("A")
            .file("A/before", b"1")
            .symlink("A", "/")
            .file(&format!("A/{x}"), b"safe")
            .finish();
        apply(&sb, &tar, mode).unwrap();
        sb.assert_no_escape();
        sb.assert_outside_untouched();
        assert_eq!(
            std::fs::read_link(sb.root.join("A")).unwrap().to_str(),
            Some("/")
        );
        assert_eq!(std::fs::read(sb.root.join(&x)).unwrap(), b"safe");
        assert!(!sb.root.join("before").exists());

        // The same with the symlink aimed at the outside dir.
        let sb = Sandbox::new();
        let tar = Tar::new()
            .dir("A")
            .symlink("A", &sb.outside_abs())
            .file("A/keep", b"evil")
            .finish();
        let err = apply(&sb, &tar, mode).unwrap_err();
        assert_refused(&err, "dangling symlink");
        sb.assert_outside_untouched();

        // And with its mirror existing inside the root: written there.
        let sb = Sandbox::new();
        let mirror = sb.outside_abs();
        let mut t = Tar::new();
        let mut acc = String::new();
        for comp in mirror.trim_start_matches('/').split('/') {
            acc = if acc.is_empty() {
                comp.to_owned()
            } else {
                format!("{acc}/{comp}")
            };
            t.dir(&acc);
        }
        let tar = t
            .dir("A")
            .symlink("A", &mirror)
            .file("A/keep", b"inside")
            .finish();
        apply(&sb, &tar, mode).unwrap();
        sb.assert_outside_untouched();
        let inside = sb.root.join(mirror.trim_start_matches('/')).join("keep");
        assert_eq!(std::fs::read(inside).unwrap(), b"inside");
    }
}

#[test]
fn hard_links_out_of_the_root_are_refused() {
    require_root!();
    let passwd = std::fs::metadata("/etc/passwd").unwrap();
    let tar = Tar::new().hardlink("x", "../outside/keep").finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "'..'");
    }
    let tar = Tar::new().hardlink("x", "/etc/passwd").finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "does not exist");
    }
    // Through a symlinked directory pointing at /etc.
    let tar = Tar::new()
        .symlink("etcl", "/etc")
        .hardlink("x", "etcl/passwd")
        .finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "does not exist");
    }
    let tar = Tar::new()
        .symlink("out", "../outside")
        .hardlink("x", "out/keep")
        .finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "does not exist");
    }
    // The link's own name escaping.
    let tar = Tar::new()
        .file("a", b"a")
        .hardlink("../outside/new", "a")
        .finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "'..'");
    }
    // A hard link to a directory.
    let tar = Tar::new().dir("d").hardlink("x", "d").finish();
    for err in refused_in_both_modes(&tar) {
        assert_refused(&err, "directory");
    }
    // Through /etc -> root/etc when root/etc/passwd exists: linked to the root's file.
    let sb = Sandbox::new();
    let tar = Tar::new()
        .dir("etc")
        .file("etc/passwd", b"inside")
        .symlink("etcl", "/etc")
        .hardlink("x", "etcl/passwd")
        .finish();
    apply(&sb, &tar, WhiteoutMode::Delete).unwrap();
    sb.assert_outside_untouched();
    let x = std::fs::metadata(sb.root.join("x")).unwrap();
    assert_eq!(
        x.ino(),
        std::fs::metadata(sb.root.join("etc/passwd")).unwrap().ino()
    );
    assert_ne!((x.dev(), x.ino()), (passwd.dev(), passwd.ino()));
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd.nlink()
    );

    // A hard link to a symlink links the symlink itself, never its target.
    let sb = Sandbox::new();
    let target = format!("{}/keep", sb.outside_abs());
    let tar = Tar::new().symlink("s", &target).hardlink("x", "s").finish();
    apply(&sb, &tar, WhiteoutMode::Delete).unwrap();
    sb.assert_outside_untouched();
    let x = sb.root.join("x");
    assert!(x.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(&x).unwrap().to_str(),
        Some(target.as_str())
    );
}

#[test]
fn whiteouts_of_dot_and_dotdot_are_refused() {
    require_root!();
    for name in [".wh...", ".wh..", ".wh.", "d/.wh...", "d/.wh.."] {
        let tar = Tar::new().dir("d").file(name, b"").finish();
        for err in refused_in_both_modes(&tar) {
            assert!(matches!(err, ApplyError::Refused { .. }), "{name}: {err:?}");
            assert_refused(&err, "whiteout names no file");
        }
    }
}

#[test]
fn whiteouts_through_symlinks_stay_inside() {
    require_root!();
    for target_of in [
        |sb: &Sandbox| sb.outside_abs(),
        |_: &Sandbox| "../outside".to_owned(),
    ] {
        // Delete: the parent resolves inside the root, where nothing is: no-op.
        let sb = Sandbox::new();
        let tar = Tar::new()
            .symlink("ln", &target_of(&sb))
            .file("ln/.wh.keep", b"")
            .file("ln/.wh..wh..opq", b"")
            .finish();
        apply(&sb, &tar, WhiteoutMode::Delete).unwrap();
        sb.assert_outside_untouched();
        // Overlay: a whiteout needs its parent, a dangling symlink: refused.
        let sb = Sandbox::new();
        let tar = Tar::new()
            .symlink("ln", &target_of(&sb))
            .file("ln/.wh.keep", b"")
            .finish();
        let err = apply(&sb, &tar, WhiteoutMode::Overlay).unwrap_err();
        assert_refused(&err, "dangling symlink");
        sb.assert_outside_untouched();
    }
    // A symlink to "/" leads back to the root: the whiteout acts there.
    let sb = Sandbox::new();
    let x = sb.escape_name();
    std::fs::write(sb.root.join(&x), b"lower").unwrap();
    let tar = Tar::new()
        .symlink("ln", "/")
        .file(&format!("ln/.wh.{x}"), b"")
        .finish();
    apply(&sb, &tar, WhiteoutMode::Delete).unwrap();
    sb.assert_outside_untouched();
    assert!(!sb.root.join(&x).exists());
    // Whiteout of a symlink removes the symlink, not its target.
    let sb = Sandbox::new();
    let target = format!("{}/keep", sb.outside_abs());
    std::os::unix::fs::symlink(&target, sb.root.join("s")).unwrap();
    let tar = Tar::new().file(".wh.s", b"").finish();
    apply(&sb, &tar, WhiteoutMode::Delete).unwrap();
    sb.assert_outside_untouched();
    assert!(sb.root.join("s").symlink_metadata().is_err());
}

#[test]
fn forged_overlay_xattrs_are_dropped() {
    require_root!();
    for mode in MODES {
        let sb = Sandbox::new();
        let tar = Tar::new()
            .pax(&[
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                ("SCHILY.xattr.user.overlay.origin", b"x"),
                ("SCHILY.xattr.user.ok", b"kept"),
            ])
            .dir("d")
            .pax(&[("SCHILY.xattr.trusted.overlay.metacopy", b"")])
            .file("f", b"data")
            .finish();
        let stats = apply(&sb, &tar, mode).unwrap();
        assert_eq!(stats.dropped_xattrs, 4);
        let d = strata_testkit::xattrs(&sb.root.join("d"));
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![(b"user.ok".to_vec(), b"kept".to_vec())]
        );
        assert!(strata_testkit::xattrs(&sb.root.join("f")).is_empty());
        sb.assert_outside_untouched();
    }
}

/// A tar with one `size`-byte file of zeros, streamed into `w` (never in memory).
fn write_zero_file_tar(w: &mut impl Write, size: u64) {
    let h = Tar::header(b'0', b"zeros", b"", size, 0o644);
    w.write_all(h.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    w.write_all(&[0u8; 1024]).unwrap();
}

#[test]
fn decompression_bomb_hits_the_total_limit() {
    require_root!();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    write_zero_file_tar(&mut enc, 1 << 30);
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 16 << 20, "bomb is {} bytes", bomb.len());
    let limits = Limits {
        max_total_bytes: 64 << 20,
        ..Limits::default()
    };
    let sb = Sandbox::new();
    let layer = open_layer(None, &bomb[..], &limits).unwrap();
    let err = apply_layer(layer, &sb.root, WhiteoutMode::Overlay, &limits).unwrap_err();
    assert!(
        matches!(err, ApplyError::LimitExceeded { what: Limit::TotalBytes, limit, .. } if limit == 64 << 20),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(err.to_string().contains("uncompressed layer size"), "{err}");
    sb.assert_outside_untouched();
    // The partial file is no bigger than the limit, and memory stayed small.
    assert!(std::fs::metadata(sb.root.join("zeros")).unwrap().len() <= 64 << 20);
    assert!(
        strata_testkit::peak_rss_mib() < 256,
        "peak RSS {} MiB",
        strata_testkit::peak_rss_mib()
    );

    // Zeros after the end-of-archive marker count too (they are hashed).
    let mut tail = Tar::new().file("a", b"a").finish();
    tail.extend(std::iter::repeat_n(0u8, 2 << 20));
    let gz = strata_testkit::gzip(&tail);
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let sb = Sandbox::new();
    let err = apply_layer(
        open_layer(None, &gz[..], &limits).unwrap(),
        &sb.root,
        WhiteoutMode::Overlay,
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::LimitExceeded {
                what: Limit::TotalBytes,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn entry_count_bomb_hits_the_entry_limit() {
    require_root!();
    let mut t = Tar::new();
    for i in 0..1000 {
        t.file(&format!("f{i}"), b"");
    }
    let tar = t.finish();
    let limits = Limits {
        max_entries: 100,
        ..Limits::default()
    };
    let sb = Sandbox::new();
    let err = apply_layer(&tar[..], &sb.root, WhiteoutMode::Overlay, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::LimitExceeded {
                what: Limit::Entries,
                limit: 100,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("\"f100\""), "{err}");
    assert_eq!(std::fs::read_dir(&sb.root).unwrap().count(), 100);
    sb.assert_outside_untouched();
}

#[test]
fn giant_extension_headers_are_refused_before_buffering() {
    require_root!();
    // Only the header is written: the applier must refuse on the size field alone.
    for typeflag in [b'x', b'L', b'K'] {
        let mut t = Tar::new();
        let h = Tar::header(typeflag, b"PaxHeader", b"", 16 << 20, 0o644);
        t.raw(h, b"");
        let stream = t.buf.clone();
        let sb = Sandbox::new();
        let err = apply(&sb, &stream, WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::LimitExceeded {
                    what: Limit::HeaderSize,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // A real 16 MiB PAX record.
    let big = vec![b'a'; 16 << 20];
    let tar = Tar::new().pax(&[("comment", &big)]).file("f", b"").finish();
    let sb = Sandbox::new();
    let err = apply(&sb, &tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(
        matches!(err, ApplyError::LimitExceeded { what: Limit::HeaderSize, limit, .. } if limit == 1 << 20)
    );
    sb.assert_outside_untouched();
    // Long paths and components.
    let long = "d/".repeat(2100);
    let tar = Tar::new()
        .pax(&[("path", long.as_bytes())])
        .file("f", b"")
        .finish();
    let err = apply(&sb, &tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::LimitExceeded {
                what: Limit::PathLength,
                ..
            }
        ),
        "{err:?}"
    );
    let tar = Tar::new()
        .pax(&[("path", "n".repeat(300).as_bytes())])
        .file("f", b"")
        .finish();
    let err = apply(&sb, &tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::LimitExceeded {
                what: Limit::ComponentLength,
                ..
            }
        ),
        "{err:?}"
    );
    // An error message never carries the whole hostile name.
    assert!(err.to_string().len() < 400, "{}", err.to_string().len());
}

#[test]
fn zstd_frame_with_a_huge_window_is_refused() {
    // magic, frame header descriptor 0 (no content size, not single segment, no
    // checksum, no dictionary), window descriptor exponent 20 => 2^30 bytes, then a
    // raw last block of 3 bytes.
    let frame = [
        0x28,
        0xb5,
        0x2f,
        0xfd,
        0x00,
        20 << 3,
        0x19,
        0x00,
        0x00,
        b'a',
        b'b',
        b'c',
    ];
    let limits = Limits::default();
    let mut r = open_layer(
        Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        &frame[..],
        &limits,
    )
    .unwrap();
    assert!(r.read_to_end(&mut Vec::new()).is_err());
    let sb = Sandbox::new();
    let err = apply_layer(
        open_layer(None, &frame[..], &limits).unwrap(),
        &sb.root,
        WhiteoutMode::Overlay,
        &limits,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::LimitExceeded {
                what: Limit::ZstdWindow,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("zstd window"), "{err}");
    // Within the limit the same frame decodes.
    let ok = Limits {
        zstd_window_log_max: 30,
        ..Limits::default()
    };
    let mut out = Vec::new();
    open_layer(None, &frame[..], &ok)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, b"abc");
}

#[test]
fn truncated_and_corrupt_tars_are_malformed() {
    require_root!();
    let tar = Tar::new().file("a", &[7u8; 3000]).file("b", b"b").finish();
    for cut in [100, 512 + 1000, 512 + 3072 + 200] {
        let sb = Sandbox::new();
        let err = apply(&sb, &tar[..cut], WhiteoutMode::Overlay).unwrap_err();
        assert!(
            matches!(err, ApplyError::Malformed { .. }),
            "cut {cut}: {err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    // A flipped byte in a name: checksum mismatch.
    let mut bad = tar.clone();
    bad[512 + 3072] ^= 0x20;
    let sb = Sandbox::new();
    let err = apply(&sb, &bad, WhiteoutMode::Overlay).unwrap_err();
    assert!(
        matches!(err, ApplyError::Malformed { offset: 3584, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
    // Truncated gzip.
    let gz = strata_testkit::gzip(&tar);
    let sb = Sandbox::new();
    let err = apply_layer(
        open_layer(None, &gz[..gz.len() / 2], &Limits::default()).unwrap(),
        &sb.root,
        WhiteoutMode::Overlay,
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
    // A PAX header with no entry after it.
    let mut t = Tar::new();
    t.pax(&[("path", b"x")]);
    let tar = t.finish();
    let err = apply(&sb, &tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(err.to_string().contains("without an entry"), "{err}");
}

#[test]
fn unsupported_entries_are_refused() {
    require_root!();
    let sb = Sandbox::new();
    let tar = Tar::new().entry(b'S', b"sparse", b"", b"", 0o644).finish();
    assert!(
        apply(&sb, &tar, WhiteoutMode::Overlay)
            .unwrap_err()
            .to_string()
            .contains("sparse")
    );
    let tar = Tar::new().entry(b'Z', b"odd", b"", b"", 0o644).finish();
    assert!(
        apply(&sb, &tar, WhiteoutMode::Overlay)
            .unwrap_err()
            .to_string()
            .contains("unsupported entry type")
    );
    let tar = Tar::new().pax(&[("path", b"a\0b")]).file("x", b"").finish();
    assert!(
        apply(&sb, &tar, WhiteoutMode::Overlay)
            .unwrap_err()
            .to_string()
            .contains("NUL")
    );
    let tar = Tar::new().file("f", b"").file("f/x", b"").finish();
    let err = apply(&sb, &tar, WhiteoutMode::Overlay).unwrap_err();
    assert!(err.to_string().contains("cannot be resolved"), "{err}");
    sb.assert_outside_untouched();
}

#[test]
fn unknown_media_type_is_refused() {
    let err = open_layer(
        Some("application/vnd.oci.image.layer.v1.tar+lz4"),
        &b""[..],
        &Limits::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, ApplyError::UnsupportedMediaType(_)));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}
