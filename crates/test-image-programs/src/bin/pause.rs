//! The sandbox (pause) image's process: holds the pod's namespaces, reaps orphans as PID 1, and exits 0 on
//! SIGTERM or SIGINT.

use std::process::ExitCode;

fn main() -> ExitCode {
    match test_image_programs::Stop::catch() {
        Ok(stop) => {
            stop.wait(true);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("pause: cannot catch signals: {err}");
            ExitCode::FAILURE
        }
    }
}
