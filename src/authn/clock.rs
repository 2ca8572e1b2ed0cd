//! An injectable wall clock, so token lifetimes and cache ages can be tested deterministically.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, from the system or from a test.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system wall clock.
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            // A clock before 1970 is a broken host; 0 makes every token look expired (fail closed).
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    /// A clock that always reads `secs` (tests, replaying recorded tokens).
    pub fn fixed(secs: u64) -> Self {
        Clock(Arc::new(move || secs))
    }

    /// A clock read from any function (e.g. an atomic a test advances).
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// The current time in seconds since the epoch.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock(now={})", self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn fixed_and_fn_clocks() {
        assert_eq!(Clock::fixed(42).now(), 42);
        let t = Arc::new(AtomicU64::new(7));
        let t2 = t.clone();
        let c = Clock::from_fn(move || t2.load(Ordering::SeqCst));
        assert_eq!(c.now(), 7);
        t.store(9, Ordering::SeqCst);
        assert_eq!(c.clone().now(), 9);
        // The system clock is after 2020-01-01.
        assert!(Clock::system().now() > 1_577_836_800);
    }
}
