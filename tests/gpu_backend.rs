//! The GPU backend from the command line, on any machine: `nof1d doctor`
//! checks the kernels compiled for the host and says where the engine runs;
//! `--backend` chooses, and `cuda` without a GPU says why in one line.

use crate::common;

use common::run;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// True where this machine has a CUDA driver (then `cuda` may succeed).
fn has_gpu(dir: &std::path::Path) -> bool {
    let out = run(&["doctor", "--data-dir", "data"], dir);
    text(&out)
        .lines()
        .any(|l| l.starts_with("GPU: ") && !l.starts_with("GPU: none"))
}

#[test]
fn doctor_reports_the_machine_and_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["doctor", "--data-dir", "data"], dir.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("CPU: "), "{t}");
    assert!(
        t.contains("kernels compiled for the host: agree with the CPU engine"),
        "{t}"
    );
    assert!(t.lines().any(|l| l.starts_with("GPU: ")), "{t}");
    assert!(t.contains("database: none at"), "{t}");
    // With a database: its quick check, read-only.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    drop(nof1d::service::store::Store::open(&dir.path().join("data/nof1d.sqlite")).unwrap());
    let out = run(&["doctor", "--data-dir", "data"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("quick_check ok"), "{}", text(&out));
}

#[test]
fn backend_is_chosen_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    let series = run(
        &[
            "bench", "simulate", "--days", "42", "--effect", "0.5", "--seed", "3",
        ],
        dir.path(),
    );
    std::fs::write(&csv, &series.stdout).unwrap();
    let csv = csv.display().to_string();
    let base = ["analyze", "--data", csv.as_str(), "--comparator", "control"];

    let out = run(&[&base[..], &["--backend", "cpu"]].concat(), dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("on the CPU: --backend cpu"),
        "{}",
        text(&out)
    );

    let out = run(&base, dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("fitted on the CPU: "), "{}", text(&out));

    let out = run(&[&base[..], &["--backend", "gpu"]].concat(), dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out).contains("use auto, cpu or cuda"),
        "{}",
        text(&out)
    );

    if !has_gpu(dir.path()) {
        let out = run(&[&base[..], &["--backend", "cuda"]].concat(), dir.path());
        assert!(!out.status.success());
        let t = text(&out);
        assert!(t.contains("--backend cuda: "), "{t}");
        assert_eq!(t.trim().lines().count(), 1, "one line says why: {t}");
    }
}
