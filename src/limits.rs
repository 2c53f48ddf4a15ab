//! Upper limits on input that sizes work, in one place, and the two helpers
//! that apply them to files and messages: every file nof1d reads is read
//! through [`read_text`] with a cap, and every value from outside that a
//! message repeats goes through [`excerpt`], so a hostile or mistaken input
//! (`/dev/zero`, a 50 MB CSV cell) costs bounded memory and a bounded error.
//!
//! The limits are documented in the README ("Limits").

use std::io::Read;
use std::path::Path;

/// Protocol, configuration and other small text files (1 MiB).
pub const SMALL_FILE_BYTES: u64 = 1 << 20;
/// Secret files (`{ file = … }` in the config).
pub const SECRET_FILE_BYTES: u64 = 64 << 10;
/// Data files (`nof1d analyze` CSV series, 256 MiB).
pub const DATA_FILE_BYTES: u64 = 256 << 20;
/// Characters of an outside value repeated in a message.
pub const ECHO_CHARS: usize = 80;
/// Rows of a file's problems listed in one error (the rest are counted).
pub const LISTED_PROBLEMS: usize = 20;
/// The most virtual trials one `nof1d simulate` may ask for, per condition.
pub const MAX_SIMULATED_TRIALS: usize = 1_000_000;
/// The fastest simulated clock (`--time-scale`, `clock.time_scale`).
pub const MAX_TIME_SCALE: f64 = 1e6;
/// The most worker threads a command or the designs job may ask for.
pub const MAX_THREADS: usize = 1024;
/// The most days a simulated or benchmarked series may have (100 years).
pub const MAX_SERIES_DAYS: usize = 36_525;

/// Reads `path` as UTF-8 text, refusing more than `max_bytes` without
/// reading past them (so a device or a growing file cannot exhaust memory).
pub fn read_text(path: &Path, max_bytes: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {} limit", human_bytes(max_bytes)),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// `value` quoted for a message, cut to [`ECHO_CHARS`] characters with a
/// note of how much was left out.
pub fn excerpt(value: &str) -> String {
    let total = value.chars().count();
    if total <= ECHO_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(ECHO_CHARS).collect();
    format!("{head:?}… ({} more characters)", total - ECHO_CHARS)
}

/// "1 MiB", "64 KiB", "300 bytes".
pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_or_a_big_file_is_refused_after_the_cap() {
        #[cfg(unix)]
        {
            let e = read_text(Path::new("/dev/zero"), 1024).unwrap_err();
            assert!(e.to_string().contains("1 KiB limit"), "{e}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("x.txt");
        std::fs::write(&f, "abc").unwrap();
        assert_eq!(read_text(&f, 3).unwrap(), "abc");
        assert!(read_text(&f, 2).is_err());
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_text(&f, 10).unwrap_err().to_string().contains("UTF-8"));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        assert_eq!(excerpt("abc"), "\"abc\"");
        let long = "x".repeat(50_000_000 / 1000);
        let e = excerpt(&long);
        assert!(e.len() < 120, "{e}");
        assert!(e.ends_with("(49920 more characters)"), "{e}");
    }
}
