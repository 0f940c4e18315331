//! The response body type and its constructors: whole buffers, nothing, and a channel-fed
//! stream for fill readers and upstream passthrough (a committed file's body is the store's
//! `FileBody`); (`range`) the `Range` header decision; and (`sendfile`) zero-copy file bodies on
//! plain HTTP/1 connections. A stream that yields an `Err` makes hyper abort the response, so a
//! client sees a broken transfer, never a clean end with wrong bytes. A leaf: it imports nothing
//! from the crate, so `api`, `error`, `http`, `store` and `tls` may all use it.

pub mod range;
pub mod sendfile;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

/// Every response body berth sends.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed by a channel; `len` (when known) is the exact number of bytes that will be sent.
pub fn channel(rx: mpsc::Receiver<std::io::Result<Bytes>>, len: Option<u64>) -> Body {
    ChannelBody { rx, remaining: len }.boxed_unsync()
}

struct ChannelBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    remaining: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(b.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match self.remaining {
                // The producer stopped early without an error: never let that look like a clean end.
                Some(r) if r > 0 => Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "body ended early",
                )))),
                _ => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(r) => SizeHint::with_exact(r),
            None => SizeHint::default(),
        }
    }
}
