//! Shutdown as a value handed to every long-running task.
//!
//! [`Shutdown::trigger`] is called once (a signal, a test); every clone of the
//! [`Shutdown`] then sees [`Shutdown::is_triggered`] and `wait()` returns.
//! [`Shutdown::within_grace`] bounds how long a task may take after that: a
//! Kubernetes pod is killed `terminationGracePeriodSeconds` after SIGTERM, so
//! raa gives up (and says so) before, rather than be killed mid-write.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// The task did not finish within the grace period after shutdown began.
#[derive(Debug, thiserror::Error)]
#[error("the batch in flight did not finish within the {}s shutdown grace period", .0.as_secs())]
pub struct GraceExpired(pub Duration);

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

    /// Runs `task` to completion, unless shutdown is triggered and `task`
    /// then takes longer than `grace`: that gives [`GraceExpired`].
    pub async fn within_grace<T>(
        &self,
        grace: Duration,
        task: impl Future<Output = T>,
    ) -> Result<T, GraceExpired> {
        let mut this = self.clone();
        let expired = async move {
            this.wait().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            out = task => Ok(out),
            () = expired => Err(GraceExpired(grace)),
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_task_gets_the_grace_period_after_the_trigger_and_no_more() {
        let s = Shutdown::default();
        // Not triggered: a slow task runs to the end, whatever the grace.
        let slow = tokio::time::sleep(Duration::from_secs(100));
        assert!(s.within_grace(Duration::from_secs(1), slow).await.is_ok());
        // Triggered: a task finishing within the grace succeeds ...
        s.trigger();
        let quick = tokio::time::sleep(Duration::from_secs(4));
        assert!(s.within_grace(Duration::from_secs(5), quick).await.is_ok());
        // ... one that does not is cut off.
        let stuck = std::future::pending::<()>();
        let e = s
            .within_grace(Duration::from_secs(5), stuck)
            .await
            .unwrap_err();
        assert_eq!(e.0, Duration::from_secs(5));
    }
}
