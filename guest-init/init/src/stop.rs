//! A stop request: from the host (`Shutdown`) or a signal to PID 1 (SIGTERM, SIGINT,
//! SIGPWR), at any time from the start of the boot. The first request wins; later
//! ones change nothing. The boot checks it between steps; the supervisor waits on it.

use std::sync::Mutex;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

/// The VM's one stop request.
#[derive(Debug, Default)]
pub struct StopRequest {
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl StopRequest {
    /// Asks for a stop; returns whether this was the first request.
    pub fn request(&self, why: impl Into<String>) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_some() {
            return false;
        }
        *r = Some(why.into());
        drop(r);
        self.notify.notify_waiters();
        self.notify.notify_one();
        true
    }

    /// Why a stop was asked for, if it was.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits for a stop request and returns its reason.
    pub async fn wait(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.reason() {
                return r;
            }
            notified.await;
        }
    }
}

/// Turns SIGTERM, SIGINT and SIGPWR to PID 1 into stop requests, from now on (for
/// PID 1 the kernel drops signals that have no handler). Call inside the runtime.
pub fn watch_signals(stop: std::sync::Arc<StopRequest>) -> Result<(), String> {
    let mut streams = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::from_raw(libc::SIGPWR), "SIGPWR"),
    ] {
        let s = signal(kind).map_err(|e| format!("installing the {name} handler: {e}"))?;
        streams.push((s, name));
    }
    for (mut s, name) in streams {
        let stop = stop.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                stop.request(name);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_request_wins_and_wakes_a_waiter() {
        let stop = std::sync::Arc::new(StopRequest::default());
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move { stop.wait().await })
        };
        tokio::task::yield_now().await;
        assert!(stop.request("host"));
        assert!(!stop.request("SIGTERM"));
        assert_eq!(waiter.await.unwrap(), "host");
        assert_eq!(stop.reason().as_deref(), Some("host"));
        // A waiter that comes after the request returns at once.
        assert_eq!(stop.wait().await, "host");
    }
}
