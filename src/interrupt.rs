//! SIGINT / SIGTERM during a deploy (SPEC §5, §10): the signal only raises a flag;
//! the long-running steps poll it and stop with `Error::Interrupted`, so cleanup and
//! the `failure` hooks still run and the process exits 1.
//!
//! Never exits the process or does work inside a signal handler.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

static FLAG: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicUsize> {
    FLAG.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Routes SIGINT and SIGTERM to the flag. Idempotent.
pub(crate) fn install() -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(sig, Arc::clone(flag()), sig as usize)
            .map_err(|e| Error::io("install signal handler for", "SIGINT/SIGTERM", e))?;
    }
    Ok(())
}

/// The name of the signal that arrived, if any.
pub(crate) fn pending() -> Option<&'static str> {
    match flag().load(Ordering::SeqCst) {
        0 => None,
        s if s == signal_hook::consts::SIGINT as usize => Some("SIGINT"),
        _ => Some("SIGTERM"),
    }
}

/// Forgets a signal that was already acted on: the `failure` hooks run after an
/// interrupted deploy, and only a further signal stops them.
pub(crate) fn clear() {
    flag().store(0, Ordering::SeqCst);
}

/// `Err(Interrupted)` once a signal arrived.
pub(crate) fn check() -> Result<()> {
    match pending() {
        Some(name) => Err(Error::Interrupted(name)),
        None => Ok(()),
    }
}

/// Sleeps `d`, waking early (with `Err`) when a signal arrives.
pub(crate) fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_without_signal_sleeps() {
        let t = Instant::now();
        sleep(Duration::from_millis(120)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(120));
        assert!(check().is_ok());
    }
}
