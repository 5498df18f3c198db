//! `dynatrace-operator`: the single binary of the project. Each component (operator, webhook server, CSI
//! driver, ...) is a subcommand, so one image serves every Deployment and DaemonSet of the Helm chart.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Command-line interface of the `dynatrace-operator` binary.
#[derive(Debug, Parser)]
#[command(name = "dynatrace-operator", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of this binary and what it was built with.
    Version {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

/// Facts about this build, printed by `version`.
#[derive(Debug, serde::Serialize)]
struct BuildInfo {
    version: &'static str,
    rustc: &'static str,
    target_os: &'static str,
    target_arch: &'static str,
}

const BUILD_INFO: BuildInfo = BuildInfo {
    version: env!("CARGO_PKG_VERSION"),
    rustc: env!("CARGO_PKG_RUST_VERSION"),
    target_os: std::env::consts::OS,
    target_arch: std::env::consts::ARCH,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version { output } => print_version(output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_version(format: OutputFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Text => writeln!(
            out,
            "dynatrace-operator {} ({}/{}, minimum rustc {})",
            BUILD_INFO.version, BUILD_INFO.target_os, BUILD_INFO.target_arch, BUILD_INFO.rustc
        )?,
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string(&BUILD_INFO)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_json_names_the_crate_version() {
        let json = serde_json::to_value(&BUILD_INFO).unwrap();
        assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    }
}
