//! `afinar ls`: the built-in recipe configs, grouped by recipe.

use afinar::config::{Recipe, BUILTIN_CONFIGS};
use anyhow::Result;
use clap::Args;

/// Arguments of `afinar ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Also print each config's description.
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// Runs the command.
pub fn run(args: LsArgs) -> Result<()> {
    let recipes = [Recipe::FullFinetune, Recipe::LoraFinetune];
    let recipe_w = recipes.iter().map(|r| r.as_str().len()).max().unwrap_or(0).max("RECIPE".len());
    let config_w = BUILTIN_CONFIGS.iter().map(|c| c.name.len()).max().unwrap_or(0).max("CONFIG".len());
    if args.verbose {
        println!("{:recipe_w$}   {:config_w$}   DESCRIPTION", "RECIPE", "CONFIG");
    } else {
        println!("{:recipe_w$}   CONFIG", "RECIPE");
    }
    for recipe in recipes {
        for (i, c) in BUILTIN_CONFIGS.iter().filter(|c| c.recipe == recipe).enumerate() {
            let r = if i == 0 { recipe.as_str() } else { "" };
            if args.verbose {
                println!("{r:recipe_w$}   {:config_w$}   {}", c.name, c.description);
            } else {
                println!("{r:recipe_w$}   {}", c.name);
            }
        }
    }
    Ok(())
}
