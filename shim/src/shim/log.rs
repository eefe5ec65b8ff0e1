//! The framing of a process's output log (`init.log`, `exec-<id>.log`): Docker's
//! `stdcopy` format, so that stdout and stderr share one file and stay apart.
//!
//! ```text
//! +--------+---+---+---+------------------+------------------+
//! | stream | 0 | 0 | 0 | len (u32, BE)    | len bytes of data |
//! +--------+---+---+---+------------------+------------------+
//!   1 byte   3 bytes      4 bytes
//! stream: 1 = stdout, 2 = stderr (a terminal's output is all stdout)
//! ```
//!
//! The file is only ever appended to, one whole frame per `write(2)` (the shim holds a
//! mutex per log around each frame), so a reader sees a sequence of complete frames,
//! maybe followed by the beginning of one being written. [`FrameReader`] keeps such a
//! partial frame and completes it on a later call, so a follower can poll the file.

use std::io::{self, Read, Write};

/// The stream byte of a frame of standard output (and of a terminal's output).
pub const STDOUT: u8 = 1;
/// The stream byte of a frame of standard error.
pub const STDERR: u8 = 2;

/// The size of a frame header.
pub const HEADER_LEN: usize = 8;

/// The longest frame payload [`write_frame`] writes and [`FrameReader`] accepts; a
/// longer length in a header means the file is not a frame log.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Appends `data` to `w` as frames of `stream` (several if `data` is longer than
/// [`MAX_FRAME_LEN`]), each frame with a single `write_all`. Nothing is written for
/// empty `data`.
///
/// # Errors
/// `InvalidInput` for a stream other than [`STDOUT`] or [`STDERR`]; `w`'s errors.
pub fn write_frame(w: &mut impl Write, stream: u8, data: &[u8]) -> io::Result<()> {
    if stream != STDOUT && stream != STDERR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame stream {stream} is neither stdout (1) nor stderr (2)"),
        ));
    }
    for chunk in data.chunks(MAX_FRAME_LEN) {
        let mut frame = Vec::with_capacity(HEADER_LEN + chunk.len());
        frame.extend_from_slice(&[stream, 0, 0, 0]);
        // A chunk is at most MAX_FRAME_LEN, which fits a u32.
        frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        frame.extend_from_slice(chunk);
        w.write_all(&frame)?;
    }
    Ok(())
}

/// Reads frames back from a frame log, one at a time.
///
/// At the end of the input, a partial frame is kept: a later [`next_frame`]
/// (after more bytes were appended) completes it.
///
/// [`next_frame`]: FrameReader::next_frame
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    /// Bytes read but not yet returned: the beginning of the next frame(s).
    pending: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of the frames in `r`.
    pub fn new(r: R) -> Self {
        FrameReader {
            inner: r,
            pending: Vec::new(),
        }
    }

    /// How many bytes of a partial frame are held, waiting for the rest.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next complete frame as `(stream, data)`; `Ok(None)` at the end of the input,
    /// with or without a partial frame held (call again once more bytes are there).
    ///
    /// # Errors
    /// `InvalidData` for a header that is not a frame's (unknown stream, non-zero padding,
    /// a length over [`MAX_FRAME_LEN`]); the reader's errors.
    pub fn next_frame(&mut self) -> io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if self.pending.len() >= HEADER_LEN {
                let h = &self.pending[..HEADER_LEN];
                let (stream, len) = parse_header(h)?;
                if self.pending.len() >= HEADER_LEN + len {
                    let data = self.pending[HEADER_LEN..HEADER_LEN + len].to_vec();
                    self.pending.drain(..HEADER_LEN + len);
                    return Ok(Some((stream, data)));
                }
            }
            let mut buf = [0u8; 32 * 1024];
            let n = match self.inner.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

fn parse_header(h: &[u8]) -> io::Result<(u8, usize)> {
    let stream = h[0];
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if (stream != STDOUT && stream != STDERR) || h[1..4] != [0, 0, 0] || len > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a frame header: {h:02x?}"),
        ));
    }
    Ok((stream, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A reader whose bytes arrive in pieces, as a log being appended to.
    #[derive(Default)]
    struct Growing(VecDeque<u8>);

    impl Read for Growing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    #[test]
    fn round_trip() {
        let mut log = Vec::new();
        write_frame(&mut log, STDOUT, b"out\n").unwrap();
        write_frame(&mut log, STDERR, b"err\n").unwrap();
        write_frame(&mut log, STDOUT, b"").unwrap();
        assert_eq!(&log[..8], &[1, 0, 0, 0, 0, 0, 0, 4]);
        let mut r = FrameReader::new(&log[..]);
        assert_eq!(r.next_frame().unwrap(), Some((STDOUT, b"out\n".to_vec())));
        assert_eq!(r.next_frame().unwrap(), Some((STDERR, b"err\n".to_vec())));
        assert_eq!(r.next_frame().unwrap(), None);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn partial_frame_is_completed_later() {
        let mut log = Vec::new();
        write_frame(&mut log, STDERR, b"hello").unwrap();
        write_frame(&mut log, STDOUT, b"world").unwrap();
        let mut r = FrameReader::new(Growing::default());
        // Feed the bytes a few at a time: a partial header, a partial payload...
        let mut got = Vec::new();
        for piece in log.chunks(3) {
            r.inner.0.extend(piece);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![(STDERR, b"hello".to_vec()), (STDOUT, b"world".to_vec())]
        );
        assert_eq!(r.pending(), 0);
        // A truncated last frame: None, the bytes held.
        let mut r = FrameReader::new(&log[..log.len() - 2]);
        assert!(r.next_frame().unwrap().is_some());
        assert_eq!(r.next_frame().unwrap(), None);
        assert_eq!(r.pending(), HEADER_LEN + 3);
    }

    #[test]
    fn garbage_is_invalid_data() {
        for bad in [
            &b"hello world, not a log"[..],
            &[3, 0, 0, 0, 0, 0, 0, 1, b'x'],
            &[1, 0, 1, 0, 0, 0, 0, 1, b'x'],
            &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        ] {
            let e = FrameReader::new(bad).next_frame().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        let e = write_frame(&mut Vec::new(), 0, b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn long_data_is_split() {
        let data = vec![7u8; MAX_FRAME_LEN + 10];
        let mut log = Vec::new();
        write_frame(&mut log, STDOUT, &data).unwrap();
        let mut r = FrameReader::new(&log[..]);
        let a = r.next_frame().unwrap().unwrap();
        let b = r.next_frame().unwrap().unwrap();
        assert_eq!((a.1.len(), b.1.len()), (MAX_FRAME_LEN, 10));
    }
}
