//! Image records: a name (`host/repo:tag` or `...@digest`) pointing at a manifest or index
//! descriptor, per namespace, with labels. An image is a garbage-collection root: its
//! target blob is kept, and through the target's `containerd.io/gc.ref.content.*` labels
//! (set by the puller) its config and layers.
//!
//! Keys (in the content metadata schema, see `meta`): `i/<ns>/<name>` -> ImageRecord.

use std::collections::HashMap;
use std::time::SystemTime;

use rocksdb::WriteBatch;
use strata_proto::Digest;
use strata_proto::filter::{Adaptor, Filter, label_field};
use strata_proto::time::{from_nanos, to_nanos};

use crate::api::{Labels, Namespace, validate_labels};
use crate::meta::{self, enc};
use crate::store::LocalStore;
use crate::{Error, ErrorKind, Result};

/// Longest image name accepted, in bytes.
pub const MAX_IMAGE_NAME: usize = 4096;

/// What an image points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Media type of the manifest or index.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// An image record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Name, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// The manifest or index it points at.
    pub target: Target,
    /// Labels.
    pub labels: Labels,
    /// Creation time.
    pub created_at: SystemTime,
    /// Last change.
    pub updated_at: SystemTime,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ImageRecord {
    #[prost(string, tag = "1")]
    pub(crate) media_type: String,
    #[prost(string, tag = "2")]
    pub(crate) digest: String,
    #[prost(uint64, tag = "3")]
    pub(crate) size: u64,
    #[prost(map = "string, string", tag = "4")]
    pub(crate) labels: HashMap<String, String>,
    #[prost(uint64, tag = "5")]
    pub(crate) created_ns: u64,
    #[prost(uint64, tag = "6")]
    pub(crate) updated_ns: u64,
}

pub(crate) fn image_key(ns: &str, name: &str) -> Vec<u8> {
    format!("i/{ns}/{name}").into_bytes()
}

pub(crate) fn image_prefix(ns: &str) -> Vec<u8> {
    format!("i/{ns}/").into_bytes()
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_IMAGE_NAME || name.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "image name {:.64?} must be 1 to {MAX_IMAGE_NAME} bytes without control characters",
                name
            ),
        ));
    }
    Ok(())
}

fn decode(name: String, v: &[u8]) -> Result<Image> {
    let r = <ImageRecord as prost::Message>::decode(v).map_err(|e| Error::corrupt("image", e))?;
    Ok(Image {
        name,
        target: Target {
            media_type: r.media_type,
            digest: Digest::parse(&r.digest).map_err(|e| {
                Error::new(ErrorKind::DataLoss, "stored image digest").with_source(e)
            })?,
            size: r.size,
        },
        labels: meta::map_to_labels(&r.labels),
        created_at: from_nanos(r.created_ns),
        updated_at: from_nanos(r.updated_ns),
    })
}

struct ImageAdaptor<'a>(&'a Image);

impl Adaptor for ImageAdaptor<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "name" => Some(self.0.name.clone()),
            "target" => match path.get(1).map(String::as_str)? {
                "digest" => Some(self.0.target.digest.to_string()),
                "mediatype" => Some(self.0.target.media_type.clone()),
                _ => None,
            },
            "labels" => label_field(path, &self.0.labels),
            _ => None,
        }
    }
}

impl LocalStore {
    /// Creates or replaces the image `image.name` in `ns`; keeps the creation time of a
    /// record it replaces. Returns the stored record.
    pub fn put_image(&self, ns: &Namespace, image: &Image) -> Result<Image> {
        validate_name(&image.name)?;
        validate_labels(&image.labels)?;
        let key = image_key(ns.as_str(), &image.name);
        let _g = self.inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        let now = to_nanos(SystemTime::now());
        let created_ns = match self.inner.meta.get::<ImageRecord>(&key, "image")? {
            Some(old) => old.created_ns,
            None => now,
        };
        let rec = ImageRecord {
            media_type: image.target.media_type.clone(),
            digest: image.target.digest.to_string(),
            size: image.target.size,
            labels: meta::labels_to_map(&image.labels),
            created_ns,
            updated_ns: now,
        };
        let mut b = WriteBatch::default();
        b.put(&key, enc(&rec));
        self.inner.meta.write(b)?;
        decode(image.name.clone(), &enc(&rec))
    }

