//! Zero-copy file bodies on plain HTTP/1 connections: `sendfile(2)` from the page cache to the
//! socket, through hyper, which only takes a body as bytes.
//!
//! A file body on such a connection hands hyper a placeholder chunk (a slice of [`PLACEHOLDER`],
//! whose bytes are never read or sent) after recording in the connection's [`Sink`] which file
//! range it stands for. The connection's I/O ([`SendfileTcp`]) recognises the placeholder by its
//! address when hyper writes it and sends that file range with `sendfile` instead. What it
//! cannot match exactly (a placeholder that is not the next recorded range, at the offset hyper
//! has reached; a placeholder hyper copied instead of queueing) fails the connection:
//! placeholder bytes are never sent.
//!
//! This relies on hyper's HTTP/1 writer queueing body chunks as they are and writing them in
//! order with vectored writes, which it does when the I/O says it writes vectored (it does) and
//! neither `writev(false)` nor `pipeline_flush` is set. TLS and HTTP/2 encode the bytes
//! themselves, so their requests never get a sink. A leaf: it imports nothing from the crate.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The longest file range one placeholder stands for.
pub const MAX_SEGMENT: usize = 1 << 20;

/// Stands for file bytes in a body; recognised by its address, never read.
static PLACEHOLDER: [u8; MAX_SEGMENT] = [0; MAX_SEGMENT];

/// A file range a placeholder stands for.
struct Segment {
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// Bytes of it already sent.
    sent: usize,
}

/// File ranges the connection's bodies handed hyper, in the order hyper will write them.
type Segments = Arc<Mutex<VecDeque<Segment>>>;

fn lock(segments: &Segments) -> MutexGuard<'_, VecDeque<Segment>> {
    segments.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A body's side of one connection: turns a file range into a placeholder chunk.
#[derive(Clone)]
pub struct Sink(Segments);

