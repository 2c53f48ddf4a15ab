//! `nof1d analyze` on CSV files, as a person with a spreadsheet would run it.

use crate::common;

use common::run;

fn simulated_csv(dir: &std::path::Path) -> std::path::PathBuf {
    let out = run(
        &[
            "bench", "simulate", "--days", "200", "--effect", "-1.5", "--seed", "4",
        ],
        dir,
    );
    assert!(out.status.success());
    let path = dir.join("data.csv");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

#[test]
fn json_has_the_documented_stable_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = simulated_csv(dir.path());
    let out = run(
        &[
            "analyze",
            "--data",
            data.to_str().unwrap(),
            "--comparator",
            "control",
            "--mid",
            "0.5",
            "--direction",
            "lower",
            "--json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["effects"][0];
    assert_eq!(e["arm"], "treatment");
    for key in ["mean", "sd", "p_better_by_mid", "p_best"] {
        assert!(e[key].is_f64(), "{key}: {e}");
    }
    assert_eq!(e["ci90"].as_array().unwrap().len(), 2);
    assert!(
        v["hyperparameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "half_life_days")
    );
    assert_eq!(v["diagnostics"]["converged"], true, "{}", v["diagnostics"]);
    assert!(v["priors"]["scale"].is_f64());
    assert_eq!(v["path"].as_array().unwrap().len(), 200);
    // The simulated effect is -1.5: lower is better, so treatment should look better.
    let mean = e["mean"].as_f64().unwrap();
    let ci = [
        e["ci90"][0].as_f64().unwrap(),
        e["ci90"][1].as_f64().unwrap(),
    ];
    assert!(ci[0] < mean && mean < ci[1]);
    assert!(e["p_better_by_mid"].as_f64().unwrap() > 0.5, "{e}");
}

#[test]
fn table_by_default_and_protocol_arms() {
    let dir = tempfile::tempdir().unwrap();
    let csv = "date,arm,anxiety\n".to_string()
        + &(0..60)
            .map(|i| {
                let arm = if (i / 7) % 2 == 0 {
                    "none"
                } else {
                    "meditation"
                };
                let y = 5.0
                    + if arm == "meditation" { -1.0 } else { 0.0 }
                    + ((i * 37 % 11) as f64 - 5.0) / 5.0;
                let date = jiff::civil::date(2026, 1, 1)
                    .checked_add(jiff::Span::new().days(i))
                    .unwrap();
                format!("{date},{arm},{y:.1}\n")
            })
            .collect::<String>();
    std::fs::write(dir.path().join("a.csv"), csv).unwrap();
    let protocol = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/meditation-anxiety.toml"
    );
    let out = run(
        &["analyze", "--data", "a.csv", "--protocol", protocol],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The answer first, in the protocol's units and direction; the fit's
    // internals only with --verbose.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Anxiety evening is about "), "{text}");
    assert!(text.contains("on meditation than on none"), "{text}");
    assert!(text.contains("that it beats your goal of 1"), "{text}");
    assert!(!text.contains("priors (S"), "{text}");
    let out = run(
        &[
            "analyze",
            "--data",
            "a.csv",
            "--protocol",
            protocol,
            "--verbose",
        ],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("Anxiety evening is about "), "{text}");
    assert!(text.contains("60 observations"), "{text}");
    assert!(text.contains("meditation"), "{text}");
    assert!(text.contains("P(better by MID)"), "{text}");
    assert!(
        text.contains("effect meditation ~ Normal(0.000, 1.500)"),
        "{text}"
    );
}

#[test]
fn bad_rows_and_missing_comparator_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.csv"),
        "day,arm,score\n1,A,3\n2,A,n/a\n3,B,4\n",
    )
    .unwrap();
    let out = run(
        &["analyze", "--data", "b.csv", "--comparator", "A"],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3: outcome \"n/a\" is not a number"),
        "{err}"
    );
    let out = run(&["analyze", "--data", "b.csv"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --comparator LABEL"));
}

/// A count outcome: the effect comes also as a rate ratio and as events per
/// 30 days, the Monte Carlo error is reported, and a MID below 1 (a ratio
/// for this family) is refused with what a ratio MID means.
#[test]
fn count_outcomes_are_answered_in_the_persons_units() {
    let dir = tempfile::tempdir().unwrap();
    // Roughly two events a day on the comparator, one on the treatment, in
    // weekly periods.
    let mut csv = String::from("day,arm,y\n");
    for d in 0..84 {
        let treated = (d / 7) % 2 == 1;
        let y = if treated {
            [1, 0, 2, 1, 1][d % 5]
        } else {
            [2, 3, 1, 2, 2][d % 5]
        };
        let arm = if treated { "magnesium" } else { "placebo" };
        csv.push_str(&format!("{d},{arm},{y}\n"));
    }
    let data = dir.path().join("counts.csv");
    std::fs::write(&data, csv).unwrap();
    let args = |mid: &str| {
        vec![
            "analyze".to_string(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--comparator".into(),
            "placebo".into(),
            "--family".into(),
            "poisson".into(),
            "--direction".into(),
            "lower".into(),
            "--mid".into(),
            mid.into(),
        ]
    };
    let mut json = args("1.25");
    json.push("--json".into());
    let out = run(
        &json.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = &v["effects"][0]["natural"];
    assert_eq!(n["ratio_name"], "rate ratio", "{v}");
    assert_eq!(n["difference_unit"], "per 30 days");
    let ratio = n["ratio_median"].as_f64().unwrap();
    assert!(ratio > 0.3 && ratio < 0.8, "about half the events: {ratio}");
    let diff = n["difference_mean"].as_f64().unwrap();
    assert!(
        diff < -10.0 && diff > -50.0,
        "about 30 fewer a month: {diff}"
    );
    assert!(
        v["diagnostics"]["mc_error"]["mean"].is_f64(),
        "{}",
        v["diagnostics"]
    );
    let text = run(
        &args("1.25").iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("magnesium: rate ratio"), "{text}");
    let refused = run(
        &args("0.5").iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("the MID is a rate ratio") && err.contains("at least 1"),
        "{err}"
    );
}

/// Without `--direction` the table says which way it took as better.
#[test]
fn the_assumed_direction_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = simulated_csv(dir.path());
    let data = data.to_str().unwrap();
    let out = run(
        &["analyze", "--data", data, "--comparator", "control"],
        dir.path(),
    );
    assert!(out.status.success());
    // The answer comes first and says the direction it took; the note
    // under it says that was assumed.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("Y is about "), "{stdout}");
    assert!(first.contains("higher is better"), "{stdout}");
    assert!(
        stdout.contains("\nnote: higher values are taken as better"),
        "{stdout}"
    );
    let out = run(
        &[
            "analyze",
            "--data",
            data,
            "--comparator",
            "control",
            "--direction",
            "lower",
        ],
        dir.path(),
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("note: higher values"));
}
