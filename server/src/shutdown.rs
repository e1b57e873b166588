//! Stopping the server: a [`Trigger`] held by whoever decides (main, a test),
//! a [`Shutdown`] per core that resolves when it fires or is dropped.

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
