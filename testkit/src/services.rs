//! The distributed path's services for integration tests (the worker's and
//! the server's): real PostgreSQL, Redis and Kafka-protocol broker, as
//! started by `scripts/services.sh` (whose `env` file `scripts/test.sh`
//! sources). Each test gets its own database, Redis database number and
//! topic, so tests can run side by side.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use todo_model::{Fields, Op, TodoCommand};

/// The todo-worker binary (built by `cargo test --workspace`).
pub fn worker_bin() -> std::path::PathBuf {
    crate::process::bin("todo-worker")
}

static N: AtomicUsize = AtomicUsize::new(0);

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through ./scripts/test.sh, which starts PostgreSQL, Redis and the broker")
    })
}

/// One test's slice of the shared services.
pub struct Env {
    pub brokers: String,
    pub redis_url: String,
    pub database_url: String,
    pub topic: String,
    pub group: String,
}

impl Env {
    pub async fn new(partitions: i32) -> Env {
        Env::with(partitions, None, None).await
    }

    /// Like [`Env::new`], with this test's own broker and/or Redis.
    pub async fn with(partitions: i32, brokers: Option<String>, redis: Option<String>) -> Env {
        Env::with_all(partitions, brokers, redis, None).await
    }

    /// Like [`Env::with`], with this test's own PostgreSQL too (the URL of a
    /// database to create the test's database from, [`Private::database_url`]).
    pub async fn with_all(
        partitions: i32,
        brokers: Option<String>,
        redis: Option<String>,
        database: Option<String>,
    ) -> Env {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}_{n}", std::process::id());
        let brokers = brokers.unwrap_or_else(|| var("KAFKA_BROKERS"));
        let base = database.unwrap_or_else(|| var("DATABASE_URL"));
        let redis = redis.unwrap_or_else(|| var("REDIS_URL"));

        let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL");
        tokio::spawn(conn);
        let db = format!("todo_test_{tag}");
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let query = base
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        let database_url = format!("{prefix}/{db}{query}");

        // Redis databases 1..15, one per test in this process (0 is the servers').
        let redis_url = format!("{}/{}", redis.trim_end_matches('/'), 1 + n % 15);
        let mut r = todo_store::redis::Connection::connect(&redis_url)
            .await
            .unwrap();
        r.call(&[b"FLUSHDB"]).await.unwrap();

        let topic = format!("todo-commands-{tag}");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    partitions,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic");
        for r in created {
            r.expect("topic created");
        }
        Env {
            brokers,
            redis_url,
            database_url,
            topic,
            group: format!("todo-worker-{tag}"),
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .create()
            .unwrap()
    }

