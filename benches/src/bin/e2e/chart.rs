//! The chart of `--svg`: throughput, first-request latency and the parallel
//! downloads' peak RSS, as panels of [`super::svg`].

use std::time::Duration;

use super::parallel::{ParallelRun, TARGET_CLIENT_PEAK_MIB, TARGET_SERVER_PEAK_MIB, mib_of};
use super::{OurLatency, PathRun, Res, SMALL, Settings, median_d, median_f, svg};

const BLUE: &str = "#4e79a7";
const ORANGE: &str = "#f28e2b";
const RED: &str = "#e15759";
const TEAL: &str = "#76b7b2";
const GREEN: &str = "#59a14f";
const YELLOW: &str = "#edc948";
const DARK_BLUE: &str = "#1f3b63";
const DARK_ORANGE: &str = "#9c4f00";

fn series(v: &[(&str, &'static str)]) -> Vec<svg::Series> {
    v.iter()
        .map(|(name, color)| svg::Series {
            name: (*name).to_owned(),
            color,
        })
        .collect()
}

fn us(v: &[Duration]) -> Option<f64> {
    (!v.is_empty()).then(|| median_d(v).as_secs_f64() * 1e6)
}

/// The chart: throughput, first-request latency, parallel downloads.
pub fn panels(
    paths: &[PathRun],
    ours_lat: &OurLatency,
    peer_lat: &[(String, Res<OurLatency>)],
    steady_lat: &[(String, Res<Vec<Duration>>)],
    par: &[Result<ParallelRun, String>],
    s: &Settings,
) -> Vec<svg::Panel> {
    let med = |r: &Result<Vec<f64>, String>| match r {
        Ok(v) if !v.is_empty() => Some(median_f(v)),
        _ => None,
    };
    let throughput = svg::Panel {
        title: format!(
            "Throughput, one transfer of {} MiB each way (median of {})",
            s.mib, s.reps
        ),
        y_label: "MiB/s".into(),
        series: series(&[("download", BLUE), ("upload", ORANGE)]),
        // The plain TCP row (index 3) only sizes the topology's ceiling;
        // drawn, it would flatten every other bar.
        groups: paths
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, p)| {
                let values = vec![med(&p.dl), med(&p.ul)];
                svg::Group {
                    label: p.short.clone(),
                    note: values.iter().all(Option::is_none).then(|| "failed".into()),
                    values,
                }
            })
            .collect(),
        refs: Vec::new(),
        decimals: 0,
    };

    let lat_group = |label: &str, l: &OurLatency| svg::Group {
        label: label.to_owned(),
        values: vec![us(&l.cold), us(&l.warm), us(&l.reused), None],
        note: None,
    };
    let failed = |label: &str| svg::Group {
        label: label.to_owned(),
        values: vec![None; 4],
        note: Some("failed".into()),
    };
    let mut lat = vec![lat_group("ours > ours", ours_lat)];
    for (label, r) in peer_lat {
        lat.push(match r {
            Ok(l) => lat_group(label, l),
            Err(_) => failed(label),
        });
    }
    for (label, r) in steady_lat {
        lat.push(match r {
            Ok(v) => svg::Group {
                label: label.clone(),
                values: vec![None, None, None, us(v)],
                note: None,
            },
            Err(_) => failed(label),
        });
    }
    let mut lat_series = vec![
        ("cold (new pool)", RED),
        ("warm (pre-warmed session)", TEAL),
        ("reused (pooled session)", GREEN),
    ];
    if !steady_lat.is_empty() {
        lat_series.push(("steady (running client)", YELLOW));
    }
    let latency = svg::Panel {
        title: format!(
            "First-request latency through SOCKS5, {SMALL}-byte answer (median of {})",
            s.rounds
        ),
        y_label: "µs".into(),
        series: series(&lat_series),
        groups: lat,
        refs: Vec::new(),
        decimals: 0,
    };
    let mut panels = vec![throughput, latency];

    if s.parallel > 0 {
        let groups = par
            .iter()
            .map(|r| match r {
                Ok(r) => svg::Group {
                    label: format!(
                        "{}: {:.0} MiB/s, {:.2} s",
                        r.label,
                        r.mibps,
                        r.wall.as_secs_f64()
                    ),
                    values: vec![
                        Some(mib_of(r.client.peak_kib)),
                        Some(mib_of(r.server.peak_kib)),
                    ],
                    note: None,
                },
                Err(e) => svg::Group {
                    label: e
                        .strip_prefix("parallel downloads, ")
                        .and_then(|x| x.split(':').next())
                        .unwrap_or("?")
                        .to_owned(),
                    values: vec![None, None],
                    note: Some("failed".into()),
                },
            })
            .collect();
        panels.push(svg::Panel {
            title: format!(
                "Parallel downloads, {} x {} MiB at once: peak RSS",
                s.parallel, s.parallel_mib
            ),
            y_label: "MiB".into(),
            series: series(&[("client process", BLUE), ("server process", ORANGE)]),
            groups,
            refs: vec![
                svg::RefLine {
                    label: format!("anytls-go client peak ({TARGET_CLIENT_PEAK_MIB:.0} MiB)"),
                    value: TARGET_CLIENT_PEAK_MIB,
                    color: DARK_BLUE,
                },
                svg::RefLine {
                    label: format!("anytls-go server peak ({TARGET_SERVER_PEAK_MIB:.0} MiB)"),
                    value: TARGET_SERVER_PEAK_MIB,
                    color: DARK_ORANGE,
                },
            ],
            decimals: 1,
        });
    }
    panels
}