impl Sink {
    /// The chunk standing for `len` bytes (at most [`MAX_SEGMENT`]) of `file` at `offset`; the
    /// body must hand it to hyper next.
    pub fn placeholder(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        let len = len.min(MAX_SEGMENT);
        lock(&self.0).push_back(Segment {
            file: file.clone(),
            offset,
            len,
            sent: 0,
        });
        Bytes::from_static(&PLACEHOLDER[..len])
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// A plain TCP client connection that sends placeholders' file ranges with `sendfile`.
pub struct SendfileTcp {
    tcp: TcpStream,
    segments: Segments,
}

impl SendfileTcp {
    /// Wrap an accepted connection; the sink goes to the bodies of its HTTP/1 requests.
    pub fn new(tcp: TcpStream) -> (SendfileTcp, Sink) {
        let segments = Segments::default();
        (
            SendfileTcp {
                tcp,
                segments: segments.clone(),
            },
            Sink(segments),
        )
    }

    /// Send (part of) the next recorded file range, which `placeholder` must stand for.
    fn poll_segment(&self, cx: &mut Context<'_>, placeholder: &IoSlice<'_>) -> Poll<io::Result<usize>> {
        let mut segments = lock(&self.segments);
        let Some(seg) = segments.front_mut() else {
            return Poll::Ready(Err(mismatch("no file range recorded for it")));
        };
        let at = placeholder.as_ptr() as usize - PLACEHOLDER.as_ptr() as usize;
        if at != seg.sent || placeholder.len() != seg.len - seg.sent {
            return Poll::Ready(Err(mismatch("it is not the next recorded file range")));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut offset = seg.offset + seg.sent as u64;
            let want = seg.len - seg.sent;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*seg.file, Some(&mut offset), want).map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than expected",
                    )))
                }
                Ok(n) => {
                    seg.sent += n;
                    if seg.sent == seg.len {
                        segments.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

fn is_placeholder(buf: &[u8]) -> bool {
    let range = PLACEHOLDER.as_ptr_range();
    !buf.is_empty() && range.contains(&buf.as_ptr())
}

fn mismatch(why: &str) -> io::Error {
    io::Error::other(format!("zero-copy placeholder write refused: {why}"))
}

impl AsyncRead for SendfileTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileTcp {
    /// Only for bytes that were never a placeholder: hyper writes queued bodies vectored, so a
    /// plain write while file ranges wait means hyper copied a placeholder into its own buffer.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_placeholder(buf) || !lock(&this.segments).is_empty() {
            return Poll::Ready(Err(mismatch("written as plain bytes")));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    /// The buffers before the first placeholder with `writev`, or that placeholder's range
    /// with `sendfile`: one of the two per call, as a short write.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match bufs.iter().position(|b| is_placeholder(b)) {
            None => Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs),
            Some(0) => this.poll_segment(cx, &bufs[0]),
            Some(first) => Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..first]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use http_body::Frame;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    /// What a test body yields next: bytes as they are, or a file range through the sink.
    #[derive(Clone)]
    enum Part {
        Bytes(&'static [u8]),
        File(u64, usize),
        /// A placeholder chunk no range was recorded for.
        Unrecorded(usize),
    }

    struct TestBody {
        parts: VecDeque<Part>,
        file: Arc<File>,
        sink: Sink,
    }

    impl http_body::Body for TestBody {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
            let this = &mut *self;
            Poll::Ready(this.parts.pop_front().map(|part| {
                Ok(Frame::data(match part {
                    Part::Bytes(b) => Bytes::from_static(b),
                    Part::File(offset, len) => this.sink.placeholder(&this.file, offset, len),
                    Part::Unrecorded(len) => Bytes::from_static(&PLACEHOLDER[..len]),
                }))
            }))
        }
    }

    fn data() -> Vec<u8> {
        (0..3 * MAX_SEGMENT + 4321).map(|i| (i * 31 % 253) as u8).collect()
    }

    /// Serve every request on one connection with a body of `parts` over `SendfileTcp`, with a
    /// small send buffer so `sendfile` writes short; `flatten` makes hyper copy body bytes into
    /// its own buffer (what `writev(false)` does). Returns what a client reads with `request`.
    async fn exchange(parts: Vec<Part>, flatten: bool, request: &[u8]) -> Vec<u8> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), data()).unwrap();
        let file = Arc::new(File::open(tmp.path()).unwrap());
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(32 << 10).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(8).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (io, sink) = SendfileTcp::new(tcp);
            let service = service_fn(move |_req| {
                let body = TestBody {
                    parts: parts.clone().into(),
                    file: file.clone(),
                    sink: sink.clone(),
                };
                async move { Ok::<_, Infallible>(hyper::Response::new(body)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .writev(!flatten)
                .serve_connection(TokioIo::new(io), service)
                .await;
        });
        let client = TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(16 << 10).unwrap();
        let mut client = client.connect(addr).await.unwrap();
        client.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8 << 10];
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            // A slow reader: the server's socket fills and `sendfile` returns short.
            if got.len() % (256 << 10) < (8 << 10) {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        server.await.unwrap();
        got
    }

    /// The bodies of the HTTP/1 responses in `raw` (chunked encoding, as a body without a
    /// length is sent).
    fn bodies(mut raw: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            raw = &raw[end + 4..];
            let mut body = Vec::new();
            loop {
                let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
                let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
                raw = &raw[line + 2..];
                if size == 0 {
                    raw = &raw[2..];
                    break;
                }
                body.extend_from_slice(&raw[..size]);
                raw = &raw[size + 2..];
            }
            out.push(body);
        }
        out
    }

    const TWO_REQUESTS: &[u8] =
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn file_ranges_and_bytes_arrive_in_order_over_keep_alive() {
        let d = data();
        let parts = vec![
            Part::Bytes(b"head:"),
            Part::File(10, MAX_SEGMENT),
            Part::File(2 * MAX_SEGMENT as u64, MAX_SEGMENT),
            Part::Bytes(b":mid:"),
            Part::File(5, 3),
            Part::File(3 * MAX_SEGMENT as u64, 4321),
        ];
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&d[10..10 + MAX_SEGMENT]);
        want.extend_from_slice(&d[2 * MAX_SEGMENT..3 * MAX_SEGMENT]);
        want.extend_from_slice(b":mid:");
        want.extend_from_slice(&d[5..8]);
        want.extend_from_slice(&d[3 * MAX_SEGMENT..]);
        let got = bodies(&exchange(parts, false, TWO_REQUESTS).await);
        assert_eq!(got.len(), 2, "both responses on the one connection");
        for body in got {
            assert_eq!(body.len(), want.len());
            assert!(body == want, "a body differs from the file ranges it stands for");
        }
    }

    #[tokio::test]
    async fn an_unrecorded_placeholder_fails_the_connection_and_is_never_sent() {
        let parts = vec![Part::Bytes(b"ok"), Part::Unrecorded(1000)];
        let raw = exchange(parts, false, TWO_REQUESTS).await;
        assert!(raw.starts_with(b"HTTP/1.1 200"), "the head went out");
        assert!(!raw.windows(16).any(|w| w == [0u8; 16]), "placeholder bytes were sent");
        assert!(!raw.ends_with(b"0\r\n\r\n"), "the response ended cleanly");
    }

    #[tokio::test]
    async fn a_placeholder_hyper_copied_fails_the_connection_and_is_never_sent() {
        let parts = vec![Part::Bytes(b"ok"), Part::File(0, 70_000)];
        let raw = exchange(parts, true, TWO_REQUESTS).await;
        assert!(!raw.windows(16).any(|w| w == [0u8; 16]), "placeholder bytes were sent");
        assert!(!raw.ends_with(b"0\r\n\r\n"), "the response ended cleanly");
    }
}
