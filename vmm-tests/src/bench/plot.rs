//! The pacing-error distribution as an SVG: a histogram of signed errors
//! (log counts, up to the 99.9th percentile), and on log–log axes the
//! fraction of completions whose |error| exceeds x, next to the same curve
//! for the machine's timer-wakeup lateness (the floor) and the 100 µs p99
//! target.

use std::path::Path;

use plotters::prelude::*;

use super::stats::percentile;
use super::{Error, Result};

/// The p99 target drawn on the plot, in µs.
const TARGET_P99_US: f64 = 100.0;
/// Histogram bins.
const BINS: usize = 60;
/// Smallest |error| on the log axis, in µs.
const X_MIN_US: f64 = 1.0;

fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> Error {
    Error::Plot(e.to_string())
}

/// (x, fraction of `values` > x) at each sorted value, clamped to the axis.
fn exceedance(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = values.iter().map(|e| e.abs().max(X_MIN_US)).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, &x)| (x, (n - i as f64) / n))
        .collect()
}

/// Draws the distribution of `errors_us` (signed, µs) into `path`, with
/// `floor_us` (timer lateness, µs; may be empty) for comparison.
pub fn pacing_errors(path: &Path, errors_us: &[f64], floor_us: &[f64], title: &str) -> Result<()> {
    if errors_us.is_empty() {
        return Err(Error::Plot("no completions to plot".into()));
    }
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(550);

    // Histogram of signed errors up to the 99.9th percentile.
    let mut sorted = errors_us.to_vec();
    sorted.sort_by(f64::total_cmp);
    let lo = sorted[0].min(0.0).floor();
    let hi = percentile(&sorted, 99.9).max(lo + 1.0).ceil();
    let width = (hi - lo) / BINS as f64;
    let mut counts = vec![0u64; BINS];
    let mut beyond = 0usize;
    for &e in errors_us {
        if e > hi {
            beyond += 1;
        } else {
            counts[(((e - lo) / width) as usize).min(BINS - 1)] += 1;
        }
    }
    let top = counts.iter().copied().max().unwrap_or(1) as f64 * 2.0;
    let caption = format!("completions by signed error ({beyond} beyond {hi:.0} µs not shown)");
    let mut chart = ChartBuilder::on(&left)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption(caption, ("sans-serif", 15))
        .build_cartesian_2d(lo..hi, (0.5f64..top).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("completion time − ideal (µs)")
        .y_desc("completions")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| {
                    let x0 = lo + width * i as f64;
                    Rectangle::new([(x0, 0.5), (x0 + width, c as f64)], BLUE.mix(0.7).filled())
                }),
        )
        .map_err(plot_err)?;

    // Exceedance on log–log axes.
    let measured = exceedance(errors_us);
    let floor = exceedance(floor_us);
    let xmax = measured
        .iter()
        .chain(&floor)
        .map(|p| p.0)
        .fold(TARGET_P99_US, f64::max)
        * 1.5;
    let ymin = (0.5 / errors_us.len() as f64).min(1e-3);
    let mut chart = ChartBuilder::on(&right)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .caption("fraction of wakeups later than x", ("sans-serif", 15))
        .build_cartesian_2d((X_MIN_US..xmax).log_scale(), (ymin..1.0f64).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("|error| (µs)")
        .y_desc("fraction")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(measured, BLUE.stroke_width(2)))
        .map_err(plot_err)?
        .label("completions (|error|)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    if !floor.is_empty() {
        chart
            .draw_series(LineSeries::new(floor, GREEN.stroke_width(2)))
            .map_err(plot_err)?
            .label("floor: timer wakeup lateness")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
    }
    chart
        .draw_series(LineSeries::new(
            [(TARGET_P99_US, ymin), (TARGET_P99_US, 1.0)],
            RED.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("target: p99 ≤ 100 µs")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(
            [(X_MIN_US, 0.01), (xmax, 0.01)],
            BLACK.mix(0.4),
        ))
        .map_err(plot_err)?
        .label("1 % (p99)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("p.svg");
        let errs: Vec<f64> = (0..1000).map(|i| f64::from(i % 97) - 40.0).collect();
        pacing_errors(&path, &errs, &[10.0, 20.0], "test").unwrap_or_else(|e| panic!("{e}"));
        let svg = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(svg.starts_with("<svg") && svg.contains("<rect"));
        assert!(pacing_errors(&path, &[], &[], "empty").is_err());
    }

    #[test]
    fn exceedance_is_a_decreasing_fraction() {
        let e = exceedance(&[-5.0, 3.0, 0.0]);
        assert_eq!(e, vec![(1.0, 1.0), (3.0, 2.0 / 3.0), (5.0, 1.0 / 3.0)]);
    }
}
