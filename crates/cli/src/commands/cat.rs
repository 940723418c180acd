//! `afinar cat NAME|PATH`: prints a config.

use afinar::config::ConfigDoc;
use anyhow::Result;
use clap::Args;

/// Arguments of `afinar cat`.
#[derive(Args, Debug)]
pub struct CatArgs {
    /// A built-in config name (see `afinar ls`) or a YAML file.
    config: String,
    /// Sort keys alphabetically (comments are dropped).
    #[arg(long)]
    sort: bool,
    /// Print the config as it will be used: overrides applied, `${...}` resolved, paths
    /// resolved, every default written out, everything checked.
    #[arg(long)]
    resolved: bool,
    /// Overrides to apply first: KEY=VALUE or ~KEY (comments are dropped).
    overrides: Vec<String>,
}

/// Runs the command.
pub fn run(args: CatArgs) -> Result<()> {
    let mut doc = ConfigDoc::open(&args.config)?;
    doc.apply_overrides(&args.overrides)?;
    if args.resolved {
        let cfg = doc.to_config(None)?;
        let text = cfg.to_yaml();
        if args.sort {
            let sorted = ConfigDoc::parse(&text, std::path::Path::new(doc.origin()))?;
            print!("{}", sorted.to_yaml(true));
        } else {
            print!("{text}");
        }
    } else if args.sort || !args.overrides.is_empty() {
        print!("{}", doc.to_yaml(args.sort));
    } else {
        print!("{}", doc.text());
    }
    Ok(())
}
