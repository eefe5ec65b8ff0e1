//! Resolve: reference -> (index ->) platform's manifest -> config, every document capped
//! at [`MAX_DOCUMENT_SIZE`], classified (index vs manifest) and checked against the digest
//! and size that pointed to it before it is parsed further.

use bytes::Bytes;
use http::Method;
use http::header::CONTENT_TYPE;
use strata_proto::Digest;

use crate::blob::Hasher;
use crate::client::{HostErrors, RegistryClient, Req, read_capped};
use crate::hosts::{Capabilities, RegistryHost};
use crate::media::{
    DOCKER_CONFIG, Descriptor, ImageConfig, Index, MANIFEST_ACCEPT, MAX_DOCUMENT_SIZE, Manifest,
    ManifestKind, OCI_CONFIG, classify,
};
use crate::reference::Reference;
use strata_proto::Platform;
use strata_proto::{Error, ErrorKind, Result};

const MAX_INDEX_DEPTH: usize = 4;

/// A reference resolved to its top-level document.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The reference, pinned to the document's digest.
    pub reference: Reference,
    /// The document's descriptor (media type, digest, size).
    pub descriptor: Descriptor,
    /// Index or manifest.
    pub kind: ManifestKind,
    /// The document's bytes, verified against `descriptor`.
    pub body: Bytes,
}

/// A reference resolved all the way to one platform's manifest and config.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference, pinned to the top-level digest (what an image record stores).
    pub reference: Reference,
    /// The top-level document: an index, or the manifest itself.
    pub root: Resolved,
    /// The platform's manifest descriptor (`root.descriptor` for a single-platform image).
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest's bytes.
    pub manifest_body: Bytes,
    /// The config's bytes, verified against `manifest.config`.
    pub config_body: Bytes,
    /// The parsed config.
    pub config: ImageConfig,
}

impl RegistryClient {
    /// Resolves `reference` to its top-level document: by digest when the reference pins
    /// one (the body must hash to it), else by tag (a `Docker-Content-Digest` header must
    /// agree with the body).
    pub async fn resolve(&self, reference: &Reference) -> Result<Resolved> {
        let need = if reference.digest().is_some() {
            Capabilities::PULL
        } else {
            Capabilities {
                pull: true,
                resolve: true,
                push: false,
            }
        };
        let hosts = self.hosts(reference.registry(), need)?;
        let mut errors = HostErrors::default();
        for host in &hosts {
            match self.resolve_on(host, reference).await {
                Ok(r) => return Ok(r),
                Err(e) => errors.push(host, e),
            }
        }
        Err(errors.finish(&format!("resolve {reference}")))
    }

    async fn resolve_on(&self, host: &RegistryHost, reference: &Reference) -> Result<Resolved> {
        let (body, content_type, header_digest) = self
            .get_manifest(host, reference, &reference.object())
            .await?;
        let digest = match reference.digest() {
            Some(want) => {
                let got = Hasher::digest_of(want.algorithm(), &body);
                if &got != want {
                    return Err(Error::data_loss(format!(
                        "manifest {want} has digest {got}"
                    )));
                }
                got
            }
            None => {
                let got = Hasher::digest_of(strata_proto::Algorithm::Sha256, &body);
                if let Some(h) = header_digest.as_deref() {
                    let claimed = Digest::parse(h).map_err(|_| {
                        Error::data_loss("registry sent a malformed Docker-Content-Digest")
                    })?;
                    let check = if claimed.algorithm() == got.algorithm() {
                        got.clone()
                    } else {
                        Hasher::digest_of(claimed.algorithm(), &body)
                    };
                    if claimed != check {
                        return Err(Error::data_loss(format!(
                            "registry claims digest {claimed} for a manifest whose digest is {check}"
                        )));
                    }
                }
                got
            }
        };
        let (kind, media_type) = classify(&body, content_type.as_deref(), None)?;
        let descriptor = Descriptor::new(media_type, digest.clone(), body.len() as u64);
        Ok(Resolved {
            reference: reference.with_digest(digest),
            descriptor,
            kind,
            body,
        })
    }

