//! Lazy layers in a pull: before anything is downloaded, each layer that carries an
//! eStargz TOC digest is offered to the snapshotter through containerd's remote-snapshot
//! handshake, bottom first, with the labels containerd's CRI sends
//! (`containerd.io/snapshot/cri.image-ref`, `.layer-digest`, the TOC digest). A backend
//! that mounts the layer lazily commits it itself and answers `AlreadyExists`; the
//! pull then neither fetches nor unpacks it. The first layer the backend does not take
//! ends the run: it and every layer above are fetched and unpacked as usual (each needs
//! its parent committed), as containerd's unpacker does.

use strata_proto::Digest;
use strata_snapshotter::estargz::TOC_DIGEST_ANNOTATION;
use strata_snapshotter::lazy::ahead::CRI_IMAGE_LAYERS_LABEL;
use strata_snapshotter::lazy::backend::{
    CRI_IMAGE_REF_LABEL, CRI_LAYER_DIGEST_LABEL, REMOTE_LABEL,
};
use strata_snapshotter::{Kind, Labels};

use crate::registry::Descriptor;
use crate::unpack::{EXTRACT_PREFIX, OWNER_LABEL, SNAPSHOT_REF_LABEL, unique};
use crate::{ErrorKind, Result, ResultExt, UnpackTo};

/// The labels of layer `desc`'s Prepare: the annotations containerd passes on
/// (`containerd.io/snapshot/*`), the target chainID, where the blob is, the layers from
/// it to the top (`above`: their TOCs can be fetched ahead), the owner.
fn handshake_labels(
    reference: &str,
    desc: &Descriptor,
    above: &[Descriptor],
    chain: &Digest,
    owner: &str,
) -> Labels {
    let mut l: Labels = desc
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("containerd.io/snapshot/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(SNAPSHOT_REF_LABEL.into(), chain.to_string());
    l.insert(CRI_IMAGE_REF_LABEL.into(), reference.to_owned());
    l.insert(CRI_LAYER_DIGEST_LABEL.into(), desc.digest.to_string());
    l.insert(CRI_IMAGE_LAYERS_LABEL.into(), image_layers(above));
    l.insert(OWNER_LABEL.into(), owner.to_owned());
    l
}

/// The digests of `layers`, comma-separated, as many as fit a label (4 KiB of key and
/// value), as containerd's CRI writes `containerd.io/snapshot/cri.image-layers`.
fn image_layers(layers: &[Descriptor]) -> String {
    let mut out = String::new();
    for d in layers {
        let d = d.digest.to_string();
        if CRI_IMAGE_LAYERS_LABEL.len() + out.len() + 1 + d.len() > strata_proto::MAX_LABEL_SIZE {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&d);
    }
    out
}

/// Offers the layers to `to`'s snapshotter in chain order; returns, per layer, whether
/// it is served lazily (mounted now, or by an earlier pull): those need no download.
pub(crate) fn mount_lazy(
    to: &UnpackTo<'_>,
    reference: &str,
    layers: &[Descriptor],
    chains: &[Digest],
    owner: &str,
) -> Result<Vec<bool>> {
    let sn = to.snapshotter;
    let mut lazy = vec![false; layers.len()];
    let committed = |c: &Digest| {
        sn.stat(&c.to_string())
            .ok()
            .filter(|info| info.kind == Kind::Committed)
            .map(|info| info.labels.contains_key(REMOTE_LABEL))
    };
    for (i, (desc, chain)) in layers.iter().zip(chains).enumerate() {
        if let Some(remote) = committed(chain) {
            lazy[i] = remote;
            continue;
        }
        if !desc.annotations.contains_key(TOC_DIGEST_ANNOTATION) {
            return Ok(lazy);
        }
        let key = format!("{EXTRACT_PREFIX}{}/{chain}", unique());
        let parent = i.checked_sub(1).map(|p| chains[p].to_string());
        let labels = handshake_labels(reference, desc, &layers[i..], chain, owner);
        match sn.prepare(&key, parent.as_deref(), labels) {
            Err(e) if e.is(ErrorKind::AlreadyExists) && committed(chain).is_some() => {
                lazy[i] = committed(chain) == Some(true);
            }
            Err(e) if e.is(ErrorKind::AlreadyExists) => return Err(e),
            Err(e) => return Err(e).with_context(|| format!("prepare layer {i}")),
            Ok(_) => {
                // An ordinary snapshot: this layer is unpacked in full, from here on.
                sn.remove(&key)
                    .with_context(|| format!("remove probe snapshot of layer {i}"))?;
                return Ok(lazy);
            }
        }
    }
    Ok(lazy)
}
