//! Plain aligned text tables for terminal output.

use promguard_core::Lifecycle;
use promguard_remote::TargetHealth;

/// Which columns a targets table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetColumns {
    /// Instance, job, scrape URL and health (`up`).
    Health,
    /// Those, the last scrape's time and its error (`status`).
    LastScrape,
}

/// The targets table.
pub fn targets(targets: &[TargetHealth], columns: TargetColumns) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let mut row = vec![
                t.instance.clone(),
                t.job.clone(),
                t.scrape_url.clone(),
                t.health.to_string(),
            ];
            if columns == TargetColumns::LastScrape {
                row.push(t.last_scrape.clone().unwrap_or_else(|| "never".into()));
                row.push(t.last_error.clone());
            }
            row
        })
        .collect();
    let mut header = vec!["INSTANCE", "JOB", "SCRAPE URL", "HEALTH"];
    if columns == TargetColumns::LastScrape {
        header.extend(["LAST SCRAPE", "ERROR"]);
    }
    format(&header, &rows)
}

/// The ORIGIN column of `plan` and `status`: `created` for a host a
/// provider made, `existing` for one the user runs.
pub fn origin(lifecycle: Lifecycle) -> &'static str {
    match lifecycle {
        Lifecycle::Existing => "existing",
        _ => "created",
    }
}

/// Formats rows under a header, columns padded to their widest cell.
pub fn format(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let t = super::format(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
