//! The closing table: each figure with its baseline, the ratio between them, the target
//! and whether it was met. A scenario that failed still gets its rows, saying so.

use crate::stats::num;

/// What a row must achieve.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// `value <= x`.
    AtMost(f64),
    /// `value >= x`.
    AtLeast(f64),
    /// `value / baseline <= x`.
    RatioAtMost(f64),
    /// `value / baseline >= x`.
    RatioAtLeast(f64),
    /// Informational: no target.
    None,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub baseline: Option<f64>,
    pub goal: Goal,
    /// Why the value is missing, or anything else the reader must know.
    pub note: String,
}

impl Row {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str, goal: Goal) -> Row {
        Row {
            name: name.into(),
            value: Some(value),
            unit,
            baseline: None,
            goal,
            note: String::new(),
        }
    }

    pub fn failed(name: impl Into<String>, why: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            value: None,
            unit: "",
            baseline: None,
            goal: Goal::None,
            note: why.into(),
        }
    }

    pub fn baseline(mut self, baseline: Option<f64>) -> Row {
        self.baseline = baseline;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    fn ratio(&self) -> Option<f64> {
        Some(self.value? / self.baseline?)
    }

    fn target(&self) -> String {
        match self.goal {
            Goal::AtMost(x) => format!("<= {} {}", num(x), self.unit),
            Goal::AtLeast(x) => format!(">= {} {}", num(x), self.unit),
            Goal::RatioAtMost(x) => format!("ratio <= {}", num(x)),
            Goal::RatioAtLeast(x) => format!("ratio >= {}", num(x)),
            Goal::None => "-".into(),
        }
    }

    fn verdict(&self) -> &'static str {
        let Some(value) = self.value else {
            return "FAILED";
        };
        let met = match (self.goal, self.ratio()) {
            (Goal::AtMost(x), _) => value <= x,
            (Goal::AtLeast(x), _) => value >= x,
            (Goal::RatioAtMost(x), Some(r)) => r <= x,
            (Goal::RatioAtLeast(x), Some(r)) => r >= x,
            (Goal::None, _) => return "info",
            _ => return "n/a",
        };
        if met {
            "met"
        } else {
            "MISSED"
        }
    }
}

fn with_unit(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{} {unit}", num(v)))
        .unwrap_or_else(|| "-".into())
}

/// The table as Markdown, which reads well in a terminal and pastes into documents.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | value | baseline | ratio | target | result | note |\n\
         |---|---:|---:|---:|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            with_unit(r.value, r.unit),
            with_unit(r.baseline, r.unit),
            r.ratio()
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.target(),
            r.verdict(),
            r.note,
        ));
    }
    out
}

/// Rows sorted by the scenario number their names start with (stable within one).
pub fn in_scenario_order(mut rows: Vec<Row>) -> Vec<Row> {
    let number = |r: &Row| -> u32 {
        let digits: String = r.name.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or(u32::MAX)
    };
    rows.sort_by_key(number);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_targets_compare_the_figure_with_its_baseline() {
        let at_most = |v, b| Row::new("1 x", v, "ms", Goal::RatioAtMost(1.15)).baseline(b);
        assert_eq!(at_most(1.1, Some(1.0)).verdict(), "met");
        assert_eq!(at_most(1.2, Some(1.0)).verdict(), "MISSED");
        assert_eq!(at_most(1.0, None).verdict(), "n/a");
        let at_least = |v, b| Row::new("4 x", v, "/s", Goal::RatioAtLeast(0.9)).baseline(b);
        assert_eq!(at_least(95.0, Some(100.0)).verdict(), "met");
        assert_eq!(at_least(85.0, Some(100.0)).verdict(), "MISSED");
        assert_eq!(
            Row::new("3 x", 11.0, "ms", Goal::AtMost(10.0)).verdict(),
            "MISSED"
        );
        assert_eq!(Row::failed("2 x", "boom").verdict(), "FAILED");
        let table = table(&[at_most(2.2, Some(2.0))]);
        assert!(
            table.contains("| 2.20 ms | 2.00 ms | 1.10 | ratio <= 1.15 | met |"),
            "{table}"
        );
    }
}
