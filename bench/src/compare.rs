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
        // ABBA: the build that goes second in one round goes first in the next.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
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
