//! Streaming a file into a [`ByteStream`] with positional reads of [`CHUNK`] bytes: committed
//! objects, and spools a fill is still writing (then a [`Follow`] says how far the reader may
//! go, ends the stream with an error if the fill fails, and holds the final chunk until the
//! content is verified).

use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{ByteStream, ReadGuard};

/// Bytes per read; a reader holds at most a few of these.
pub const CHUNK: usize = 256 << 10;

/// How a reader follows a file that is still being written.
pub trait Follow: Send + 'static {
    /// Wait until bytes past `pos` are written; returns how far the file may be read now (the
    /// final size once verified), or an error if the writer failed.
    fn wait_for(&mut self, pos: u64) -> impl Future<Output = io::Result<u64>> + Send;
    /// Wait until the content is verified (Ok) or the writer failed (Err).
    fn wait_verified(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A committed file: everything is there and verified.
pub struct Complete;

impl Follow for Complete {
    async fn wait_for(&mut self, _pos: u64) -> io::Result<u64> {
        Ok(u64::MAX)
    }

    async fn wait_verified(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stream `start..start+len` of `file` in [`CHUNK`]s. With `follow`, the file is a spool in
/// progress: wait for bytes to be written, and end with an error if the writer fails. Stops as
/// soon as the receiver is dropped (the client went away). `guard` is held until then.
pub fn read_file<F: Follow>(
    file: Arc<File>,
    start: u64,
    len: Option<u64>,
    follow: Option<F>,
    guard: Option<ReadGuard>,
) -> ByteStream {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let _guard = guard;
        let mut follow = follow;
        let mut pos = start;
        let end = len.map(|l| start + l);
        loop {
            if end.is_some_and(|e| pos >= e) {
                return;
            }
            let available = match follow.as_mut() {
                None => end.unwrap_or(u64::MAX),
                Some(f) => match f.wait_for(pos).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let limit = end.map_or(available, |e| e.min(available));
            if pos >= limit {
                return; // the fill is verified and we have everything
            }
            let n = (limit - pos).min(CHUNK as u64) as usize;
            let f = file.clone();
            let chunk = tokio::task::spawn_blocking(move || read_at(&f, pos, n))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            // The chunk that completes a known-length body is held until the fill is verified:
            // once the client has every byte it would take the transfer as clean.
            let last = end.is_some_and(|e| pos + n as u64 >= e);
            let chunk = match (last, follow.as_mut()) {
                (true, Some(f)) if chunk.is_ok() => f.wait_verified().await.and(chunk),
                _ => chunk,
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    rx
}

/// Read exactly `n` bytes at `pos` into a fresh buffer, without zero-filling it first
/// (rustix reads into the vector's spare capacity and sets its length).
fn read_at(file: &File, pos: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        let at = pos + buf.len() as u64;
        let got = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
    }
    Ok(Bytes::from(buf))
}
