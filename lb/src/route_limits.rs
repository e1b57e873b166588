//! `--config PATH`: the gateway file, and the per-route, per-user limits of
//! its `[[limit]]` tables.
//!
//! ```toml
//! balance = "p2c"              # any flag, by its long name; flags given on
//! upstream = ["10.0.0.2:8080"] # the command line win over the file
//!
//! [[limit]]
//! route = "POST /todos"        # METHOD PATH-PREFIX (`*` for any method)
//! per = "user"                 # user: the bearer token's subject, verified
//!                              #   with JWT_SECRET (HS256); client: the address
//! rate = 50                    # requests per second
//! burst = 100                  # requests at once after a quiet spell (default: rate)
//! ```
//!
//! - Every `[[limit]]` whose route matches a request is asked, in file order;
//!   the first that refuses answers 429 with `Retry-After` and the IETF
//!   `RateLimit-Policy` and `RateLimit` fields
//!   (draft-ietf-httpapi-ratelimit-headers: `"name";q=QUOTA;w=WINDOW` and
//!   `"name";r=REMAINING;t=RESET`).
//! - `per = "user"`: each subject has its own allowance, so one user over
//!   the limit does not slow another behind the same address. A request
//!   without a valid token (none, a bad signature, expired) counts against
//!   its client address; the upstream refuses it anyway.
//! - Each limiter is governor's keyed GCRA (a sharded map of atomic cells),
//!   shared by the cores: a user's connections land on different cores.
//! - The file is re-read when it changes and on SIGHUP. A rule that stays
//!   the same keeps its limiter, so a reload does not refill allowances. A
//!   file that does not parse is reported and the rules in force stay.
//!   Only the `[[limit]]` tables are re-read; other settings take a restart.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use todo_http::http1::Method;

use crate::reloadable::{stamp, CoreCopy, Reloadable};
use crate::ring;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {what}")]
    Read { path: PathBuf, what: String },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
    #[error("[[limit]] {index}: {what}")]
    Limit { index: usize, what: String },
    #[error("a [[limit]] with per = \"user\" needs JWT_SECRET to verify tokens")]
    NoSecret,
}

/// One `[[limit]]` as written.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSpec {
    route: String,
    per: Per,
    rate: f64,
    burst: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    User,
    Client,
}

/// The file's `[[limit]]` tables; the rest of the file is flags.
#[derive(Debug, Default, serde::Deserialize)]
struct LimitsFile {
    #[serde(default)]
    limit: Vec<LimitSpec>,
}

/// Read `path` as the gateway file: its top-level keys as `--key=value`
/// arguments (to be put before the command line's, which then win), and
/// its `[[limit]]` tables (checked here, so a bad file stops start-up).
pub fn read_flags(path: &Path) -> Result<Vec<String>, ConfigError> {
    let table = read_table(path)?;
    let mut args = Vec::new();
    for (key, value) in &table {
        if key == "limit" {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::Parse {
                        path: path.to_owned(),
                        what: format!("{key}: a {} is not a flag's value", other.type_str()),
                    })
                }
            };
            args.push(format!("--{}={text}", key.replace('_', "-")));
        }
    }
    Ok(args)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        what: e.to_string(),
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

fn read_specs(path: &Path) -> Result<Vec<LimitSpec>, ConfigError> {
    let table = read_table(path)?;
    let file: LimitsFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    Ok(file.limit)
}

/// A `[[limit]]` in force.
pub struct Rule {
    spec: LimitSpec,
    /// `None`: any method.
    method: Option<Method>,
    prefix: String,
    /// The route as a label and a policy name: `POST /todos`.
    pub name: String,
    limiter: Arc<DefaultKeyedRateLimiter<u64>>,
    /// `"name";q=BURST;w=WINDOW` (the allowance a quiet key has).
    policy: String,
    /// Seconds for a spent allowance to come back whole.
    window: u64,
    /// Requests refused by this rule, all cores (kept across reloads with
    /// the limiter).
    pub refused: Arc<AtomicU64>,
}