    async fn get_manifest(
        &self,
        host: &RegistryHost,
        reference: &Reference,
        object: &str,
    ) -> Result<(Bytes, Option<String>, Option<String>)> {
        let mut req = Req::new(
            Method::GET,
            reference.repository(),
            format!("/manifests/{object}"),
        );
        req.accept = Some(MANIFEST_ACCEPT);
        let resp = self.send_host(host, &req).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(CONTENT_TYPE.as_str());
        let digest = header("docker-content-digest");
        let body = read_capped(
            resp,
            MAX_DOCUMENT_SIZE,
            self.options().read_timeout,
            "manifest",
        )
        .await?;
        Ok((body, content_type, digest))
    }

    /// Fetches the manifest or index `desc` points to (by digest), checks its size,
    /// digest and kind (`desc.media_type` names the kind expected).
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        desc: &Descriptor,
    ) -> Result<(ManifestKind, Bytes)> {
        check_document_size(desc, "manifest")?;
        let expected = ManifestKind::of_media_type(&desc.media_type);
        let hosts = self.hosts(reference.registry(), Capabilities::PULL)?;
        let mut errors = HostErrors::default();
        for host in &hosts {
            let got = async {
                let (body, ct, _) = self
                    .get_manifest(host, reference, &desc.digest.to_string())
                    .await?;
                verify(desc, &body)?;
                let (kind, _) = classify(&body, ct.as_deref(), expected)?;
                Ok::<_, Error>((kind, body))
            }
            .await;
            match got {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(host, e),
            }
        }
        Err(errors.finish(&format!(
            "fetch manifest {} of {}",
            desc.digest,
            reference.name()
        )))
    }

    /// Fetches a small blob (a config) whole, capped at [`MAX_DOCUMENT_SIZE`] and verified.
    pub async fn fetch_document(&self, reference: &Reference, desc: &Descriptor) -> Result<Bytes> {
        check_document_size(desc, "config")?;
        let hosts = self.hosts(reference.registry(), Capabilities::PULL)?;
        let mut errors = HostErrors::default();
        let req = Req::new(
            Method::GET,
            reference.repository(),
            format!("/blobs/{}", desc.digest),
        );
        for host in &hosts {
            let got = async {
                let resp = self.send_host(host, &req).await?;
                let body = read_capped(
                    resp,
                    MAX_DOCUMENT_SIZE,
                    self.options().read_timeout,
                    "config",
                )
                .await?;
                verify(desc, &body)?;
                Ok::<_, Error>(body)
            }
            .await;
            match got {
                Ok(v) => return Ok(v),
                Err(e) => errors.push(host, e),
            }
        }
        Err(errors.finish(&format!(
            "fetch blob {} of {}",
            desc.digest,
            reference.name()
        )))
    }

    /// Resolves `reference` to the manifest and config for `platform`: through an index
    /// by the best compatible platform entry (see [`Platform::compatible`]); a manifest
    /// without an index must have a config of a compatible platform.
    pub async fn resolve_image(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage> {
        let root = self.resolve(reference).await?;
        let pinned = root.reference.clone();
        let mut kind = root.kind;
        let mut body = root.body.clone();
        let mut desc = root.descriptor.clone();
        let mut via_index = false;
        let mut depth = 0;
        while kind == ManifestKind::Index {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(Error::invalid(format!(
                    "{reference}: indexes nested deeper than {MAX_INDEX_DEPTH}"
                )));
            }
            let index: Index = serde_json::from_slice(&body).map_err(|e| {
                Error::invalid(format!("index {} of {reference}", desc.digest)).with_source(e)
            })?;
            desc = select(&index, platform)
                .map_err(|e| Error::new(e.kind(), format!("{reference}: {e}")))?;
            let (k, b) = self.fetch_manifest(reference, &desc).await?;
            kind = k;
            body = b;
            via_index = true;
        }
        let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
            Error::invalid(format!("manifest {} of {reference}", desc.digest)).with_source(e)
        })?;
        let cfg_type = manifest.config.media_type.as_str();
        if cfg_type != OCI_CONFIG && cfg_type != DOCKER_CONFIG {
            return Err(Error::new(
                ErrorKind::Unimplemented,
                format!(
                    "{reference}: not a container image (config type {:?})",
                    cfg_type.chars().take(100).collect::<String>()
                ),
            ));
        }
        let config_body = self.fetch_document(reference, &manifest.config).await?;
        let config: ImageConfig = serde_json::from_slice(&config_body).map_err(|e| {
            Error::invalid(format!("config {} of {reference}", manifest.config.digest))
                .with_source(e)
        })?;
        if !via_index {
            let have = config.platform();
            if !platform.compatible().iter().any(|p| p.matches(&have)) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("{reference} is an image for {have}, not for {platform}"),
                ));
            }
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid(format!(
                "{reference}: manifest has {} layers but the config {} diff_ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        Ok(ResolvedImage {
            reference: pinned,
            root,
            manifest_descriptor: desc,
            manifest,
            manifest_body: body,
            config_body,
            config,
        })
    }
}