    /// Produce `cmds` as one envelope record (as a server packs them) to
    /// `partition`, and wait for its delivery.
    pub async fn produce_envelope(
        &self,
        producer: &FutureProducer,
        cmds: &[TodoCommand],
        partition: i32,
    ) {
        use rdkafka::message::{Header, OwnedHeaders};
        use todo_model::envelope::{Envelope, Packed, ENVELOPE_HEADER};
        let envelope = Envelope {
            commands: cmds
                .iter()
                .map(|c| Packed {
                    command: c.clone(),
                    request_id: None,
                    traceparent: None,
                })
                .collect(),
        };
        let payload = sonic_rs::to_vec(&envelope).unwrap();
        let key = cmds[0].todo_id.to_string();
        let record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(&key)
            .payload(&payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: ENVELOPE_HEADER,
                value: Some("1"),
            }));
        producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("envelope delivered");
    }

    /// Produce every command, keyed by todo id, and wait for every delivery.
    pub async fn produce(&self, producer: &FutureProducer, cmds: &[TodoCommand]) {
        let mut pending = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let payload = sonic_rs::to_vec(cmd).unwrap();
            let key = cmd.todo_id.to_string();
            let producer = producer.clone();
            let topic = self.topic.clone();
            pending.push(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            });
        }
        for p in pending {
            p.await.expect("delivered");
        }
    }

    /// The environment a server or worker of this test needs.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("REDIS_URL", self.redis_url.clone()),
            ("DATABASE_URL", self.database_url.clone()),
            ("TODO_COMMANDS_TOPIC", self.topic.clone()),
        ]
    }

    /// A todo-worker for this test's slice; killed when dropped, so a
    /// failing test leaves none behind.
    /// Ready once its metrics listener is (its `addr`: `GET /metrics`).
    pub fn start_worker(&self) -> crate::process::Proc {
        self.start_worker_with_stdout(Stdio::null())
    }

    /// [`Env::start_worker`] with its standard output (the command log)
    /// going to `stdout`.
    pub fn start_worker_with_stdout(&self, stdout: impl Into<Stdio>) -> crate::process::Proc {
        let mut cmd = Command::new(worker_bin());
        cmd.env("TODO_WORKER_METRICS_LISTEN", "127.0.0.1:0")
            .env("KAFKA_BROKERS", &self.brokers)
            .env("REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.database_url)
            .env("TODO_COMMANDS_TOPIC", &self.topic)
            .env("TODO_WORKER_GROUP", &self.group)
            .env("TODO_SEED", "100")
            .stdout(stdout);
        crate::process::Proc::spawn("worker", cmd, Duration::from_secs(30))
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .expect("test database");
        tokio::spawn(conn);
        client
    }

    /// Check `count_sql` until it returns `want` (60 s at most); returns the
    /// last value.
    pub async fn wait_count(&self, count_sql: &str, want: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = -1;
        while Instant::now() < deadline {
            if let Ok(db) = tokio::time::timeout(Duration::from_secs(5), self.db()).await {
                if let Ok(row) = db.query_one(count_sql, &[]).await {
                    last = row.get(0);
                    if last == want {
                        return last;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    /// Check `count_sql` until it returns at least `floor` (60 s at most);
    /// the value it returned.
    pub async fn wait_count_above(&self, count_sql: &str, floor: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let db = self.db().await;
        loop {
            // Before the worker has migrated, the table is not there: 0.
            let n: i64 = db
                .query_one(count_sql, &[])
                .await
                .map_or(0, |row| row.get(0));
            if n >= floor {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{count_sql} stayed below {floor}: {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The snapshot in Redis once it is at `version` (5 s at most).
    pub async fn wait_redis_snapshot(&self, version: u64) -> todo_model::Snapshot {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let snapshot = self.redis_snapshot().await;
            match snapshot {
                Some(s) if s.version() == version => return s,
                other => assert!(
                    Instant::now() < deadline,
                    "Redis holds {:?}, not version {version}",
                    other.map(|s| s.version())
                ),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn redis_snapshot(&self) -> Option<todo_model::Snapshot> {
        let mut r = todo_store::redis::Connection::connect(&self.redis_url)
            .await
            .ok()?;
        match r
            .call(&[b"GET", todo_store::SNAPSHOT_KEY.as_bytes()])
            .await
            .ok()?
        {
            todo_store::resp::Frame::BulkString(b) => todo_store::codec::decode(&b),
            _ => None,
        }
    }
}

/// Commands the way a server makes them: unique, time-ordered ids.
pub struct Commands {
    ids: todo_model::IdGenerator,
}

impl Commands {
    pub fn new(node: u16) -> Self {
        Commands {
            ids: todo_model::IdGenerator::new(node),
        }
    }

    pub fn make(
        &mut self,
        op: Op,
        todo_id: Option<u64>,
        user: &str,
        fields: Fields,
    ) -> TodoCommand {
        let now = todo_model::now_ms();
        let todo_id = todo_id.unwrap_or_else(|| self.ids.next_id(now));
        TodoCommand {
            command_id: self.ids.next_id(now),
            op,
            todo_id,
            user: user.to_string(),
            fields,
            issued_at: now,
            name: None,
            password_hash: None,
            idempotency: None,
        }
    }

    /// `n` creates by `user`, then an update completing each: every one
    /// applies, and an update can only apply after its create (same key, so
    /// same partition), which makes a lost or doubled command visible.
    pub fn create_then_complete(
        &mut self,
        user: &str,
        n: usize,
    ) -> (Vec<TodoCommand>, Vec<TodoCommand>) {
        let creates: Vec<_> = (0..n)
            .map(|i| self.create(user, &format!("{user} {i}")))
            .collect();
        let done = Fields {
            completed: Some(true),
            ..Fields::default()
        };
        let updates = creates
            .iter()
            .map(|c| self.make(Op::Update, Some(c.todo_id), user, done.clone()))
            .collect();
        (creates, updates)
    }

    /// A registration of `username` ([`Op::CreateUser`]; the command's id is
    /// the new user's), with a stand-in password hash.
    pub fn register(&mut self, username: &str) -> TodoCommand {
        let mut cmd = self.make(Op::CreateUser, None, username, Fields::default());
        cmd.password_hash = Some(format!("$argon2id$v=19$m=19456,t=2,p=1$test${username}"));
        cmd
    }

    /// A category command by `user`: [`Op::CreateCategory`] (`id` `None`: a
    /// new id), [`Op::UpdateCategory`] (a rename to `name`) or
    /// [`Op::DeleteCategory`].
    pub fn category(
        &mut self,
        op: Op,
        id: Option<u64>,
        user: &str,
        name: Option<&str>,
    ) -> TodoCommand {
        let mut cmd = self.make(op, id, user, Fields::default());
        cmd.name = name.map(str::to_string);
        cmd
    }

    pub fn create(&mut self, user: &str, title: &str) -> TodoCommand {
        self.make(
            Op::Create,
            None,
            user,
            Fields {
                title: Some(title.to_string()),
                ..Fields::default()
            },
        )
    }
}

/// A process of this test's own (a broker or a Redis that the test stops and
/// starts again), killed when dropped.
pub struct Private {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: std::path::PathBuf,
    kind: &'static str,
}

fn wait_port(port: u16) {
    crate::process::wait_until(
        &format!("something listening on 127.0.0.1:{port}"),
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

impl Private {
    /// A tansu broker with durable sqlite storage in its own directory.
    pub fn broker() -> Private {
        Private::new("tansu")
    }

    /// A Redis without persistence: a restart comes back empty.
    pub fn redis() -> Private {
        Private::new("redis")
    }

    /// A PostgreSQL cluster of its own (initdb in its directory, as the
    /// `postgres` user when run as root: PostgreSQL refuses root).
    pub fn postgres() -> Private {
        Private::new("postgres")
    }

    /// The URL of the `postgres` database of [`Private::postgres`].
    pub fn database_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn new(kind: &'static str) -> Private {
        let dir = std::env::temp_dir().join(format!(
            "todo-{kind}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if kind == "postgres" {
            let data = dir.join("pg");
            let out = as_postgres(&mut Command::new(format!("{PG_BIN}/initdb")), &dir)
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .stdout(Stdio::null())
                .output()
                .expect("initdb (PostgreSQL 15)");
            assert!(
                out.status.success(),
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut p = Private {
            child: None,
            port: crate::process::free_port(),
            dir,
            kind,
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        let port = self.port.to_string();
        let child = match self.kind {
            "tansu" => {
                let url = format!("tcp://127.0.0.1:{port}");
                Command::new("tansu")
                    .current_dir(&self.dir)
                    .args([
                        "broker",
                        "--listener-url",
                        &url,
                        "--advertised-listener-url",
                        &url,
                        "--storage-engine",
                        "sqlite://tansu.db",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("tansu on PATH (scripts/services.sh install)")
            }
            "postgres" => as_postgres(&mut Command::new(format!("{PG_BIN}/postgres")), &self.dir)
                .arg("-D")
                .arg(self.dir.join("pg"))
                .args(["-p", &port, "-c", "listen_addresses=127.0.0.1", "-k"])
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("postgres"),
            _ => Command::new("redis-server")
                .args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .current_dir(&self.dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server"),
        };
        self.child = Some(child);
        wait_port(self.port);
        if self.kind == "postgres" {
            // Listening is not ready: it refuses connections while it starts.
            let port = self.port.to_string();
            crate::process::wait_until(
                "PostgreSQL accepting connections",
                Duration::from_secs(30),
                || {
                    Command::new(format!("{PG_BIN}/pg_isready"))
                        .args(["-q", "-h", "127.0.0.1", "-p", &port])
                        .status()
                        .ok()?
                        .success()
                        .then_some(())
                },
            );
        }
    }

    /// A clean stop (SIGINT: PostgreSQL's fast shutdown), waited for.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Where Debian's PostgreSQL 15 is (scripts/services.sh installs it).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// `cmd` run as the `postgres` user when this process is root, owning `dir`.
fn as_postgres<'c>(cmd: &'c mut Command, dir: &std::path::Path) -> &'c mut Command {
    use std::os::unix::process::CommandExt;
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if let (true, Some(uid), Some(gid)) = (root, id("-u"), id("-g")) {
        for entry in [dir.to_path_buf(), dir.join("pg")] {
            let _ = std::os::unix::fs::chown(&entry, Some(uid), Some(gid));
        }
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl Drop for Private {
    fn drop(&mut self) {
        if self.kind == "postgres" {
            self.stop();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
