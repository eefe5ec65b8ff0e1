//! Helpers every gRPC service of strata shares: a cell for state that is still opening
//! when the socket is bound, and running blocking store work off the async workers.

use std::error::Error;

use tokio::sync::watch;

use crate::{HasKind, status_from_error};

/// A value that may still be opening: the daemon binds its socket first, and requests
/// wait here until the value is published.
pub struct ReadyCell<T>(watch::Receiver<Option<T>>);

impl<T> Clone for ReadyCell<T> {
    fn clone(&self) -> Self {
        ReadyCell(self.0.clone())
    }
}

/// Publishes the value of a [`ReadyCell`].
pub struct ReadySetter<T>(watch::Sender<Option<T>>);

impl<T: Clone> ReadyCell<T> {
    /// A cell that is ready now.
    pub fn ready(value: T) -> Self {
        ReadyCell(watch::channel(Some(value)).1)
    }

    /// A cell to be filled later through the setter.
    pub fn pending() -> (ReadySetter<T>, Self) {
        let (tx, rx) = watch::channel(None);
        (ReadySetter(tx), ReadyCell(rx))
    }

    /// Waits for the value; `Unavailable` if its setter was dropped unset (it failed to open).
    pub async fn get(&self, what: &str) -> Result<T, tonic::Status> {
        let mut rx = self.0.clone();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| tonic::Status::unavailable(format!("{what} failed to open")))?;
        Ok(r.clone().expect("checked by wait_for"))
    }
}

impl<T> ReadySetter<T> {
    /// Publishes the value.
    pub fn set(self, value: T) {
        let _ = self.0.send(Some(value));
    }
}

/// Runs blocking work (filesystem, RocksDB) on tokio's blocking pool and maps its error to
/// a gRPC status through the one errdefs table.
pub async fn blocking<T, E, F>(f: F) -> Result<T, tonic::Status>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: HasKind + Error + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| tonic::Status::internal(format!("blocking task failed: {e}")))?
        .map_err(|e| status_from_error(&e))
}
