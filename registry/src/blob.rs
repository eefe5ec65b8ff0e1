//! Blob fetches: whole or by HTTP Range, verified as they stream.
//!
//! A registry that ignores `Range` answers 200 with the whole blob; the stream then skips
//! the prefix itself and stops at the range's end, and [`BlobStream::range_honoured`]
//! says so (the bytes were transferred anyway, so a caller may prefer a whole fetch next
//! time). Whenever the stream sees the blob from byte 0 to its end, it also checks the
//! digest; it always checks the length.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::Method;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use strata_proto::Digest;

use crate::client::{HostErrors, RegistryClient, Req};
use crate::hosts::Capabilities;
use crate::media::Descriptor;
use crate::reference::Reference;
use strata_proto::{Error, ErrorKind, Result};

/// Streaming sha256/sha512, matching a [`Digest`]'s algorithm.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(alg: strata_proto::Algorithm) -> Hasher {
        use sha2::Digest as _;
        match alg {
            strata_proto::Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            strata_proto::Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        use sha2::Digest as _;
        let (alg, bytes) = match self {
            Hasher::Sha256(h) => (strata_proto::Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (strata_proto::Algorithm::Sha512, h.finalize().to_vec()),
        };
        Digest::from_bytes(alg, &bytes).expect("hash length matches its algorithm")
    }

    pub(crate) fn digest_of(alg: strata_proto::Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(alg);
        h.update(data);
        h.finish()
    }
}

/// The bytes of a blob (or of a range of it), as they arrive.
///
/// Yields exactly [`BlobStream::len`] bytes starting at blob offset
/// [`BlobStream::offset`], or ends with an error: `DataLoss` when the registry sends too
/// few or too many bytes, another range, or (when the whole blob passed through) content
/// whose digest differs; `Unavailable` when the connection fails or stalls.
///
/// It is a [`Stream`] of chunks and also a [`tokio::io::AsyncRead`]; a read error is an
/// `io::Error` whose inner error is this crate's [`Error`].
pub struct BlobStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
    /// What `poll_read` has taken from `inner` but not handed out yet.
    pending: Bytes,
    offset: u64,
    len: u64,
    range_honoured: bool,
    verifies_digest: bool,
}

impl BlobStream {
    /// Blob offset of the first byte yielded.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of bytes the stream yields.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the stream yields nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `false` when a range was asked for and the registry sent the whole blob instead
    /// (the stream skipped the prefix itself).
    pub fn range_honoured(&self) -> bool {
        self.range_honoured
    }

    /// Whether the stream checks the blob's digest before its end (it does whenever the
    /// whole blob passes through it).
    pub fn verifies_digest(&self) -> bool {
        self.verifies_digest
    }
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("range_honoured", &self.range_honoured)
            .field("verifies_digest", &self.verifies_digest)
            .finish()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut self.pending))));
        }
        self.inner.as_mut().poll_next(cx)
    }
}

impl tokio::io::AsyncRead for BlobStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.pending.is_empty() {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(Some(Ok(b))) => self.pending = b,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

struct State {
    body: Incoming,
    idle: Duration,
    /// Bytes still to drop before yielding (registry ignored Range).
    skip: u64,
    /// Bytes still to yield.
    want: u64,
    /// Bytes received from the server so far.
    received: u64,
    /// How many bytes the server must send in all.
    expect_total: u64,
    /// Set when the stream sees the whole blob from byte 0.
    hasher: Option<(Hasher, Digest)>,
    done: bool,
    what: String,
}

impl State {
    async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.done {
            return None;
        }
        loop {
            // Reading stops once the range is served, unless the rest must be hashed.
            if self.want == 0 && self.hasher.is_none() {
                self.done = true;
                return None;
            }
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => {
                    return self.fail(Error::new(
                        ErrorKind::Unavailable,
                        format!("{}: read stalled", self.what),
                    ));
                }
                Ok(None) => return self.finish(),
                Ok(Some(Err(e))) => {
                    return self.fail(
                        Error::new(ErrorKind::Unavailable, format!("read {}", self.what))
                            .with_source(e),
                    );
                }
                Ok(Some(Ok(f))) => f,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            self.received += data.len() as u64;
            if self.received > self.expect_total {
                return self.fail(Error::data_loss(format!(
                    "{}: registry sent more than the expected {} bytes",
                    self.what, self.expect_total
                )));
            }
            if let Some((h, _)) = &mut self.hasher {
                h.update(&data);
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = data.slice(n as usize..);
            }
            let n = self.want.min(data.len() as u64);
            data.truncate(n as usize);
            self.want -= n;
            if !data.is_empty() {
                return Some(Ok(data));
            }
        }
    }

