//! The `Link` header of a paginated `tags/list` (distribution-spec "Listing Tags"): the
//! upstream's `rel="next"` link is rewritten to point at berth, with the client's own path and
//! routing (`ns`) and only the pagination parameters (`n`, `last`) taken from upstream. A link
//! to another origin or to another listing is dropped, so nothing an upstream says can send a
//! client elsewhere. Pure: no I/O.

use http::{HeaderValue, Uri};

use crate::oci::RepoName;
use crate::upstream::{encode_query, same_origin};

/// The next-page link for the client, or `None` when the upstream sent none that is safe.
///
/// `upstream` is the upstream's base URL and `upstream_repo` the name it was asked for;
/// `client_repo` and `ns` are what the client sent, so the link routes the same way.
pub fn next_link(
    link: &HeaderValue,
    upstream: &Uri,
    upstream_repo: &RepoName,
    client_repo: &RepoName,
    ns: Option<&str>,
) -> Option<HeaderValue> {
    let target = next_target(link.to_str().ok()?)?;
    let target: Uri = target.parse().ok()?;
    let is_absolute = target.authority().is_some() || target.scheme().is_some();
    if is_absolute && !same_origin(&target, upstream) {
        return None;
    }
    if target.path() != format!("/v2/{upstream_repo}/tags/list") {
        return None;
    }
    let mut query = Vec::new();
    for pair in target.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // Tags and counts need nothing beyond unreserved characters and percent escapes.
        let safe = v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b));
        match k {
            "n" | "last" if safe => query.push(format!("{k}={v}")),
            "n" | "last" => return None,
            _ => {}
        }
    }
    if let Some(ns) = ns {
        query.push(format!("ns={}", encode_query(ns)));
    }
    let mut url = format!("/v2/{client_repo}/tags/list");
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")).ok()
}

/// The target of the first link-value whose `rel` includes `next` (RFC 8288).
fn next_target(header: &str) -> Option<&str> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        let params_end = after.find('<').unwrap_or(after.len());
        let is_next = after[..params_end].split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            let Some((k, v)) = p.split_once('=') else {
                return false;
            };
            k.trim().eq_ignore_ascii_case("rel")
                && v.trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target);
        }
        rest = &after[params_end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_next_link_for_the_same_listing_on_the_same_origin_is_kept() {
        let upstream: Uri = "https://registry-1.docker.io".parse().unwrap();
        let up_repo: RepoName = "library/app".parse().unwrap();
        let client: RepoName = "app".parse().unwrap();
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            (
                "</v2/library/app/tags/list?last=b&n=2>; rel=\"next\"",
                None,
                Some("</v2/app/tags/list?last=b&n=2>; rel=\"next\""),
            ),
            (
                "<https://registry-1.docker.io/v2/library/app/tags/list?last=b>; rel=next",
                Some("docker.io"),
                Some("</v2/app/tags/list?last=b&ns=docker.io>; rel=\"next\""),
            ),
            (
                "<https://registry-1.docker.io:443/v2/library/app/tags/list?last=b&x=1>; rel=\"next\"",
                None,
                Some("</v2/app/tags/list?last=b>; rel=\"next\""),
            ),
            (
                "<http://registry-1.docker.io/v2/library/app/tags/list?last=b>; rel=\"next\"",
                None,
                None,
            ),
            (
                "<https://registry-1.docker.io:5000/v2/library/app/tags/list>; rel=\"next\"",
                None,
                None,
            ),
            ("<http://169.254.169.254/latest/meta-data/>; rel=\"next\"", None, None),
            ("</v2/library/other/tags/list?last=b>; rel=\"next\"", None, None),
            ("</v2/library/app/tags/list?last=b>; rel=\"prev\"", None, None),
            (
                "</v2/library/app/tags/list?last=a%3E%3Cx>; rel=\"next\"",
                None,
                Some("</v2/app/tags/list?last=a%3E%3Cx>; rel=\"next\""),
            ),
            ("</v2/library/app/tags/list?last=a\"b>; rel=\"next\"", None, None),
            (
                "<http://evil.example/>; rel=\"x\", </v2/library/app/tags/list?n=1>; rel=\"next\"",
                None,
                Some("</v2/app/tags/list?n=1>; rel=\"next\""),
            ),
            ("garbage", None, None),
        ];
        for (link, ns, want) in cases {
            let got = next_link(&HeaderValue::from_str(link).unwrap(), &upstream, &up_repo, &client, *ns);
            assert_eq!(got.as_ref().and_then(|v| v.to_str().ok()), *want, "{link}");
        }
    }
}
