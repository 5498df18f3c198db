//! The sample application image's program, linked dynamically against the host's glibc (its image carries
//! the exact libraries), so an injected `LD_PRELOAD` library really loads. It prints which OneAgent
//! libraries are mapped into it, answers any TCP connection on `SAMPLE_APP_PORT` (default 8080) with the
//! same line, and runs until SIGTERM.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::ExitCode;

use test_image_programs::{Stop, json_string, json_strings, say};

fn main() -> ExitCode {
    let stop = match Stop::catch() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("sample-app: cannot catch signals: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = report();
    let port = std::env::var("SAMPLE_APP_PORT").unwrap_or_else(|_| "8080".to_owned());
    match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => {
            let report = report.clone();
            std::thread::spawn(move || serve(&listener, &report));
        }
        Err(err) => eprintln!("sample-app: not serving on port {port}: {err}"),
    }
    say(format_args!("sample-app started: {report}"));
    let signal = stop.wait(true);
    say(format_args!("sample-app stopping on {signal}"));
    ExitCode::SUCCESS
}

fn serve(listener: &TcpListener, report: &str) {
    let response = format!(
        "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{report}\n",
        report.len() + 1
    );
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        // The request is not read: every path gets the report.
        let _ = stream.write_all(response.as_bytes());
    }
}

/// One line of JSON: pid, `LD_PRELOAD`, and the OneAgent libraries mapped into this process.
fn report() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libraries: Vec<&str> = maps
        .lines()
        .filter_map(|line| line.split_ascii_whitespace().nth(5))
        .filter(|path| path.contains("oneagent") || path.contains("liboneagentproc"))
        .collect();
    libraries.sort_unstable();
    libraries.dedup();
    format!(
        "{{\"pid\":{},\"ld_preload\":{},\"oneagent_libraries\":{}}}",
        std::process::id(),
        json_string(&std::env::var("LD_PRELOAD").unwrap_or_default()),
        json_strings(libraries),
    )
}
