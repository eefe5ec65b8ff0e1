//! The snapshotter's [`BlobSource`] over the registry client: the random access to layer
//! blobs a lazy backend reads through, with the credentials, mirrors and TLS settings of
//! each blob's registry (the same `hosts.toml` and docker config as pulls).

use std::ops::Range;

use futures::StreamExt;
use strata_proto::Digest;
use strata_snapshotter::remote::{BlobSource, RemoteBlob};
use tokio::runtime::Handle;

use crate::registry::{Descriptor, Reference, RegistryClient};
use crate::{Error, ErrorKind, Result, ResultExt};

/// [`BlobSource`] over a [`RegistryClient`]. Its calls block on `rt`: call them from
/// threads of their own (a FUSE server's), never from the runtime's workers.
pub struct RegistryBlobs {
    client: RegistryClient,
    rt: Handle,
}

impl RegistryBlobs {
    /// Reads through `client`, driving its requests on `rt`.
    pub fn new(client: RegistryClient, rt: Handle) -> Self {
        RegistryBlobs { client, rt }
    }
}

impl BlobSource for RegistryBlobs {
    fn read_range(&self, blob: &RemoteBlob, range: Range<u64>) -> Result<Vec<u8>> {
        let what = || format!("read {}..{} of {}", range.start, range.end, blob.digest);
        if range.start > range.end || range.end > blob.size {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("{}: outside 0..{}", what(), blob.size),
            ));
        }
        if range.start == range.end {
            return Ok(Vec::new());
        }
        let reference = Reference::parse(&blob.reference).with_context(what)?;
        // The media type plays no part in a blob request.
        let desc = Descriptor::new(String::new(), blob.digest.clone(), blob.size);
        let want = usize::try_from(range.end - range.start)
            .map_err(|_| Error::new(ErrorKind::OutOfRange, format!("{}: too large", what())))?;
        let out = self
            .rt
            .block_on(async {
                // A registry that ignores the range sends the whole blob; the stream skips
                // the prefix itself and yields exactly the range.
                let mut stream = self
                    .client
                    .fetch_blob(&reference, &desc, Some(range.clone()))
                    .await?;
                let mut out = Vec::with_capacity(want);
                while let Some(chunk) = stream.next().await {
                    out.extend_from_slice(&chunk?);
                    if out.len() > want {
                        break;
                    }
                }
                Ok::<_, Error>(out)
            })
            .with_context(what)?;
        if out.len() != want {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "{}: the registry sent {} of {want} bytes",
                    what(),
                    out.len()
                ),
            ));
        }
        Ok(out)
    }

    fn blob_size(&self, reference: &str, digest: &Digest) -> Result<u64> {
        let what = || format!("size of {digest} in {reference}");
        let reference = Reference::parse(reference).with_context(what)?;
        self.rt
            .block_on(self.client.blob_size(&reference, digest))
            .with_context(what)
    }
}
