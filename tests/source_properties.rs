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
        // A cut after the root element's end loses nothing: the export is
        // whole, with junk after it. Any cut before it must be reported.
        let root_end = whole
            .windows(b"</HealthData>".len())
            .rposition(|w| w == b"</HealthData>")
            .unwrap();
        if cut && pos < root_end + b"</HealthData>".len() {
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

/// A mapped import that reads everything a spreadsheet may hold: local
/// times, days, offsets, decimal commas, yes/no.
fn mapping(format: &str) -> nof1d::service::sources::mapped::Mapping {
    let text = format!(
        "name = \"m\"\nfiles = \"*\"\ntime = \"t\"\n{format}\nend = \"e\"\nid = \"i\"\n[[columns]]\ncolumn = \"a\"\nstream = \"a\"\nunit = \"kg\"\n[[columns]]\ncolumn = \"b\"\nstream = \"b\"\nunit = \"score\"\n"
    );
    toml::from_str::<nof1d::service::sources::mapped::MappingConfig>(&text)
        .unwrap()
        .resolve("p")
        .unwrap()
}

fn read_mapped(
    m: &nof1d::service::sources::mapped::Mapping,
    format: nof1d::service::sources::mapped::Format,
    bytes: &[u8],
) -> Vec<NewObservation> {
    let units: std::collections::HashMap<String, String> =
        [("a".to_string(), "lb".to_string())].into_iter().collect();
    let mut all = Vec::new();
    let _ = nof1d::service::sources::mapped::read(
        m,
        format,
        bytes,
        &TimeZone::get("America/New_York").unwrap(),
        &StreamRules::default(),
        &units,
        7,
        &mut |b: &[NewObservation]| -> Result<(), nof1d::service::sources::mapped::MappedError> {
            all.extend_from_slice(b);
            Ok(())
        },
    );
    all
}

/// One CSV cell: a time, a number in some spelling, or junk.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("2026-03-08 02:30".to_string()),
        Just("2026-11-01 01:30".to_string()),
        Just("2026-03-01T08:00:00+05:45".to_string()),
        Just("2026-03-01Z".to_string()),
        Just("1e999".to_string()),
        Just("-0".to_string()),
        Just("yes".to_string()),
        Just("NA".to_string()),
        Just("\"1,5\"".to_string()),
        Just("\u{feff}".to_string()),
        (-1e6f64..1e6).prop_map(|x| x.to_string()),
        "[ -~]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_as_a_mapped_csv_or_json_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        use nof1d::service::sources::mapped::Format;
        for format in ["", "time_format = \"%d/%m/%Y %H:%M\"", "time_format = \"unix\""] {
            let m = mapping(format);
            prop_assert!(read_mapped(&m, Format::Csv, &bytes).iter().all(sane));
            prop_assert!(read_mapped(&m, Format::Json, &bytes).iter().all(sane));
        }
    }

    #[test]
    fn junk_cells_in_a_mapped_csv_keep_every_value_sane(rows in prop::collection::vec(prop::collection::vec(cell(), 0..6), 0..30)) {
        let mut text = String::from("t,e,i,a,b\n");
        for r in &rows {
            text.push_str(&r.join(","));
            text.push('\n');
        }
        let m = mapping("");
        let obs = read_mapped(&m, nof1d::service::sources::mapped::Format::Csv, text.as_bytes());
        prop_assert!(obs.iter().all(sane));
        // Every value of `a` was converted from kg into the stream's lb.
        prop_assert!(obs.iter().filter(|o| o.stream == "a").all(|o| o.unit == "lb"));
    }
}
