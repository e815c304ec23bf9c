//! Figures, their median/min/max over runs, and the markdown and JSON reports.

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
}

impl Figure {
    pub fn new(name: &str, unit: &'static str, value: f64) -> Self {
        Figure { name: name.to_owned(), unit, value }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub unit: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

/// Groups the runs' figures by name (keeping first-seen order) into rows.
pub fn summarize(scenario: &str, runs: &[Vec<Figure>]) -> Vec<Row> {
    let mut names: Vec<(String, &'static str)> = Vec::new();
    for figure in runs.iter().flatten() {
        if !names.iter().any(|(name, _)| *name == figure.name) {
            names.push((figure.name.clone(), figure.unit));
        }
    }
    names
        .into_iter()
        .map(|(name, unit)| {
            let mut values: Vec<f64> =
                runs.iter().flatten().filter(|f| f.name == name).map(|f| f.value).collect();
            values.sort_by(f64::total_cmp);
            let median = if values.len() % 2 == 1 {
                values[values.len() / 2]
            } else {
                (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
            };
            Row {
                scenario: scenario.to_owned(),
                figure: name,
                unit,
                median,
                min: values[0],
                max: values[values.len() - 1],
                runs: values.len(),
            }
        })
        .collect()
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| scenario | figure | median | min | max | unit | runs |\n|---|---|---:|---:|---:|---|---:|\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.scenario,
            row.figure,
            number(row.median),
            number(row.min),
            number(row.max),
            row.unit,
            row.runs
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_per_figure() {
        let runs = vec![
            vec![Figure::new("a", "ms", 3.0), Figure::new("b", "s", 1.0)],
            vec![Figure::new("a", "ms", 1.0), Figure::new("b", "s", 2.0)],
            vec![Figure::new("a", "ms", 2.0), Figure::new("b", "s", 4.0)],
        ];
        let rows = summarize("x", &runs);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].median, rows[0].min, rows[0].max), (2.0, 1.0, 3.0));
        assert_eq!((rows[1].median, rows[1].min, rows[1].max), (2.0, 1.0, 4.0));
        let table = markdown(&rows);
        assert!(table.contains("| x | a | 2.00 | 1.00 | 3.00 | ms | 3 |"), "{table}");
    }

    #[test]
    fn even_run_counts_average_the_middle_pair() {
        let runs = vec![vec![Figure::new("a", "ms", 1.0)], vec![Figure::new("a", "ms", 4.0)]];
        assert_eq!(summarize("x", &runs)[0].median, 2.5);
    }
}
