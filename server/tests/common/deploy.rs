//! A deployment for tests that read through every surface: the embedded
//! default, or two distributed servers with the worker, PostgreSQL, Redis
//! and the broker; and todo-lb `--cache on` in front of them. Tokens are
//! signed here with the servers' secret.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sonic_rs::JsonValueTrait;
use todo_testkit::process::{bin, free_port, temp_dir, wait_until, Proc};
use todo_testkit::services::Env;

use super::api::request_with;
use super::{read_response, Response, Server};

pub const SECRET: &str = "visibility-test-secret-0123456789abcdef0123";
/// How long a write may take to show on every server (the distributed
/// path's write-to-visible time is tens of milliseconds; this is a bound).
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(15);

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
}

/// A token for `sub` signed with `secret`, expiring `ttl_secs` from now
/// (in the past when negative).
pub fn token(secret: &str, sub: &str, ttl_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub,
        exp: now.saturating_add_signed(ttl_secs),
        iat: now.saturating_add_signed(ttl_secs.min(0) - 60),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// One request on a fresh connection to `at`.
pub fn call(
    at: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let mut s = TcpStream::connect(at).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request_with(method, path, token, body, headers))
        .unwrap();
    read_response(&mut s, &mut Vec::new()).expect("an answer")
}

pub fn get(at: SocketAddr, path: &str, token: Option<&str>) -> Response {
    call(at, "GET", path, token, None, &[])
}

/// How a server was started: its arguments and variables.
type Start = (Vec<String>, Vec<(&'static str, String)>);

/// A deployment under test: its servers, and todo-lb `--cache on` in front
/// of them.
pub struct Deployment {
    pub servers: Vec<Server>,
    pub lb: SocketAddr,
    _lb: Proc,
    _worker: Option<Proc>,
    _env: Option<Env>,
    /// How each server was started (arguments, variables), to start it
    /// again on the same address.
    starts: Vec<Start>,
}

impl Deployment {
    pub fn embedded() -> Deployment {
        Deployment::embedded_with(&[])
    }

    /// The embedded default with `extra` arguments.
    pub fn embedded_with(extra: &[&str]) -> Deployment {
        let vars = vec![("JWT_SECRET", SECRET.to_string())];
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--listen".to_string(), listen];
        args.extend(["--seed".to_string(), "30".to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let server = start(&args, &vars);
        Deployment::with(vec![server], None, None, vec![(args, vars)])
    }

    pub fn distributed(rt: &tokio::runtime::Runtime) -> Deployment {
        Deployment::distributed_with(rt, &[])
    }

    /// Two distributed servers with `extra` arguments, each on an address
    /// of its own that a restart keeps.
    pub fn distributed_with(rt: &tokio::runtime::Runtime, extra: &[&str]) -> Deployment {
        let env = rt.block_on(Env::new(3));
        let worker = env.start_worker();
        let mut starts = Vec::new();
        let servers = (1..=2u16)
            .map(|instance| {
                let mut vars = env.vars();
                vars.push(("JWT_SECRET", SECRET.to_string()));
                vars.push(("TODO_INSTANCE", instance.to_string()));
                let listen = format!("127.0.0.1:{}", free_port());
                let mut args = vec!["--listen".to_string(), listen];
                args.extend(extra.iter().map(|a| a.to_string()));
                let server = start_distributed(&args, &vars);
                starts.push((args, vars));
                server
            })
            .collect();
        Deployment::with(servers, Some(worker), Some(env), starts)
    }

    /// SIGTERM server `n`, wait until it has exited (its drain done), and
    /// start it again on the same address; returns once it is ready.
    pub fn restart(&mut self, n: usize) {
        let old = &mut self.servers[n];
        old.proc.terminate();
        let code = old.proc.wait_exit(Duration::from_secs(30));
        assert_eq!(code, Some(0), "server {n} drains and exits 0 on SIGTERM");
        let (args, vars) = &self.starts[n];
        self.servers[n] = if self._env.is_some() {
            start_distributed(args, vars)
        } else {
            let data_dir = std::mem::take(&mut self.servers[n].data_dir);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start_with("legacy", data_dir, &args, vars)
        };
    }

    pub fn with(
        servers: Vec<Server>,
        worker: Option<Proc>,
        env: Option<Env>,
        starts: Vec<Start>,
    ) -> Deployment {
        let lb: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(bin("todo-lb"));
        cmd.args(["--listen", &lb.to_string(), "--admin", &admin.to_string()])
            .args(["--cores", "2", "--pin", "false", "--cache", "on"])
            .args(["--health-interval", "200ms"])
            .stdout(Stdio::null());
        for s in &servers {
            cmd.args(["--upstream", &s.addr.to_string()]);
        }
        let proc = Proc::spawn("todo-lb", cmd, Duration::from_secs(20));
        wait_until("todo-lb ready", Duration::from_secs(20), || {
            TcpStream::connect(lb)
                .ok()
                .and_then(|_| (get(lb, "/readyz", None).status == 200).then_some(()))
        });
        Deployment {
            servers,
            lb,
            _lb: proc,
            _worker: worker,
            _env: env,
            starts,
        }
    }

    /// Every address a reader may come through: each server, and todo-lb.
    pub fn readers(&self) -> Vec<SocketAddr> {
        let mut at: Vec<SocketAddr> = self.servers.iter().map(|s| s.addr).collect();
        at.push(self.lb);
        at
    }

    pub fn server_addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }

    /// A write on the `n`th server (round robin): the command id and the
    /// todo id of its 202.
    pub fn write(
        &self,
        n: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u64, u64) {
        let at = self.servers[n % self.servers.len()].addr;
        let r = call(at, method, path, Some(token), body, &[]);
        assert_eq!(r.status, 202, "{method} {path}: {}", r.text());
        let v = r.json();
        (
            v["command_id"].as_u64().unwrap(),
            v["todo_id"].as_u64().unwrap(),
        )
    }

    /// The command's outcome once every server knows it: `applied` or
    /// `rejected:<reason>`.
    pub fn outcome(&self, command: u64) -> String {
        let mut last = String::new();
        for at in self.server_addrs() {
            last = poll(&format!("command {command} applied"), || {
                let r = get(at, &format!("/commands/{command}"), None);
                let v = r.json();
                match v["status"].as_str() {
                    Some("applied") => Some("applied".to_string()),
                    Some("rejected") => Some(format!("rejected:{}", v["reason"].as_str().unwrap())),
                    _ => None,
                }
            });
        }
        last
    }
}

/// `check` until it gives a value, within [`VISIBLE_WITHIN`].
pub fn poll<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    wait_until(what, VISIBLE_WITHIN, check)
}

fn start(args: &[String], vars: &[(&'static str, String)]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with("legacy", temp_dir("deploy"), &args, vars)
}

/// A distributed server, once its snapshot and read model are loaded.
fn start_distributed(args: &[String], vars: &[(&'static str, String)]) -> Server {
    let server = start(args, vars);
    wait_until("snapshot and read model loaded", VISIBLE_WITHIN, || {
        let ready = server.get("/readyz").status == 200;
        let loaded =
            todo_testkit::http::scrape(server.addr, "todo_read_model_version").unwrap_or(0) > 0;
        (ready && loaded).then_some(())
    });
    server
}

/// A runtime for the services' set-up (`Env::new`).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
