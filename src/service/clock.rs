//! The daemon's clock, its only source of "now": real time, or simulated
//! time running faster for demos and tests (`clock.time_scale`,
//! `clock.start`).

use jiff::{SignedDuration, Timestamp};

/// The daemon's clock: real time, or simulated time running `scale` times
/// faster than real time since the real instant `anchor`, from the simulated
/// instant `start` (`sim = start + (real - anchor) * scale`).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Timestamp,
    start: Timestamp,
    scale: f64,
}

impl Clock {
    /// Real time.
    pub fn system() -> Clock {
        Clock {
            anchor: Timestamp::UNIX_EPOCH,
            start: Timestamp::UNIX_EPOCH,
            scale: 1.0,
        }
    }

    /// Simulated time: equal to real time at `anchor`, `scale` times faster after.
    pub fn scaled(anchor: Timestamp, scale: f64) -> Clock {
        Clock::scaled_from(anchor, anchor, scale)
    }

    /// Simulated time: `start` at the real instant `anchor`, `scale` times faster after.
    pub fn scaled_from(anchor: Timestamp, start: Timestamp, scale: f64) -> Clock {
        Clock {
            anchor,
            start,
            scale,
        }
    }

    /// Simulated seconds per real second.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Now, on this clock.
    pub fn now(&self) -> Timestamp {
        self.at(Timestamp::now())
    }

    /// The simulated instant that corresponds to real instant `real`.
    pub fn at(&self, real: Timestamp) -> Timestamp {
        if self.scale == 1.0 && self.start == self.anchor {
            return real;
        }
        let elapsed = real.duration_since(self.anchor).as_secs_f64() * self.scale;
        self.start
            .checked_add(SignedDuration::from_secs_f64(elapsed))
            .unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_faster_from_anchor() {
        let anchor: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::scaled(anchor, 1440.0);
        let real = anchor + SignedDuration::from_secs(60);
        assert_eq!(clock.at(real).to_string(), "2026-01-02T00:00:00Z");
        assert_eq!(Clock::system().at(real), real);
        // A fixed start at real speed: the same instant whenever it runs.
        let start: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let pinned = Clock::scaled_from(anchor, start, 1.0);
        assert_eq!(pinned.at(real).to_string(), "2026-11-25T12:01:00Z");
    }
}
