//! `todo-worker`: parse configuration, run. See the library for the flow.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let config = todo_worker::WorkerConfig::parse();
    eprintln!(
        "todo-worker: consuming {} from {} as group {}",
        config.topic, config.kafka_brokers, config.group
    );
    todo_worker::run(config).await?;
    Ok(())
}
