//! The fake OneAgent image's program. One binary, three roles chosen by the name it is started under:
//! - `fake-oneagent` (the entrypoint): reports what it was started with, on stdout (for `kubectl logs`) and
//!   as JSON in a file (`FAKE_ONEAGENT_REPORT`, default `/tmp/fake-oneagent.json`), then runs until SIGTERM;
//! - `watchdog-healthcheck64`: exits 0 while that process runs, like the real image's health check;
//! - `sh`: only `sh -c "<program> <args>"`, because the DaemonSet's exec probes are `/bin/sh -c <check>`
//!   and the image has no shell.

use std::path::Path;
use std::process::ExitCode;

use test_image_programs::{Stop, json_string, json_strings, say};

/// Where the report goes unless `FAKE_ONEAGENT_REPORT` says otherwise.
const DEFAULT_REPORT: &str = "/tmp/fake-oneagent.json";
/// Where the DaemonSet mounts the host's root file system.
const HOST_ROOT: &str = "/mnt/root";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "sh" => shell(&args[1..]),
        "watchdog-healthcheck64" => healthcheck(),
        _ => agent(&args[1..]),
    }
}

fn report_path() -> String {
    std::env::var("FAKE_ONEAGENT_REPORT").unwrap_or_else(|_| DEFAULT_REPORT.to_owned())
}

fn agent(args: &[String]) -> ExitCode {
    let stop = match Stop::catch() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("fake-oneagent: cannot catch signals: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = report(args);
    let path = report_path();
    if let Err(err) = std::fs::write(&path, format!("{report}\n")) {
        // Runs on: the health check then fails, which shows in the pod's events.
        eprintln!("fake-oneagent: cannot write the report to {path}: {err}");
    }
    say(format_args!("fake-oneagent started: {report}"));
    let signal = stop.wait(false);
    say(format_args!("fake-oneagent stopping on {signal}"));
    ExitCode::SUCCESS
}

/// One line of JSON: version, pid, uid/gid, arguments, OneAgent/Dynatrace/proxy environment, and mounts.
fn report(args: &[String]) -> String {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("ONEAGENT_") || k.starts_with("DT_") || k.to_ascii_lowercase().contains("proxy")
        })
        .collect();
    env.sort();
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    let mounts = mounts();
    let version = std::env::var("FAKE_ONEAGENT_VERSION").unwrap_or_default();
    format!(
        "{{\"version\":{},\"pid\":{},\"uid\":{},\"gid\":{},\"args\":{},\"env\":{{{}}},\"host_root\":{},\"mounts\":{}}}",
        json_string(&version),
        rustix::process::getpid().as_raw_nonzero(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
        json_strings(args.iter().map(String::as_str)),
        env.join(","),
        mounts.iter().any(|m| m == HOST_ROOT),
        json_strings(mounts.iter().map(String::as_str)),
    )
}

/// Mount points other than the container's own `/`, `/proc`, `/sys` and `/dev`, and other than what is
/// mounted below the host's root (the host's own mounts come along with it).
fn mounts() -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let below = |path: &str, dir: &str| path == dir || path.starts_with(&format!("{dir}/"));
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|m| {
            *m != "/"
                && !["/proc", "/sys", "/dev"].iter().any(|d| below(m, d))
                && !m.starts_with(&format!("{HOST_ROOT}/"))
        })
        .map(str::to_owned)
        .collect();
    mounts.sort();
    mounts.dedup();
    mounts
}

/// Exits 0 when the process named in the report runs (and is not a zombie).
fn healthcheck() -> ExitCode {
    let path = report_path();
    let report = match std::fs::read_to_string(&path) {
        Ok(report) => report,
        Err(err) => {
            say(format_args!(
                "unhealthy: no report at {path} ({err}): fake-oneagent has not started"
            ));
            return ExitCode::FAILURE;
        }
    };
    let Some(pid) = report_pid(&report) else {
        say(format_args!("unhealthy: the report at {path} names no pid"));
        return ExitCode::FAILURE;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) if !matches!(process_state(&stat), Some('Z' | 'X')) => {
            say(format_args!("healthy: fake-oneagent runs as pid {pid}"));
            ExitCode::SUCCESS
        }
        _ => {
            say(format_args!("unhealthy: fake-oneagent (pid {pid}) does not run"));
            ExitCode::FAILURE
        }
    }
}

/// The `"pid"` of a report.
fn report_pid(report: &str) -> Option<u32> {
    let rest = &report[report.find("\"pid\":")? + "\"pid\":".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The state letter of `/proc/<pid>/stat` (after the command name, which may contain spaces and parens).
fn process_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// `sh -c "<program> <args...>"`: runs the program with the words as arguments (no quoting, no
/// expansion), enough for exec probes.
fn shell(args: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt as _;
    let [flag, command, ..] = args else {
        eprintln!("sh: this image's sh only runs `sh -c \"<program> <args>\"`");
        return ExitCode::from(2);
    };
    let mut words = command.split_ascii_whitespace();
    let (true, Some(program)) = (flag == "-c", words.next()) else {
        eprintln!("sh: this image's sh only runs `sh -c \"<program> <args>\"`, not {args:?}");
        return ExitCode::from(2);
    };
    let err = std::process::Command::new(program).args(words).exec();
    eprintln!("sh: {program}: {err}");
    ExitCode::from(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parts_are_found() {
        assert_eq!(report_pid(r#"{"version":"1","pid":42,"uid":0}"#), Some(42));
        assert_eq!(report_pid("{}"), None);
        assert_eq!(process_state("7 (a) b) S 1 2"), Some('S'));
        assert_eq!(process_state("7 (zombie) Z 1"), Some('Z'));
    }
}
