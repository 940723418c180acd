//! `afinar plot OUTPUT_DIR… [-o FILE]`: the loss / learning-rate / throughput chart of one or
//! more runs (one line per run, named by its folder), as PNG and SVG.

use std::path::PathBuf;

use afinar::plot::{plot_runs, read_run};
use anyhow::Result;
use clap::Args;

/// Arguments of `afinar plot`.
#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Output folders of `afinar run` (each with its metrics.jsonl).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The chart: FILE.png or FILE.svg writes that one; a name without either extension writes
    /// both (default: metrics.png/.svg in the run's folder for one run, runs.png/.svg here for
    /// several).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: PlotArgs) -> Result<()> {
    let runs = args.runs.iter().map(|d| read_run(d)).collect::<Result<Vec<_>, _>>()?;
    let base = match (&args.output, args.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.join("metrics"),
        (None, _) => PathBuf::from("runs"),
    };
    let ext = base.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let (png, svg) = match ext.as_deref() {
        Some("png") => (Some(base.clone()), None),
        Some("svg") => (None, Some(base.clone())),
        _ => {
            let with = |e: &str| PathBuf::from(format!("{}.{e}", base.display()));
            (Some(with("png")), Some(with("svg")))
        }
    };
    plot_runs(&runs, png.as_deref(), svg.as_deref())?;
    for p in png.iter().chain(svg.iter()) {
        println!("{}", p.display());
    }
    Ok(())
}
