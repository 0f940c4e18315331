//! Read buffers, reused: a reader takes a buffer of a power-of-two size, reads into it, and
//! sends it on as [`Bytes`]; when the connection has written it and drops the `Bytes`, the
//! buffer goes back to a free list (up to [`KEEP`] bytes of them in all; beyond that it is
//! freed). Reads then neither allocate nor zero memory, and the allocator does not churn
//! pages under load. Buffers hold stale bytes from earlier reads; a reader only ever sends the
//! part it filled.

use std::sync::Mutex;

use bytes::Bytes;

/// The smallest buffer (log2 of its size).
const MIN_SHIFT: u32 = 14;
/// The largest buffer (log2 of its size).
const MAX_SHIFT: u32 = 18;
/// Bytes of free buffers kept for reuse, over all sizes.
pub const KEEP: usize = 8 << 20;

/// Free buffers by size, and their total bytes.
struct Free {
    by_size: [Vec<Vec<u8>>; (MAX_SHIFT - MIN_SHIFT + 1) as usize],
    bytes: usize,
}

static FREE: Mutex<Free> = Mutex::new(Free {
    by_size: [const { Vec::new() }; (MAX_SHIFT - MIN_SHIFT + 1) as usize],
    bytes: 0,
});

fn class(size: usize) -> usize {
    (size.next_power_of_two().trailing_zeros().clamp(MIN_SHIFT, MAX_SHIFT) - MIN_SHIFT) as usize
}

/// A buffer of at least `n` bytes (`n` at most 256 KiB), to be filled and then [`frozen`].
pub fn take(n: usize) -> Vec<u8> {
    debug_assert!(n <= 1 << MAX_SHIFT);
    let c = class(n);
    let reused = {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        let b = free.by_size[c].pop();
        if let Some(b) = &b {
            free.bytes -= b.len();
        }
        b
    };
    reused.unwrap_or_else(|| vec![0u8; 1 << (c as u32 + MIN_SHIFT)])
}

/// The first `len` bytes of `buf` as `Bytes`; `buf` goes back to the free list when the last
/// clone of them is dropped.
pub fn frozen(buf: Vec<u8>, len: usize) -> Bytes {
    Bytes::from_owner(Pooled { buf, len })
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let size = buf.len();
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        if free.bytes + size <= KEEP {
            free.bytes += size;
            free.by_size[class(size)].push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_for_the_next_read_of_its_size() {
        let mut b = take(20_000);
        assert_eq!(b.len(), 32 << 10, "rounded up to a power of two");
        b[..5].copy_from_slice(b"hello");
        let ptr = b.as_ptr();
        let bytes = frozen(b, 5);
        assert_eq!(&bytes[..], b"hello", "only the filled part is sent");
        let clone = bytes.clone();
        drop(bytes);
        drop(clone);
        // Other tests share the free list: look for this very buffer among a few takes.
        let again: Vec<_> = (0..64).map(|_| take(30_000)).collect();
        assert!(again.iter().any(|b| b.as_ptr() == ptr), "reused, not reallocated");
        assert!(again.iter().all(|b| b.len() == 32 << 10));
    }

    #[test]
    fn sizes_outside_the_range_are_clamped() {
        assert_eq!(take(1).len(), 16 << 10);
        assert_eq!(take(256 << 10).len(), 256 << 10);
    }
}
