//! What benchmarks read about a process from `/proc`: resident memory and CPU time.

/// A field of `/proc/<pid>/status` in KiB (`"VmRSS:"`, `"VmHWM:"`, `"RssAnon:"`, ...); `None` when the
/// process is gone or has no such field.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time of a process so far, in seconds, from `/proc/<pid>/stat` (USER_HZ is 100 on
/// Linux); `None` when the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, may hold spaces), utime and stime are the 12th and 13th
    // fields.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    #[allow(clippy::cast_precision_loss)] // tick counts are far below 2^52
    Some(ticks as f64 / 100.0)
}

/// KiB as MiB.
#[allow(clippy::cast_precision_loss)] // KiB counts are far below 2^52
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS:").unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert_eq!(status_kib(pid, "NoSuchField:"), None);
        assert!((mib(2048) - 2.0).abs() < f64::EPSILON);
    }
}
