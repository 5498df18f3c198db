//! Starts a test cluster tied to this process, prints its process ids as one JSON line, and waits forever.
//! Tests kill this holder to prove that a tied cluster dies with its owner, however the owner ends.

use std::io::Write as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cluster = test_kit::start_private_cluster(1).await?;
    let pids: Vec<i32> = cluster.state().processes.iter().map(|p| p.pid).collect();
    let line = serde_json::json!({ "pids": pids, "data_dir": cluster.state().data_dir });
    writeln!(std::io::stdout(), "{line}")?;
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
