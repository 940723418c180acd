//! `afinar ls`: the recipes of the registry and their built-in configs.

use afinar::recipes::registry;
use anyhow::Result;
use clap::Args;

/// Arguments of `afinar ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Also print each recipe's and config's description.
    #[arg(long, short = 'v')]
    verbose: bool,
}

/// Runs the command.
pub fn run(args: LsArgs) -> Result<()> {
    let recipes = registry();
    let recipe_w = recipes.iter().map(|r| r.name.len()).max().unwrap_or(0).max("RECIPE".len());
    let config_w = recipes
        .iter()
        .flat_map(|r| r.configs.iter().map(|c| c.name.len()))
        .max()
        .unwrap_or(0)
        .max("CONFIG".len());
    if args.verbose {
        println!("{:recipe_w$}   {:config_w$}   DESCRIPTION", "RECIPE", "CONFIG");
    } else {
        println!("{:recipe_w$}   CONFIG", "RECIPE");
    }
    for recipe in recipes {
        if args.verbose {
            println!("{:recipe_w$}   {:config_w$}   {}", recipe.name, "", recipe.description);
        }
        for (i, c) in recipe.configs.iter().enumerate() {
            let r = if i == 0 && !args.verbose { recipe.name } else { "" };
            if args.verbose {
                println!("{r:recipe_w$}   {:config_w$}   {}", c.name, c.description);
            } else {
                println!("{r:recipe_w$}   {}", c.name);
            }
        }
        if recipe.configs.is_empty() && !args.verbose {
            println!("{:recipe_w$}   (no built-in config)", recipe.name);
        }
    }
    Ok(())
}
