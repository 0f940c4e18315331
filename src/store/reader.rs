//! Reading files for response bodies, with positional reads. A committed file's range is a
//! [`FileBody`], read when the connection asks for its next chunk (no task, no channel, nothing
//! read ahead of the socket). A spool a fill is still writing is streamed by a task into a
//! [`ByteStream`] ([`read_file`]): a [`Follow`] says how far it may go, ends the stream with an
//! error if the fill fails, and holds the final chunk until the content is verified; it reads
//! one chunk ahead of the connection.
//!
//! Memory: every open reader counts in one process-wide number, and a read is sized
//! [`READ_BUDGET`] divided among the readers open now (a power of two between [`MIN_CHUNK`] and
//! [`CHUNK`]), so up to a thousand clients share about 16 MiB of read buffers rather than a
//! thousand times [`CHUNK`] (beyond that, [`MIN_CHUNK`] each); buffers are reused (`buffers`).
//! The reader count and the buffers' free list are process-wide by nature: they bound the
//! process's memory, whichever store or request a read serves. Reads come from the page cache
//! on the async thread when the kernel can answer without waiting (`RWF_NOWAIT`); only a read
//! that would wait for the disk goes to the blocking pool. On a plain HTTP/1 connection both
//! hand page-cached ranges to the connection as `sendfile` placeholders (`body::sendfile`)
//! instead of reading them.

use std::fs::File;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use rustix::io::{preadv2, Errno, ReadWriteFlags};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{buffers, ByteStream, ReadGuard};
use crate::body::sendfile::{Sink, MAX_SEGMENT};

/// Bytes per read while few readers are open.
pub const CHUNK: usize = 256 << 10;
/// The smallest read, however many readers are open.
pub const MIN_CHUNK: usize = 16 << 10;
/// Read buffers all open readers share: each read is this divided by the open readers.
pub const READ_BUDGET: usize = 16 << 20;

/// Bytes a [`FileBody`] hands its connection before it lets other tasks run.
const YIELD_BYTES: u64 = CHUNK as u64;

/// Readers open now, in the whole process.
static OPEN_READERS: AtomicUsize = AtomicUsize::new(0);

/// One open reader, counted while it lives.
struct Counted;

impl Counted {
    fn open() -> Counted {
        OPEN_READERS.fetch_add(1, Ordering::Relaxed);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        OPEN_READERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The size of the next read: the budget shared among the open readers, rounded down to a
/// power of two (the sizes `buffers` hands out, so a buffer is never twice its read).
fn read_size() -> usize {
    let share = (READ_BUDGET / OPEN_READERS.load(Ordering::Relaxed).max(1)).clamp(MIN_CHUNK, CHUNK);
    1 << share.ilog2()
}

/// How a reader follows a file that is still being written.
pub trait Follow: Send + 'static {
    /// Wait until bytes past `pos` are written; returns how far the file may be read now (the
    /// final size once verified), or an error if the writer failed.
    fn wait_for(&mut self, pos: u64) -> impl Future<Output = io::Result<u64>> + Send;
    /// Wait until the content is verified (Ok) or the writer failed (Err).
    fn wait_verified(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Stream `start..start+len` of `file`, a spool a fill is still writing, in chunks: wait for
/// bytes to be written, end with an error if the writer fails, and hold the chunk that
/// completes a known length until the content is verified. With `sendfile` (the response goes
/// out on a plain HTTP/1 connection), page-cached ranges go as placeholders the connection
/// sends itself. Stops as soon as the receiver is dropped (the client went away).
pub fn read_file(
    file: Arc<File>,
    start: u64,
    len: Option<u64>,
    mut follow: impl Follow,
    sendfile: Option<Sink>,
) -> ByteStream {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let _counted = Counted::open();
        let mut pos = start;
        let end = len.map(|l| start + l);
        loop {
            if end.is_some_and(|e| pos >= e) {
                return;
            }
            let available = match follow.wait_for(pos).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let limit = end.map_or(available, |e| e.min(available));
            if pos >= limit {
                return; // the fill is verified and we have everything
            }
            // Wait for room before reading: the chunk is not held while the client is slow.
            let Ok(permit) = tx.reserve().await else {
                return;
            };
            let whole = (limit - pos).min(MAX_SEGMENT as u64) as usize;
            let zero_copy = sendfile.as_ref().filter(|_| cached(&file, pos, whole));
            let n = match zero_copy {
                Some(_) => whole,
                None => (limit - pos).min(read_size() as u64) as usize,
            };
            // Once the client has every byte it would take the transfer as clean.
            let last = end.is_some_and(|e| pos + n as u64 >= e);
            let verified = match last {
                true => follow.wait_verified().await,
                false => Ok(()),
            };
            let chunk = match (verified, zero_copy) {
                (Err(e), _) => Err(e),
                // Recorded only now, when it goes to the body: the next chunk hyper writes.
                (Ok(()), Some(sink)) => Ok(sink.placeholder(&file, pos, n)),
                (Ok(()), None) => read_chunk(&file, pos, n).await,
            };
            let failed = chunk.is_err();
            permit.send(chunk);
            if failed {
                return;
            }
            pos += n as u64;
        }
    });
    rx
}

/// `n` bytes at `pos`, in a reused buffer: from the page cache here if the kernel has them all
/// without waiting, else (or for the rest) on the blocking pool.
async fn read_chunk(file: &Arc<File>, pos: u64, n: usize) -> io::Result<Bytes> {
    match read_now(file, pos, n)? {
        Ok(chunk) => Ok(chunk),
        Err(rest) => joined(rest.finish(file.clone()).await),
    }
}

/// A read the page cache could not answer whole without waiting.
struct Rest {
    buf: Vec<u8>,
    got: usize,
    pos: u64,
    n: usize,
}

impl Rest {
    /// Read the rest on the blocking pool.
    fn finish(mut self, file: Arc<File>) -> JoinHandle<io::Result<Bytes>> {
        tokio::task::spawn_blocking(move || {
            fill_at(&file, &mut self.buf[..self.n], self.got, self.pos)?;
            Ok(buffers::frozen(self.buf, self.n))
        })
    }
}

/// `n` bytes at `pos` if the page cache holds them (`RWF_NOWAIT`: never waits for the disk);
/// else what is left to read.
fn read_now(file: &File, pos: u64, n: usize) -> io::Result<Result<Bytes, Rest>> {
    let mut buf = buffers::take(n);
    let got = match preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf[..n])],
        pos,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(got) => got,
        Err(Errno::AGAIN) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(match got == n {
        true => Ok(buffers::frozen(buf, n)),
        false => Err(Rest { buf, got, pos, n }),
    })
}

