//! Pushing blobs and manifests (what `strata convert` writes its images with): a blob is
//! skipped when the registry has it (HEAD), else uploaded monolithically (POST an
//! upload, PUT its `Location` with the digest); a manifest is a PUT by tag. Pushes go
//! to the hosts with the push capability (the registry itself unless a `hosts.toml`
//! says otherwise), with the same credentials and token handling as pulls.

use bytes::Bytes;
use http::Method;
use http::header::LOCATION;
use strata_proto::Digest;

use crate::client::{HostErrors, RegistryClient, Req, resolve_location};
use crate::hosts::Capabilities;
use crate::reference::Reference;
use crate::{Error, Result};

impl RegistryClient {
    /// Uploads `data` as blob `digest` of `reference`'s repository, unless it is there.
    pub async fn push_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        data: Bytes,
    ) -> Result<()> {
        let what = format!("push blob {digest} to {}", reference.name());
        let repo = reference.repository();
        let mut errors = HostErrors::default();
        for host in &self.hosts(reference.registry(), Capabilities::PUSH)? {
            let head = Req::new(Method::HEAD, repo, format!("/blobs/{digest}"));
            if self.send_host(host, &head).await.is_ok() {
                return Ok(());
            }
            let post = Req::new(Method::POST, repo, "/blobs/uploads/".into());
            let resp = match self.send_host(host, &post).await {
                Ok(r) => r,
                Err(e) => {
                    errors.push(host, e);
                    continue;
                }
            };
            let base: http::Uri = format!("{}/{repo}/blobs/uploads/", host.base_url())
                .parse()
                .map_err(|_| {
                    Error::invalid(format!("cannot build a URL for {}", host.authority))
                })?;
            let Some(loc) = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| resolve_location(&base, l))
            else {
                errors.push(host, Error::invalid("upload answered without a Location"));
                continue;
            };
            let sep = if loc.query().is_some() { '&' } else { '?' };
            let url: http::Uri = format!("{loc}{sep}digest={digest}")
                .parse()
                .map_err(|_| Error::invalid("bad upload Location"))?;
            let mut put = Req::new(Method::PUT, repo, String::new());
            put.url = Some(url);
            put.body = Some((data.clone(), "application/octet-stream"));
            match self.send_host(host, &put).await {
                Ok(_) => return Ok(()),
                Err(e) => errors.push(host, e),
            }
        }
        Err(errors.finish(&what))
    }

    /// Puts manifest `body` (of `media_type`) at `reference`'s tag (or digest); returns
    /// its digest.
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        media_type: &'static str,
        body: Bytes,
    ) -> Result<Digest> {
        use sha2::Digest as _;
        let digest = Digest::from_bytes(
            strata_proto::Algorithm::Sha256,
            &sha2::Sha256::digest(&body),
        )
        .map_err(|e| Error::internal("hash manifest", e))?;
        let object = match (reference.tag(), reference.digest()) {
            (Some(t), _) => t.to_owned(),
            (None, Some(d)) => d.to_string(),
            (None, None) => "latest".to_owned(),
        };
        let what = format!("push manifest {} to {}", object, reference.name());
        let mut errors = HostErrors::default();
        for host in &self.hosts(reference.registry(), Capabilities::PUSH)? {
            let mut put = Req::new(
                Method::PUT,
                reference.repository(),
                format!("/manifests/{object}"),
            );
            put.body = Some((body.clone(), media_type));
            match self.send_host(host, &put).await {
                Ok(_) => return Ok(digest),
                Err(e) => errors.push(host, e),
            }
        }
        Err(errors.finish(&what))
    }
}
