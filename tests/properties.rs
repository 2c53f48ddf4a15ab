//! Property tests over the parsers that take outside input: the CSV reader
//! of `nof1d analyze`, the protocol parser (and `trial propose` on a real
//! store), and the one-click link-token parser (and the `/l/` pages of a
//! real daemon). For any input: no panic, a clear error that stays short,
//! and nothing stored changes.

use crate::common;

use jiff::Timestamp;
use nof1d::cli::analyze::{Columns, prepare};
use nof1d::service::links::{LinkAction, LinkClaim, LinkKey};
use nof1d::service::store::Store;
use nof1d::trial::protocol::{Aggregation, Protocol};
use proptest::prelude::*;

const PROTOCOL: &str = include_str!("../protocols/meditation-anxiety.toml");

/// Text that looks like a CSV of this kind: a header, then rows of cells
/// drawn from numbers, dates, labels and junk.
fn csv_like() -> impl Strategy<Value = String> {
    let cell = prop_oneof![
        "-?[0-9]{1,4}(\\.[0-9]{1,3})?",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]",
        "[a-z]{1,6}",
        "NaN|inf|-inf|1e999|\"\"|\"a,b\"",
        "\\PC{0,12}",
        // Long values, which an error must not repeat whole.
        "[a-z0-9]{200,3000}",
    ];
    let row = prop::collection::vec(cell, 0..5).prop_map(|cells| cells.join(","));
    let header = prop_oneof![
        Just("day,arm,y".to_string()),
        Just("date,arm,outcome,taken".to_string()),
        "[a-z,]{0,20}",
    ];
    (header, prop::collection::vec(row, 0..30))
        .prop_map(|(h, rows)| format!("{h}\n{}", rows.join("\n")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_csv_reader_never_panics_and_its_errors_stay_short(text in prop_oneof![csv_like(), "\\PC{0,400}"]) {
        for arms in [None, Some(vec!["a".to_string(), "b".to_string()])] {
            match prepare(&text, &Columns::default(), false, arms.as_deref(), "a", Aggregation::Mean) {
                Ok(_) => {}
                Err(e) => {
                    let message = e.to_string();
                    prop_assert!(!message.trim().is_empty());
                    // At most 20 rows listed, each value cut to 80 characters.
                    prop_assert!(message.chars().count() < 20 * 400 + 2_000, "{} chars", message.len());
                    prop_assert!(message.lines().all(|l| l.chars().count() < 600), "{message}");
                }
            }
        }
    }

    #[test]
    fn the_protocol_parser_never_panics_on_garbage(text in "\\PC{0,600}") {
        if let Err(e) = Protocol::parse(&text, "fuzz.toml") {
            prop_assert!(!e.issues.is_empty());
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }

    #[test]
    fn the_protocol_parser_never_panics_on_a_damaged_protocol(
        cut in 0usize..PROTOCOL.len(),
        len in 0usize..40,
        insert in "\\PC{0,20}",
    ) {
        // Replace a stretch of a real protocol with something else.
        let mut text = PROTOCOL.to_string();
        let start = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let end = (start + len..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        text.replace_range(start..end, &insert);
        if let Err(e) = Protocol::parse(&text, "damaged.toml") {
            prop_assert!(!e.issues.is_empty());
            for issue in &e.issues {
                prop_assert!(!issue.message.trim().is_empty());
            }
        }
    }

    #[test]
    fn a_link_token_verifies_only_as_signed(junk in "\\PC{0,120}", flip in 0usize..200) {
        let key = LinkKey::from_hex(&"ab".repeat(32)).unwrap();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        prop_assert!(key.verify(&junk, now).is_err());
        let claim = LinkClaim {
            participant_id: 1,
            trial_id: 1,
            date: "2027-01-15".parse().unwrap(),
            action: LinkAction::Rate(7),
            expires: Timestamp::from_second(1_900_000_000).unwrap(),
        };
        let token = key.sign(&claim);
        prop_assert_eq!(key.verify(&token, now).unwrap(), claim.clone());
        // Any one changed character breaks it (base64 of the same bytes aside).
        let i = flip % token.len();
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).unwrap();
        if changed != token {
            let verified = key.verify(&changed, now);
            prop_assert!(verified.is_err() || verified.unwrap() == claim, "a changed token verified as another claim");
        }
    }
}

/// A store with the demo participant, for `propose` on garbage.
fn demo_store(dir: &std::path::Path) -> Store {
    let mut store = Store::open(&dir.join("nof1d.sqlite")).unwrap();
    nof1d::service::demo::ensure_seeded(&mut store, "Europe/London", Timestamp::now()).unwrap();
    store
}

/// Runs `cases` cases of `test` on values of `strategy` (seeded by
/// `PROPTEST_RNG_SEED` where CI sets it, as `proptest!` is), and fails with
/// the smallest failing value. For properties that share one fixture across
/// their cases: the fixture is a local of the test, so it is dropped (a
/// daemon killed, a folder removed) when the test ends, as a static's never
/// is.
fn check<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        // Where `proptest!` keeps failing seeds: under
        // tests/proptest-regressions/, as tests/main.rs is the crate root.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}\n{runner}");
    }
}

