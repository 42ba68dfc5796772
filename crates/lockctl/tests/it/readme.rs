//! README's lockctl examples that can run here are checked against the real lockctl (issue 18,
//! point 7): each `$ lockctl status` table has lockctl's columns, aligned as lockctl aligns
//! them. The original examples' output lines are checked line by line in `cli.rs`, and the
//! cron recipe's quiet skip in `flock.rs`.

use crate::support::{run_lockctl, stdout_lines, Server};

const README: &str = include_str!("../../../../README.md");

/// The output lines under each `$ lockctl status` line of README.
fn status_tables() -> Vec<Vec<&'static str>> {
    let lines: Vec<&str> = README.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.starts_with("$ lockctl status"))
        .map(|(at, _)| {
            lines[at + 1..]
                .iter()
                .take_while(|line| !line.starts_with("```"))
                .copied()
                .collect()
        })
        .collect()
}

/// `rows` split into cells (two spaces or more apart) and aligned again as lockctl does.
fn realigned(rows: &[&str]) -> Vec<String> {
    let cells: Vec<Vec<&str>> = rows
        .iter()
        .map(|row| {
            row.split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .collect()
        })
        .collect();
    let columns = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|col| {
            cells
                .iter()
                .filter_map(|row| row.get(col))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    cells
        .iter()
        .map(|row| {
            let padded: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn readme_status_tables_have_lockctls_columns_and_alignment() {
    let server = Server::start();
    let addr = server.addr_string();
    let _holder = crate::support::deploy_holder(&addr).await;
    let output = run_lockctl(&addr, &["status", "deploy/prod"]).await;
    let real = stdout_lines(&output);
    let real_header: Vec<&str> = real[0].split_whitespace().collect();

    let tables = status_tables();
    assert!(tables.len() >= 2, "README's status examples: {tables:?}");
    for table in tables {
        let header: Vec<&str> = table[0].split_whitespace().collect();
        assert_eq!(header, real_header, "README's table: {table:?}");
        assert_eq!(realigned(&table), table, "aligned as lockctl aligns");
        for row in &table[1..] {
            let state = row
                .split("  ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .nth(1);
            assert!(
                matches!(state, Some(s) if s == "holding" || s.starts_with("waiting #")),
                "{row}"
            );
        }
    }
    // The realignment really checks: lockctl's own output passes it.
    let real: Vec<&str> = real.iter().map(String::as_str).collect();
    assert_eq!(realigned(&real), real);
}
