//! The SVG chart of a run: one row per record, throughput on the left and latency on the right,
//! coloured by target, so that lockd, Redis and the echo limit can be compared at a glance.
//!
//! Drawn with plotters' SVG backend only: text becomes SVG `<text>` elements, so no font files
//! are needed to build or to draw.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{thousands, Record};

const LOCKD: RGBColor = RGBColor(31, 119, 180);
const REDIS: RGBColor = RGBColor(214, 39, 40);
const ECHO: RGBColor = RGBColor(120, 120, 120);

/// Writes the chart of `records` to `path`.
pub fn write_svg(records: &[Record], title: &str, path: &Path) -> Result<()> {
    if records.is_empty() {
        return Err(anyhow!("no runs to chart"));
    }
    let rows = records.len();
    let height = 110 + 30 * rows as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(draw_error)?;
    let (left, right) = root.split_horizontally(680);
    let labels: Vec<String> = records.iter().map(row_label).collect();

    throughput_panel(&left, records, &labels)?;
    latency_panel(&right, records)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

/// The label of a row: the record's name and its connections.
fn row_label(record: &Record) -> String {
    format!("{} ({})", record.label(), record.connections)
}

fn colour(record: &Record) -> RGBColor {
    match record.target {
        "redis" => REDIS,
        "echo" => ECHO,
        _ => LOCKD,
    }
}

fn throughput_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    records: &[Record],
    labels: &[String],
) -> Result<()> {
    let rows = i32::try_from(records.len())?;
    let max = records.iter().map(|r| r.ops_per_s).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption("ops/s (pairs or grants)", ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..max * 1.25, row_axis(rows))
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(records.len())
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(i) => labels
                .get(record_index(*i, rows))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|value| thousands(value.max(0.0).round() as u64))
        .x_labels(5)
        .draw()
        .map_err(draw_error)?;
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .margin(5)
                .style_func(|row, _| row_colour(records, row).filled())
                .data(
                    records
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (row_of(i, rows), r.ops_per_s)),
                ),
        )
        .map_err(draw_error)?;
    let text =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series(records.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!(" {}", thousands(r.ops_per_s.round() as u64)),
                (r.ops_per_s, SegmentValue::CenterOf(row_of(i, rows))),
                text.clone(),
            )
        }))
        .map_err(draw_error)?;
    Ok(())
}

/// The latency that best describes a row: the handoff for contended and semaphore runs (their
/// acquire time is mostly waiting in line by design), the acquire otherwise.
fn headline_latency(record: &Record) -> Option<(&'static str, f64, f64)> {
    for name in ["handoff", "acquire"] {
        if let Some(summary) = record.latency_us.get(name) {
            return Some((name, summary.p50, summary.p99));
        }
    }
    None
}

fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    records: &[Record],
) -> Result<()> {
    let rows = i32::try_from(records.len())?;
    let max = records
        .iter()
        .filter_map(headline_latency)
        .map(|(_, _, p99)| p99)
        .fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency µs, p50 (dark) and p99 (light): handoff if contended, else acquire",
            ("sans-serif", 13),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(10)
        .build_cartesian_2d((1.0..max * 20.0).log_scale(), row_axis(rows))
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        // The rows are labelled in the left panel; plotters needs a label count above zero.
        .y_labels(records.len())
        .y_label_formatter(&|_| String::new())
        .x_labels(6)
        .x_label_formatter(&|value| format!("{value:.0}"))
        .draw()
        .map_err(draw_error)?;
    let latencies: Vec<(i32, &Record, f64, f64)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            headline_latency(r).map(|(_, p50, p99)| (row_of(i, rows), r, p50, p99))
        })
        .collect();
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .margin(5)
                .baseline(1.0)
                .style_func(|row, _| row_colour(records, row).mix(0.35).filled())
                .data(latencies.iter().map(|(i, _, _, p99)| (*i, p99.max(1.0)))),
        )
        .map_err(draw_error)?;
    chart
        .draw_series(
            Histogram::horizontal(&chart)
                .margin(5)
                .baseline(1.0)
                .style_func(|row, _| row_colour(records, row).filled())
                .data(latencies.iter().map(|(i, _, p50, _)| (*i, p50.max(1.0)))),
        )
        .map_err(draw_error)?;
    let text =
        TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series(latencies.iter().map(|(i, record, p50, p99)| {
            let name = headline_latency(record).map_or("", |(name, _, _)| name);
            Text::new(
                format!(" {p50:.0}/{p99:.0} {name}"),
                (p99.max(1.0), SegmentValue::CenterOf(*i)),
                text.clone(),
            )
        }))
        .map_err(draw_error)?;
    Ok(())
}

/// The y axis: one segment per record. plotters' integer ranges include their end, so rows
/// 0..=rows-1 make exactly `rows` segments.
fn row_axis(
    rows: i32,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordi32> {
    (0..rows - 1).into_segmented()
}

/// The row of record `index`: the first record is drawn at the top, where reading starts.
fn row_of(index: usize, rows: i32) -> i32 {
    rows - 1 - i32::try_from(index).unwrap_or(rows)
}

/// The record drawn on `row`; the inverse of [`row_of`].
fn record_index(row: i32, rows: i32) -> usize {
    usize::try_from(rows - 1 - row).unwrap_or(usize::MAX)
}

fn row_colour(records: &[Record], row: &SegmentValue<i32>) -> RGBColor {
    let rows = i32::try_from(records.len()).unwrap_or(i32::MAX);
    let index = match row {
        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => Some(record_index(*i, rows)),
        SegmentValue::Last => None,
    };
    index.and_then(|i| records.get(i)).map_or(LOCKD, colour)
}

fn draw_error<E: std::error::Error + Send + Sync + 'static>(
    err: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("cannot draw the chart: {err}")
}
