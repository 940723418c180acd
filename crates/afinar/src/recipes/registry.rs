//! The recipe registry: every recipe afinar knows, each declared once by its own module as a
//! [`RecipeSpec`]. `afinar ls`, `cp`, `cat`, `validate` and `run`, the config checker and the
//! built-in config lookup all read [`registry`]; no other place lists recipes.

use crate::config::{BuiltinConfig, DatasetKindDecl, KeyDecl, RecipeConfig, SectionDecl};
use crate::{Error, Result};

use super::finetune::Summary;
use super::metrics::Reporter;

/// A recipe's check across its keys: `Err((dotted key path, message))` (see [`RecipeSpec::check`]).
pub type RecipeCheck = fn(&RecipeConfig) -> std::result::Result<(), (String, String)>;

/// One recipe: its name, what its configs may contain beyond the shared keys, its built-in
/// configs and the function that runs it.
#[derive(Clone, Copy, Debug)]
pub struct RecipeSpec {
    /// The name written in configs (`recipe: NAME`) and given to `afinar run NAME`.
    pub name: &'static str,
    /// One line for `afinar ls -v` and messages.
    pub description: &'static str,
    /// Sections only this recipe's configs have (shared typed sections such as
    /// [`crate::config::LORA`], or the recipe's own, whose values land in
    /// [`RecipeConfig::extra`]). A section another recipe declares is an error here.
    pub sections: &'static [SectionDecl],
    /// Top-level keys only this recipe's configs have (values in [`RecipeConfig::extra`]).
    pub keys: &'static [KeyDecl],
    /// The dataset kinds the recipe reads, each with its `column_map` roles.
    pub dataset_kinds: &'static [DatasetKindDecl],
    /// The configs shipped for it (the YAML files of `configs/`, embedded).
    pub configs: &'static [BuiltinConfig],
    /// Checks across the recipe's keys, run once each key has been checked alone (e.g. a key
    /// that only applies to one `loss.kind`): `Err((dotted key path, message))`, reported as an
    /// inconsistency at that key's place in the file (or at the top, when absent).
    pub check: Option<RecipeCheck>,
    /// Runs the recipe on a checked config.
    pub run: fn(&RecipeConfig, &mut dyn Reporter) -> Result<Summary>,
}

impl RecipeSpec {
    /// The declaration of recipe-only section `name`, if this recipe has one.
    pub fn section(&self, name: &str) -> Option<&'static SectionDecl> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The `column_map` roles of dataset kind `kind` (by name), if the recipe reads that kind.
    pub fn dataset_kind(&self, kind: &str) -> Option<&'static DatasetKindDecl> {
        self.dataset_kinds.iter().find(|k| k.kind.as_str() == kind)
    }
}

/// Every recipe, in the order `afinar ls` shows them.
pub fn registry() -> &'static [&'static RecipeSpec] {
    static REGISTRY: &[&RecipeSpec] = &[
        &super::full_finetune::SPEC,
        &super::lora_finetune::SPEC,
        &super::dpo::SPEC,
        &super::knowledge_distillation::SPEC,
        &super::grpo::SPEC,
    ];
    REGISTRY
}

/// The names of every recipe, in registry order.
pub fn names() -> Vec<&'static str> {
    registry().iter().map(|r| r.name).collect()
}

/// The recipe called `name`; an unknown name is an error listing the recipes, with a "did you
/// mean" hint for a near miss.
pub fn find(name: &str) -> Result<&'static RecipeSpec> {
    if let Some(r) = registry().iter().find(|r| r.name == name) {
        return Ok(r);
    }
    let names = names();
    Err(Error::Input(format!(
        "unknown recipe `{name}` ({}expected one of {})",
        crate::config::did_you_mean(name, &names),
        names.join(", ")
    )))
}

/// Every built-in config of every recipe, recipe by recipe.
pub fn builtin_configs() -> impl Iterator<Item = &'static BuiltinConfig> {
    registry().iter().flat_map(|r| r.configs.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_configs_belong_to_their_recipe() {
        let names = names();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "recipe {n} registered twice");
        }
        for r in registry() {
            for c in r.configs {
                assert_eq!(c.recipe, r.name, "{}", c.name);
            }
        }
        let configs: Vec<&str> = builtin_configs().map(|c| c.name).collect();
        for (i, n) in configs.iter().enumerate() {
            assert!(!configs[i + 1..].contains(n), "config {n} shipped twice");
        }
    }

    #[test]
    fn unknown_recipe_gets_a_hint() {
        assert_eq!(find("lora_finetune").unwrap().name, "lora_finetune");
        let e = find("lora_fintune").unwrap_err().to_string();
        assert!(
            e.contains("unknown recipe `lora_fintune` (did you mean `lora_finetune`? expected one of"),
            "{e}"
        );
        let e = find("dpx").unwrap_err().to_string();
        assert!(
            e.contains(
                "unknown recipe `dpx` (did you mean `dpo`? expected one of full_finetune, lora_finetune, dpo, \
                 knowledge_distillation, grpo)"
            ),
            "{e}"
        );
    }
}
