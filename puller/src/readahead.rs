//! Reading a stream on a thread of its own, a few buffers ahead of its consumer.
//!
//! One layer's gzip inflate cannot be split across cores, but it can run beside the tar
//! parsing, hashing and file creation that consume it: on two cores that nearly halves
//! the time of a big layer.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

/// Size of each buffer handed from the reading thread to the consumer.
const BUF: usize = 1 << 20;
/// Buffers in flight: bounds the memory a layer's extraction holds.
const DEPTH: usize = 4;

/// Runs `consume` on a reader that yields what `inner` yields, with `inner` read on
/// another thread up to `DEPTH` buffers ahead. Errors of `inner` reach the consumer
/// unchanged, at the position they happened.
///
/// It also hashes (sha256) every byte `inner` yields, on the reading thread; the digest
/// is of the whole stream only if the consumer read it to its end.
pub(crate) fn read_ahead_hashed<R: Read + Send, T>(
    inner: R,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> (T, strata_proto::Digest) {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let t = read_ahead_with(inner, |b| h.update(b), consume);
    let d = strata_proto::Digest::from_bytes(strata_proto::Algorithm::Sha256, &h.finalize())
        .expect("a sha256 is 32 bytes");
    (t, d)
}

fn read_ahead_with<R: Read + Send, T>(
    inner: R,
    mut each: impl FnMut(&[u8]) + Send,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> T {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (back_tx, back_rx) = channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let each = &mut each;
        s.spawn(move || {
            let before = thread_cpu();
            produce(inner, &tx, &back_rx, each);
            let (u, k) = thread_cpu();
            tracing::trace!(
                user_ms = u - before.0,
                sys_ms = k - before.1,
                "read-ahead thread"
            );
        });
        let mut r = Ahead {
            rx,
            back: back_tx,
            cur: Vec::new(),
            pos: 0,
            done: false,
        };
        // Dropping `r` (its receiver) when `consume` returns early stops the producer.
        consume(&mut r)
    })
}

/// CPU time of the calling thread so far, user and system, in milliseconds.
pub(crate) fn thread_cpu() -> (u64, u64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the valid, writable buffer it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
        ru.assume_init()
    };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    (ms(ru.ru_utime), ms(ru.ru_stime))
}

fn produce<R: Read>(
    mut inner: R,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    back: &Receiver<Vec<u8>>,
    each: &mut dyn FnMut(&[u8]),
) {
    loop {
        // Reused buffers: first touches of fresh memory are slow in a VM.
        let mut buf = back.try_recv().unwrap_or_else(|_| vec![0; BUF]);
        buf.resize(BUF, 0);
        let mut n = 0;
        let mut err = None;
        while n < BUF {
            match inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        buf.truncate(n);
        each(&buf);
        let end = n == 0 || err.is_some();
        if n > 0 && tx.send(Ok(buf)).is_err() {
            return;
        }
        if let Some(e) = err {
            let _ = tx.send(Err(e));
            return;
        }
        if end {
            // An empty buffer marks the end of the stream.
            let _ = tx.send(Ok(Vec::new()));
            return;
        }
    }
}

struct Ahead {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for Ahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            let old = std::mem::take(&mut self.cur);
            if old.capacity() > 0 {
                let _ = self.back.send(old);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Ok(b)) if b.is_empty() => self.done = true,
                Ok(Ok(b)) => self.cur = b,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the reading thread stopped"));
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in odd-sized pieces, then an error if `fail`.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        fail: bool,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                if self.fail {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "boom"));
                }
                return Ok(0);
            }
            let n = buf.len().min(7919).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn hashes_everything_the_stream_yields() {
        use sha2::Digest as _;
        let d = data(3 * BUF + 77);
        let p = Pieces {
            data: d.clone(),
            at: 0,
            fail: false,
        };
        let (n, digest) = read_ahead_hashed(p, |r| std::io::copy(r, &mut std::io::sink()).unwrap());
        assert_eq!(n, d.len() as u64);
        assert_eq!(digest.hex(), hex::encode(sha2::Sha256::digest(&d)));
    }

    #[test]
    fn yields_the_stream_unchanged() {
        for len in [0, 1, BUF - 1, BUF, BUF + 1, 5 * BUF + 12345] {
            let d = data(len);
            let p = Pieces {
                data: d.clone(),
                at: 0,
                fail: false,
            };
            let got = read_ahead_with(
                p,
                |_| {},
                |r| {
                    let mut v = Vec::new();
                    r.read_to_end(&mut v).unwrap();
                    v
                },
            );
            assert_eq!(got.len(), d.len());
            assert!(got == d, "stream of {len} bytes changed");
        }
    }

    #[test]
    fn errors_arrive_after_the_bytes_before_them() {
        let d = data(3 * BUF + 5);
        let p = Pieces {
            data: d.clone(),
            at: 0,
            fail: true,
        };
        let (got, err) = read_ahead_with(
            p,
            |_| {},
            |r| {
                let mut v = Vec::new();
                let e = r.read_to_end(&mut v).unwrap_err();
                (v, e)
            },
        );
        assert!(got == d);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn a_consumer_that_stops_early_stops_the_producer() {
        let p = Pieces {
            data: data(64 * BUF),
            at: 0,
            fail: false,
        };
        // Returns (the scope joins the producer), although most of the stream is unread.
        let first = read_ahead_with(
            p,
            |_| {},
            |r| {
                let mut b = [0u8; 10];
                r.read_exact(&mut b).unwrap();
                b
            },
        );
        assert_eq!(first.to_vec(), data(10));
    }
}
