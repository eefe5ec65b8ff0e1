//! OCI and Docker schema 2 documents: media types, descriptors, index, manifest, config,
//! and the checks that tell an index from a manifest whatever the registry claims.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use strata_proto::Digest;

use strata_proto::Platform;
use strata_proto::{Error, ErrorKind, Result};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker container image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every type strata can resolve.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// The most bytes read for a manifest, an index or a config (containerd's limit).
pub const MAX_DOCUMENT_SIZE: u64 = 4 << 20;

/// Whether a document lists manifests or describes one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// An OCI index or Docker manifest list.
    Index,
    /// An OCI or Docker image manifest.
    Manifest,
}

impl ManifestKind {
    /// The kind a media type names, if it is a manifest type strata knows.
    pub fn of_media_type(mt: &str) -> Option<ManifestKind> {
        match mt {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(ManifestKind::Manifest),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ManifestKind::Index => "an index",
            ManifestKind::Manifest => "a manifest",
        }
    }
}

/// A content descriptor: what a blob is, its digest and its size.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the content, validated.
    #[serde(deserialize_with = "de_digest")]
    pub digest: Digest,
    /// Size in bytes.
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
    /// Alternative download URLs (foreign layers); strata never fetches them.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Platform of a manifest in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// A descriptor with no urls, annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

impl From<&Descriptor> for strata_proto::containerd::types::Descriptor {
    fn from(d: &Descriptor) -> Self {
        strata_proto::containerd::types::Descriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.to_string(),
            // Sizes are checked to fit i64 when parsed.
            size: d.size as i64,
            annotations: d.annotations.clone().into_iter().collect(),
        }
    }
}

fn de_digest<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
    let s = String::deserialize(d)?;
    Digest::parse(&s).map_err(serde::de::Error::custom)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n).map_err(|_| serde::de::Error::custom("negative size"))
}

fn de_digests<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Digest>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| Digest::parse(s).map_err(serde::de::Error::custom))
        .collect()
}

/// An OCI image index or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The media type the body declares, if any.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The manifests, usually one per platform.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI or Docker schema 2 image manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The media type the body declares, if any.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of an image config the puller needs.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageConfig {
    /// Architecture the image is built for.
    #[serde(default)]
    pub architecture: String,
    /// OS the image is built for.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// The uncompressed layer digests.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digest of each uncompressed layer tar, base first.
    #[serde(deserialize_with = "de_digests")]
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform::new(
            &self.os,
            &self.architecture,
            self.variant.as_deref().unwrap_or(""),
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
    fs_layers: Option<serde::de::IgnoredAny>,
}

/// Works out what a manifest body is, refusing every kind of confusion: the body's
/// structure, its `mediaType`, the `Content-Type` header and what the caller expected
/// (`expected`, from the descriptor that pointed here) must all agree.
///
/// Returns the kind and the media type to record for the document.
pub fn classify(
    body: &[u8],
    content_type: Option<&str>,
    expected: Option<ManifestKind>,
) -> Result<(ManifestKind, String)> {
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| Error::invalid("manifest is not valid JSON").with_source(e))?;
    let declared = probe.media_type.as_deref();
    if probe.schema_version == Some(1)
        || probe.fs_layers.is_some()
        || matches!(declared, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED))
    {
        return Err(Error::new(
            ErrorKind::Unimplemented,
            "Docker schema 1 manifests are not supported",
        ));
    }
    if probe.schema_version != Some(2) {
        return Err(Error::invalid("manifest schemaVersion is not 2"));
    }
    let looks_index = probe.manifests.is_some();
    let looks_manifest = probe.config.is_some() || probe.layers.is_some();
    let structural = match (looks_index, looks_manifest) {
        (true, false) => ManifestKind::Index,
        (false, true) => ManifestKind::Manifest,
        (true, true) => {
            return Err(Error::invalid(
                "document has both `manifests` and `config`/`layers`: ambiguous index/manifest",
            ));
        }
        (false, false) => {
            return Err(Error::invalid(
                "document is neither an index nor a manifest",
            ));
        }
    };
    if let Some(mt) = declared {
        match ManifestKind::of_media_type(mt) {
            Some(k) if k == structural => {}
            Some(k) => {
                return Err(Error::invalid(format!(
                    "body declares mediaType {mt} ({}) but is structured as {}",
                    k.name(),
                    structural.name()
                )));
            }
            None => {
                return Err(Error::invalid(format!(
                    "unsupported manifest mediaType {:?}",
                    truncate(mt)
                )));
            }
        }
    }
    let header = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|c| !c.is_empty());
    if let Some(ct) = header.as_deref()
        && let Some(k) = ManifestKind::of_media_type(ct)
    {
        if k != structural {
            return Err(Error::invalid(format!(
                "Content-Type {ct} ({}) but the body is {}",
                k.name(),
                structural.name()
            )));
        }
        if let Some(mt) = declared
            && mt != ct
        {
            return Err(Error::invalid(format!(
                "Content-Type {ct} does not match the body's mediaType {mt}"
            )));
        }
    }
    if let Some(want) = expected
        && want != structural
    {
        return Err(Error::invalid(format!(
            "expected {} but the registry sent {}",
            want.name(),
            structural.name()
        )));
    }
    let media_type = declared
        .map(str::to_owned)
        .or_else(|| header.filter(|h| ManifestKind::of_media_type(h).is_some()))
        .unwrap_or_else(|| {
            match structural {
                ManifestKind::Index => OCI_INDEX,
                ManifestKind::Manifest => OCI_MANIFEST,
            }
            .to_owned()
        });
    Ok((structural, media_type))
}

