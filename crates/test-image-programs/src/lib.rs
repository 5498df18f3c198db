//! Shared parts of the test image programs: waiting for a stop signal, reaping children, and a JSON string
//! writer (no serde: these programs are built for two extra targets and should compile in seconds).

use std::io;

use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The stop signals (SIGTERM, SIGINT), caught from the moment this is created: create it before telling
/// anyone the program runs, so a stop right after the start is not lost (or fatal).
pub struct Stop(Signals);

impl Stop {
    /// Starts catching SIGTERM, SIGINT and SIGCHLD.
    pub fn catch() -> io::Result<Self> {
        Ok(Self(Signals::new([SIGTERM, SIGINT, SIGCHLD])?))
    }

    /// Blocks until SIGTERM or SIGINT arrives and returns its name. With `reap`, children that exit
    /// meanwhile are waited for, so a PID 1 leaves no zombies.
    pub fn wait(mut self, reap: bool) -> &'static str {
        loop {
            for signal in self.0.wait() {
                match signal {
                    SIGTERM => return "SIGTERM",
                    SIGINT => return "SIGINT",
                    _ if reap => reap_children(),
                    _ => {}
                }
            }
        }
    }
}

/// Waits for every child that has exited, without blocking.
pub fn reap_children() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// Prints a line on stdout; a closed stdout (a reader that went away) is no reason to fail or panic.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON array of strings.
pub fn json_strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(json_string).collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(json_strings(["x", "y"]), r#"["x","y"]"#);
        assert_eq!(json_strings([]), "[]");
    }
}
