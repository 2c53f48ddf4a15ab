//! How far a running simulation or calibration has got: the command line's
//! bar on the terminal, and a shared [`Progress`] that another thread reads
//! while the work runs (the dashboard shows the designs job's calibration
//! and simulation with it, since they take minutes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::ProgressBar;

/// Virtual trials done against those planned so far, and what runs now.
/// The plan grows as the work goes (a scenario that binds gets more
/// trials, a lower arm-drop threshold runs the trials under the effect
/// again), so `planned` is the least the work will take.
#[derive(Debug)]
pub struct Progress {
    done: AtomicU64,
    /// Of `done`, those recalled from a run stopped part way (no time).
    recalled: AtomicU64,
    planned: AtomicU64,
    stage: Mutex<String>,
    started: Instant,
    cancelled: AtomicBool,
}

/// One reading of a [`Progress`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressReading {
    /// Virtual trials done.
    pub done: u64,
    /// Of `done`, those recalled from a run stopped part way
    /// ([`super::memo`]): done at once, so not part of the pace.
    pub recalled: u64,
    /// Virtual trials planned so far (at least `done`).
    pub planned: u64,
    /// What runs now, e.g. "meditation-anxiety (iid): no effect".
    pub stage: String,
    /// Seconds since the work started.
    pub elapsed_s: f64,
}

impl ProgressReading {
    /// The share done, 0 to 1.
    pub fn fraction(&self) -> f64 {
        if self.planned == 0 {
            0.0
        } else {
            (self.done as f64 / self.planned as f64).min(1.0)
        }
    }

    /// Seconds left at the pace so far for the trials planned so far;
    /// `None` before the first trial is run (no pace yet). Recalled trials
    /// took no time, so the pace is that of the trials run.
    pub fn remaining_s(&self) -> Option<f64> {
        let run = self.done.saturating_sub(self.recalled);
        (run > 0)
            .then(|| self.elapsed_s * (self.planned.saturating_sub(self.done)) as f64 / run as f64)
    }
}

impl Progress {
    /// A progress starting now, with nothing planned yet.
    pub fn start() -> Arc<Progress> {
        Arc::new(Progress {
            done: AtomicU64::new(0),
            recalled: AtomicU64::new(0),
            planned: AtomicU64::new(0),
            stage: Mutex::new(String::new()),
            started: Instant::now(),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Asks the work to end early: it takes no new virtual trial and ends
    /// with [`super::SimError::Cancelled`], never with a report made of
    /// the trials it had (a calibration on fewer trials than it planned
    /// would not be the one asked for).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`Progress::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Where the work stands now.
    pub fn read(&self) -> ProgressReading {
        let done = self.done.load(Ordering::Relaxed);
        ProgressReading {
            done,
            recalled: self.recalled.load(Ordering::Relaxed).min(done),
            planned: self.planned.load(Ordering::Relaxed).max(done),
            stage: self.stage.lock().map(|s| s.clone()).unwrap_or_default(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// What a simulation reports its progress to: the terminal's bar (hidden
/// when not asked for) and, when someone watches, a [`Progress`].
pub(crate) struct Meter {
    bar: ProgressBar,
    watch: Option<Arc<Progress>>,
}

impl Meter {
    /// A meter on `bar`, also counting into `watch`.
    pub(crate) fn new(bar: ProgressBar, watch: Option<Arc<Progress>>) -> Meter {
        Meter { bar, watch }
    }

    /// `n` more virtual trials done.
    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
        if let Some(w) = &self.watch {
            w.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` more virtual trials done by recalling them ([`super::memo`]).
    pub(crate) fn recalled(&self, n: u64) {
        self.bar.inc(n);
        if let Some(w) = &self.watch {
            w.recalled.fetch_add(n, Ordering::Relaxed);
            w.done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `n` virtual trials planned in all.
    pub(crate) fn set_length(&self, n: u64) {
        self.bar.set_length(n);
        if let Some(w) = &self.watch {
            w.planned.store(n, Ordering::Relaxed);
        }
    }

    /// `n` more virtual trials planned.
    pub(crate) fn inc_length(&self, n: u64) {
        self.bar.inc_length(n);
        if let Some(w) = &self.watch {
            w.planned.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// What runs now.
    pub(crate) fn set_message(&self, stage: String) {
        if let Some(w) = &self.watch
            && let Ok(mut s) = w.stage.lock()
        {
            s.clone_from(&stage);
        }
        self.bar.set_message(stage);
    }

    /// Whether whoever watches asked the work to end ([`Progress::cancel`]).
    pub(crate) fn cancelled(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.is_cancelled())
    }

    /// The work is over: the bar leaves the terminal.
    pub(crate) fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_meter_counts_what_is_done_against_what_is_planned_as_the_plan_grows() {
        let watch = Progress::start();
        let meter = Meter::new(ProgressBar::hidden(), Some(watch.clone()));
        assert_eq!(watch.read().remaining_s(), None);
        meter.set_length(100);
        meter.set_message("design (iid): no effect".into());
        meter.inc(25);
        let r = watch.read();
        assert_eq!((r.done, r.planned), (25, 100));
        assert_eq!(r.stage, "design (iid): no effect");
        assert!((r.fraction() - 0.25).abs() < 1e-12);
        // Three times as long again at the pace so far.
        let left = r.remaining_s().expect("a pace after the first trial");
        assert!(
            (left - 3.0 * r.elapsed_s).abs() < 1e-9,
            "{left} vs {}",
            r.elapsed_s
        );
        // A binding scenario's extension: more planned, the share falls.
        meter.inc_length(100);
        assert!((watch.read().fraction() - 0.125).abs() < 1e-12);
        // Done beyond an estimate that fell short reads as all done, not more.
        meter.inc(300);
        let r = watch.read();
        assert_eq!((r.done, r.planned), (325, 325));
        assert_eq!(r.fraction(), 1.0);
        assert_eq!(r.remaining_s(), Some(0.0));
    }
}
