//! strata's puller.
//!
//! Map of the crate (the registry side):
//! - [`registry`]: the OCI/Docker registry client. [`registry::Reference`] parses and
//!   normalises image references, [`registry::hosts`] reads containerd's `hosts.toml`
//!   (mirrors, plain http, `skip_verify`), [`registry::auth`] finds credentials
//!   (`~/.docker/config.json`, `--user`) and answers Basic and Bearer challenges,
//!   [`registry::RegistryClient`] sends requests (retries, redirects, credential
//!   confinement), resolves a reference to a platform's manifest and config, and streams
//!   blobs with HTTP Range.
//!
//! A pull starts with `RegistryClient::resolve_image(&reference, &platform)` and then
//! streams each layer with `RegistryClient::fetch_blob(&reference, &layer, range)` into
//! the content store.

#![warn(missing_docs)]

pub mod registry;
