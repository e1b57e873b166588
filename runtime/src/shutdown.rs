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
/// A small thread named `{name}-signals` waits for them (signal-hook's
/// self-pipe: the handler itself only writes a byte).
pub fn on_signals(name: &'static str, mut trigger: Trigger) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name(format!("{name}-signals"))
        .spawn(move || {
            let mut received = signals.forever();
            if received.next().is_none() {
                return;
            }
            eprintln!("{name}: draining (a second signal exits at once)");
            trigger.fire();
            if received.next().is_some() {
                eprintln!("{name}: exiting without draining");
                std::process::exit(1);
            }
        })?;
    Ok(())
}
