//! The status page as HTML: one self-contained document (inline CSS, no script, no external
//! asset) rendered from a [`Snapshot`]. Every text that may come from a client or an upstream
//! (image names, error messages) goes through [`escape`]. Pure: no I/O, no shared state.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::activity::{ErrorEntry, Totals, UpstreamActivity};
use crate::cli::human_bytes;
use crate::fill::FillStatus;
use crate::upstream::{CircuitState, Opened};

/// Seconds between the page's own reloads (`<meta http-equiv="refresh">`).
const REFRESH_SECONDS: u32 = 10;

/// Everything the page shows, collected at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// berth's version.
    pub version: &'static str,
    /// When the snapshot was taken.
    pub now: SystemTime,
    /// When berth started.
    pub started: SystemTime,
    /// Whether `/readyz` says yes.
    pub ready: bool,
    /// Why not, when not ready.
    pub not_ready: Vec<&'static str>,
    /// One row per configured upstream, in config order.
    pub upstreams: Vec<UpstreamRow>,
    /// The store.
    pub storage: StorageRow,
    /// Since-start lookups and bytes.
    pub totals: Totals,
    /// Blob fills in progress.
    pub fills: Vec<FillStatus>,
    /// Most pulled images: `(upstream, repo:tag, pulls)`.
    pub top_pulls: Vec<(String, String, u64)>,
    /// Recent errors, newest first.
    pub errors: Vec<ErrorEntry>,
}

/// One upstream's state.
#[derive(Debug, Clone)]
pub struct UpstreamRow {
    /// Config name.
    pub name: String,
    /// Configured URL.
    pub url: String,
    /// Breaker position.
    pub circuit: CircuitState,
    /// Why and since when the circuit is open.
    pub opened: Option<Opened>,
    /// Last error and rate-limit headers.
    pub activity: UpstreamActivity,
}

/// The store's size against its limits.
#[derive(Debug, Clone, Copy)]
pub struct StorageRow {
    /// Bytes used (committed and reserved).
    pub used: u64,
    /// `max_size`, if set.
    pub limit: Option<u64>,
    /// Free bytes on the file system, if known.
    pub free: Option<u64>,
    /// Objects in the store.
    pub objects: u64,
    /// Whether the store can be written.
    pub writable: bool,
}

/// `text` safe inside HTML text and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ago(now: SystemTime, t: SystemTime) -> String {
    let secs = now.duration_since(t).map_or(0, |d| d.as_secs());
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:75em}\
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.25em .6em;\
border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4}\
td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:.95em;word-break:break-all}\
.ok{color:#176f2c;font-weight:600}.bad{color:#b00020;font-weight:600}.warn{color:#a15c00;font-weight:600}\
.muted{color:#777}code.url{word-break:normal;white-space:nowrap}.tiles{display:flex;flex-wrap:wrap;gap:1em}.tile{border:1px solid #ddd;\
border-radius:6px;padding:.6em 1em;min-width:11em}.tile b{display:block;font-size:1.4em}";

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>berth status</title><style>{STYLE}</style></head><body>\n\
         <h1>berth status</h1><p class=\"muted\">version {} · up {} (since {}) · as of {} · \
         refreshes every {REFRESH_SECONDS} s · <a href=\"/metrics\">/metrics</a></p>\n",
        escape(s.version),
        ago(s.now, s.started),
        time(s.started),
        time(s.now),
    );
    health(&mut h, s);
    cache(&mut h, s);
    upstreams(&mut h, s);
    fills(&mut h, s);
    top_pulls(&mut h, s);
    errors(&mut h, s);
    h.push_str("</body></html>\n");
    h
}

