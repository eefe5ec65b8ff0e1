//! Converting an image to eStargz, registry to registry (`strata convert --estargz`):
//! each layer is fetched, decompressed, rewritten as eStargz and pushed; the config gets
//! the new diff_ids, the manifest (always OCI: Docker media types drop annotations) the
//! new layers with their `containerd.io/snapshot/stargz/toc.digest` and
//! `io.containers.estargz.uncompressed-size` annotations. Nothing is pushed to the
//! destination before every layer converted, so a failed conversion leaves at most
//! unreferenced blobs, never a manifest naming missing ones.

use std::io::{Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use strata_proto::{Digest, Platform};
use strata_snapshotter::estargz::{
    TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION, WriteOptions, write_estargz,
};
use tokio::runtime::Handle;

use crate::registry::{OCI_CONFIG, OCI_MANIFEST, Reference, RegistryClient};
use crate::{Error, Limits, Result, ResultExt, open_layer};

/// The media type of an eStargz layer (an ordinary gzip layer).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One converted layer.
#[derive(Clone, Debug)]
pub struct ConvertedLayer {
    /// The source blob.
    pub from: Digest,
    /// The eStargz blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its TOC's digest.
    pub toc_digest: Digest,
}

/// The result of a conversion.
#[derive(Clone, Debug)]
pub struct Converted {
    /// The destination manifest's digest.
    pub manifest: Digest,
    /// The layers, base first.
    pub layers: Vec<ConvertedLayer>,
}

fn sha256(b: &[u8]) -> Digest {
    use sha2::Digest as _;
    Digest::parse(&format!("sha256:{}", hex::encode(sha2::Sha256::digest(b))))
        .expect("a sha256 digest is valid")
}

/// Converts `src` (for `platform`) to eStargz and pushes it as `dst`. Blocking: call from
/// a thread outside `rt`'s workers.
pub fn convert_estargz(
    rt: &Handle,
    client: &RegistryClient,
    src: &Reference,
    dst: &Reference,
    platform: &Platform,
    opts: &WriteOptions,
) -> Result<Converted> {
    let resolved = rt
        .block_on(client.resolve_image(src, platform))
        .with_context(|| format!("resolve {src}"))?;
    let m = &resolved.manifest;
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut blobs = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        let what = || format!("layer {i} ({})", l.digest);
        // The source blob, verified by the stream, into a temp file.
        let mut raw = tempfile::tempfile().map_err(|e| Error::io_op("temp file", e))?;
        rt.block_on(async {
            let mut s = client.fetch_blob(&resolved.reference, l, None).await?;
            while let Some(chunk) = s.next().await {
                raw.write_all(&chunk?)
                    .map_err(|e| Error::io_op("write temp file", e))?;
            }
            Ok::<_, Error>(())
        })
        .with_context(what)?;
        raw.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io_op("rewind temp file", e))?;
        let tar = open_layer(Some(&l.media_type), raw, &Limits::default())
            .map_err(|e| Error::caused_by(format!("open {}", what()), e))?;
        let mut out = tempfile::tempfile().map_err(|e| Error::io_op("temp file", e))?;
        let w = write_estargz(tar, &mut out, opts).with_context(what)?;
        let mut bytes = Vec::with_capacity(w.size as usize);
        out.seek(SeekFrom::Start(0))
            .and_then(|_| out.read_to_end(&mut bytes))
            .map_err(|e| Error::io_op("read converted layer", e))?;
        let mut annotations: serde_json::Map<String, Value> = l
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        annotations.insert(
            TOC_DIGEST_ANNOTATION.into(),
            json!(w.toc_digest.to_string()),
        );
        annotations.insert(
            UNCOMPRESSED_SIZE_ANNOTATION.into(),
            json!(w.uncompressed_size.to_string()),
        );
        descs.push(json!({
            "mediaType": OCI_LAYER_GZIP,
            "digest": w.digest.to_string(),
            "size": w.size,
            "annotations": annotations,
        }));
        diff_ids.push(json!(w.diff_id.to_string()));
        layers.push(ConvertedLayer {
            from: l.digest.clone(),
            digest: w.digest.clone(),
            size: w.size,
            toc_digest: w.toc_digest,
        });
        blobs.push((w.digest, Bytes::from(bytes)));
    }
    // The config as it was, but for the diff_ids.
    let mut config: Value = serde_json::from_slice(&resolved.config_body)
        .map_err(|e| Error::invalid(format!("config of {src}: {e}")))?;
    let rootfs = config
        .get_mut("rootfs")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::invalid(format!("config of {src} has no rootfs")))?;
    rootfs.insert("diff_ids".into(), Value::Array(diff_ids));
    let config =
        Bytes::from(serde_json::to_vec(&config).map_err(|e| Error::internal("encode config", e))?);
    let config_digest = sha256(&config);
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
    });
    if !m.annotations.is_empty() {
        manifest["annotations"] = json!(m.annotations);
    }
    let manifest = Bytes::from(
        serde_json::to_vec(&manifest).map_err(|e| Error::internal("encode manifest", e))?,
    );
    rt.block_on(async {
        for (d, b) in blobs {
            client.push_blob(dst, &d, b).await?;
        }
        client.push_blob(dst, &config_digest, config).await?;
        client.push_manifest(dst, OCI_MANIFEST, manifest).await
    })
    .map(|manifest| Converted { manifest, layers })
    .with_context(|| format!("push {dst}"))
}
