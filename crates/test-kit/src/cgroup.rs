//! A memory cgroup with a limit, for benchmarks that check a process stays within the memory limit its
//! container gets in the chart (page cache included, which is what OOM-kills an unpacking process in a
//! container, not its RSS). cgroup v1 (`/sys/fs/cgroup/memory`) and v2 (`/sys/fs/cgroup` unified) are both
//! handled; needs root.

use std::path::PathBuf;

use anyhow::Context as _;

/// A memory cgroup created for one benchmark; removed when dropped (once its processes have exited).
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

/// What the cgroup saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// The limit, bytes.
    pub limit: u64,
    /// The highest usage (RSS and page cache), bytes.
    pub peak: u64,
    /// How often usage reached the limit (and the kernel had to reclaim).
    pub limit_hits: u64,
    /// Processes the kernel killed for lack of memory.
    pub oom_kills: u64,
}

impl MemoryCgroup {
    /// Creates the cgroup `name` with `limit_mib` MiB as its hard limit.
    pub fn create(name: &str, limit_mib: u64) -> anyhow::Result<Self> {
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            PathBuf::from("/sys/fs/cgroup").join(name)
        } else {
            PathBuf::from("/sys/fs/cgroup/memory").join(name)
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the cgroup {} (needs root)", dir.display()))?;
        let cgroup = Self { dir, v2 };
        let limit = (limit_mib << 20).to_string();
        cgroup.write(if v2 { "memory.max" } else { "memory.limit_in_bytes" }, &limit)?;
        Ok(cgroup)
    }

    /// Moves process `pid` into the cgroup; what it allocates from now on counts against the limit.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The limit, the peak and the events so far.
    pub fn usage(&self) -> anyhow::Result<MemoryUsage> {
        if self.v2 {
            let events = self.read("memory.events")?;
            Ok(MemoryUsage {
                limit: self.read_number("memory.max")?,
                peak: self.read_number("memory.peak")?,
                limit_hits: keyed(&events, "max"),
                oom_kills: keyed(&events, "oom_kill"),
            })
        } else {
            Ok(MemoryUsage {
                limit: self.read_number("memory.limit_in_bytes")?,
                peak: self.read_number("memory.max_usage_in_bytes")?,
                limit_hits: self.read_number("memory.failcnt")?,
                oom_kills: keyed(&self.read("memory.oom_control")?, "oom_kill"),
            })
        }
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("cannot write {value} to {}", path.display()))
    }

    fn read(&self, file: &str) -> anyhow::Result<String> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    fn read_number(&self, file: &str) -> anyhow::Result<u64> {
        let text = self.read(file)?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds {text:?}, not a number", self.dir.join(file).display()))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Fails while a process is still in it; a later run reuses the directory.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The value of `key` in a `key value` per line file (`memory.events`, `memory.oom_control`); 0 if absent.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_read_by_their_key() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(v1, "oom_kill"), 2);
        let v2 = "low 0\nhigh 0\nmax 1234\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!((keyed(v2, "max"), keyed(v2, "oom_kill")), (1234, 1));
        assert_eq!(keyed(v2, "missing"), 0);
    }
}
