//! berth's own users: an htpasswd file of bcrypt entries (the format `htpasswd -B` writes),
//! re-read when it changes. Unknown user names are checked against a dummy hash of the same
//! cost, so the answer time does not tell which names exist. Verified credentials are
//! remembered briefly under a keyed hash (never the password itself), so clients that send
//! Basic auth on every request do not pay bcrypt each time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

/// bcrypt cost for the dummy hash when the file has no entry to copy it from.
const DEFAULT_COST: u32 = 10;
/// How often the file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// How long a verified user/password pair skips bcrypt.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// The loaded file: user -> bcrypt hash.
struct Entries {
    users: HashMap<String, String>,
    /// A hash of a random password at the file's cost, checked for unknown names.
    dummy: String,
    /// Modification time and length when loaded.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// The htpasswd user database. Verification runs bcrypt: call it off the async threads.
pub struct Htpasswd {
    path: PathBuf,
    // std RwLock: held only to copy a hash or swap the table, never across an await.
    entries: RwLock<Entries>,
    /// Keyed hashes of recently verified `user:password` pairs.
    verified: moka::sync::Cache<[u8; 32], String>,
    cache_key: [u8; 32],
}

impl Htpasswd {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let entries = read_entries(path)?;
        let mut cache_key = [0u8; 32];
        getrandom::getrandom(&mut cache_key).map_err(|e| format!("no random source: {e}"))?;
        Ok(Htpasswd {
            path: path.to_path_buf(),
            entries: RwLock::new(entries),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
            cache_key,
        })
    }

    /// Whether this pair was verified within the last minute (and the file did not change
    /// since). Cheap: no bcrypt.
    pub fn is_remembered(&self, user: &str, password: &str) -> bool {
        self.reload_if_changed();
        self.verified
            .get(&self.pair_key(user, password))
            .is_some_and(|u| u == user)
    }

    /// Whether `password` is `user`'s. Blocking (bcrypt); the same work for unknown users.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if self.is_remembered(user, password) {
            return true;
        }
        let key = self.pair_key(user, password);
        let (hash, known) = {
            let e = self.entries.read().expect("htpasswd lock is never poisoned");
            match e.users.get(user) {
                Some(h) => (h.clone(), true),
                None => (e.dummy.clone(), false),
            }
        };
        let ok = bcrypt::verify(password, &hash).unwrap_or(false) && known;
        if ok {
            self.verified.insert(key, user.to_string());
        }
        ok
    }

    fn pair_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Re-read the file when its modification time or size changed (checked at most once a
    /// second). A file that cannot be read keeps the users loaded before.
    fn reload_if_changed(&self) {
        {
            let e = self.entries.read().expect("htpasswd lock is never poisoned");
            if e.checked.elapsed() < RELOAD_CHECK {
                return;
            }
        }
        let now_stamp = stamp(&self.path);
        let mut e = self.entries.write().expect("htpasswd lock is never poisoned");
        e.checked = Instant::now();
        if now_stamp == e.stamp {
            return;
        }
        match read_entries(&self.path) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), users = fresh.users.len(), "htpasswd reloaded");
                *e = fresh;
                self.verified.invalidate_all();
            }
            Err(err) => tracing::warn!(error = %err, "htpasswd not reloaded"),
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn read_entries(path: &Path) -> Result<Entries, String> {
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let users = parse(&text);
    let cost = users.values().find_map(|h| bcrypt_cost(h)).unwrap_or(DEFAULT_COST);
    let mut pw = [0u8; 16];
    getrandom::getrandom(&mut pw).map_err(|e| format!("no random source: {e}"))?;
    let dummy = bcrypt::hash(pw, cost).map_err(|e| format!("bcrypt: {e}"))?;
    Ok(Entries {
        users,
        dummy,
        stamp,
        checked: Instant::now(),
    })
}

/// `user:hash` lines; blank lines and `#` comments are skipped, and so are entries that are
/// not bcrypt (MD5, SHA1 and crypt entries are not accepted).
fn parse(text: &str) -> HashMap<String, String> {
    let mut users = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((user, hash)) = line.split_once(':') else {
            continue;
        };
        if bcrypt_cost(hash).is_some() {
            users.insert(user.to_string(), hash.to_string());
        } else {
            tracing::warn!(user, "htpasswd entry is not bcrypt (use htpasswd -B); ignored");
        }
    }
    users
}

/// The cost of a `$2y$`/`$2a$`/`$2b$` hash.
fn bcrypt_cost(hash: &str) -> Option<u32> {
    let rest = ["$2y$", "$2a$", "$2b$"].iter().find_map(|p| hash.strip_prefix(p))?;
    let (cost, _) = rest.split_once('$')?;
    cost.parse().ok().filter(|c| (4..=31).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_accepts_only_bcrypt_entries_when_parsing() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let text = format!("# comment\n\nalice:{h}\nbob:$apr1$abc$def\ncarol:{{SHA}}xyz\nbroken\n");
        let users = parse(&text);
        assert_eq!(users.keys().collect::<Vec<_>>(), vec!["alice"], "only bcrypt entries");
        assert_eq!(bcrypt_cost(&h), Some(4));
        assert_eq!(bcrypt_cost("$2y$99$x"), None);
    }

    #[test]
    fn htpasswd_verifies_and_reloads_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, format!("alice:{}\n", bcrypt::hash("secret", 4).unwrap())).unwrap();
        let db = Htpasswd::load(&path).unwrap();
        assert!(db.verify("alice", "secret"));
        assert!(!db.verify("alice", "wrong"));
        assert!(!db.verify("nobody", "secret"), "unknown users never pass");
        std::fs::write(
            &path,
            format!(
                "bob:{}\n# longer file so the size changes\n",
                bcrypt::hash("other", 4).unwrap()
            ),
        )
        .unwrap();
        db.entries.write().unwrap().checked -= RELOAD_CHECK;
        assert!(db.verify("bob", "other"), "new entry after reload");
        assert!(
            !db.verify("alice", "secret"),
            "removed entry no longer passes, cache dropped"
        );
    }
}
