//! `Range` header handling for blob GETs (RFC 9110 section 14): one byte range is honoured,
//! anything else is ignored (a full 200 is always a valid answer). Pure; no I/O.

/// What to send for a blob of a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// The whole blob, 200.
    Full,
    /// `start..=end`, 206 with `Content-Range`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Decide how to answer `Range: <header>` for a blob of `size` bytes.
pub fn decide(header: Option<&str>, size: u64) -> RangeDecision {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeDecision::Full;
    };
    // Several ranges: allowed to ignore (and it is the amplification case); answer in full.
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(last) {
            Some(0) => RangeDecision::Unsatisfiable,
            Some(_) if size == 0 => RangeDecision::Unsatisfiable,
            Some(n) => RangeDecision::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => RangeDecision::Full,
        },
        (false, _) => {
            let Some(start) = num(first) else {
                return RangeDecision::Full;
            };
            let end = if last.is_empty() {
                None
            } else {
                match num(last) {
                    Some(e) if e >= start => Some(e),
                    _ => return RangeDecision::Full,
                }
            };
            if start >= size {
                return RangeDecision::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            RangeDecision::Partial { start, end }
        }
        (true, true) => RangeDecision::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let cases: &[(Option<&str>, u64, RangeDecision)] = &[
            (None, 20, Full),
            (Some("bytes=1-3"), 20, Partial { start: 1, end: 3 }),
            (Some("bytes=0-0"), 20, Partial { start: 0, end: 0 }),
            (Some("bytes=5-"), 20, Partial { start: 5, end: 19 }),
            (Some("bytes=5-100"), 20, Partial { start: 5, end: 19 }),
            (Some("bytes=-4"), 20, Partial { start: 16, end: 19 }),
            (Some("bytes=-400"), 20, Partial { start: 0, end: 19 }),
            (Some("bytes=20-"), 20, Unsatisfiable),
            (Some("bytes=99999999999-"), 20, Unsatisfiable),
            (Some("bytes=-0"), 20, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=3-1"), 20, Full),
            (Some("bytes=0-0,2-2"), 20, Full),
            (Some("bytes=a-b"), 20, Full),
            (Some("items=1-2"), 20, Full),
            (Some("bytes=-"), 20, Full),
            (Some("bytes=+1-2"), 20, Full),
        ];
        for (h, size, want) in cases {
            assert_eq!(decide(*h, *size), *want, "Range {h:?} on {size} bytes");
        }
    }
}