impl Rule {
    fn new(index: usize, spec: LimitSpec) -> Result<Self, ConfigError> {
        let bad = |what: String| ConfigError::Limit { index, what };
        let (method, prefix) = spec.route.split_once(' ').ok_or_else(|| {
            bad(format!(
                "route {:?}: expected \"METHOD /PREFIX\"",
                spec.route
            ))
        })?;
        let method = match method {
            "*" => None,
            "GET" => Some(Method::Get),
            "HEAD" => Some(Method::Head),
            "POST" => Some(Method::Post),
            "PUT" => Some(Method::Put),
            "DELETE" => Some(Method::Delete),
            other => {
                return Err(bad(format!(
                    "method {other:?}: GET, HEAD, POST, PUT, DELETE or *"
                )))
            }
        };
        let prefix = prefix.trim();
        if !prefix.starts_with('/') {
            return Err(bad(format!("path {prefix:?} must start with /")));
        }
        if !(spec.rate.is_finite() && spec.rate > 0.0) {
            return Err(bad(format!(
                "rate {}: must be above 0 (requests per second)",
                spec.rate
            )));
        }
        let burst = spec.burst.unwrap_or(spec.rate.max(1.0));
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(bad(format!("burst {burst}: must be at least 1")));
        }
        let burst_n =
            NonZeroU32::new(burst.round().min(u32::MAX as f64) as u32).expect("at least 1");
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / spec.rate))
            .ok_or_else(|| bad(format!("rate {} is too high", spec.rate)))?
            .allow_burst(burst_n);
        let name = format!("{} {prefix}", method.map_or("*", |m| m.as_str()));
        let window = (f64::from(burst_n.get()) / spec.rate).ceil().max(1.0) as u64;
        let policy = format!("\"{name}\";q={};w={window}", burst_n.get());
        Ok(Rule {
            method,
            prefix: prefix.to_owned(),
            name,
            limiter: Arc::new(RateLimiter::keyed(quota)),
            policy,
            window,
            spec,
            refused: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Whether the rule covers a request: its method, and a path equal to the
    /// prefix or under it (`/todos` covers `/todos` and `/todos/7`, not
    /// `/todosx`).
    pub fn covers(&self, method: Method, path: &str) -> bool {
        self.method.is_none_or(|m| m == method)
            && path.strip_prefix(self.prefix.as_str()).is_some_and(|rest| {
                rest.is_empty() || self.prefix.ends_with('/') || rest.starts_with('/')
            })
    }
}

/// A refusal: the rule that refused and the seconds until one more request
/// is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub rule: usize,
    pub wait_secs: u64,
}

/// The rules in force, and how tokens are verified.
pub struct RouteLimits {
    pub rules: Vec<Rule>,
    key: Option<DecodingKey>,
    validation: Validation,
}

