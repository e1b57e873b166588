//! Configuration of `todo-worker`: the same environment variables as the
//! server's distributed path.

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "todo-worker",
    version,
    about = "Applies Todo commands from Kafka to PostgreSQL"
)]
pub struct WorkerConfig {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: String,
    /// Redis, e.g. redis://127.0.0.1:6379/.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    /// PostgreSQL, e.g. postgres://user@127.0.0.1:5432/todo.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Consumer group; workers in one group share the partitions.
    #[arg(long, env = "TODO_WORKER_GROUP", default_value = "todo-worker")]
    pub group: String,
    /// Topic carrying the commands.
    #[arg(long, env = "TODO_COMMANDS_TOPIC", default_value = todo_model::COMMANDS_TOPIC)]
    pub topic: String,
    /// Partitions of the topic when the worker has to create it.
    #[arg(long, env = "TODO_TOPIC_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Most commands applied in one transaction.
    #[arg(long, env = "TODO_WORKER_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// Longest wait for a batch to fill once its first command arrived
    /// (gathering also ends once no record has come for 1 ms).
    #[arg(long, env = "TODO_WORKER_BATCH_WAIT", default_value = "5ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,
    /// PostgreSQL connections in the pool.
    #[arg(long, env = "TODO_DB_POOL", default_value_t = 4)]
    pub pool_size: usize,
    /// Where `GET /metrics` and `GET /livez` are answered (Prometheus
    /// text); `off` for none.
    #[arg(long, env = "TODO_WORKER_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub metrics_listen: MetricsListen,
    /// Todos seeded into an empty database.
    #[arg(long, env = "TODO_SEED", default_value_t = todo_model::seed::SEED_COUNT)]
    pub seed: usize,
    /// One JSON line on stdout per command of each committed batch (its
    /// result, request id and trace context): `on` (default) or `off`.
    #[arg(long, env = "TODO_WORKER_COMMAND_LOG", default_value = "on", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub command_log: bool,
}

/// Where the metrics are served, if anywhere.
#[derive(Debug, Clone, Copy)]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<MetricsListen, String> {
    if s == "off" {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|addr| MetricsListen(Some(addr)))
        .map_err(|e| format!("{s}: {e} (an address such as 127.0.0.1:9464, or off)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_log_is_on_unless_turned_off() {
        let base = [
            "todo-worker",
            "--kafka-brokers",
            "k:9092",
            "--redis-url",
            "redis://r/",
            "--database-url",
            "postgres://p/todo",
        ];
        let parse = |extra: &[&str]| {
            WorkerConfig::try_parse_from(base.iter().chain(extra)).map(|c| c.command_log)
        };
        if std::env::var_os("TODO_WORKER_COMMAND_LOG").is_none() {
            assert!(parse(&[]).unwrap());
        }
        assert!(!parse(&["--command-log", "off"]).unwrap());
        assert!(parse(&["--command-log", "on"]).unwrap());
        assert!(parse(&["--command-log", "maybe"]).is_err());
    }
}
