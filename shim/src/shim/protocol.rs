//! The shim's wire protocol: JSON lines over `<state>/shim.sock`, and the handshake line
//! the shim writes to its stdout.
//!
//! ```text
//! client                                         shim
//!   {"op":"kill","exec_id":"","signal":9,"all":false}\n  ──>
//!                                                <──  {"ok":{}}\n
//!   {"op":"wait","exec_id":"e1"}\n                ──>
//!                                                <──  {"ok":{"exit_status":0,"exited_at_unix_nanos":…}}\n
//!   {"op":"attach","exec_id":""}\n                ──>
//!                                                <──  {"ok":{}}\n
//!   raw bytes for the terminal …                  ──>   (until the client closes)
//! ```
//!
//! One request per connection. An error is `{"error":{"kind":"NotFound","message":"…"}}`,
//! `kind` an [`ErrorKind`] name and `message` the whole error chain. A request line is at
//! most [`MAX_LINE`] bytes.

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind};

/// The longest request or response line, in bytes (newline excluded).
pub const MAX_LINE: usize = 1 << 20;

/// A request. `exec_id` empty means the container's init.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `runc start` (init only).
    Start {
        /// Must be empty.
        #[serde(default)]
        exec_id: String,
    },
    /// The process's status: [`StateReply`].
    State {
        /// The process.
        #[serde(default)]
        exec_id: String,
    },
    /// Blocks until the process exits: [`Exit`].
    Wait {
        /// The process.
        #[serde(default)]
        exec_id: String,
    },
    /// Sends a signal: to init through `runc kill`, to an exec directly.
    Kill {
        /// The process.
        #[serde(default)]
        exec_id: String,
        /// The signal number.
        signal: i32,
        /// Every process of the container (init only).
        #[serde(default)]
        all: bool,
    },
    /// `runc pause`.
    Pause,
    /// `runc resume`.
    Resume,
    /// `runc ps`: [`PidsReply`].
    Pids,
    /// `runc exec --detach`: [`ExecReply`].
    Exec {
        /// The new process's id (identifier rules).
        exec_id: String,
        /// An OCI runtime spec `process` object.
        process: serde_json::Value,
        /// Give it a terminal.
        #[serde(default)]
        tty: bool,
    },
    /// Sets the terminal's window size.
    Resize {
        /// The process.
        #[serde(default)]
        exec_id: String,
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// After the `ok` line, the connection's bytes go to the process's terminal.
    Attach {
        /// The process.
        #[serde(default)]
        exec_id: String,
    },
    /// Removes a process that exited (init: also the container, then the shim exits):
    /// [`Exit`].
    Delete {
        /// The process.
        #[serde(default)]
        exec_id: String,
    },
    /// Exits the shim of a container whose init never started (deleting it first).
    Shutdown,
}

/// A response line: `{"ok": …}` or `{"error": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success, with the operation's reply (`{}` for none).
    Ok(serde_json::Value),
    /// Failure.
    Error(WireError),
}

/// An error as it crosses the socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// An [`ErrorKind`] name, e.g. `NotFound`.
    pub kind: String,
    /// The whole error chain, joined by `": "`.
    pub message: String,
}

/// A kind's name on the wire: its variant name.
pub fn kind_name(kind: ErrorKind) -> String {
    format!("{kind:?}")
}

/// The kind named `name`; `Unknown` for a name this version does not know.
pub fn kind_from_name(name: &str) -> ErrorKind {
    ErrorKind::ALL
        .into_iter()
        .find(|k| kind_name(*k) == name)
        .unwrap_or(ErrorKind::Unknown)
}

/// `e`'s message and those of its causes, joined by `": "`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    strata_proto::error_chain(e)
}

impl WireError {
    /// The wire form of `e`.
    pub fn from_error(e: &Error) -> Self {
        WireError {
            kind: kind_name(e.kind()),
            message: chain(e),
        }
    }

    /// The kind it names.
    pub fn kind(&self) -> ErrorKind {
        kind_from_name(&self.kind)
    }
}

/// The line the shim writes to its stdout once its container is created (or it failed):
/// `{"pid":N}` or `{"error":{…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Handshake {
    /// The container is created; its init has this pid.
    Ready {
        /// The init's host pid.
        pid: u32,
    },
    /// The shim could not create the container and exits.
    Failed {
        /// Why.
        error: WireError,
    },
}

/// How a process ended, as the shim saves it (`init.exit`, `exec-<id>.exit`) and reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit code, or 128 + the signal that killed it (containerd's convention).
    pub exit_status: u32,
    /// When the shim reaped it, in nanoseconds since the Unix epoch.
    pub exited_at_unix_nanos: u64,
}

/// The reply to `state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The host pid.
    pub pid: u32,
    /// Once it exited: its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// Once it exited: when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at_unix_nanos: Option<u64>,
}

/// The reply to `pids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsReply {
    /// The host pids of the container's processes.
    pub pids: Vec<u32>,
}

/// The reply to `exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReply {
    /// The new process's host pid.
    pub pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let r: Request =
            serde_json::from_str(r#"{"op":"kill","exec_id":"","signal":9,"all":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Kill {
                exec_id: String::new(),
                signal: 9,
                all: true
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"wait"}"#).unwrap();
        assert_eq!(
            r,
            Request::Wait {
                exec_id: String::new()
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"pause","exec_id":""}"#).unwrap();
        assert_eq!(r, Request::Pause);
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"kill"}"#).is_err());
    }

    #[test]
    fn responses_and_handshakes() {
        let ok = serde_json::to_string(&Response::Ok(serde_json::json!({}))).unwrap();
        assert_eq!(ok, r#"{"ok":{}}"#);
        let e = Error::new(ErrorKind::NotFound, "process already finished");
        let line = serde_json::to_string(&Response::Error(WireError::from_error(&e))).unwrap();
        assert_eq!(
            line,
            r#"{"error":{"kind":"NotFound","message":"process already finished"}}"#
        );
        let h: Handshake = serde_json::from_str(r#"{"pid":42}"#).unwrap();
        assert_eq!(h, Handshake::Ready { pid: 42 });
        let h: Handshake =
            serde_json::from_str(r#"{"error":{"kind":"InvalidArgument","message":"m"}}"#).unwrap();
        let Handshake::Failed { error } = h else {
            panic!("{h:?}")
        };
        assert_eq!(error.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn every_kind_has_a_name() {
        for k in ErrorKind::ALL {
            assert_eq!(kind_from_name(&kind_name(k)), k);
        }
        assert_eq!(kind_from_name("Whatever"), ErrorKind::Unknown);
    }
}
