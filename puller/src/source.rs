//! The registry as the fetch's [`FetchSource`]: a blocking bridge from the async registry
//! client's blob streams to the `Read`s the content store's writer is fed with, and
//! in-memory documents as a source.

use std::io::Read;

use bytes::Bytes;
use futures::StreamExt;
use tokio::runtime::Handle;

use crate::Result;
use crate::fetch::{Blob, FetchSource};
use crate::registry::{self, Descriptor, Reference, RegistryClient};

/// Reads a registry blob stream synchronously, for the content store's writer.
pub(crate) struct StreamReader {
    rt: Handle,
    stream: registry::BlobStream,
    chunk: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// A registry repository as a [`FetchSource`].
pub(crate) struct RegistrySource<'a> {
    pub(crate) rt: Handle,
    pub(crate) client: &'a RegistryClient,
    pub(crate) reference: &'a Reference,
}

impl FetchSource for RegistrySource<'_> {
    fn open(&self, blob: &Blob, offset: u64) -> Result<(Box<dyn Read + Send>, u64)> {
        let range = (offset > 0 && offset < blob.size).then_some(offset..blob.size);
        let stream = self.stream(blob, range)?;
        let start = stream.offset();
        Ok((
            Box::new(StreamReader {
                rt: self.rt.clone(),
                stream,
                chunk: Bytes::new(),
            }),
            start,
        ))
    }

    fn open_range(
        &self,
        blob: &Blob,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Box<dyn Read + Send>>> {
        let stream = self.stream(blob, Some(range))?;
        // A server that ignores ranges would send the prefix again for every chunk.
        if !stream.range_honoured() {
            return Ok(None);
        }
        Ok(Some(Box::new(StreamReader {
            rt: self.rt.clone(),
            stream,
            chunk: Bytes::new(),
        })))
    }
}

impl RegistrySource<'_> {
    fn stream(
        &self,
        blob: &Blob,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<registry::BlobStream> {
        let desc = Descriptor::new(blob.media_type.clone(), blob.digest.clone(), blob.size);
        self.rt
            .block_on(self.client.fetch_blob(self.reference, &desc, range))
    }
}

/// In-memory bytes as a [`FetchSource`] (documents already fetched and verified).
pub(crate) struct BytesSource(pub(crate) Bytes);

impl FetchSource for BytesSource {
    fn open(&self, _: &Blob, offset: u64) -> Result<(Box<dyn Read + Send>, u64)> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        Ok((
            Box::new(std::io::Cursor::new(self.0.slice(start..))),
            start as u64,
        ))
    }
}

pub(crate) fn blob_of(d: &Descriptor) -> Blob {
    Blob {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
    }
}
