//! Stopping the server: a [`Trigger`] held by whoever decides (main, a test),
//! a [`Shutdown`] per core that resolves when it fires or is dropped, and
//! [`on_signals`] for the binary.

#[derive(Clone)]
pub struct Shutdown {
    rx: flume::Receiver<()>,
}

pub struct Trigger {
    tx: Option<flume::Sender<()>>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = flume::bounded(0);
    (Trigger { tx: Some(tx) }, Shutdown { rx })
}

impl Trigger {
    /// Stop accepting on every core.
    pub fn fire(&mut self) {
        self.tx = None;
    }
}

impl Shutdown {
    /// Resolves once the trigger fired or was dropped.
    pub async fn wait(&self) {
        while self.rx.recv_async().await.is_ok() {}
    }
}

/// Fire `trigger` on the first SIGTERM or SIGINT (drain), exit on the second.
/// A small thread with its own current-thread tokio runtime waits for them.
pub fn on_signals(name: &'static str, mut trigger: Trigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::Builder::new()
        .name(format!("{name}-signals"))
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!("{name}: draining (a second signal exits at once)");
                trigger.fire();
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!("{name}: exiting without draining");
                std::process::exit(1);
            })
        })?;
    Ok(())
}
