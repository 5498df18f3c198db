//! The README's RBAC table is generated from the rules (`pure_install::rbac::markdown_table`): this test
//! fails when it is stale. `UPDATE_README=1 cargo test -p pure-install --test readme_rbac` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

const START: &str = "<!-- rbac-table:start (generated from crates/pure-install/src/rbac.rs) -->\n";
const END: &str = "<!-- rbac-table:end -->";

#[test]
fn the_readme_rbac_table_is_the_rules() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let table = pure_install::rbac::markdown_table(&pure_install::Installation::new("image"));
    let start = readme.find(START).expect("the README has no RBAC table markers") + START.len();
    let end = readme[start..]
        .find(END)
        .expect("the README's RBAC table has no end marker")
        + start;
    if readme[start..end] == table {
        return;
    }
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(&path, format!("{}{table}{}", &readme[..start], &readme[end..])).unwrap();
        return;
    }
    panic!(
        "the README's RBAC table is stale; run `UPDATE_README=1 cargo test -p pure-install --test readme_rbac`. \
         Expected:\n{table}"
    );
}
