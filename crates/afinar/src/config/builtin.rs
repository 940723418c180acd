//! The recipe configs shipped inside the binary (the YAML files of the repository's `configs/`),
//! each listed by its recipe's module ([`crate::recipes::RecipeSpec::configs`]).

/// A config shipped with afinar.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinConfig {
    /// The name to give `afinar run --config`, `cp`, `cat`, `validate` (the file name without
    /// `.yaml`).
    pub name: &'static str,
    /// The recipe it is for (a [`crate::recipes::RecipeSpec::name`]).
    pub recipe: &'static str,
    /// One line for `afinar ls`.
    pub description: &'static str,
    /// The YAML text.
    pub yaml: &'static str,
}

impl BuiltinConfig {
    /// The file name, as shown in error messages: `built-in:NAME.yaml`.
    pub fn label(&self) -> String {
        format!("built-in:{}.yaml", self.name)
    }
}

/// A [`BuiltinConfig`] embedding `configs/NAME.yaml`: `builtin_config!(NAME, RECIPE, DESCRIPTION)`
/// (for recipe modules, which live two folders below the repository's `crates/afinar`).
macro_rules! builtin_config {
    ($name:literal, $recipe:literal, $desc:literal) => {
        $crate::config::BuiltinConfig {
            name: $name,
            recipe: $recipe,
            description: $desc,
            yaml: include_str!(concat!("../../../../configs/", $name, ".yaml")),
        }
    };
}
pub(crate) use builtin_config;

/// Every built-in config, recipe by recipe (registry order).
pub fn builtin_configs() -> impl Iterator<Item = &'static BuiltinConfig> {
    crate::recipes::registry::builtin_configs()
}

/// The built-in config of this name (`NAME`, without `.yaml`).
pub fn builtin(name: &str) -> Option<&'static BuiltinConfig> {
    builtin_configs().find(|c| c.name == name)
}
