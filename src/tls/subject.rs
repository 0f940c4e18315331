//! The subject common name of a client certificate, read from its DER: the user a mutual-TLS
//! connection authenticates as. Pure parsing of a certificate rustls has already verified; a
//! certificate with no common name, several, or one that is not a plain printable string
//! yields `None` (the connection is then anonymous).

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;

/// The subject's common name (RFC 5280 4.1.2.6), if there is exactly one and it is text.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = expect(SEQUENCE, cert_der)?;
    let (tbs, _) = expect(SEQUENCE, cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (mut rdns, _) = expect(SEQUENCE, rest)?;
    let mut found = None;
    while !rdns.is_empty() {
        let (mut set, next) = expect(SET, rdns)?;
        rdns = next;
        while !set.is_empty() {
            let (attr, next) = expect(SEQUENCE, set)?;
            set = next;
            let (oid, value) = expect(OID, attr)?;
            if oid != COMMON_NAME {
                continue;
            }
            if found.is_some() {
                return None;
            }
            let (tag, text, _) = tlv(value)?;
            if !matches!(tag, UTF8_STRING | PRINTABLE_STRING | IA5_STRING) {
                return None;
            }
            let text = std::str::from_utf8(text).ok()?;
            if text.is_empty() || text.chars().any(char::is_control) {
                return None;
            }
            found = Some(text.to_string());
        }
    }
    found
}

/// The contents of a TLV with tag `tag`, and what follows it.
fn expect(tag: u8, input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (t, contents, rest) = tlv(input)?;
    (t == tag).then_some((contents, rest))
}

/// One DER tag-length-value: (tag, contents, rest). Single-byte tags only, which is all an
/// X.509 name uses.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests;
