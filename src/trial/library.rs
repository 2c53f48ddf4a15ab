//! The intervention library: the protocols shipped in `protocols/`, each an
//! intervention with its comparator, outcomes, design and the evidence in
//! its `[hypothesis]` (rationale, uncertainty). Proposers match questions
//! against it; the built-in proposer works from it alone, so the whole
//! hypothesis path runs offline.

use std::sync::LazyLock;

use crate::trial::protocol::Protocol;

/// One intervention of the library.
#[derive(Debug, Clone)]
pub struct LibraryEntry {
    /// The protocol text as shipped.
    pub text: &'static str,
    /// The parsed protocol.
    pub protocol: Protocol,
}

const SHIPPED: [(&str, &str); 6] = [
    (
        "caffeine-cutoff.toml",
        include_str!("../../protocols/caffeine-cutoff.toml"),
    ),
    (
        "magnesium-migraine.toml",
        include_str!("../../protocols/magnesium-migraine.toml"),
    ),
    (
        "meditation-anxiety.toml",
        include_str!("../../protocols/meditation-anxiety.toml"),
    ),
    (
        "screen-cutoff.toml",
        include_str!("../../protocols/screen-cutoff.toml"),
    ),
    (
        "sleep-supplements.toml",
        include_str!("../../protocols/sleep-supplements.toml"),
    ),
    (
        "study-timing.toml",
        include_str!("../../protocols/study-timing.toml"),
    ),
];

static LIBRARY: LazyLock<Vec<LibraryEntry>> = LazyLock::new(|| {
    SHIPPED
        .iter()
        .filter_map(|(name, text)| {
            // A shipped protocol that does not parse is caught by the
            // library test; it is left out rather than taking the daemon down.
            Protocol::parse(text, name)
                .ok()
                .map(|protocol| LibraryEntry { text, protocol })
        })
        .collect()
});

/// The shipped library.
pub fn shipped() -> &'static [LibraryEntry] {
    &LIBRARY
}

/// The entry with this protocol id.
pub fn find<'a>(library: &'a [LibraryEntry], id: &str) -> Option<&'a LibraryEntry> {
    library.iter().find(|e| e.protocol.id == id)
}

/// Lower-case word stems of a text (letters and digits, 3+ characters,
/// a plural `s` dropped), for matching questions to entries.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(|w| {
            let w = w.to_lowercase();
            match w.strip_suffix('s') {
                Some(stem) if stem.chars().count() >= 3 && !w.ends_with("ss") => stem.to_string(),
                _ => w,
            }
        })
        .collect()
}

/// Words that say nothing about an intervention.
const STOP_WORDS: [&str; 24] = [
    "the", "and", "for", "does", "doe", "help", "with", "what", "how", "can", "will", "would",
    "against", "usual", "want", "more", "less", "better", "day", "your", "you", "this", "that",
    "from",
];

/// How well an entry matches a text: shared word stems, counted once.
pub fn score(entry: &LibraryEntry, text: &str) -> usize {
    let p = &entry.protocol;
    let mut own = format!("{} {} {}", p.id, p.title, p.description);
    for a in &p.arms {
        own.push(' ');
        own.push_str(&a.label);
    }
    for o in p.outcomes() {
        own.push(' ');
        own.push_str(&o.stream.replace('_', " "));
    }
    let own = words(&own);
    let mut asked = words(text);
    asked.sort();
    asked.dedup();
    asked
        .iter()
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .filter(|w| own.iter().any(|o| o == *w))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_protocol_is_in_the_library() {
        assert_eq!(shipped().len(), SHIPPED.len());
        for e in shipped() {
            assert!(e.protocol.validate().is_empty(), "{}", e.protocol.id);
        }
    }

    #[test]
    fn questions_find_their_intervention() {
        let best = |q: &str| {
            shipped()
                .iter()
                .max_by_key(|e| score(e, q))
                .map(|e| e.protocol.id.clone())
        };
        assert_eq!(
            best("Does magnesium help my migraines?").as_deref(),
            Some("magnesium-migraine")
        );
        assert_eq!(
            best("would meditating in the morning calm my evening anxiety").as_deref(),
            Some("meditation-anxiety")
        );
        assert_eq!(score(&shipped()[0], "the and for"), 0);
    }
}
