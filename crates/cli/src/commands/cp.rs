//! `afinar cp NAME DEST`: copies a built-in config to a file, to edit it.

use std::io::Write;
use std::path::{Path, PathBuf};

use afinar::config::builtin;
use anyhow::{bail, Context, Result};
use clap::Args;

/// Arguments of `afinar cp`.
#[derive(Args, Debug)]
pub struct CpArgs {
    /// A built-in config (see `afinar ls`).
    name: String,
    /// The file to write; a folder gets NAME.yaml inside; `.yaml` is added when DEST has no
    /// extension.
    dest: PathBuf,
    /// Leave DEST alone if it already exists.
    #[arg(long, short = 'n')]
    no_clobber: bool,
    /// Create DEST's missing parent folders.
    #[arg(long)]
    make_parents: bool,
}

/// Runs the command.
pub fn run(args: CpArgs) -> Result<()> {
    let Some(cfg) = builtin(&args.name) else {
        bail!("`{}` is not a built-in config (`afinar ls` lists them)", args.name);
    };
    let mut dest = args.dest.clone();
    if dest.is_dir() {
        dest = dest.join(format!("{}.yaml", cfg.name));
    } else if dest.extension().is_none() {
        dest.set_extension("yaml");
    }
    if args.no_clobber && dest.exists() {
        eprintln!("afinar: {} exists, not overwriting it (--no-clobber)", dest.display());
        return Ok(());
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        if !args.make_parents {
            bail!("{}: the folder does not exist (pass --make-parents to create it)", parent.display());
        }
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    write_atomically(&dest, &parent, cfg.yaml)?;
    println!("Copied {} to {}", cfg.name, dest.display());
    Ok(())
}

/// Writes a temporary file next to `dest`, then renames it over `dest`: readers see the old
/// file or the whole new one, never half of it.
fn write_atomically(dest: &Path, parent: &Path, text: &str) -> Result<()> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", dest.display()));
    }
    Ok(())
}