fn health(h: &mut String, s: &Snapshot) {
    h.push_str("<h2>Health</h2><p id=\"health\">live: <span class=\"ok\">yes</span> · ready: ");
    if s.ready {
        h.push_str("<span class=\"ok\">yes</span>");
    } else {
        let _ = write!(h, "<span class=\"bad\">no</span> ({})", escape(&s.not_ready.join("; ")));
    }
    let open = s.upstreams.iter().filter(|u| u.circuit != CircuitState::Closed).count();
    if open > 0 {
        let _ = write!(
            h,
            " · <span class=\"warn\">{open} upstream circuit(s) open</span> (cached content is still served)"
        );
    }
    h.push_str("</p>\n");
}

fn cache(h: &mut String, s: &Snapshot) {
    let t = &s.totals;
    let ratio = match t.lookups {
        0 => "–".to_string(),
        n => format!("{:.1} %", t.hits as f64 * 100.0 / n as f64),
    };
    let st = &s.storage;
    let cap = match st.limit {
        Some(l) if l > 0 => format!("of {} ({:.0} %)", human_bytes(l), st.used as f64 * 100.0 / l as f64),
        _ => "no max_size".to_string(),
    };
    let free = st.free.map_or("free space unknown".to_string(), |f| {
        format!("{} free on disk", human_bytes(f))
    });
    let writable = match st.writable {
        true => "<span class=\"ok\">writable</span>",
        false => "<span class=\"bad\">not writable</span>",
    };
    let _ = writeln!(
        h,
        "<h2>Cache</h2><div class=\"tiles\">\
         <div class=\"tile\" id=\"storage\">Store<b>{}</b>{cap}<br>{} objects · {free} · {writable}</div>\
         <div class=\"tile\" id=\"hit-ratio\">Hit ratio since start<b>{ratio}</b>{} of {} lookups</div>\
         <div class=\"tile\" id=\"bytes-saved\">Bytes saved since start<b>{}</b>served from cache \
         ({} bytes); {} from upstreams</div></div>",
        human_bytes(st.used),
        st.objects,
        t.hits,
        t.lookups,
        human_bytes(t.bytes_from_cache),
        t.bytes_from_cache,
        human_bytes(t.bytes_from_upstream),
    );
}

fn upstreams(h: &mut String, s: &Snapshot) {
    h.push_str(
        "<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>Name</th><th>URL</th><th>Circuit</th>\
         <th>Rate limit remaining</th><th>Last error</th></tr>\n",
    );
    for u in &s.upstreams {
        let circuit = match (u.circuit, &u.opened) {
            (CircuitState::Closed, _) => "<span class=\"ok\">closed</span>".to_string(),
            (state, opened) => {
                let word = match state {
                    CircuitState::HalfOpen => "half-open (probing)",
                    _ => "open",
                };
                let why = opened.as_ref().map_or(String::new(), |o| {
                    format!(" since {} after: {}", time(o.since), escape(&o.cause))
                });
                format!("<span class=\"bad\">{word}</span>{why}")
            }
        };
        let a = &u.activity;
        let ratelimit = match (a.ratelimit_remaining, a.ratelimit_limit) {
            (Some(r), Some(l)) => format!("{r} of {l}"),
            (Some(r), None) => r.to_string(),
            _ => "<span class=\"muted\">no header seen</span>".to_string(),
        };
        let last = a
            .last_error
            .as_ref()
            .map_or("<span class=\"muted\">none</span>".to_string(), |e| {
                format!("{} ({} ago): {}", time(e.at), ago(s.now, e.at), escape(&e.message))
            });
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td><code class=\"url\">{}</code></td><td>{circuit}</td><td>{ratelimit}</td><td>{last}</td></tr>",
            escape(&u.name),
            escape(&u.url),
        );
    }
    h.push_str("</table>\n");
}

fn fills(h: &mut String, s: &Snapshot) {
    let _ = write!(h, "<h2>Fills in progress ({})</h2>", s.fills.len());
    if s.fills.is_empty() {
        h.push_str("<p id=\"fills\" class=\"muted\">none</p>\n");
        return;
    }
    h.push_str("<table id=\"fills\"><tr><th>Upstream</th><th>Repository</th><th>Blob</th><th>Progress</th></tr>\n");
    for f in &s.fills {
        let progress = match f.total {
            Some(t) => format!("{} of {}", human_bytes(f.written), human_bytes(t)),
            None => human_bytes(f.written),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"num\">{progress}</td></tr>",
            escape(&f.upstream),
            escape(f.repo.as_str()),
            escape(&f.digest.to_string()),
        );
    }
    h.push_str("</table>\n");
}

