//! Training charts: loss (with the eval loss when a run logged one), learning rate and
//! throughput against the step, one line per run, as PNG and SVG. `afinar run` writes
//! `metrics.png`/`metrics.svg` into its output folder at the end; `afinar plot DIR…` compares
//! runs.
//!
//! Text is drawn with `ab_glyph` from the bundled DejaVu Sans (`assets/fonts`, Bitstream Vera
//! licence), so the charts render the same on a machine without fontconfig or system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{Error, Result};

/// The logged metrics of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSeries {
    /// The legend label (the output folder's name).
    pub name: String,
    /// (step, loss, learning rate, tokens/s), by step.
    pub train: Vec<(f64, f64, f64, f64)>,
    /// (step, eval loss), by step, when the run logged any.
    pub eval: Vec<(f64, f64)>,
}

/// Reads `dir/metrics.jsonl`: lines with `step`, `loss`, `lr`, `tokens_per_sec`, and lines with
/// `step` and `eval_loss`. A resumed run's repeated steps keep their last value.
pub fn read_run(dir: &Path) -> Result<RunSeries> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let mut run = RunSeries { name, ..Default::default() };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| Error::Input(format!("{}:{}: {what}", path.display(), i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let step = num("step").ok_or_else(|| bad("expected a numeric `step`"))?;
        if let Some(e) = num("eval_loss") {
            run.eval.push((step, e));
        }
        if let Some(loss) = num("loss") {
            let lr = num("lr").ok_or_else(|| bad("expected a numeric `lr` with `loss`"))?;
            let tps = num("tokens_per_sec")
                .ok_or_else(|| bad("expected a numeric `tokens_per_sec` with `loss`"))?;
            run.train.push((step, loss, lr, tps));
        } else if num("eval_loss").is_none() {
            return Err(bad("expected `loss` or `eval_loss`"));
        }
    }
    let dedup_train = |v: &mut Vec<(f64, f64, f64, f64)>| {
        v.reverse();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
    };
    dedup_train(&mut run.train);
    run.eval.reverse();
    run.eval.sort_by(|a, b| a.0.total_cmp(&b.0));
    run.eval.dedup_by(|a, b| a.0 == b.0);
    if run.train.is_empty() && run.eval.is_empty() {
        return Err(Error::Input(format!("{}: no metrics in it yet", path.display())));
    }
    Ok(run)
}

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1000, 960);
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bundled font parses (the tests draw with it); were it not to, drawing text
            // would report the missing font as an error.
            let _ = plotters::style::register_font("sans-serif", style, FONT);
        }
    });
}

/// Draws the chart of `runs` as PNG (`png`) and/or SVG (`svg`), each written atomically.
pub fn plot_runs(runs: &[RunSeries], png: Option<&Path>, svg: Option<&Path>) -> Result<()> {
    if runs.is_empty() {
        return Err(Error::Input("no runs to plot".into()));
    }
    register_font();
    let fail =
        |what: &Path, e: String| Error::Input(format!("{}: drawing the chart failed: {e}", what.display()));
    if let Some(path) = png {
        let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
            draw(&root, runs).map_err(|e| fail(path, e))?;
            root.present().map_err(|e| fail(path, e.to_string()))?;
        }
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, SIZE.0, SIZE.1);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().map_err(|e| fail(path, e.to_string()))?;
            w.write_image_data(&rgb).map_err(|e| fail(path, e.to_string()))?;
            w.finish().map_err(|e| fail(path, e.to_string()))?;
        }
        afinar_checkpoint::write::write_atomic(path, |w| w.write_all(&bytes))?;
    }
    if let Some(path) = svg {
        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
            draw(&root, runs).map_err(|e| fail(path, e))?;
            root.present().map_err(|e| fail(path, e.to_string()))?;
        }
        afinar_checkpoint::write::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    }
    Ok(())
}

/// `OUTPUT_DIR/metrics.png` and `metrics.svg` of one finished run.
pub fn plot_run_dir(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let run = read_run(dir)?;
    let (png, svg) = (dir.join("metrics.png"), dir.join("metrics.svg"));
    plot_runs(&[run], Some(&png), Some(&svg))?;
    Ok((png, svg))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1e-12) * 0.1 };
    (lo - pad, hi + pad)
}

