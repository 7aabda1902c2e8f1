//! From parsed flags to a command: each arm opens the repository the command needs and
//! calls it with the options its flags make ([`super::flags`]).

use anyhow::Result;
use clap::CommandFactory;

use ghostwire_backup::commands::{self, restore};

use super::flags::{BackupArgs, Cli, Command, RunArgs};
use super::logging::ENV_ONLY;
use super::open::Existing;
use super::reference::Reference;

pub(crate) async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out, signing_out } => {
            commands::keygen::run(out.as_deref(), signing_out.as_deref())
        }
        Command::Backup(args) => backup(args).await,
        Command::Run(args) => daemon(*args).await,
        Command::Prune(args) => {
            let repo = args.repository.open_to_read(&args.trust).await?;
            commands::prune::run(&repo, &args.options()).await
        }
        Command::Forget(args) => {
            let repo = args.repository.open_to_read(&args.trust).await?;
            commands::forget::run(&repo, &args.options()).await
        }
        Command::Unlock { repository, all } => {
            commands::unlock::run(&repository.open(1, Existing::Required).await?, all).await
        }
        Command::Check {
            repository,
            max_age,
            trust,
        } => commands::check::run(&repository.open_to_read(&trust).await?, max_age).await,
        Command::Reference { json, section } => {
            let reference = Reference::new(&Cli::command(), ENV_ONLY);
            print!("{}", reference.text(json, section.as_deref())?);
            Ok(())
        }
        Command::Snapshots {
            repository,
            json,
            trust,
        } => commands::snapshots::run(&repository.open_to_read(&trust).await?, json).await,
        Command::Restore(args) => {
            let repo = args.repository.open_to_read(&args.trust).await?;
            print_outcome(restore::run(&repo, &args.options()?).await?);
            Ok(())
        }
        Command::Verify(args) => {
            let repo = args.repository.open_to_read(&args.trust).await?;
            let manifest = commands::verify::run(&repo, &args.options()).await?;
            println!("{}", manifest.id);
            Ok(())
        }
    }
}

/// `backup`: prints the new snapshot's id.
async fn backup(args: BackupArgs) -> Result<()> {
    let keys = args.keys()?;
    let repo = (args.repository)
        .open(args.parallel_uploads, Existing::Created)
        .await?
        .with_keys(keys);
    let manifest = commands::backup::run(&repo, &args.options()).await?;
    println!("{}", manifest.id);
    Ok(())
}

/// `run`: its own options are checked before the repository is opened.
async fn daemon(args: RunArgs) -> Result<()> {
    let options = args.options()?;
    let keys = args.backup.keys()?;
    let repo = (args.backup.repository)
        .open(args.backup.parallel_uploads, Existing::CreatedWhereNamed)
        .await?
        .with_keys(keys);
    commands::run::run(&repo, &args.backup.options(), &options).await
}

/// A restore prints the snapshot the target now holds; one that left it alone says why.
fn print_outcome(outcome: restore::Outcome) {
    match outcome {
        restore::Outcome::Restored(marker)
        | restore::Outcome::Completed(marker)
        | restore::Outcome::UpToDate(marker) => println!("{}", marker.snapshot),
        restore::Outcome::LeftAlone(why) => {
            tracing::info!(reason = %why, "--if-empty: nothing to restore")
        }
    }
}