impl RouteLimits {
    fn build(
        specs: Vec<LimitSpec>,
        secret: Option<&[u8]>,
        before: Option<&RouteLimits>,
    ) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            if spec.per == Per::User && secret.is_none() {
                return Err(ConfigError::NoSecret);
            }
            let mut rule = Rule::new(index + 1, spec)?;
            // The same rule keeps its limiter (and so its allowances).
            if let Some(old) = before.and_then(|b| b.rules.iter().find(|r| r.spec == rule.spec)) {
                rule.limiter = old.limiter.clone();
                rule.refused = old.refused.clone();
            }
            rules.push(rule);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // The upstream checks `aud` and `iss`; here only the subject matters.
        validation.validate_aud = false;
        Ok(RouteLimits {
            rules,
            key: secret.map(DecodingKey::from_secret),
            validation,
        })
    }

    /// No rule at all: the check is skipped.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Ask every rule covering the request; the first refusal, if any.
    /// `user` gives the verified subject's key, computed at most once.
    pub fn check(
        &self,
        method: Method,
        path: &str,
        client: IpAddr,
        user: &mut dyn FnMut(&RouteLimits) -> Option<u64>,
    ) -> Option<Refusal> {
        let mut user_key = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.covers(method, path) {
                continue;
            }
            let key = match rule.spec.per {
                Per::Client => client_key(client),
                Per::User => *user_key
                    .get_or_insert_with(|| user(self).unwrap_or_else(|| client_key(client))),
            };
            if let Err(not_until) = rule.limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                rule.refused.fetch_add(1, Ordering::Relaxed);
                return Some(Refusal {
                    rule: i,
                    wait_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                });
            }
        }
        None
    }

    /// The key of a bearer token's subject when the token verifies.
    pub fn verified_subject(&self, token: &[u8]) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct Subject {
            sub: String,
        }
        let key = self.key.as_ref()?;
        let token = std::str::from_utf8(token).ok()?;
        let data = jsonwebtoken::decode::<Subject>(token, key, &self.validation).ok()?;
        Some(ring::key(data.claims.sub.as_bytes()) | 1)
    }

    /// The extra header lines of a 429 from `refusal` (each `\r\n`-led).
    pub fn refusal_headers(&self, refusal: Refusal, out: &mut Vec<u8>) {
        let rule = &self.rules[refusal.rule];
        let wait = refusal.wait_secs.max(1);
        out.extend_from_slice(b"\r\nRetry-After: ");
        out.extend_from_slice(itoa::Buffer::new().format(wait).as_bytes());
        out.extend_from_slice(b"\r\nRateLimit-Policy: ");
        out.extend_from_slice(rule.policy.as_bytes());
        out.extend_from_slice(b"\r\nRateLimit: \"");
        out.extend_from_slice(rule.name.as_bytes());
        out.extend_from_slice(b"\";r=0;t=");
        out.extend_from_slice(itoa::Buffer::new().format(wait.min(rule.window)).as_bytes());
    }
}

/// A client address's key; user keys have the low bit set, client keys not,
/// so the two never share an allowance.
fn client_key(ip: IpAddr) -> u64 {
    ring::ip_key(ip) & !1
}

/// The rules in force, shared by the cores, and their reloading.
pub struct SharedLimits {
    path: Option<PathBuf>,
    secret: Option<Vec<u8>>,
    /// The rules in force; each core reads its [`CoreLimits`] copy.
    pub rules: Arc<Reloadable<RouteLimits>>,
    /// Re-reads that put a file in force, and those refused.
    pub reloaded: AtomicU64,
    pub reload_failed: AtomicU64,
}

impl SharedLimits {
    /// Load the file's rules (none without a file); an error stops start-up.
    pub fn load(path: Option<PathBuf>, secret: Option<Vec<u8>>) -> Result<Arc<Self>, ConfigError> {
        let specs = match &path {
            Some(p) => read_specs(p)?,
            None => Vec::new(),
        };
        let limits = RouteLimits::build(specs, secret.as_deref(), None)?;
        Ok(Arc::new(SharedLimits {
            path,
            secret,
            rules: Arc::new(Reloadable::new(limits)),
            reloaded: AtomicU64::new(0),
            reload_failed: AtomicU64::new(0),
        }))
    }

    pub fn current(&self) -> Arc<RouteLimits> {
        self.rules.current()
    }

    /// Read the file again; on success its rules are in force.
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let done = self.reload_inner();
        let counter = if done.is_ok() {
            &self.reloaded
        } else {
            &self.reload_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        done
    }

    fn reload_inner(&self) -> Result<usize, ConfigError> {
        let Some(path) = &self.path else { return Ok(0) };
        let specs = read_specs(path)?;
        let before = self.current();
        let limits = RouteLimits::build(specs, self.secret.as_deref(), Some(&before))?;
        let n = limits.rules.len();
        self.rules.replace(limits);
        Ok(n)
    }

