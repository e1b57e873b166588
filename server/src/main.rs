//! `todo-server`: parse configuration, bind, run. See the library for the flow.

use anyhow::Context;
use clap::Parser;
use todo_server::config::{Cli, Command};
use todo_server::{auth, shutdown, token_rules};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.serve;
    if let Some(Command::Token { sub, ttl }) = cli.command {
        let secret = auth::load_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
        println!(
            "{}",
            auth::issue(&secret, &token_rules(&config), &sub, ttl)?
        );
        return Ok(());
    }
    let cores = config.core_count();
    let listeners =
        todo_lb::bind_reuseport(config.listen, cores, &todo_lb::ListenerConfig::default())
            .with_context(|| format!("binding {}", config.listen))?;
    // The trigger lives as long as the process: SIGTERM/SIGINT end it at once,
    // which loses nothing because every 202 was made durable first.
    let (_trigger, shutdown) = shutdown::channel();
    todo_server::run(config, listeners, shutdown)?;
    Ok(())
}