type Panel<'a> = (&'a str, &'a str, fn(&(f64, f64, f64, f64)) -> f64);

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunSeries],
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) =
        range(runs.iter().flat_map(|r| r.train.iter().map(|t| t.0).chain(r.eval.iter().map(|t| t.0))));
    let x0 = x0.max(0.0);
    let panels: [Panel; 3] = [
        ("Loss", "loss", |t| t.1),
        ("Learning rate", "learning rate", |t| t.2),
        ("Throughput", "label tokens/s", |t| t.3),
    ];
    let areas = root.split_evenly((3, 1));
    for (i, ((title, ydesc, get), area)) in panels.iter().zip(areas.iter()).enumerate() {
        let with_eval = i == 0;
        let (y0, y1) = range(runs.iter().flat_map(|r| {
            let eval = if with_eval { r.eval.iter().map(|t| t.1).collect() } else { Vec::new() };
            r.train.iter().map(get).chain(eval)
        }));
        let y0 = if i > 0 { y0.max(0.0) } else { y0 };
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        let lr = i == 1;
        let big = y1 - y0 > 50.0;
        let fmt_y = move |v: &f64| match (lr, big) {
            (true, _) => format!("{v:.1e}"),
            (false, true) => format!("{v:.0}"),
            (false, false) => format!("{v:.3}"),
        };
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(*ydesc)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .y_label_formatter(&fmt_y)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(e)?;
        for (ri, run) in runs.iter().enumerate() {
            let color = COLORS[ri % COLORS.len()];
            let line = LineSeries::new(run.train.iter().map(|t| (t.0, get(t))), color.stroke_width(2));
            let s = chart.draw_series(line).map_err(e)?;
            if with_eval {
                s.label(run.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
                if !run.eval.is_empty() {
                    let dashed = DashedLineSeries::new(run.eval.iter().copied(), 6, 4, color.stroke_width(2));
                    chart.draw_series(dashed).map_err(e)?.label(format!("{} (eval)", run.name)).legend(
                        move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(2)),
                    );
                    chart
                        .draw_series(run.eval.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(e)?;
                }
            }
        }
        if with_eval {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(e)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, n: usize, eval: bool) -> RunSeries {
        RunSeries {
            name: name.into(),
            train: (1..=n)
                .map(|s| {
                    (s as f64, 3.0 / (s as f64).sqrt(), 3e-4 * (1.0 - s as f64 / 40.0), 900.0 + s as f64)
                })
                .collect(),
            eval: if eval { vec![(10.0, 2.1), (20.0, 1.7)] } else { Vec::new() },
        }
    }

    #[test]
    fn reads_metrics_and_refuses_bad_lines() {
        let dir = std::env::temp_dir().join(format!("afinar-plot-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\":1,\"loss\":2.0,\"lr\":0.1,\"tokens_per_sec\":5}\n{\"step\":2,\"loss\":1.5,\"lr\":0.1,\"tokens_per_sec\":6}\n\
             {\"step\":2,\"eval_loss\":1.8}\n{\"step\":2,\"loss\":1.4,\"lr\":0.1,\"tokens_per_sec\":7}\n",
        )
        .unwrap();
        let r = read_run(&dir).unwrap();
        assert_eq!(r.train, vec![(1.0, 2.0, 0.1, 5.0), (2.0, 1.4, 0.1, 7.0)]);
        assert_eq!(r.eval, vec![(2.0, 1.8)]);
        assert!(r.name.starts_with("afinar-plot-read-"));
        std::fs::write(dir.join("metrics.jsonl"), "{\"step\":1,\"loss\":2.0}\n").unwrap();
        let err = read_run(&dir).unwrap_err().to_string();
        assert!(err.ends_with("metrics.jsonl:1: expected a numeric `lr` with `loss`"), "{err}");
        std::fs::write(dir.join("metrics.jsonl"), "oops\n").unwrap();
        assert!(read_run(&dir).unwrap_err().to_string().contains("metrics.jsonl:1: not JSON"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn draws_png_and_svg_with_text() {
        let dir = std::env::temp_dir().join(format!("afinar-plot-draw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (png, svg) = (dir.join("c.png"), dir.join("c.svg"));
        plot_runs(&[run("lora-r8", 30, true), run("full", 25, false)], Some(&png), Some(&svg)).unwrap();
        let p = std::fs::read(&png).unwrap();
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        let s = std::fs::read_to_string(&svg).unwrap();
        for want in ["Loss", "Learning rate", "Throughput", "lora-r8 (eval)", "full", "step"] {
            assert!(s.contains(want), "`{want}` missing from the SVG");
        }
        if std::env::var_os("AFINAR_KEEP_PLOT").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