    /// The image `name` in `ns`.
    pub fn get_image(&self, ns: &Namespace, name: &str) -> Result<Image> {
        validate_name(name)?;
        let key = image_key(ns.as_str(), name);
        match self.inner.meta.get::<ImageRecord>(&key, "image")? {
            Some(r) => decode(name.to_owned(), &enc(&r)),
            None => Err(Error::new(
                ErrorKind::NotFound,
                format!("image {name:?} not found"),
            )),
        }
    }

    /// Images of `ns` matching `filters` (containerd's grammar over `name`,
    /// `target.digest`, `target.mediatype`, `labels.*`), by name.
    pub fn list_images(&self, ns: &Namespace, filters: &[String]) -> Result<Vec<Image>> {
        let filter = Filter::parse_all(filters)
            .map_err(|e| Error::new(ErrorKind::InvalidArgument, "parse filters").with_source(e))?;
        let prefix = image_prefix(ns.as_str());
        let mut out = Vec::new();
        for (k, v) in self.inner.meta.scan(&prefix)? {
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let img = decode(name, &v)?;
            if filter.matches(&ImageAdaptor(&img)) {
                out.push(img);
            }
        }
        Ok(out)
    }

    /// Removes the image `name` from `ns`; its blobs become collectable.
    pub fn delete_image(&self, ns: &Namespace, name: &str) -> Result<()> {
        validate_name(name)?;
        let key = image_key(ns.as_str(), name);
        let _g = self.inner.gc_lock.read().unwrap_or_else(|e| e.into_inner());
        if !self.inner.meta.exists(&key)? {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("image {name:?} not found"),
            ));
        }
        let mut b = WriteBatch::default();
        b.delete(&key);
        self.inner.meta.write(b)
    }

    /// Every image of every namespace, as `(namespace, image)`.
    pub fn all_images(&self) -> Result<Vec<(String, Image)>> {
        let mut out = Vec::new();
        for (k, v) in self.inner.meta.scan(b"i/")? {
            let tail = String::from_utf8_lossy(&k[2..]).into_owned();
            if let Some((ns, name)) = tail.split_once('/') {
                out.push((ns.to_owned(), decode(name.to_owned(), &v)?));
            }
        }
        Ok(out)
    }

    /// Targets of every image, as `(namespace, digest)`: roots of the garbage collector.
    pub(crate) fn image_roots(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (k, v) in self.inner.meta.scan(b"i/")? {
            let tail = String::from_utf8_lossy(&k[2..]).into_owned();
            let Some((ns, _)) = tail.split_once('/') else {
                continue;
            };
            let r = <ImageRecord as prost::Message>::decode(&*v)
                .map_err(|e| Error::corrupt("image", e))?;
            out.push((ns.to_owned(), r.digest));
        }
        Ok(out)
    }
}

impl crate::api::ImageStore for LocalStore {
    fn put_image(&self, ns: &Namespace, image: &Image) -> Result<Image> {
        LocalStore::put_image(self, ns, image)
    }
    fn get_image(&self, ns: &Namespace, name: &str) -> Result<Image> {
        LocalStore::get_image(self, ns, name)
    }
    fn list_images(&self, ns: &Namespace, filters: &[String]) -> Result<Vec<Image>> {
        LocalStore::list_images(self, ns, filters)
    }
    fn delete_image(&self, ns: &Namespace, name: &str) -> Result<()> {
        LocalStore::delete_image(self, ns, name)
    }
    fn all_images(&self) -> Result<Vec<(String, Image)>> {
        LocalStore::all_images(self)
    }
}