    /// A thread that reloads when the file changes (looked at every second)
    /// and on SIGHUP.
    pub fn spawn_reloader(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
        let shared = self.clone();
        std::thread::Builder::new()
            .name("todo-lb-config".into())
            .spawn(move || {
                let mut seen = stamp(&path);
                let mut ticks = 0u32;
                loop {
                    std::thread::sleep(Duration::from_millis(100));
                    ticks += 1;
                    let signalled = hup.swap(false, Ordering::AcqRel);
                    if !signalled && !ticks.is_multiple_of(10) {
                        continue;
                    }
                    let now = stamp(&path);
                    if !signalled && now == seen {
                        continue;
                    }
                    seen = now;
                    match shared.reload() {
                        Ok(n) => {
                            eprintln!("todo-lb: {}: re-read, {n} limits in force", path.display())
                        }
                        Err(e) => eprintln!(
                            "todo-lb: {}: not re-read, the limits in force stay: {e}",
                            path.display()
                        ),
                    }
                }
            })
            .map(|_| ())
    }
}

/// A core's copy of the rules ([`CoreCopy`]): one atomic load per batch, a
/// new copy after a reload.
pub type CoreLimits = CoreCopy<RouteLimits>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(route: &str) -> Rule {
        let spec = LimitSpec {
            route: route.into(),
            per: Per::Client,
            rate: 1.0,
            burst: Some(2.0),
        };
        Rule::new(1, spec).unwrap()
    }

    #[test]
    fn a_route_covers_its_path_and_what_is_under_it() {
        let r = rule("POST /todos");
        assert!(r.covers(Method::Post, "/todos"));
        assert!(r.covers(Method::Post, "/todos/7"));
        assert!(!r.covers(Method::Post, "/todosx"));
        assert!(!r.covers(Method::Get, "/todos"));
        assert!(rule("* /").covers(Method::Delete, "/anything"));
        assert_eq!(r.policy, "\"POST /todos\";q=2;w=2");
    }

    #[test]
    fn bad_rules_are_named() {
        for (route, rate, burst, says) in [
            ("POST", 1.0, None, "METHOD /PREFIX"),
            ("PATCH /x", 1.0, None, "PATCH"),
            ("GET x", 1.0, None, "must start with /"),
            ("GET /x", 0.0, None, "above 0"),
            ("GET /x", 1.0, Some(0.5), "at least 1"),
        ] {
            let spec = LimitSpec {
                route: route.into(),
                per: Per::Client,
                rate,
                burst,
            };
            let err = Rule::new(3, spec).err().unwrap().to_string();
            assert!(err.contains(says) && err.contains("[[limit]] 3"), "{err}");
        }
    }

    #[test]
    fn top_level_keys_become_flags() {
        let path = std::env::temp_dir().join(format!("todo-lb-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "balance = \"hash\"\nupstream = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nrate = 5\nhealth_path = \"/h\"\n\n[[limit]]\nroute = \"POST /todos\"\nper = \"user\"\nrate = 50\n",
        )
        .unwrap();
        let mut flags = read_flags(&path).unwrap();
        flags.sort();
        assert_eq!(
            flags,
            [
                "--balance=hash",
                "--health-path=/h",
                "--rate=5",
                "--upstream=127.0.0.1:1",
                "--upstream=127.0.0.1:2"
            ]
        );
        assert!(matches!(
            SharedLimits::load(Some(path.clone()), None).err(),
            Some(ConfigError::NoSecret)
        ));
        let limits = SharedLimits::load(Some(path.clone()), Some(b"s".to_vec())).unwrap();
        assert_eq!(limits.current().rules.len(), 1);
        std::fs::write(
            &path,
            "[[limit]]\nroute = \"POST /todos\"\nper = \"someone\"\nrate = 1\n",
        )
        .unwrap();
        assert!(limits.reload().is_err());
        assert_eq!(limits.current().rules.len(), 1, "the rules in force stay");
        std::fs::remove_file(&path).unwrap();
    }
}
