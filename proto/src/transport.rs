//! gRPC over unix sockets, configured once for every strata server and client.
//!
//! Blob data travels in 1 MiB messages; HTTP/2's default 64 KiB flow-control windows would
//! stall every message on window updates, so both sides advertise large windows.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

/// Per-stream HTTP/2 window.
const STREAM_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame a peer may send us: a 1 MiB message in a few frames rather than 64.
const MAX_FRAME: u32 = 1 << 20;
/// Per-connection HTTP/2 window.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// A tonic server builder with strata's transport settings.
pub fn server() -> Server {
    Server::builder()
        .max_frame_size(Some(MAX_FRAME))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
}

/// Connects to a gRPC server on the unix socket at `path`.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://unix.invalid")
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
}
