use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::common_name;

// Self-signed certificates made with `openssl req -x509 -subj ...` (keys discarded).
const C1: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBpzCCAU2gAwIBAgIUanN5nCcag/wHFjibQNchanHmPvYwCgYIKoZIzj0EAwIw\n\
KDEUMBIGA1UEAwwLY2ktcnVubmVyLTcxEDAOBgNVBAoMB0V4YW1wbGUwIBcNMjYx\n\
MjAzMjAyNTQ1WhgPMjEyNjExMDkyMDI1NDVaMCgxFDASBgNVBAMMC2NpLXJ1bm5l\n\
ci03MRAwDgYDVQQKDAdFeGFtcGxlMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n\
dnlVW/kendTZmW4hMdKh7dpHA3PqJF+T3t/Z5h653npMhgXuveCVdLgk+88uRDlk\n\
3HsKLBxEiAwTQYX294EU/KNTMFEwHQYDVR0OBBYEFPzkE+JhvaD02ivDIfMKM1KP\n\
gGSCMB8GA1UdIwQYMBaAFPzkE+JhvaD02ivDIfMKM1KPgGSCMA8GA1UdEwEB/wQF\n\
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIhAPGggtPX0qyHHaWbzQx6j0W3yUTrOc+l\n\
uUJ6pdWB8nPCAiBcUQBDCKY/sieosJqZVn0FjmKCxjHbjvx+gW1hskVWMA==\n\
-----END CERTIFICATE-----\n";
const C4: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBlzCCAT2gAwIBAgIUFIiW+tosC8tqxekEeV6gZwU/vEowCgYIKoZIzj0EAwIw\n\
IDEeMAwGA1UEAwwFYWxpY2UwDgYDVQQKDAdFeGFtcGxlMCAXDTI2MTIwMzIwMjU0\n\
NloYDzIxMjYxMTA5MjAyNTQ2WjAgMR4wDAYDVQQDDAVhbGljZTAOBgNVBAoMB0V4\n\
YW1wbGUwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQKgCiEifUetZvjpBgKKo2W\n\
yf8PUUkpNNJqEvNg4sGkfsmWe6N6yfYZpkW8AVDMYaWJ3WYdOgOtH/l0MUIpby6e\n\
o1MwUTAdBgNVHQ4EFgQULR44wVi7mFoi4jJ6BumNFtN5NWMwHwYDVR0jBBgwFoAU\n\
LR44wVi7mFoi4jJ6BumNFtN5NWMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD\n\
AgNIADBFAiAuLKihT5Q59NqVa87k43oCXjI0QfYuQHFIET+yRfy2xgIhAOc4cLnc\n\
NvidgviNANG3jfFhYoY21K1TLsE7Yikm8LTN\n\
-----END CERTIFICATE-----\n";
const RSA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDCTCCAfGgAwIBAgIUNZwky/ENGlgIgBoLpALQ3UuCeAgwDQYJKoZIhvcNAQEL\n\
BQAwEzERMA8GA1UEAwwIcnNhLXVzZXIwIBcNMjYxMjAzMjAyNTQ3WhgPMjEyNjEx\n\
MDkyMDI1NDdaMBMxETAPBgNVBAMMCHJzYS11c2VyMIIBIjANBgkqhkiG9w0BAQEF\n\
AAOCAQ8AMIIBCgKCAQEAxA2hKeRgHRZfXVSGKMXjgX1T2IjkBGUv8jzNoaQJEy4u\n\
AH0UK/XeBwbXftwD7H2S4wCSyQw3EBDCe+jWqjcAsikw4X6zGjWtRbUlGF42jYJY\n\
8Nru/edrl1cU4lyldQTWb7zqlmCu0IZj/d/qC/A6CLdmjkCqPWNpa29u7nnMr8vX\n\
5rMc3wV5rvTZS7xrXi6FYXRs03uFDgWdw2+oC9WEpMiyT2cYn6K+8/I3N/z3iBdn\n\
8Kq/W1wg++LLn/0lUzmhUKD+1uz8naCP/kKfvvZ07oonZbInCxfBZaUc6gq/9vyn\n\
Xi82of+DX5z7QIGdiK2k0FHIjP0aZJkk0rcObSsIxwIDAQABo1MwUTAdBgNVHQ4E\n\
FgQUIGIFIGOgfoy31hXyNTDvPpBM6JQwHwYDVR0jBBgwFoAUIGIFIGOgfoy31hXy\n\
NTDvPpBM6JQwDwYDVR0TAQH/BAUwAwEB/zANBgkqhkiG9w0BAQsFAAOCAQEAXYZS\n\
1ILEhtmQS7674h29OC3GbZXVv0enElPEOTivDbGHOdXeFLFBnKtlVpBlRS6MDi7F\n\
uSSUq8tNXQoicAVi8yo9M3sL5ht7fcJx9u5uhpay8fXNhZsVd+jGIHftYHT6rFLL\n\
hPwhhAM5xD9ROQixlFN1M3+DCJ4rU4ycn1AgWpiOf8EtDtlmK2DaNFFfRySSsaIe\n\
GvUarRGRQ/VZ4aIck0AesH/3FZB2E/9YYmOJpaCMzzG6Tvp6apSNa4W5w0cyRfSI\n\
zIcbzlgFFnb43Z2SXHbuHTdzBpT5zPCBSYvA/4ud72fa2A1aoIu1XrQuFU+nnux4\n\
0VOy2KsOIT6I08ndGA==\n\
-----END CERTIFICATE-----\n";
const C2: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBezCCASGgAwIBAgIUEF9258sLoVYFbk9sqPhZwVCczQkwCgYIKoZIzj0EAwIw\n\
EjEQMA4GA1UECgwHRXhhbXBsZTAgFw0yNjEyMDMyMDI1NDZaGA8yMTI2MTEwOTIw\n\
MjU0NlowEjEQMA4GA1UECgwHRXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n\
A0IABBr1zzB44jZnDh/VejwZiHL+XTYY2l7b3u1pOR6/svL3o8ipLqNCeiY9X2lo\n\
fPJ9QDEAnBUZeNfMqX7kAcch4UKjUzBRMB0GA1UdDgQWBBQfr2whkhUVDpq4gkA8\n\
vquoM9DtMTAfBgNVHSMEGDAWgBQfr2whkhUVDpq4gkA8vquoM9DtMTAPBgNVHRMB\n\
Af8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIEUF7uUBQzWgF6Rm6XPmMhwSbtge\n\
dcBOUIncybrH0jJDAiEAr+E3oZtgszoL0BBwhwn0LwubOQKiOQWVxuDKQlyrJi8=\n\
-----END CERTIFICATE-----\n";
const C3: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBhjCCAS2gAwIBAgIUN1wmFqNmm2CnsNA0RpjM2exXaTQwCgYIKoZIzj0EAwIw\n\
GDEKMAgGA1UEAwwBYTEKMAgGA1UEAwwBYjAgFw0yNjEyMDMyMDI1NDZaGA8yMTI2\n\
MTEwOTIwMjU0NlowGDEKMAgGA1UEAwwBYTEKMAgGA1UEAwwBYjBZMBMGByqGSM49\n\
AgEGCCqGSM49AwEHA0IABHjpilBEHGWbHvBoIf+b8GXoNjxfpBuqIM5jzi8u+US3\n\
isaUF9p+A0NkenZ676yuxnGleM+wLjTYTwEAsuxgBnCjUzBRMB0GA1UdDgQWBBTn\n\
h1wvaAMAPvdmHnq24WI2x6s2yjAfBgNVHSMEGDAWgBTnh1wvaAMAPvdmHnq24WI2\n\
x6s2yjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIBunlu4jxmrb\n\
eNOCJSOZ4D8WRaLPfeI1mVIDFe+NEqaMAiB+gyu+NnAnBZm5w/NUeqLym8flmjfF\n\
mRx3TBffC2kifw==\n\
-----END CERTIFICATE-----\n";

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[test]
fn common_name_is_the_user_when_the_subject_has_exactly_one() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (C1, "CN=ci-runner-7, O=Example", Some("ci-runner-7")),
        (C4, "multi-valued RDN O=Example + CN=alice", Some("alice")),
        (RSA, "CN=rsa-user (RSA: long-form lengths)", Some("rsa-user")),
        (C2, "O=Example, no common name", None),
        (C3, "CN=a, CN=b: ambiguous", None),
    ];
    for (pem, subject, want) in cases {
        assert_eq!(common_name(&der(pem)).as_deref(), *want, "subject {subject}");
    }
}

#[test]
fn common_name_is_none_when_the_der_is_cut_or_not_a_certificate() {
    let full = der(C1);
    for len in 0..full.len() {
        assert_eq!(
            common_name(&full[..len]),
            None,
            "a certificate cut at {len} bytes has no name"
        );
    }
    assert_eq!(common_name(b"not der at all"), None);
    assert_eq!(
        common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
        None,
        "a length past the end"
    );
}
