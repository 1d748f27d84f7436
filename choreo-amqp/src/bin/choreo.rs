//! `choreo`: checks exported contracts and draws the choreography.
//!
//! ```text
//! choreo schema check <old-dir> <new-dir> [--mode backward|forward|full]
//! choreo map <dir>... [--deny]
//! choreo poison list|show|replay|purge ...
//! ```
//!
//! Exit codes: 0 when all is well, 1 when a check finds a breaking change (or the map's lint
//! finds something under `--deny`), 2 for a usage error or a folder that cannot be read.

#![allow(
    clippy::print_stdout,
    reason = "a command-line tool reports on standard output"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use choreo::schema::SchemaError;
use choreo::schema::compat::{self, Mode, SchemaSet};
use choreo::schema::map::Choreography;
use clap::{Parser, Subcommand, ValueEnum};

#[path = "choreo/poison.rs"]
mod poison;

/// Contracts and choreography of choreo services.
#[derive(Debug, Parser)]
#[command(name = "choreo", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, replay and purge poison queues on RabbitMQ.
    Poison(poison::Args),
    /// Work with exported contracts (JSON Schema, AsyncAPI, service descriptions).
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Print the choreography of exported services as a Mermaid flowchart, and lint it:
    /// events nobody consumes, handlers whose event nobody emits or publishes, cycles.
    Map {
        /// Exports to read: a service's export folder, or a folder of them.
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// Exit with 1 when the lint finds anything.
        #[arg(long)]
        deny: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Compare two exported sets event by event and version by version; exit with 1 when
    /// a change breaks a reader.
    Check {
        /// The exports before the change: a service's export folder, or a folder of them.
        old: PathBuf,
        /// The exports after the change.
        new: PathBuf,
        /// Which readers must keep working.
        #[arg(long, value_enum, default_value_t = ModeArg::Backward)]
        mode: ModeArg,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// Consumers on the new schemas read messages written with the old ones.
    Backward,
    /// Consumers on the old schemas read messages written with the new ones.
    Forward,
    /// Both.
    Full,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Backward => Self::Backward,
            ModeArg::Forward => Self::Forward,
            ModeArg::Full => Self::Full,
        }
    }
}

const FAILED: u8 = 1;
const UNUSABLE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Schema(SchemaCommand::Check { old, new, mode }) => check(&old, &new, mode.into()),
        Command::Map { dirs, deny } => map(&dirs, deny),
        Command::Poison(args) => return poison::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(UNUSABLE)
        }
    }
}

fn check(old: &PathBuf, new: &PathBuf, mode: Mode) -> Result<ExitCode, SchemaError> {
    let old_set = SchemaSet::load([old])?;
    let new_set = SchemaSet::load([new])?;
    println!(
        "checking {} against {} ({mode}: {})",
        new.display(),
        old.display(),
        mode.promise()
    );
    let report = compat::check(&old_set, &new_set, mode);
    for change in &report.breaking {
        println!("{change}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.is_compatible() {
        println!(
            "no breaking changes ({mode}): {} event versions compared",
            report.compared
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let count = report.breaking.len();
        println!(
            "{count} breaking change{} ({mode}): {} event versions compared",
            if count == 1 { "" } else { "s" },
            report.compared
        );
        Ok(ExitCode::from(FAILED))
    }
}

fn map(dirs: &[PathBuf], deny: bool) -> Result<ExitCode, SchemaError> {
    let choreography = Choreography::load(dirs)?;
    print!("{}", choreography.mermaid());
    let findings = choreography.lint();
    for finding in &findings {
        eprintln!("lint: {finding}");
    }
    if findings.is_empty() {
        eprintln!("lint: nothing found");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "lint: {} finding{}",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    );
    Ok(if deny {
        ExitCode::from(FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
