//! `--compare OTHER_BUILD_DIR`: the chosen scenarios against this build's jobd and jobc
//! and against another build's, interleaved, for before/after figures of a change.
//!
//! A change's cost is often a few percent, less than what a small machine drifts by in a
//! minute (other load, the page cache, thermal limits). So the builds take turns in ABBA
//! order, round after round, each round against a freshly started jobd on a fresh state
//! dir (one at a time: two jobds on one host would share its cgroup subtree), and each
//! figure is the median over the rounds. The ratio is this build's over the other's.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::binaries::Binaries;
use crate::jobd::Jobd;
use crate::report::Row;
use crate::scenarios::Ctx;
use crate::stats::{median_f64, num};

/// One build's figures: each row's values over the rounds, by row name, with the unit.
#[derive(Default)]
struct Figures {
    rows: BTreeMap<String, (Vec<f64>, &'static str)>,
    failures: Vec<String>,
}

impl Figures {
    fn add(&mut self, rows: Vec<Row>) {
        for row in rows {
            match row.value {
                Some(v) => self
                    .rows
                    .entry(row.name)
                    .or_insert_with(|| (Vec::new(), row.unit))
                    .0
                    .push(v),
                None => self.failures.push(format!("{}: {}", row.name, row.note)),
            }
        }
    }

    fn median(&self, name: &str) -> Option<f64> {
        let mut values = self.rows.get(name)?.0.clone();
        (!values.is_empty()).then(|| median_f64(&mut values))
    }
}

/// Runs `only` for `rounds` rounds against each build and prints the comparison.
pub async fn run(
    this: &Binaries,
    other: &Binaries,
    only: &[u8],
    rounds: usize,
    quick: bool,
) -> Result<()> {
    let mut figures = [Figures::default(), Figures::default()];
    for round in 0..rounds {
        for which in abba(round) {
            let bins = [this, other][which];
            println!(
                "\n=== round {} of {rounds}: {} build ({})",
                round + 1,
                ["this", "other"][which],
                bins.jobd.display()
            );
            let ctx = Ctx {
                jobd: Jobd::start(bins)?,
                pueue: None,
                quick,
            };
            let rows = crate::run_scenarios(&ctx, only).await;
            figures[which].add(rows);
        }
    }
    println!("\n{}", table(&figures, rounds, other));
    Ok(())
}

/// Which build goes first in `round` (0: this, 1: the other): the one that went second
/// in a round goes first in the next, so a drift over the run falls on both alike.
fn abba(round: usize) -> [usize; 2] {
    if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

fn table(figures: &[Figures; 2], rounds: usize, other: &Binaries) -> String {
    let mut out = format!(
        "this build against {} ({rounds} rounds, ABBA; medians)\n\n\
         | row | this build | other build | ratio this/other |\n|---|---:|---:|---:|\n",
        other.jobd.display()
    );
    let names: std::collections::BTreeSet<&String> =
        figures.iter().flat_map(|f| f.rows.keys()).collect();
    let mut names: Vec<&String> = names.into_iter().collect();
    names.sort_by_key(|n| {
        let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
        (digits.parse::<u32>().unwrap_or(u32::MAX), (*n).clone())
    });
    for name in names {
        let unit = figures
            .iter()
            .find_map(|f| f.rows.get(name).map(|(_, u)| *u))
            .unwrap_or("");
        let [a, b] = [figures[0].median(name), figures[1].median(name)];
        let shown = |v: Option<f64>| v.map_or("-".into(), |v| format!("{} {unit}", num(v)));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.3}", a / b),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {ratio} |\n",
            shown(a),
            shown(b)
        ));
    }
    for (which, f) in ["this", "other"].iter().zip(figures) {
        for failure in &f.failures {
            out.push_str(&format!("\n{which} build: {failure}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Goal;

    fn row(name: &str, value: f64) -> Row {
        Row::new(name, value, "µs", Goal::None)
    }

    #[test]
    fn builds_take_turns_in_abba_order() {
        let order: Vec<usize> = (0..4).flat_map(abba).collect();
        assert_eq!(order, [0, 1, 1, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn the_table_holds_each_rows_medians_and_their_ratio() {
        let mut this = Figures::default();
        let mut other = Figures::default();
        for (a, b) in [(100.0, 200.0), (300.0, 100.0), (110.0, 210.0)] {
            this.add(vec![row("2 start", a), row("10 later", 1.0)]);
            other.add(vec![row("2 start", b)]);
        }
        other.add(vec![Row::failed("4 starts/s", "timed out after 60s")]);
        let bins = Binaries {
            jobd: "/old/jobd".into(),
            jobc: "/old/jobc".into(),
        };
        let out = table(&[this, other], 3, &bins);
        assert!(
            out.starts_with("this build against /old/jobd (3 rounds"),
            "{out}"
        );
        // Medians 110 and 200: 0.55. A row one build lacks has no ratio.
        assert!(
            out.contains("| 2 start | 110 µs | 200 µs | 0.550 |"),
            "{out}"
        );
        assert!(out.contains("| 10 later | 1.00 µs | - | - |"), "{out}");
        // Rows by scenario number, not as text: 2 before 10.
        assert!(out.find("| 2 start").unwrap() < out.find("| 10 later").unwrap());
        assert!(
            out.contains("other build: 4 starts/s: timed out after 60s"),
            "{out}"
        );
    }
}
