//! SVG plots (plotters) of what loadgen measured: percentile distributions from `.hgrm` files
//! (`--hgrm`), and latency against throughput from sweep CSV files (`sweep --csv`). Several
//! files go on one plot, one line each, named `name=path` or after the file.

use plotters::prelude::*;

/// One input file: a name and its points.
struct Series {
    name: String,
    points: Vec<Vec<f64>>,
}

#[derive(PartialEq, Eq, Debug)]
enum Kind {
    /// Columns: latency ms, percentile (0..1).
    Hgrm,
    /// Columns: offered, achieved req/s, p50, p99, p99.9 ms.
    Sweep,
}

pub const SWEEP_CSV_HEADER: &str = "offered_rps,achieved_rps,p50_ms,p99_ms,p999_ms";

fn read(arg: &str) -> Result<(Kind, Series), String> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) => (n.to_string(), p),
        None => (
            std::path::Path::new(arg)
                .file_stem()
                .map_or(arg.to_string(), |s| s.to_string_lossy().into_owned()),
            arg,
        ),
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let kind = if text.trim_start().starts_with("Value") {
        Kind::Hgrm
    } else if text.starts_with(SWEEP_CSV_HEADER) {
        Kind::Sweep
    } else {
        return Err(format!(
            "{path}: neither an .hgrm file (loadgen --hgrm) nor a sweep CSV (loadgen sweep --csv)"
        ));
    };
    let points = text
        .lines()
        .skip(1)
        .map(|l| {
            l.split([',', ' '])
                .filter(|f| !f.is_empty())
                .filter_map(|f| f.parse::<f64>().ok())
                .collect::<Vec<f64>>()
        })
        .filter(|p| p.len() >= 2)
        .collect();
    Ok((kind, Series { name, points }))
}

/// The largest x and y of `points`, at least `floor`.
fn maxima(points: impl Iterator<Item = (f64, f64)>, floor: (f64, f64)) -> (f64, f64) {
    points.fold(floor, |(x, y), p| (x.max(p.0), y.max(p.1)))
}

/// Writes the plot of `files` to `out` (SVG).
pub fn plot(out: &str, title: &str, files: &[String]) -> Result<(), String> {
    let mut all = Vec::new();
    for f in files {
        all.push(read(f)?);
    }
    let Some(kind) = all.first().map(|(k, _)| k) else {
        return Err("no input files".into());
    };
    if all.iter().any(|(k, _)| k != kind) {
        return Err("all files must be of one kind (.hgrm, or sweep CSV)".into());
    }
    let series: Vec<&Series> = all.iter().map(|(_, s)| s).collect();
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let colors = [RED, BLUE, GREEN, MAGENTA, BLACK, CYAN];
    match kind {
        Kind::Hgrm => {
            // x: 1/(1-p) on a log scale (50% = 2, 99% = 100, 99.9% = 1000); y: latency.
            let pts = |s: &Series| -> Vec<(f64, f64)> {
                s.points
                    .iter()
                    .filter(|p| p[1] < 1.0)
                    .map(|p| (1.0 / (1.0 - p[1]), p[0]))
                    .collect()
            };
            let (max_x, max_y) = maxima(series.iter().flat_map(|s| pts(s)), (10.0, 0.001));
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d((1f64..max_x * 1.2).log_scale(), 0f64..max_y * 1.1)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("percentile")
                .y_desc("latency (ms)")
                .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 1.0 / x)))
                .draw()
                .map_err(e)?;
            for (i, s) in series.iter().enumerate() {
                let c = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(pts(s), c.stroke_width(2)))
                    .map_err(e)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(e)?;
        }
        Kind::Sweep => {
            // x: achieved req/s; y: p50 (dashed points) and p99 (line) at each step.
            let col = |s: &Series, c: usize| -> Vec<(f64, f64)> {
                s.points
                    .iter()
                    .filter(|p| p.len() > c)
                    .map(|p| (p[1], p[c]))
                    .collect()
            };
            let (max_x, max_y) = maxima(series.iter().flat_map(|s| col(s, 3)), (1.0, 0.001));
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..max_x * 1.1, 0f64..max_y * 1.1)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc("achieved throughput (req/s)")
                .y_desc("latency (ms)")
                .draw()
                .map_err(e)?;
            for (i, s) in series.iter().enumerate() {
                let c = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(col(s, 3), c.stroke_width(2)))
                    .map_err(e)?
                    .label(format!("{} p99", s.name))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(LineSeries::new(col(s, 2), c.stroke_width(1)))
                    .map_err(e)?
                    .label(format!("{} p50", s.name))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(col(s, 3).into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()
                .map_err(e)?;
        }
    }
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_both_kinds_and_refuses_a_mix() {
        let dir = std::env::temp_dir().join(format!("loadgen-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hgrm = dir.join("a.hgrm");
        std::fs::write(
            &hgrm,
            "       Value     Percentile TotalCount 1/(1-Percentile)\n\n       0.500 0.500000000000        500           2.00\n       2.000 0.990000000000        490         100.00\n       9.000 1.000000000000         10            inf\n",
        )
        .unwrap();
        let csv = dir.join("s.csv");
        std::fs::write(
            &csv,
            format!("{SWEEP_CSV_HEADER}\n1000,998,0.4,1.2,2.0\n1500,1490,0.5,1.9,3.1\n"),
        )
        .unwrap();
        let out = dir.join("p.svg");
        let out_s = out.display().to_string();
        plot(&out_s, "t", &[format!("ferrocd={}", hgrm.display())]).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("ferrocd"), "{svg}");
        plot(&out_s, "t", &[csv.display().to_string()]).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.contains("s p99") && svg.contains("achieved throughput"));
        let mixed = [hgrm.display().to_string(), csv.display().to_string()];
        assert!(plot(&out_s, "t", &mixed).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
