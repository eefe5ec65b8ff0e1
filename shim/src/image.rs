//! The container part of an image config: what an image asks to run, and as whom.
//!
//! An OCI (or Docker) image config is a JSON document; the part a runtime reads sits
//! under its `config` key:
//!
//! ```text
//! { "architecture": "amd64", "os": "linux", "rootfs": {...}, "history": [...],
//!   "config": { "Entrypoint": [...] | null, "Cmd": [...] | null, "Env": [...] | null,
//!               "User": "...", "WorkingDir": "...", "Labels": {...} | null,
//!               "StopSignal": "SIGTERM", ...everything else ignored } }
//! ```
//!
//! Docker writes `null` for empty lists and maps, and may omit `config` entirely; both
//! read as empty. The document is refused above [`MAX_IMAGE_CONFIG_SIZE`] before it is
//! parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::{Error, ErrorKind, Result};

/// Largest image config accepted, in bytes (4 MiB; real configs are a few KiB, and the
/// whole document is held in memory to parse it).
pub const MAX_IMAGE_CONFIG_SIZE: usize = 4 << 20;

/// What an image asks of its containers. Every field is exactly what the image says;
/// nothing is validated here: [`crate::spec::generate`] decides what is acceptable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// `Entrypoint`: the fixed head of the command line.
    pub entrypoint: Vec<String>,
    /// `Cmd`: the default tail of the command line (replaced by command-line arguments).
    pub cmd: Vec<String>,
    /// `Env`: `KEY=value` entries.
    pub env: Vec<String>,
    /// `User`: `uid`, `name`, `uid:gid`, `name:group`, ...; empty means root.
    pub user: String,
    /// `WorkingDir`: empty means `/`.
    pub working_dir: String,
    /// `Labels`: informational only. They never change the runtime spec.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`, e.g. `SIGTERM` or `15`, for the shim to use on stop.
    pub stop_signal: Option<String>,
}

#[derive(Deserialize)]
struct ImageConfigDoc {
    #[serde(default, deserialize_with = "map_or_null")]
    config: Option<RawConfig>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "StopSignal", default)]
    stop_signal: Option<String>,
}

impl ContainerConfig {
    /// Parses a whole image config document (the blob an image manifest's `config`
    /// descriptor points at) and keeps its `config` part.
    ///
    /// # Errors
    /// `ResourceExhausted` above [`MAX_IMAGE_CONFIG_SIZE`]; `InvalidArgument` if the
    /// document is not JSON of the expected shape (a field of the wrong type, a duplicate
    /// field).
    pub fn from_image_config_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_IMAGE_CONFIG_SIZE {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                format!(
                    "image config is {} bytes, larger than {MAX_IMAGE_CONFIG_SIZE}",
                    bytes.len()
                ),
            ));
        }
        let parse = |e| Error::invalid("parse image config").with_source(e);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let doc: Option<ImageConfigDoc> = map_or_null(&mut de).map_err(parse)?;
        de.end().map_err(parse)?;
        let Some(doc) = doc else {
            return Err(Error::invalid("image config is null, not a JSON object"));
        };
        let Some(raw) = doc.config else {
            return Ok(ContainerConfig::default());
        };
        Ok(ContainerConfig {
            entrypoint: raw.entrypoint.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            env: raw.env.unwrap_or_default(),
            user: raw.user.unwrap_or_default(),
            working_dir: raw.working_dir.unwrap_or_default(),
            labels: raw.labels.unwrap_or_default(),
            stop_signal: raw.stop_signal.filter(|s| !s.is_empty()),
        })
    }
}

/// Deserializes a JSON object into `T`, or `null` into `None`. serde's derived structs
/// also accept an array of field values, which no image config is.
fn map_or_null<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct MapOrNull<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for MapOrNull<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object or null")
        }

        fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(
            self,
            map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }
    }

    d.deserialize_any(MapOrNull(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_nulls_read_as_empty() {
        let doc = br#"{"architecture":"amd64","os":"linux","config":{
            "Hostname":"","Entrypoint":null,"Cmd":null,"Env":null,"User":"",
            "WorkingDir":"","Labels":null,"StopSignal":null,"OnBuild":null},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ContainerConfig::from_image_config_json(doc).unwrap();
        assert_eq!(c, ContainerConfig::default());
    }

    #[test]
    fn missing_or_null_config_is_empty() {
        for doc in [
            &br#"{"os":"linux"}"#[..],
            br#"{"config":null}"#,
            br#"{"config":{}}"#,
        ] {
            let c = ContainerConfig::from_image_config_json(doc).unwrap();
            assert_eq!(c, ContainerConfig::default());
        }
    }

    #[test]
    fn reads_every_field() {
        let doc = br#"{"config":{"Entrypoint":["/bin/ep"],"Cmd":["a","b"],
            "Env":["A=1","PATH=/x"],"User":"app:staff","WorkingDir":"/srv",
            "Labels":{"k":"v"},"StopSignal":"SIGQUIT","ExposedPorts":{"80/tcp":{}}}}"#;
        let c = ContainerConfig::from_image_config_json(doc).unwrap();
        assert_eq!(c.entrypoint, ["/bin/ep"]);
        assert_eq!(c.cmd, ["a", "b"]);
        assert_eq!(c.env, ["A=1", "PATH=/x"]);
        assert_eq!(c.user, "app:staff");
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    }

    #[test]
    fn refuses_oversized_input_before_parsing() {
        let big = vec![b' '; MAX_IMAGE_CONFIG_SIZE + 1];
        let err = ContainerConfig::from_image_config_json(&big).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        // Exactly at the limit is parsed (and here fails as JSON, not as size).
        let err = ContainerConfig::from_image_config_json(&big[1..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn refuses_wrong_types_and_duplicates() {
        for doc in [
            &br#"{"config":{"Cmd":"echo hi"}}"#[..],
            br#"{"config":{"Env":[1]}}"#,
            br#"{"config":{"User":0}}"#,
            br#"{"config":{"Cmd":["a"],"Cmd":["b"]}}"#,
            br#"not json"#,
            br#"[]"#,
            br#"null"#,
            br#"{"config":[]}"#,
            br#"{"config":[["sh"]]}"#,
            br#"{"config":"x"}"#,
            br#"{"config":{}} trailing"#,
        ] {
            let err = ContainerConfig::from_image_config_json(doc).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{doc:?}");
        }
    }
}
