//! The CRDs committed for the Helm chart are exactly what the code generates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;

#[test]
fn committed_crds_match_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(pure_api::crd::CHART_CRDS_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = pure_api::crd::chart_yaml().unwrap();
    assert!(
        committed == generated,
        "{} is out of date with the Rust types; run `cargo xtask generate` and commit the result",
        path.display()
    );
}
