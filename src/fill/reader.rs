//! Streaming a file into a response body: committed blobs, and temp files a fill is still
//! writing (wait for bytes, end with an error if the fill fails, and hold the final chunk
//! until the fill has verified the digest).

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::Progress;
use crate::store::ReadGuard;

/// Bytes per read; a reader holds at most a few of these.
pub const CHUNK: usize = 256 << 10;

/// Stream `start..start+len` of `file` in [`CHUNK`]s. With `progress`, the file is a fill in
/// progress: wait for bytes to be written, and end with an error if the fill fails. Stops as
/// soon as the receiver is dropped (the client went away). `guard` is held until then.
pub fn read_file(
    file: Arc<File>,
    start: u64,
    len: Option<u64>,
    progress: Option<watch::Receiver<Progress>>,
    guard: Option<ReadGuard>,
) -> mpsc::Receiver<io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let _guard = guard;
        let mut progress = progress;
        let mut pos = start;
        let end = len.map(|l| start + l);
        loop {
            if end.is_some_and(|e| pos >= e) {
                return;
            }
            let available = match progress.as_mut() {
                None => end.unwrap_or(u64::MAX),
                Some(rx) => match wait_for(rx, pos).await {
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
            let chunk = match (last, progress.as_mut()) {
                (true, Some(rx)) if chunk.is_ok() => wait_verified(rx).await.and(chunk),
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

/// Wait until the fill has verified the digest (Ok) or failed (Err).
async fn wait_verified(rx: &mut watch::Receiver<Progress>) -> io::Result<()> {
    loop {
        match &*rx.borrow_and_update() {
            Progress::Verified { .. } => return Ok(()),
            Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(io::Error::other("fill ended without a result"));
        }
    }
}

/// How far a reader at `pos` may read now: waits while nothing new is written; returns the
/// written length, or the final size once verified.
async fn wait_for(rx: &mut watch::Receiver<Progress>, pos: u64) -> io::Result<u64> {
    loop {
        match &*rx.borrow_and_update() {
            Progress::Streaming { written, .. } if *written > pos => return Ok(*written),
            Progress::Verified { size } => return Ok(*size),
            Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
            _ => {}
        }
        if rx.changed().await.is_err() {
            return Err(io::Error::other("fill ended without a result"));
        }
    }
}
