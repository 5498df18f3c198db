//! Logging set-up shared by every binary: text or JSON lines, filtered by `RUST_LOG` (default `info`).

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// Standard output: the operator's subcommands, whose stdout is their log.
    #[default]
    Stdout,
    /// Standard error: binaries that print results on stdout (the fake tenant prints its URL).
    Stderr,
}

/// Installs the global logger: `format` lines to `target`, at the levels `RUST_LOG` names (`info` when it
/// is unset or invalid). Fails when a logger is installed already (call it once, first thing in `main`).
pub fn init(format: LogFormat, target: LogTarget) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (format, target) {
        (LogFormat::Text, LogTarget::Stdout) => builder.try_init(),
        (LogFormat::Text, LogTarget::Stderr) => builder.with_writer(std::io::stderr).try_init(),
        (LogFormat::Json, LogTarget::Stdout) => builder.json().try_init(),
        (LogFormat::Json, LogTarget::Stderr) => builder.json().with_writer(std::io::stderr).try_init(),
    };
    result.map_err(|err| LoggingError(err.to_string()))
}

/// The global logger could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the logger ({0}); logging is set up once per process")]
pub struct LoggingError(String);
