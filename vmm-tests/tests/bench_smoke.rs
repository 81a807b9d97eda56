//! `vsound-bench --spawn --scenario all --smoke`: every scenario runs against
//! the real daemon and reports sane numbers. No performance figure is
//! checked: this keeps the bench from rotting, BENCHMARKS.md has the figures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;
use vmm_tests::Daemon;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur}"))
}

/// A percentile summary: samples, ordered, finite, non-negative.
fn summary(v: &Value, path: &str) {
    let n = num(v, &format!("{path}.n"));
    assert!(n >= 1.0, "{path}: no samples");
    let p: Vec<f64> = ["p50", "p99", "p999", "max"]
        .iter()
        .map(|k| num(v, &format!("{path}.{k}")))
        .collect();
    assert!(
        p.iter().all(|x| x.is_finite() && *x >= 0.0) && p.windows(2).all(|w| w[0] <= w[1]),
        "{path}: {p:?}"
    );
}

fn memory(v: &Value, path: &str) {
    let peak = num(v, &format!("{path}.peak_rss_kib"));
    assert!(peak > 100.0 && peak < 1e7, "{path}: peak RSS {peak} KiB");
}

#[test]
fn every_scenario_runs_and_reports_sane_numbers() {
    let vsound = Daemon::binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let svg = dir.path().join("pacing.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_vsound-bench"))
        .args([
            "--spawn",
            "--scenario",
            "all",
            "--smoke",
            "--json",
            "--plot",
        ])
        .arg(&svg)
        .arg("--vsound")
        .arg(&vsound)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vsound-bench failed:\n{stderr}");
    // The human table goes to stderr with --json.
    for heading in [
        "pacing:",
        "cpu:",
        "control:",
        "teardown:",
        "memory:",
        "peak RSS",
    ] {
        assert!(stderr.contains(heading), "no {heading:?} in:\n{stderr}");
    }
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["smoke"], Value::Bool(true));
    assert!(num(&r, "machine.nproc") >= 1.0);

    summary(&r, "pacing.all");
    summary(&r, "pacing.output");
    summary(&r, "pacing.input");
    assert!(num(&r, "pacing.seconds") > 0.5);
    assert_eq!(r["pacing"]["drift_us"].as_array().map(Vec::len), Some(2));
    memory(&r, "pacing.memory");

    let runs = r["cpu"]["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for i in 0..runs.len() {
        let cpu = num(&r, &format!("cpu.runs.{i}.cpu_pct"));
        assert!(cpu > 0.0 && cpu < 200.0, "cpu run {i}: {cpu} %");
        assert!(num(&r, &format!("cpu.runs.{i}.usage.wakeups_per_s")) > 0.0);
        summary(&r, &format!("cpu.runs.{i}.pacing"));
        memory(&r, &format!("cpu.runs.{i}.memory"));
    }

    for req in [
        "pcm_info",
        "set_params",
        "prepare",
        "start",
        "stop",
        "release",
        "cycle",
    ] {
        summary(&r, &format!("control.{req}"));
    }
    memory(&r, "control.memory");

    let status = r["teardown"]["status"].as_str().unwrap();
    assert!(!status.is_empty());
    let runs = r["teardown"]["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for i in 0..runs.len() {
        assert!(num(&r, &format!("teardown.runs.{i}.held")) >= 1.0);
        summary(&r, &format!("teardown.runs.{i}.drained"));
        summary(&r, &format!("teardown.runs.{i}.bystanders_before"));
        memory(&r, &format!("teardown.runs.{i}.memory"));
        assert_ne!(r["teardown"]["runs"][i]["returns"], "stuck", "run {i}");
    }

    memory(&r, "memory.idle");
    memory(&r, "memory.loaded");

    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg"), "not an SVG");
}