fn top_pulls(h: &mut String, s: &Snapshot) {
    h.push_str("<h2>Most pulled images</h2>");
    if s.top_pulls.is_empty() {
        h.push_str("<p id=\"top-images\" class=\"muted\">no pulls yet</p>\n");
        return;
    }
    h.push_str("<table id=\"top-images\"><tr><th>Image</th><th>Upstream</th><th>Pulls</th></tr>\n");
    for (up, image, n) in &s.top_pulls {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{n}</td></tr>",
            escape(image),
            escape(up)
        );
    }
    h.push_str("</table>\n");
}

fn errors(h: &mut String, s: &Snapshot) {
    h.push_str("<h2>Recent errors</h2>");
    if s.errors.is_empty() {
        h.push_str("<p id=\"errors\" class=\"muted\">none since start</p>\n");
        return;
    }
    h.push_str("<table id=\"errors\"><tr><th>Time</th><th>Upstream</th><th>Error</th></tr>\n");
    for e in &s.errors {
        let _ = writeln!(
            h,
            "<tr><td>{} <span class=\"muted\">({} ago)</span></td><td>{}</td><td>{}</td></tr>",
            time(e.at),
            ago(s.now, e.at),
            escape(e.upstream.as_deref().unwrap_or("–")),
            escape(&e.message),
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let now = SystemTime::now();
        Snapshot {
            version: "1.0",
            now,
            started: now,
            ready: false,
            not_ready: vec!["the store cannot be written"],
            upstreams: vec![UpstreamRow {
                name: "hub".into(),
                url: "https://registry-1.docker.io".into(),
                circuit: CircuitState::Open,
                opened: Some(Opened {
                    since: now,
                    cause: "connect to <host>: refused".into(),
                }),
                activity: UpstreamActivity::default(),
            }],
            storage: StorageRow {
                used: 1 << 20,
                limit: Some(4 << 20),
                free: None,
                objects: 3,
                writable: false,
            },
            totals: Totals {
                lookups: 4,
                hits: 3,
                bytes_from_cache: 2048,
                bytes_from_upstream: 1,
            },
            fills: vec![],
            top_pulls: vec![("hub".into(), "evil/<script>alert(1)</script>:x".into(), 2)],
            errors: vec![ErrorEntry {
                at: now,
                upstream: None,
                message: "a \"quoted\" & <b>bold</b> 'message'".into(),
            }],
        }
    }

    #[test]
    fn page_escapes_every_client_and_upstream_text() {
        let page = render(&snapshot());
        assert!(!page.contains("<script>"), "no markup from names: {page}");
        assert!(!page.contains("<b>bold"), "no markup from errors");
        assert!(page.contains("evil/&lt;script&gt;alert(1)&lt;/script&gt;:x"));
        assert!(page.contains("a &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt; &#39;message&#39;"));
        assert!(page.contains("connect to &lt;host&gt;: refused"));
    }

    #[test]
    fn page_shows_readiness_circuit_and_numbers() {
        let page = render(&snapshot());
        for expected in [
            "ready: <span class=\"bad\">no</span> (the store cannot be written)",
            "<span class=\"bad\">open</span> since",
            "75.0 %",
            "3 of 4 lookups",
            "2.0 KiB",
            "of 4.0 MiB (25 %)",
            "not writable",
        ] {
            assert!(page.contains(expected), "missing {expected:?} in {page}");
        }
        assert!(!page.contains("src="), "no external asset");
        assert!(!page.contains("href=\"http"), "no external link");
        assert!(!page.contains("<script"), "no script");
    }
}
