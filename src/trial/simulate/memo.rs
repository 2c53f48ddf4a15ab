//! Virtual trials kept as they finish, so that a calibration stopped part
//! way (it yielded to other work, the daemon shut down or crashed) and run
//! again on the same inputs takes up the trials it had instead of running
//! them again.
//!
//! Nothing changes in what is computed: every virtual trial's course
//! depends only on its inputs (the design, its seed, the scenario, the
//! thresholds it ran with: [`super::Setup::memo_key`]) and on the program,
//! never on the trials run before it or on the thread that ran it, so a
//! run that recalls some of its trials gives the same trials, thresholds
//! and rates, bit for bit, as one that ran them all. A trial whose key is
//! not found, or whose text no longer reads, is run again; a key covers
//! every input, so a trial run with other settings is never taken for this
//! one. A memo is kept for one protocol text, and one that outlives the
//! process must also scope its keys by the program's build (another build
//! may compute a trial otherwise): the designs job does both.

use std::fmt::Debug;

/// Where virtual trials are kept, by key, as opaque text: the simulator
/// writes and reads the text, the keeper only stores it (the designs job
/// keeps a calibration's and a refinement's in the database).
pub trait TrialMemo: Send + Sync + Debug {
    /// The text kept under `key`, if any.
    fn recall(&self, key: &str) -> Option<String>;
    /// Keeps `trial` under `key` (called from the simulation's threads as
    /// each trial finishes).
    fn record(&self, key: &str, trial: String);
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::TrialMemo;

    /// A memo in memory that counts what it was asked.
    #[derive(Debug, Default)]
    pub(crate) struct InMemory {
        pub(crate) kept: Mutex<HashMap<String, String>>,
        pub(crate) recalled: Mutex<usize>,
    }

    impl TrialMemo for InMemory {
        fn recall(&self, key: &str) -> Option<String> {
            let found = self.kept.lock().ok()?.get(key).cloned();
            if found.is_some()
                && let Ok(mut n) = self.recalled.lock()
            {
                *n += 1;
            }
            found
        }

        fn record(&self, key: &str, trial: String) {
            if let Ok(mut kept) = self.kept.lock() {
                kept.insert(key.to_string(), trial);
            }
        }
    }
}