fn truncate(s: &str) -> String {
    s.chars().take(100).filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"{OCI_CONFIG}","digest":"{D}","size":2}},"layers":[]}}"#
        )
    }

    fn index(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(r#"{{"schemaVersion":2,{mt}"manifests":[]}}"#)
    }

    #[test]
    fn classifies_consistent_documents() {
        let ok = |b: &str, ct: Option<&str>, exp| classify(b.as_bytes(), ct, exp).unwrap();
        assert_eq!(
            ok(&manifest(Some(OCI_MANIFEST)), Some(OCI_MANIFEST), None).1,
            OCI_MANIFEST
        );
        assert_eq!(
            ok(
                &manifest(Some(DOCKER_MANIFEST)),
                Some(DOCKER_MANIFEST),
                Some(ManifestKind::Manifest)
            )
            .1,
            DOCKER_MANIFEST
        );
        assert_eq!(
            ok(&manifest(None), Some(OCI_MANIFEST), None).1,
            OCI_MANIFEST
        );
        assert_eq!(ok(&manifest(None), None, None).1, OCI_MANIFEST);
        assert_eq!(
            ok(&index(None), Some("application/json"), None).1,
            OCI_INDEX
        );
        assert_eq!(
            ok(
                &index(Some(DOCKER_MANIFEST_LIST)),
                Some(&format!("{DOCKER_MANIFEST_LIST}; charset=utf-8")),
                None
            )
            .0,
            ManifestKind::Index
        );
    }

    #[test]
    fn rejects_confusion() {
        let err = |b: &str, ct: Option<&str>, exp| {
            classify(b.as_bytes(), ct, exp).unwrap_err().to_string()
        };
        assert!(err(&index(Some(OCI_MANIFEST)), None, None).contains("structured as an index"));
        assert!(err(&manifest(Some(OCI_INDEX)), None, None).contains("structured as a manifest"));
        assert!(err(&manifest(None), Some(OCI_INDEX), None).contains("Content-Type"));
        assert!(err(&index(None), Some(DOCKER_MANIFEST), None).contains("Content-Type"));
        assert!(
            err(&manifest(Some(OCI_MANIFEST)), Some(DOCKER_MANIFEST), None)
                .contains("does not match")
        );
        assert!(
            err(&index(None), None, Some(ManifestKind::Manifest)).contains("expected a manifest")
        );
        assert!(
            err(&manifest(None), None, Some(ManifestKind::Index)).contains("expected an index")
        );
        let both = r#"{"schemaVersion":2,"manifests":[],"layers":[]}"#;
        assert!(err(both, None, None).contains("ambiguous"));
        assert!(err(r#"{"schemaVersion":2}"#, None, None).contains("neither"));
        assert!(err(r#"{"schemaVersion":1,"fsLayers":[]}"#, None, None).contains("schema 1"));
        assert!(err(r#"{"schemaVersion":3,"manifests":[]}"#, None, None).contains("schemaVersion"));
        assert!(err("not json", None, None).contains("JSON"));
        assert!(err(&index(Some("application/evil\\n")), None, None).contains("unsupported"));
    }

    #[test]
    fn descriptor_validation() {
        let ok = format!(r#"{{"mediaType":"x","digest":"{D}","size":5}}"#);
        let d: Descriptor = serde_json::from_str(&ok).unwrap();
        assert_eq!(d.size, 5);
        for bad in [
            format!(r#"{{"mediaType":"x","digest":"{D}","size":-1}}"#),
            r#"{"mediaType":"x","digest":"sha256:../../etc","size":1}"#.to_string(),
            format!(r#"{{"mediaType":"x","digest":"{}","size":1}}"#, &D[..70]),
            format!(r#"{{"mediaType":"x","digest":"{D}"}}"#),
        ] {
            assert!(serde_json::from_str::<Descriptor>(&bad).is_err(), "{bad}");
        }
    }
}
