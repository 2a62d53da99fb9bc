//! Shutdown as a value handed to every long-running task.
//!
//! [`Shutdown::trigger`] is called once (a signal, a test); every clone of the
//! [`Shutdown`] then sees [`Shutdown::is_triggered`] and `wait()` returns.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered.
    pub async fn wait(&mut self) {
        // An error means every sender is gone, which cannot happen while we hold one.
        let _ = self.rx.wait_for(|&t| t).await;
    }

    /// Triggers on SIGINT or SIGTERM.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: finishing the batch in flight"),
                _ = int.recv() => tracing::info!("SIGINT: finishing the batch in flight"),
            }
            this.trigger();
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let a = Shutdown::default();
        let mut b = a.clone();
        assert!(!b.is_triggered());
        a.trigger();
        b.wait().await;
        assert!(b.is_triggered());
    }
}