/// The index entry for the best platform compatible with `want`.
pub fn select(index: &Index, want: &Platform) -> Result<Descriptor> {
    for candidate in want.compatible() {
        if let Some(d) = index.manifests.iter().find(|d| {
            ManifestKind::of_media_type(&d.media_type).is_some()
                && d.platform.as_ref().is_some_and(|p| candidate.matches(p))
        }) {
            return Ok(d.clone());
        }
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| p.normalized().to_string()))
        .filter(|p| !p.starts_with("unknown"))
        .take(20)
        .collect();
    Err(Error::new(
        ErrorKind::NotFound,
        format!(
            "no manifest for platform {want} (index has: {})",
            available.join(", ")
        ),
    ))
}

fn check_document_size(desc: &Descriptor, what: &str) -> Result<()> {
    if desc.size > MAX_DOCUMENT_SIZE {
        return Err(Error::new(
            ErrorKind::ResourceExhausted,
            format!(
                "{what} {} is {} bytes, more than the {MAX_DOCUMENT_SIZE} allowed",
                desc.digest, desc.size
            ),
        ));
    }
    Ok(())
}

fn verify(desc: &Descriptor, body: &[u8]) -> Result<()> {
    if body.len() as u64 != desc.size {
        return Err(Error::data_loss(format!(
            "registry sent {} bytes, descriptor says {}",
            body.len(),
            desc.size
        )));
    }
    let got = Hasher::digest_of(desc.digest.algorithm(), body);
    if got != desc.digest {
        return Err(Error::data_loss(format!("content has digest {got}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(platform: &str, n: u8) -> String {
        let p = Platform::parse(platform).unwrap();
        let variant = if p.variant.is_empty() {
            String::new()
        } else {
            format!(r#","variant":"{}""#, p.variant)
        };
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1,"platform":{{"os":"{}","architecture":"{}"{variant}}}}}"#,
            format!("{n:02x}").repeat(32),
            p.os,
            p.architecture
        )
    }

    #[test]
    fn selects_best_platform() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{},{},{}]}}"#,
            entry("linux/386", 1),
            entry("linux/arm/v6", 2),
            entry("linux/arm64/v8", 3),
            entry("linux/amd64", 4)
        );
        let idx: Index = serde_json::from_str(&idx).unwrap();
        let pick = |p: &str| {
            select(&idx, &Platform::parse(p).unwrap()).map(|d| d.digest.hex()[..2].to_owned())
        };
        assert_eq!(pick("linux/amd64").unwrap(), "04");
        assert_eq!(pick("linux/arm64").unwrap(), "03");
        assert_eq!(pick("linux/arm64/v8").unwrap(), "03");
        assert_eq!(pick("linux/arm/v7").unwrap(), "02");
        let err = pick("linux/s390x").unwrap_err();
        assert!(err.is(ErrorKind::NotFound));
        assert!(err.to_string().contains("linux/amd64"), "{err}");
    }
}
