//! Where the lifecycle finds pulled images: a trait the daemon implements over its content
//! store, so this crate links no store.

use strata_proto::ident::Namespace;
use strata_proto::{Digest, Platform};

use crate::Result;

/// A pulled image, as the lifecycle needs it to create a container.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The image record's name.
    pub name: String,
    /// The digest of the platform's manifest.
    pub manifest: Digest,
    /// The image config JSON (read with
    /// [`ContainerConfig::from_image_config_json`](crate::ContainerConfig::from_image_config_json)).
    pub config: Vec<u8>,
    /// The chainID of the top layer: the snapshot the container's rootfs is prepared on.
    pub chain_id: Digest,
}

/// Where the lifecycle finds pulled images. The daemon implements it over its content
/// store; the lifecycle never reads the store itself, so it links no store at all.
///
/// # Contract
/// `NotFound` when no image `name` exists in `ns`; `InvalidArgument` when its documents
/// are malformed or no manifest matches `platform`; `Unavailable` while the store is
/// still opening.
pub trait ImageResolver: Send + Sync {
    /// The image `name` of namespace `ns`, for `platform`.
    fn resolve(&self, ns: &Namespace, name: &str, platform: &Platform) -> Result<ResolvedImage>;
}
