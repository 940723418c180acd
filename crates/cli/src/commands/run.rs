//! `afinar run RECIPE --config NAME|PATH [KEY=VALUE…]`: checks the config, then trains.

use afinar::config::RecipeConfig;
use anyhow::Result;
use clap::Args;

use super::progress::Progress;

/// Arguments of `afinar run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The recipe (`afinar ls` lists them).
    recipe: String,
    /// A built-in config name (see `afinar ls`) or a YAML file.
    #[arg(long, short = 'c')]
    config: String,
    /// Overrides: KEY=VALUE sets a key (dotted path, YAML value), ~KEY deletes one.
    overrides: Vec<String>,
}

/// Runs the command.
pub fn run(args: RunArgs) -> Result<()> {
    let spec = afinar::recipes::find(&args.recipe)?;
    let recipe = spec.name;
    let cfg = RecipeConfig::load_for(recipe, &args.config, &args.overrides)?;
    let model = match (&cfg.model.path, &cfg.model.preset) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(p)) => format!("preset {p} (random init)"),
        (None, None) => String::new(),
    };
    eprintln!(
        "afinar: {recipe} on {model}, data {}, output {}",
        cfg.dataset.source.display(),
        cfg.output_dir.display()
    );
    // The library cleans the output folder of interrupted saves, checks a resume against the
    // saved config, and saves this one as recipe_config.yaml.
    let mut cfg = cfg;
    if let Some(p) = &cfg.model.path {
        // Fetch a Hub model here, with progress bars.
        cfg.model.path = Some(super::resolve_model(p)?);
    }
    let mut progress = Progress::new(cfg.log_every_n_steps);
    let summary = (spec.run)(&cfg, &mut progress)?;
    if let Some(last) = summary.checkpoints.last() {
        eprintln!("afinar: final checkpoint {}", last.display());
    }
    Ok(())
}
