//! Layer decompression: the media type (or, when none is given, the first bytes) picks
//! gzip, zstd or plain tar, and [`open_layer`] returns a reader of the uncompressed tar.
//!
//! Everything is decoded in-process (flate2 with zlib-rs, libzstd), so no external binary
//! ever sees a layer. A zstd frame may ask for a window of up to 2 GiB (or more with
//! `--long`), which the decoder would allocate; the window is capped by
//! [`Limits::zstd_window_log_max`]. gzip needs a fixed 32 KiB window. Output size is not
//! bounded here: the applier counts uncompressed bytes against
//! [`Limits::max_total_bytes`].
//!
//! Errors are sorted as they happen: a failure of the caller's reader comes out of the
//! returned reader unchanged, while corrupt compressed data comes out as an
//! `io::Error` carrying a [`DecodeError`], which the applier reports as
//! [`ApplyError::Decompress`] or, for an oversized zstd window,
//! [`ApplyError::LimitExceeded`].

use std::fmt;
use std::io::{self, Read};

use crate::{ApplyError, ApplyResult, Limit, Limits};

/// A layer's compression, a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    Uncompressed,
    /// gzip (RFC 1952), possibly several members back to back.
    Gzip,
    /// zstd, possibly several frames back to back.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Uncompressed => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// The compression of an OCI or Docker layer media type; any other media type is
    /// [`ApplyError::UnsupportedMediaType`].
    pub fn from_media_type(media_type: &str) -> ApplyResult<Compression> {
        Ok(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::Uncompressed,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            other => return Err(ApplyError::UnsupportedMediaType(other.to_owned())),
        })
    }

    /// The compression the first bytes of a stream announce; anything that is neither
    /// gzip nor zstd is taken for a plain tar (the tar reader then judges it).
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if prefix.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::Uncompressed
        }
    }
}

/// Opens a layer blob for reading its uncompressed tar.
///
/// `media_type` `None` or `Some("")` detects the compression from the magic bytes;
/// a known OCI/Docker layer media type selects it; any other is refused with
/// [`ApplyError::UnsupportedMediaType`].
pub fn open_layer<'a>(
    media_type: Option<&str>,
    reader: impl Read + Send + 'a,
    limits: &Limits,
) -> ApplyResult<Box<dyn Read + Send + 'a>> {
    let mut reader = SourceReader(reader);
    let (compression, reader): (Compression, Box<dyn Read + Send + 'a>) = match media_type {
        Some(mt) if !mt.is_empty() => (Compression::from_media_type(mt)?, Box::new(reader)),
        _ => {
            let mut prefix = [0u8; 4];
            let mut n = 0;
            while n < prefix.len() {
                match reader.0.read(&mut prefix[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ApplyError::Read(e)),
                }
            }
            let compression = Compression::detect(&prefix[..n]);
            let chained = io::Cursor::new(prefix).take(n as u64).chain(reader);
            (compression, Box::new(chained))
        }
    };
    Ok(match compression {
        Compression::Uncompressed => Box::new(Decoded {
            inner: reader,
            format: compression,
        }),
        Compression::Gzip => Box::new(Decoded {
            inner: flate2::read::MultiGzDecoder::new(reader),
            format: compression,
        }),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(reader).map_err(|e| ApplyError::Decompress {
                    format: compression,
                    source: e,
                })?;
            decoder
                .window_log_max(limits.zstd_window_log_max)
                .map_err(|e| ApplyError::Decompress {
                    format: compression,
                    source: e,
                })?;
            Box::new(Decoded {
                inner: decoder,
                format: compression,
            })
        }
    })
}

/// The caller's reader; its errors are tagged so they pass the decoder unchanged.
struct SourceReader<R>(R);

#[derive(Debug)]
struct SourceError(io::Error);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SourceError {}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

/// Corrupt or hostile compressed data, as carried inside the `io::Error`s of the reader
/// [`open_layer`] returns.
#[derive(Debug)]
pub struct DecodeError {
    format: Compression,
    source: io::Error,
}

impl DecodeError {
    /// Whether the decoder refused a frame for the memory (window) it asked for.
    fn is_window_too_large(&self) -> bool {
        // libzstd's ZSTD_error_frameParameter_windowTooLarge; the zstd crate passes
        // only its text on.
        self.format == Compression::Zstd
            && self.source.to_string().contains("requires too much memory")
    }

    /// The applier's error for this decode failure.
    pub(crate) fn into_error(self, limits: &Limits) -> ApplyError {
        if self.is_window_too_large() {
            ApplyError::LimitExceeded {
                what: Limit::ZstdWindow,
                limit: 1u64 << limits.zstd_window_log_max,
                at: None,
            }
        } else {
            ApplyError::Decompress {
                format: self.format,
                source: self.source,
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corrupt {} stream: {}", self.format, self.source)
    }
}

impl std::error::Error for DecodeError {}

/// A decoder whose own errors become [`DecodeError`]s and whose source's errors are
/// unwrapped back to what the caller's reader returned.
struct Decoded<D> {
    inner: D,
    format: Compression,
}

impl<D: Read> Read for Decoded<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|i| i.is::<SourceError>()) {
                let kind = e.kind();
                match e.into_inner().map(|i| i.downcast::<SourceError>()) {
                    Some(Ok(src)) => src.0,
                    _ => io::Error::from(kind),
                }
            } else if self.format == Compression::Uncompressed {
                e
            } else {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    DecodeError {
                        format: self.format,
                        source: e,
                    },
                )
            }
        })
    }
}

/// Classifies an error of a layer reader: a [`DecodeError`] inside becomes the decode
/// error, anything else a read failure.
pub(crate) fn read_error(e: io::Error, limits: &Limits) -> ApplyError {
    if e.get_ref().is_some_and(|i| i.is::<DecodeError>()) {
        if let Some(Ok(d)) = e.into_inner().map(|i| i.downcast::<DecodeError>()) {
            return d.into_error(limits);
        }
        return ApplyError::Read(io::Error::other("decode error lost"));
    }
    ApplyError::Read(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .unwrap(),
            Compression::Gzip
        );
        let err =
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+lz4").unwrap_err();
        assert!(matches!(err, ApplyError::UnsupportedMediaType(_)));
        assert!(open_layer(Some("text/plain"), &b""[..], &Limits::default()).is_err());
    }

    #[test]
    fn detects_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(&ZSTD_MAGIC), Compression::Zstd);
        assert_eq!(Compression::detect(b"etc/"), Compression::Uncompressed);
        assert_eq!(Compression::detect(b""), Compression::Uncompressed);
    }

    #[test]
    fn short_stream_detects_and_reads_back() {
        let mut out = Vec::new();
        open_layer(None, &b"ab"[..], &Limits::default())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"ab");
    }

    #[test]
    fn corrupt_gzip_is_a_decode_error() {
        let data = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff];
        let mut r = open_layer(None, &data[..], &Limits::default()).unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        let err = read_error(e, &Limits::default());
        assert!(
            matches!(
                err,
                ApplyError::Decompress {
                    format: Compression::Gzip,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn source_errors_pass_through() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"))
            }
        }
        let mut r = open_layer(
            Some("application/vnd.oci.image.layer.v1.tar+gzip"),
            Failing,
            &Limits::default(),
        )
        .unwrap();
        let e = r.read(&mut [0; 16]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(
            read_error(e, &Limits::default()),
            ApplyError::Read(_)
        ));
    }
}
