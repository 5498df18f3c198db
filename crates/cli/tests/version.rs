//! The built `dynatrace-operator` binary answers `version` and rejects unknown subcommands.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::Command;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dynatrace-operator"))
}

#[test]
fn version_prints_the_crate_version() {
    let output = binary().arg("version").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with(&format!("dynatrace-operator {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn version_as_json_is_machine_readable() {
    let output = binary().args(["version", "--output", "json"]).output().unwrap();
    assert!(output.status.success());
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["target_os"], "linux");
}

#[test]
fn an_unknown_subcommand_fails_with_usage() {
    let output = binary().arg("frobnicate").output().unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("unrecognized subcommand"), "{text}");
}
