//! `afinar download REPO_ID`: a Hub repository into the Hugging Face cache; prints the snapshot
//! folder on stdout.

use afinar::hub::{Filter, Hub, RepoRef};
use anyhow::Result;
use clap::Args;

use super::progress::DownloadBars;

/// Arguments of `afinar download`.
#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The repository: org/name or hf://org/name[@revision].
    repo: String,
    /// Branch, tag or commit hash (default: main, or the @revision of the reference).
    #[arg(long)]
    revision: Option<String>,
    /// Download only files matching these globs (`*` also matches `/`; `dir/` = its files).
    #[arg(long, num_args = 1..)]
    include: Vec<String>,
    /// Skip files matching these globs.
    #[arg(long, num_args = 1..)]
    exclude: Vec<String>,
}

/// Runs the command.
pub fn run(args: DownloadArgs) -> Result<()> {
    let r = RepoRef::parse(&args.repo, true)?;
    anyhow::ensure!(
        r.file.is_none(),
        "`{}` names a file; give the repository and select files with --include {}",
        args.repo,
        r.file.as_deref().unwrap_or_default()
    );
    let revision = args.revision.unwrap_or(r.revision);
    let filter = Filter::new(&args.include, &args.exclude)?;
    let hub = Hub::from_env();
    let snap = hub.download(&r.repo, &revision, &filter, &mut DownloadBars::new())?;
    let how = if snap.offline {
        "from the cache (offline)".to_string()
    } else {
        format!("{:.1} MB downloaded", snap.downloaded_bytes as f64 / 1e6)
    };
    eprintln!("afinar: {}@{} ({}): {} files, {how}", r.repo, revision, snap.commit, snap.files.len());
    println!("{}", snap.dir.display());
    Ok(())
}
