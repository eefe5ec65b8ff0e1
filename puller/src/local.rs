//! Images already in the content store: from an image record to the config and layers
//! of one platform, without the registry (what `strata run` needs to create a container).
//!
//! The documents were verified when they were pulled, but are parsed again with the same
//! bounds and the same index/manifest checks: the store is shared with containerd, which
//! may have written them.

use strata_content::api::{ImageContentStore, Namespace, Scope};
use strata_proto::Digest;

use crate::ErrorKind;
use crate::registry::{
    ImageConfig, Index, MAX_DOCUMENT_SIZE, Manifest, ManifestKind, Platform, Reference, classify,
    select,
};
use crate::{Error, Result, ResultExt};

/// One platform's image, as recorded in the content store.
#[derive(Clone, Debug)]
pub struct LocalImage {
    /// The image record's name.
    pub name: String,
    /// The digest of the platform's manifest.
    pub manifest: Digest,
    /// The image config JSON.
    pub config: Vec<u8>,
    /// The layers' diff_ids, base first.
    pub diff_ids: Vec<Digest>,
    /// The chainID of the top layer: the snapshot an unpacked image ends in.
    pub chain_id: Digest,
}

/// Reads `digest` from `store` in namespace `ns`, refusing anything over
/// [`MAX_DOCUMENT_SIZE`].
fn read_document(
    store: &dyn ImageContentStore,
    scope: &Scope,
    digest: &Digest,
    what: &str,
) -> Result<Vec<u8>> {
    let info = store
        .info(scope, digest)
        .with_context(|| format!("{what} {digest}"))?;
    if info.size > MAX_DOCUMENT_SIZE {
        return Err(Error::new(
            ErrorKind::ResourceExhausted,
            format!(
                "{what} {digest} is {} bytes, over the {MAX_DOCUMENT_SIZE}-byte limit",
                info.size
            ),
        ));
    }
    let body = strata_content::api::read_all(store, scope, digest)
        .with_context(|| format!("read {what} {digest}"))?;
    Ok(body)
}

/// Resolves the image record `name` (normalised like a pull reference) in namespace `ns`
/// to the image for `platform`.
///
/// # Errors
/// `NotFound` if there is no such image or no manifest for the platform;
/// `InvalidArgument` for a malformed reference or document; the content store's errors.
pub fn resolve(
    store: &dyn ImageContentStore,
    ns: &Namespace,
    name: &str,
    platform: &Platform,
) -> Result<LocalImage> {
    let name = Reference::parse(name).map(|r| r.to_string()).map_err(|e| {
        Error::new(ErrorKind::InvalidArgument, format!("image name {name:?}")).with_source(e)
    })?;
    let image = store
        .get_image(ns, &name)
        .with_context(|| format!("image {name}"))?;
    let scope = Scope {
        namespace: Some(ns.clone()),
        lease: None,
    };
    let mut digest = image.target.digest.clone();
    let mut expected = ManifestKind::of_media_type(&image.target.media_type);
    // An index names a manifest; a manifest is the end. Two steps at most.
    for _ in 0..2 {
        let body = read_document(store, &scope, &digest, "manifest")?;
        let (kind, _) =
            classify(&body, None, expected).map_err(|e| e.context(format!("manifest {digest}")))?;
        match kind {
            ManifestKind::Index => {
                let index: Index = parse(&body, "index", &digest)?;
                let d = select(&index, platform).with_context(|| format!("image {name}"))?;
                digest = d.digest;
                expected = Some(ManifestKind::Manifest);
            }
            ManifestKind::Manifest => {
                let m: Manifest = parse(&body, "manifest", &digest)?;
                let config = read_document(store, &scope, &m.config.digest, "config")?;
                let parsed: ImageConfig = parse(&config, "config", &m.config.digest)?;
                let diff_ids = parsed.rootfs.diff_ids;
                if diff_ids.len() != m.layers.len() {
                    return Err(Error::invalid(format!(
                        "image {name}: manifest has {} layers but the config {} diff_ids",
                        m.layers.len(),
                        diff_ids.len()
                    )));
                }
                let chain_id = crate::unpack::chain_ids(&diff_ids)
                    .pop()
                    .ok_or_else(|| Error::invalid(format!("image {name} has no layers")))?;
                return Ok(LocalImage {
                    name,
                    manifest: digest,
                    config,
                    diff_ids,
                    chain_id,
                });
            }
        }
    }
    Err(Error::invalid(format!(
        "image {name}: an index points to another index"
    )))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str, digest: &Digest) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("{what} {digest} is malformed")).with_source(e))
}