#[test]
fn proposing_a_damaged_protocol_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::cell::RefCell::new(demo_store(dir.path()));
    let damage = (0usize..PROTOCOL.len(), 1usize..60, "\\PC{0,20}");
    check(64, damage, |(cut, len, insert)| {
        let mut store = store.borrow_mut();
        let before = store.counts().unwrap();
        let mut text = PROTOCOL.to_string();
        let start = (0..=cut)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let end = (start + len..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text.replace_range(start..end, &insert);
        if Protocol::parse(&text, "damaged.toml").is_err() {
            let refused = nof1d::service::actions::propose(
                &mut store,
                "demo",
                &text,
                "damaged.toml",
                "test",
                Timestamp::now(),
            );
            prop_assert!(refused.is_err());
            prop_assert_eq!(store.counts().unwrap(), before);
        }
        Ok(())
    });
}

#[test]
fn a_forged_link_is_refused_clearly_and_changes_nothing() {
    // One daemon for every case, whose jobs have run once and then wait an
    // hour: its store does not change by itself.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = common::write_config(
        &data,
        &format!(
            "[jobs]\nsource_poll_seconds = 3600\nassignment_check_seconds = 3600\noutbox_seconds = 3600\nrefit_seconds = 3600\ndesign_seconds = 3600\ncalibrate = false\n[clock]\nstart = {:?}\n",
            common::PINNED_START
        ),
    );
    let d = common::Daemon::start(&data, &["--demo", "--config", config.to_str().unwrap()]);
    d.wait_jobs(1, std::time::Duration::from_secs(60));
    let db = d.data.join("nof1d.sqlite");
    check(48, "[A-Za-z0-9_.-]{0,90}|\\PC{1,40}", |token| {
        let before = Store::open_read_only(&db).unwrap().counts().unwrap();
        let path = format!("/l/{}", percent(&token));
        let get = common::client().get(d.url(&path)).send().unwrap();
        let code = get.status().as_u16();
        prop_assert!([400, 404, 410, 422].contains(&code), "GET {path}: {code}");
        let post = common::client()
            .post(d.url(&path))
            .form(&[("stop", "1")])
            .send()
            .unwrap();
        let code = post.status().as_u16();
        prop_assert!([400, 404, 410, 422].contains(&code), "POST {path}: {code}");
        let body = post.text().unwrap();
        prop_assert!(body.len() < 20_000);
        let after = Store::open_read_only(&db).unwrap().counts().unwrap();
        prop_assert_eq!(after, before);
        Ok(())
    });
}

/// Percent-encodes everything but unreserved characters.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
