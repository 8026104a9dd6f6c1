//! The pairing tables: one table per case with every pairing of our client
//! and server with a peer's (ours > ours, ours > peer, peer > ours, peer >
//! peer), compared figures also as a ratio to the peer's own pair, and the
//! CPU time of the client and the server process per GiB moved.

use super::{PathRun, Settings, child_threads, median_f, threads_desc};

/// A table cell: its text and, in a compared column, its value.
pub struct Cell {
    pub text: String,
    pub value: Option<f64>,
}

impl Cell {
    /// A figure shown with `decimals`.
    pub fn num(v: Option<f64>, decimals: usize) -> Cell {
        Cell {
            text: v.map_or("-".into(), |x| format!("{x:.decimals$}")),
            value: v,
        }
    }

    pub fn text(t: impl Into<String>) -> Cell {
        Cell {
            text: t.into(),
            value: None,
        }
    }
}

#[derive(Clone, Copy)]
pub struct Col {
    pub head: &'static str,
    /// Followed by a column with the ratio to the peer's own pair.
    pub compare: bool,
}

pub struct Row {
    /// "client > server".
    pub pair: String,
    /// The peer in the pairing (`None`: ours > ours).
    pub peer: Option<String>,
    pub cells: Vec<Cell>,
}

/// Prints `title`, then per peer a table of ours > ours and that peer's
/// pairings, where each compared column is followed by its ratio to the
/// peer's own pair (peer > peer); without peers, one table of the rows.
pub fn print_table(title: &str, cols: &[Col], rows: &[Row]) {
    println!();
    println!("{title}");
    let mut peers: Vec<&str> = Vec::new();
    for p in rows.iter().filter_map(|r| r.peer.as_deref()) {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    let ratios = !peers.is_empty();
    let width = rows
        .iter()
        .map(|r| r.pair.chars().count())
        .max()
        .unwrap_or(0)
        .max("client > server".len());
    let head = || {
        let mut line = format!("  {:<width$}", "client > server");
        for c in cols {
            line += &format!(" {:>13}", c.head);
            if c.compare && ratios {
                line += &format!(" {:>6}", "ratio");
            }
        }
        println!("{line}");
    };
    let row = |r: &Row, reference: Option<&Row>| {
        let mut line = format!("  {:<width$}", r.pair);
        for (i, (c, cell)) in cols.iter().zip(&r.cells).enumerate() {
            line += &format!(" {:>13}", cell.text);
            if c.compare && ratios {
                let base = reference.and_then(|b| b.cells.get(i)).and_then(|b| b.value);
                let ratio = cell.value.zip(base).filter(|(_, b)| *b > 0.0);
                line += &match ratio {
                    Some((v, b)) => format!(" {:>6.2}", v / b),
                    None => format!(" {:>6}", "-"),
                };
            }
        }
        println!("{line}");
    };
    if !ratios {
        head();
        for r in rows {
            row(r, None);
        }
        return;
    }
    for peer in peers {
        let own = format!("{peer} > {peer}");
        let reference = rows.iter().find(|r| r.pair == own);
        println!(
            "  ratio: the row's figure / {}",
            reference.map_or("(no such pair)", |_| own.as_str())
        );
        head();
        for r in rows
            .iter()
            .filter(|r| r.peer.is_none() || r.peer.as_deref() == Some(peer))
        {
            row(r, reference);
        }
    }
}

fn med(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| median_f(v))
}

/// The single-stream cases: download and upload, a table each.
pub fn print_throughput(paths: &[PathRun], s: &Settings) {
    for (dir, name) in [(0, "download"), (1, "upload")] {
        let rows: Vec<Row> = paths
            .iter()
            .filter_map(|p| {
                let (pair, peer) = p.pair.clone()?;
                let mibps = match if dir == 0 { &p.dl } else { &p.ul } {
                    Ok(v) => Cell::num(med(v), 1),
                    Err(_) => Cell::text("failed"),
                };
                let [c, v] = [0, 1].map(|i| med(&p.pcpu[dir][i]));
                let sum = c.zip(v).map(|(a, b)| a + b);
                Some(Row {
                    pair,
                    peer,
                    cells: vec![mibps, Cell::num(c, 2), Cell::num(v, 2), Cell::num(sum, 2)],
                })
            })
            .collect();
        print_table(
            &format!(
                "one stream, {name}: {} MiB, median of {} (runtime threads per process: {}); \
                 CPU s/GiB per process from /proc/<pid>/stat",
                s.mib,
                s.reps,
                threads_desc(child_threads())
            ),
            &THROUGHPUT_COLS,
            &rows,
        );
    }
}

/// [`THROUGHPUT_COLS`], then the CPU per GiB of everything else on the
/// machine and the throughput ceiling it sets.
pub const MANY_COLS: [Col; 6] = [
    THROUGHPUT_COLS[0],
    THROUGHPUT_COLS[1],
    THROUGHPUT_COLS[2],
    THROUGHPUT_COLS[3],
    Col {
        head: "others s/GiB",
        compare: false,
    },
    Col {
        head: "ceiling MiB/s",
        compare: false,
    },
];

/// Throughput and the CPU per GiB of the client, the server and both.
pub const THROUGHPUT_COLS: [Col; 4] = [
    Col {
        head: "MiB/s",
        compare: true,
    },
    Col {
        head: "client s/GiB",
        compare: false,
    },
    Col {
        head: "server s/GiB",
        compare: false,
    },
    Col {
        head: "both s/GiB",
        compare: true,
    },
];
