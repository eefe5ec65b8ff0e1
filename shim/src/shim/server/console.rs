//! Terminals: the console socket runc sends a container's terminal master over
//! (`SCM_RIGHTS`), and setting its window size.

use super::*;

/// Listens on a console socket and receives the terminal master runc sends to it.
pub(super) struct Console {
    listener: UnixListener,
    path: PathBuf,
    _short: SocketPath,
    /// The path to give runc.
    pub(super) for_runc: PathBuf,
}

impl Console {
    pub(super) fn listen(path: PathBuf) -> Result<Console> {
        let _ = fs::remove_file(&path);
        let short = SocketPath::new(&path)
            .map_err(internal(format!("console socket {}", path.display())))?;
        let listener = UnixListener::bind(short.for_self()).map_err(internal(format!(
            "binding console socket {}",
            path.display()
        )))?;
        let for_runc = short.for_children();
        Ok(Console {
            listener,
            path,
            _short: short,
            for_runc,
        })
    }

    /// The master runc sent (runc connected before it returned).
    pub(super) fn receive(&self) -> Result<File> {
        let what = format!("console socket {}", self.path.display());
        let mut pfd = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, CONSOLE_TIMEOUT.as_millis() as libc::c_int) };
        if n < 0 {
            return Err(internal(format!("polling {what}"))(
                io::Error::last_os_error(),
            ));
        }
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("runc sent no terminal to {what}"),
            ));
        }
        let (stream, _) = self
            .listener
            .accept()
            .map_err(internal(format!("accepting on {what}")))?;
        let fd =
            receive_fd(&stream).map_err(internal(format!("receiving a terminal on {what}")))?;
        Ok(File::from(fd))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Receives the one fd sent over `stream` with SCM_RIGHTS.
pub(super) fn receive_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut data = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at live buffers of the lengths it gives.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut received = Vec::new();
    // SAFETY: msg was filled in by recvmsg; the CMSG macros walk its control buffer, and
    // each SCM_RIGHTS entry holds fds now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    received.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    // Extra fds (none expected) are closed as `received` drops.
    if received.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no fd in the message",
        ));
    }
    Ok(received.swap_remove(0))
}

/// Sets a terminal's window size.
pub(super) fn set_window_size(master: &File, width: u16, height: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is live.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(internal("setting the terminal size")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}
