//! Denials (an outgoing request or a socket a guest was not granted) said in the log without
//! letting a guest flood it: a guest can make a denied call in a loop, and every call used to be
//! a warning. Each distinct denial is warned once a minute, at most 100 distinct ones a minute,
//! and what was held back is counted in one line when the next minute's first denial comes.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a distinct denial stays said.
const WINDOW: Duration = Duration::from_secs(60);
/// Distinct denials said in one window.
const MAX_DISTINCT: usize = 100;

/// Warns `message` (a denial that names what would grant it) unless it was said in the last
/// minute, or a hundred others were.
pub fn warn_denied(message: &str) {
    static THROTTLE: OnceLock<Mutex<Throttle>> = OnceLock::new();
    let decision = THROTTLE
        .get_or_init(|| Mutex::new(Throttle::new(Instant::now())))
        .lock()
        .expect("not poisoned")
        .admit(message, Instant::now());
    match decision {
        Admit::Say { held_back: 0 } => tracing::warn!("{message}"),
        Admit::Say { held_back } => {
            tracing::warn!("{held_back} denials in the last minute were not logged (repeated)");
            tracing::warn!("{message}");
        }
        Admit::Quiet => tracing::debug!("{message}"),
    }
}

/// Whether to say a denial.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Say it, after saying how many were held back in the window before.
    Say { held_back: u64 },
    /// Said recently, or too many others were.
    Quiet,
}

/// The denials said in the current window.
struct Throttle {
    started: Instant,
    said: HashSet<String>,
    held_back: u64,
}

impl Throttle {
    fn new(now: Instant) -> Throttle {
        Throttle {
            started: now,
            said: HashSet::new(),
            held_back: 0,
        }
    }

    fn admit(&mut self, message: &str, now: Instant) -> Admit {
        let mut held_back = 0;
        if now.duration_since(self.started) >= WINDOW {
            held_back = std::mem::take(&mut self.held_back);
            self.said.clear();
            self.started = now;
        }
        if self.said.contains(message) || self.said.len() >= MAX_DISTINCT {
            self.held_back += 1;
            return Admit::Quiet;
        }
        self.said.insert(message.to_string());
        Admit::Say { held_back }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_said_once_a_minute_and_what_was_held_back_is_counted() {
        let start = Instant::now();
        let mut throttle = Throttle::new(start);
        assert_eq!(throttle.admit("a", start), Admit::Say { held_back: 0 });
        for _ in 0..1000 {
            assert_eq!(throttle.admit("a", start), Admit::Quiet);
        }
        assert_eq!(throttle.admit("b", start), Admit::Say { held_back: 0 });
        // A guest making up a new denial each time: a hundred are said, the rest held back.
        for i in 0..500 {
            throttle.admit(&format!("host{i}"), start + Duration::from_secs(1));
        }
        assert_eq!(throttle.said.len(), MAX_DISTINCT);
        // The next minute says "a" again, with the count of what was not said.
        let later = start + WINDOW;
        assert_eq!(
            throttle.admit("a", later),
            Admit::Say {
                held_back: 1000 + 402
            }
        );
        assert_eq!(throttle.admit("a", later), Admit::Quiet);
    }
}