    fn finish(&mut self) -> Option<Result<Bytes>> {
        self.done = true;
        if self.received < self.expect_total {
            return self.fail(Error::data_loss(format!(
                "{}: registry sent {} of {} bytes",
                self.what, self.received, self.expect_total
            )));
        }
        if let Some((h, want)) = self.hasher.take() {
            let got = h.finish();
            if got != want {
                return self.fail(Error::data_loss(format!(
                    "{}: content has digest {got}",
                    self.what
                )));
            }
        }
        None
    }

    fn fail(&mut self, e: Error) -> Option<Result<Bytes>> {
        self.done = true;
        Some(Err(e))
    }
}

impl RegistryClient {
    /// Streams the blob `desc` of `reference`'s repository, or the byte `range` of it.
    ///
    /// Tries the registry's hosts with the `pull` capability in order (mirrors first); a
    /// host that fails before the body starts is skipped. `range` must be non-empty and
    /// inside `0..desc.size`.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        range: Option<Range<u64>>,
    ) -> Result<BlobStream> {
        let what = format!("blob {} of {}", desc.digest, reference.name());
        let (start, end) = match range {
            Some(r) if r.start >= r.end || r.end > desc.size => {
                return Err(Error::new(
                    ErrorKind::OutOfRange,
                    format!(
                        "{what}: range {}..{} outside 0..{}",
                        r.start, r.end, desc.size
                    ),
                ));
            }
            Some(r) => (r.start, r.end),
            None => (0, desc.size),
        };
        let partial = start > 0 || end < desc.size;
        let mut req = Req::new(
            Method::GET,
            reference.repository(),
            format!("/blobs/{}", desc.digest),
        );
        req.range = partial.then(|| (start, end - 1));
        let hosts = self.hosts(reference.registry(), Capabilities::PULL)?;
        let mut errors = HostErrors::default();
        for host in &hosts {
            let resp = match self.send_host(host, &req).await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(host, e);
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let content_length = header_u64(&resp, CONTENT_LENGTH);
            let (honoured, skip, expect_total) = if status == 206 && partial {
                let cr = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                match parse_content_range(cr) {
                    Some((s, e, total))
                        if s == start && e + 1 == end && total.is_none_or(|t| t == desc.size) => {}
                    _ => {
                        errors.push(
                            host,
                            Error::data_loss(format!(
                                "asked for bytes {start}-{}, registry answered Content-Range {:?}",
                                end - 1,
                                cr.chars().take(80).collect::<String>()
                            )),
                        );
                        continue;
                    }
                }
                (true, 0, end - start)
            } else if status == 200 {
                (!partial, start, desc.size)
            } else {
                errors.push(
                    host,
                    Error::data_loss(format!("unexpected status {status}")),
                );
                continue;
            };
            if let Some(len) = content_length
                && len != expect_total
            {
                errors.push(
                    host,
                    Error::data_loss(format!("Content-Length {len}, expected {expect_total}")),
                );
                continue;
            }
            // The whole blob flows from byte 0 when the server sent all of it and the range
            // reaches the end: then the digest can be checked too.
            let whole = expect_total == desc.size && end == desc.size;
            let state = State {
                body: resp.into_body(),
                idle: self.options().read_timeout,
                skip,
                want: end - start,
                received: 0,
                expect_total,
                hasher: whole.then(|| (Hasher::new(desc.digest.algorithm()), desc.digest.clone())),
                done: false,
                what: what.clone(),
            };
            let verifies_digest = state.hasher.is_some();
            let inner = futures::stream::unfold(state, |mut st| async move {
                let item = st.next().await?;
                Some((item, st))
            });
            return Ok(BlobStream {
                inner: Box::pin(inner),
                pending: Bytes::new(),
                offset: start,
                len: end - start,
                range_honoured: honoured,
                verifies_digest,
            });
        }
        Err(errors.finish(&format!("fetch {what}")))
    }

    /// The size of blob `digest` in `reference`'s repository, from a HEAD request.
    pub async fn blob_size(&self, reference: &Reference, digest: &Digest) -> Result<u64> {
        let what = format!("blob {digest} of {}", reference.name());
        let req = Req::new(
            Method::HEAD,
            reference.repository(),
            format!("/blobs/{digest}"),
        );
        let hosts = self.hosts(reference.registry(), Capabilities::PULL)?;
        let mut errors = HostErrors::default();
        for host in &hosts {
            match self.send_host(host, &req).await {
                Ok(resp) => match header_u64(&resp, CONTENT_LENGTH) {
                    Some(n) => return Ok(n),
                    None => errors.push(host, Error::data_loss("no Content-Length")),
                },
                Err(e) => errors.push(host, e),
            }
        }
        Err(errors.finish(&format!("stat {what}")))
    }
}

fn header_u64(resp: &http::Response<Incoming>, name: http::HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `bytes S-E/T` or `bytes S-E/*`.
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (s, e) = range.split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    if e < s {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((s, e, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes -1/2"), None);
    }
}
