//! `afinar validate NAME|PATH [KEY=VALUE…]`: checks a config without loading any weights.

use afinar::config::ConfigDoc;
use anyhow::Result;
use clap::Args;

/// Arguments of `afinar validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// A built-in config name (see `afinar ls`) or a YAML file.
    config: String,
    /// Overrides: KEY=VALUE sets a key (dotted path, YAML value), ~KEY deletes one.
    overrides: Vec<String>,
}

/// Runs the command.
pub fn run(args: ValidateArgs) -> Result<()> {
    let mut doc = ConfigDoc::open(&args.config)?;
    doc.apply_overrides(&args.overrides)?;
    doc.to_config(None)?;
    println!("Config is well-formed!");
    Ok(())
}
