//! A view as people read it (aligned columns) or as scripts do (JSON, YAML).

use serde_json::Value;

/// How a view is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// One YAML document.
    Yaml,
}

/// `view` (of subcommand `what`) in `output`.
#[must_use]
pub fn render(what: &str, view: &Value, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(view).unwrap_or_default() + "\n",
        Output::Yaml => serde_norway::to_string(view).unwrap_or_default(),
        Output::Table => table(what, view),
    }
}

/// `actors`' list in `output`.
#[must_use]
pub fn actors(list: &super::ActorList, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(list).unwrap_or_default() + "\n",
        Output::Yaml => serde_norway::to_string(list).unwrap_or_default(),
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .actors
                .iter()
                .map(|a| vec![a.actor.clone(), a.shard.to_string(), a.records.to_string()])
                .collect();
            let mut out = columns(&["ACTOR", "SHARD", "RECORDS"], &rows);
            if let Some(next) = &list.next {
                out.push_str(&format!("(more: the next page with --after {next})\n"));
            } else if list.more {
                out.push_str("(more: raise --limit, or narrow by --kind or --shard)\n");
            }
            out
        }
    }
}

/// A value in one cell: strings bare, `null` as `-`, the rest as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// `KEY  value` lines.
fn pairs(items: &[(&str, String)]) -> String {
    let w = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    items
        .iter()
        .map(|(k, v)| format!("{k:<w$}  {v}\n"))
        .collect()
}

fn table(what: &str, v: &Value) -> String {
    match what {
        "where" => pairs(&[
            ("ACTOR", cell(&v["actor"])),
            ("SHARD", format!("{} of {}", v["shard"], v["shards"])),
            ("OWNER", cell(&v["owner"])),
            ("EPOCH", cell(&v["epoch"])),
            ("MOVING", moving(&v["moving"])),
        ]),
        "get" => {
            let timers: Vec<String> = v["timers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{} due {}", cell(&t["name"]), cell(&t["due"])))
                .collect();
            let sends: Vec<String> = v["pendingSends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let state = if s["delivered"] == true {
                        "delivered, not released"
                    } else {
                        "not delivered"
                    };
                    format!("{} to {} ({state})", cell(&s["id"]), cell(&s["to"]))
                })
                .collect();
            pairs(&[
                ("ACTOR", cell(&v["actor"])),
                ("VERSION", cell(&v["version"])),
                ("SHARD", cell(&v["where"]["shard"])),
                ("OWNER", cell(&v["where"]["owner"])),
                ("MOVING", moving(&v["where"]["moving"])),
                ("STATE", cell(&v["state"])),
                ("NOT FOLDED", cell(&v["eventsNotFolded"])),
                ("TIMERS", list(timers)),
                ("PENDING SENDS", list(sends)),
                ("UNRELEASED RECEIVED", cell(&v["unreleasedReceived"])),
            ])
        }
        "history" => {
            let rows: Vec<Vec<String>> = v["records"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let timers = [&r["timersSet"], &r["timersCancelled"]]
                        .iter()
                        .zip(["+", "-"])
                        .flat_map(|(names, sign)| {
                            names
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(move |n| format!("{sign}{}", cell(n)))
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    vec![
                        cell(&r["version"]),
                        cell(&r["seq"]),
                        cell(&r["command"]),
                        cell(&r["events"]),
                        r["sends"].as_array().map_or(0, Vec::len).to_string(),
                        if timers.is_empty() {
                            "-".into()
                        } else {
                            timers
                        },
                    ]
                })
                .collect();
            let mut out = columns(
                &["VERSION", "SEQ", "COMMAND", "EVENTS", "SENDS", "TIMERS"],
                &rows,
            );
            if !v["at"].is_null() {
                out.push_str(&format!(
                    "\nSTATE AFTER VERSION {}  {}\n",
                    v["at"],
                    cell(&v["stateAt"])
                ));
            }
            out
        }
        "moves" => {
            let rows: Vec<Vec<String>> = v["moves"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    vec![
                        cell(&m["shard"]),
                        cell(&m["from"]),
                        cell(&m["to"]),
                        cell(&m["phase"]),
                        cell(&m["attempts"]),
                        cell(&m["actors"]),
                        cell(&m["bytes"]),
                        cell(&m["durationMs"]),
                        cell(&m["error"]),
                    ]
                })
                .collect();
            format!("EPOCH {}\n", v["epoch"])
                + &columns(
                    &[
                        "SHARD", "FROM", "TO", "PHASE", "ATTEMPTS", "ACTORS", "BYTES", "MS",
                        "ERROR",
                    ],
                    &rows,
                )
        }
        "status" => {
            let rows: Vec<Vec<String>> = v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| vec![cell(&m["pod"]), cell(&m["shards"]), cell(&m["holds"])])
                .collect();
            let mut out = pairs(&[
                ("EPOCH", cell(&v["epoch"])),
                ("SHARDS", cell(&v["shards"])),
                (
                    "BALANCE",
                    format!(
                        "most shards on a pod {} (mean {:.1}, {:.2}x)",
                        v["balance"]["maxShards"],
                        v["balance"]["meanShards"].as_f64().unwrap_or(0.0),
                        v["balance"]["maxOverMean"].as_f64().unwrap_or(0.0)
                    ),
                ),
                ("MOVES", phases(&v["moves"])),
                ("NOT HOLDING PLAN", cell(&v["notHoldingPlan"])),
                (
                    "EVENT STREAM",
                    format!(
                        "{} records, {} bytes, {} subjects",
                        v["streams"]["events"]["messages"],
                        v["streams"]["events"]["bytes"],
                        v["streams"]["events"]["subjects"]
                    ),
                ),
            ]);
            out.push('\n');
            out.push_str(&columns(&["POD", "SHARDS", "HOLDS EPOCH"], &rows));
            for f in v["failedMoves"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "FAILED shard {} from {} to {}: {}\n",
                    f["shard"],
                    cell(&f["from"]),
                    cell(&f["to"]),
                    cell(&f["error"])
                ));
            }
            out
        }
        _ => serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    }
}

fn moving(m: &Value) -> String {
    if m.is_null() {
        return "-".into();
    }
    format!("from {} to {}", cell(&m["from"]), cell(&m["to"]))
}

fn list(items: Vec<String>) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join("; ")
    }
}

/// `{"Done": 8, "Failed": 1}` as `8 Done, 1 Failed` (`-` for none).
fn phases(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(phase, n)| format!("{n} {phase}"))
        .collect();
    list(parts).replace("; ", ", ")
}
