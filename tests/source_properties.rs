//! Property tests over the source readers that take outside input: Apple
//! Health's export XML (any bytes, and real exports damaged at random
//! places) and Health Auto Export's JSON (any bytes, and real payloads with
//! values swapped for junk). For any input: no panic, every observation
//! finite and on a day near its instant, and damage reported, not hidden.

use jiff::tz::TimeZone;
use nof1d::service::sources::{apple_health, health_auto_export};
use nof1d::service::store::NewObservation;
use nof1d::service::streams::StreamRules;
use proptest::prelude::*;

fn read_xml(bytes: &[u8]) -> (apple_health::XmlReport, Vec<NewObservation>) {
    let mut all = Vec::new();
    let report = apple_health::read_export(
        bytes,
        &TimeZone::get("Europe/London").unwrap(),
        &StreamRules::default(),
        100,
        &mut |b: &[NewObservation]| -> Result<(), ()> {
            all.extend_from_slice(b);
            Ok(())
        },
    )
    .unwrap();
    (report, all)
}

fn sane(o: &NewObservation) -> bool {
    let day = o.observed_at.to_zoned(TimeZone::UTC).date();
    o.value.is_finite() && (o.local_date - day).get_days().abs() <= 2
}

fn sample_export() -> Vec<u8> {
    let mut v = Vec::new();
    apple_health::write_sample_export(&mut v, "2026-03-28".parse().unwrap(), 2, 120).unwrap();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_as_an_export_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        let (_, obs) = read_xml(&bytes);
        prop_assert!(obs.iter().all(sane));
    }

    #[test]
    fn a_damaged_export_keeps_sane_records_and_says_so(
        at in 0.0f64..1.0,
        junk in prop::collection::vec(any::<u8>(), 1..40),
        cut in any::<bool>(),
    ) {
        let whole = sample_export();
        let pos = (at * whole.len() as f64) as usize;
        let mut bytes = whole[..pos].to_vec();
        bytes.extend_from_slice(&junk);
        if !cut {
            bytes.extend_from_slice(&whole[pos..]);
        }
        let (report, obs) = read_xml(&bytes);
        prop_assert!(obs.iter().all(sane));
        if cut {
            prop_assert!(report.damaged.is_some(), "a cut file must say so");
        }
    }

    #[test]
    fn any_bytes_as_a_payload_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = health_auto_export::parse(&bytes, &TimeZone::UTC, &StreamRules::default());
    }

    #[test]
    fn junk_values_in_a_real_payload_are_refused_point_by_point(
        junk in prop_oneof![
            Just("null".to_string()), Just("\"x\"".to_string()), Just("[]".to_string()),
            Just("1e999".to_string()), Just("-0".to_string()), Just("{}".to_string()),
        ],
        which in 0usize..6,
    ) {
        let body = health_auto_export::sample_payload("2026-11-20".parse().unwrap(), "+0100");
        let field = ["\"qty\":54", "\"Avg\":48.2", "\"systolic\":121", "\"totalSleep\":7.0", "\"duration\":1800.5", "\"qty\":165.4"][which];
        let key = field.split(':').next().unwrap();
        let changed = body.replacen(field, &format!("{key}:{junk}"), 1);
        match health_auto_export::parse(changed.as_bytes(), &TimeZone::UTC, &StreamRules::default()) {
            Ok(p) => prop_assert!(p.observations.iter().all(sane)),
            Err(e) => prop_assert!(e.to_string().contains("JSON"), "{e}"),
        }
    }
}