fn joined(r: Result<io::Result<Bytes>, tokio::task::JoinError>) -> io::Result<Bytes> {
    r.unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// `start..end` of a committed file as a response body, read when the connection asks for the
/// next chunk: no task, no channel, nothing read ahead of the socket. Counted as an open
/// reader; `guard` is held until it is dropped. A short file ends it with an error.
pub struct FileBody {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// Bytes handed out since this body last let other tasks run.
    since_yield: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    /// The connection takes page-cache ranges as placeholders and `sendfile`s them.
    sendfile: Option<Sink>,
    _guard: Option<ReadGuard>,
    _counted: Counted,
}

impl FileBody {
    /// Bytes `start..end` of `file`.
    pub fn new(file: Arc<File>, start: u64, end: u64, guard: Option<ReadGuard>) -> FileBody {
        FileBody {
            file,
            pos: start,
            end,
            since_yield: 0,
            pending: None,
            sendfile: None,
            _guard: guard,
            _counted: Counted::open(),
        }
    }

    /// This body on a connection that sends file ranges with `sendfile` (`None`: it does not).
    pub fn with_sendfile(self, sendfile: Option<Sink>) -> FileBody {
        FileBody { sendfile, ..self }
    }

    fn chunk(&mut self, read: io::Result<Bytes>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        match read {
            Ok(b) => {
                self.pos += b.len() as u64;
                self.since_yield += b.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Err(e) => {
                self.pos = self.end;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        if this.pending.is_none() {
            if this.pos >= this.end {
                return Poll::Ready(None);
            }
            // A socket with room takes chunk after chunk: step aside now and then, so a
            // thousand connections share the threads chunk by chunk, not response by response.
            if this.since_yield >= YIELD_BYTES {
                this.since_yield = 0;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(sink) = &this.sendfile {
                let n = (this.end - this.pos).min(MAX_SEGMENT as u64) as usize;
                // A range the disk would have to read first is read on the blocking pool
                // below: `sendfile` would wait for the disk on this thread.
                if cached(&this.file, this.pos, n) {
                    let placeholder = sink.placeholder(&this.file, this.pos, n);
                    return this.chunk(Ok(placeholder));
                }
            }
            let n = (this.end - this.pos).min(read_size() as u64) as usize;
            match read_now(&this.file, this.pos, n) {
                Ok(Ok(chunk)) => return this.chunk(Ok(chunk)),
                Ok(Err(rest)) => this.pending = Some(rest.finish(this.file.clone())),
                Err(e) => return this.chunk(Err(e)),
            }
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let read = std::task::ready!(Pin::new(pending).poll(cx));
        this.pending = None;
        this.chunk(joined(read))
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

/// Whether the page cache holds the first and the last byte of `pos..pos+n` (`n` > 0): a
/// cheap sign that the kernel can send the range without waiting for the disk.
fn cached(file: &File, pos: u64, n: usize) -> bool {
    [pos, pos + n as u64 - 1].into_iter().all(|at| {
        let mut byte = [0u8];
        preadv2(file, &mut [io::IoSliceMut::new(&mut byte)], at, ReadWriteFlags::NOWAIT) == Ok(1)
    })
}

/// Fill `buf[from..]` from `file` at `pos + from` (blocking).
fn fill_at(file: &File, buf: &mut [u8], from: usize, pos: u64) -> io::Result<()> {
    let mut done = from;
    while done < buf.len() {
        let got = rustix::io::pread(file, &mut buf[done..], pos + done as u64)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        done += got;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), bytes).unwrap();
        let file = Arc::new(File::open(tmp.path()).unwrap());
        (tmp, file)
    }

    #[tokio::test]
    async fn a_file_body_is_exactly_its_range_in_several_chunks() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12_345)).map(|i| (i * 7 % 251) as u8).collect();
        let (_tmp, file) = file_of(&data);
        let mut body = FileBody::new(file, 1000, data.len() as u64 - 5, None);
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64 - 1005));
        let (mut got, mut frames) = (Vec::new(), 0);
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            frames += 1;
        }
        assert_eq!(got, &data[1000..data.len() - 5]);
        assert!(frames > 3, "read in chunks, not whole: {frames}");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_range_ends_the_body_with_an_error() {
        let (_tmp, file) = file_of(&[1u8; 10_000]);
        let body = FileBody::new(file, 0, 20_000, None);
        let err = body.collect().await.expect_err("never a clean end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
