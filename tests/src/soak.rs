//! `make soak`'s report (`tests/examples/soak.rs`): the section "Soak" of RELIABILITY.md and its
//! plot, from the run's samples: each minute, every process's resident memory and open file
//! descriptors, and the transfers' p99.

use serde_json::Value;
use std::fmt::Write as _;

/// Growth allowed over the second half of the run (memory, descriptors).
pub const GROWTH: f64 = 0.05;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Each process's (name, samples of `field` by minute).
fn series(report: &Value, field: &str) -> Vec<(String, Vec<f64>)> {
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for s in &samples {
        for p in s["processes"].as_array().into_iter().flatten() {
            let name = p["process"].as_str().unwrap_or("?").to_owned();
            match out.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(num(&p[field])),
                None => out.push((name, vec![num(&p[field])])),
            }
        }
    }
    out
}

/// A field of every minute's sample, in order.
fn per_minute(r: &Value, field: &str) -> Vec<f64> {
    r["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| num(&s[field]))
        .collect()
}

/// Growth from the middle sample to the last one.
fn growth(v: &[f64]) -> f64 {
    match (v.get(v.len() / 2), v.last()) {
        (Some(&mid), Some(&last)) if mid > 0.0 => last / mid - 1.0,
        _ => 0.0,
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The section "Soak" of RELIABILITY.md.
#[must_use]
pub fn section(r: &Value) -> String {
    let minutes = num(&r["minutes"]);
    let p99 = per_minute(r, "p99_ms");
    let half = p99.len() / 2;
    let (first, second) = (mean(&p99[..half]), mean(&p99[half..]));
    let mut out = format!(
        "## Soak\n\n\
         Command: `make soak` (`AETHER_SOAK_MINUTES`, default 60; this run: {minutes:.0} minutes): 4 node \
         processes, each with its bank app (`examples/bank/app.py`), one nats-server, {accounts} accounts; \
         {lanes} lanes of transfers by sends, one at a time each, the whole run ({transfers} acknowledged); \
         a plan change every minute (a fourth node joins, it leaves, a member leaves, it comes back: {plans} \
         plans), made as the operator makes them. Each minute: every process's resident memory and open \
         file descriptors, and the transfers' p99 (`docs/soak.svg`). Goals: growth over the second half \
         <= {g:.0}% for each process, p99 without a trend, nothing lost or applied twice.\n\n\
         | process | memory at minute 1 | at the middle | at the end | growth over the second half | descriptors (middle, end) |\n\
         |---|---|---|---|---|---|\n",
        accounts = r["accounts"],
        lanes = r["lanes"],
        transfers = r["transfers"],
        plans = r["plans"],
        g = GROWTH * 100.0,
    );
    let fds = series(r, "fds");
    let mut worst: f64 = 0.0;
    for (name, rss) in series(r, "rss") {
        let mb = |i: usize| rss.get(i).copied().unwrap_or(0.0) / (1024.0 * 1024.0);
        let g = growth(&rss);
        worst = worst.max(g);
        let f = fds
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {name} | {:.1} MB | {:.1} MB | {:.1} MB | {:+.1}% | {:.0}, {:.0} |",
            mb(0),
            mb(rss.len() / 2),
            mb(rss.len().saturating_sub(1)),
            g * 100.0,
            f.get(f.len() / 2).copied().unwrap_or(0.0),
            f.last().copied().unwrap_or(0.0),
        );
    }
    let settled = match &r["settled"] {
        Value::Null => {
            "every account holds exactly what the acknowledged transfers say (0 lost, 0 \
                        applied twice, the money conserved)"
                .to_owned()
        }
        why => format!("**the accounts differ from the acknowledged transfers**: {why}"),
    };
    let _ = write!(
        out,
        "\nTransfers' p99 per minute: mean {first:.1} ms over the first half, {second:.1} ms over the \
         second ({:+.0}%); largest growth of a process's memory over the second half {:+.1}% (goal \
         <= {:.0}%: {}). At the end: {settled}.\n",
        if first > 0.0 {
            (second / first - 1.0) * 100.0
        } else {
            0.0
        },
        worst * 100.0,
        GROWTH * 100.0,
        if worst <= GROWTH { "met" } else { "**missed**" },
    );
    let stored = per_minute(r, "stream_bytes");
    if let (Some(mid), Some(end)) = (stored.get(stored.len() / 2), stored.last()) {
        let _ = write!(
            out,
            "\nThe event stream nats-server stores (every transfer's records, none purged): {:.1} MB \
             at the middle, {:.1} MB at the end ({:+.1}% over the second half).\n",
            mid / 1e6,
            end / 1e6,
            growth(&stored) * 100.0,
        );
    }
    if minutes < 60.0 {
        let _ = write!(
            out,
            "\nThis run lasted {minutes:.0} minutes, not the hour `make soak` runs by default.\n"
        );
    }
    out
}

/// The run as an SVG: each process's memory (MB) and the transfers' p99 (ms), by minute.
#[must_use]
pub fn svg(r: &Value) -> String {
    const W: f64 = 720.0;
    const H: f64 = 220.0;
    const PAD: f64 = 40.0;
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22",
    ];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        3.0 * H + 60.0
    );
    let mut panel = |top: f64, title: &str, lines: Vec<(String, Vec<f64>)>, unit: &str| {
        let n = lines.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(2);
        let max = lines
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0, f64::max);
        let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64;
        let y = |v: f64| top + H - PAD - (H - 2.0 * PAD) * v / max;
        let _ = writeln!(
            out,
            "<text x=\"{PAD}\" y=\"{}\">{title} (max {max:.1} {unit})</text>",
            top + 15.0
        );
        let _ = writeln!(
            out,
            "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
            top + H - PAD,
            W - PAD,
            top + H - PAD
        );
        for (k, (name, v)) in lines.iter().enumerate() {
            let c = colours[k % colours.len()];
            let points: Vec<String> = v
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                .collect();
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{c}\" points=\"{}\"/>",
                points.join(" ")
            );
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{name}</text>",
                W - PAD - 110.0,
                top + 30.0 + 12.0 * k as f64
            );
        }
    };
    // nats-server apart: its memory is ten times a node's and would flatten theirs.
    let (server, rest): (Vec<_>, Vec<_>) = series(r, "rss")
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.into_iter()
                    .map(|b| b / (1024.0 * 1024.0))
                    .collect::<Vec<f64>>(),
            )
        })
        .partition(|(n, _)| n == "nats-server");
    panel(0.0, "nats-server's resident memory by minute", server, "MB");
    panel(
        H + 20.0,
        "nodes' and apps' resident memory by minute",
        rest,
        "MB",
    );
    let p99 = r["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| num(&s["p99_ms"]))
        .collect();
    panel(
        2.0 * (H + 20.0),
        "transfers' p99 by minute",
        vec![("p99".to_owned(), p99)],
        "ms",
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(rss: &[f64], p99: &[f64]) -> Value {
        let samples: Vec<Value> = rss
            .iter()
            .zip(p99)
            .enumerate()
            .map(|(m, (r, p))| {
                json!({"minute": m + 1, "p99_ms": p, "processes": [{"process": "node", "rss": r, "fds": 20}]})
            })
            .collect();
        json!({"minutes": rss.len(), "accounts": 2, "lanes": 1, "transfers": 10, "plans": 3, "settled": null, "samples": samples})
    }

    #[test]
    fn growth_is_judged_over_the_second_half() {
        assert!((growth(&[100.0, 200.0, 200.0, 210.0]) - 0.05).abs() < 1e-9);
        let flat = section(&report(&[100.0, 200.0, 200.0, 200.0], &[5.0; 4]));
        assert!(flat.contains("goal <= 5%: met"), "{flat}");
        let leak = section(&report(&[100.0, 100.0, 150.0, 200.0], &[5.0; 4]));
        assert!(leak.contains("**missed**"), "{leak}");
        assert!(leak.contains("not the hour"), "{leak}");
        let svg = svg(&report(&[1.0, 2.0], &[3.0, 4.0]));
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    }
}
