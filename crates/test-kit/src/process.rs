//! Starting and stopping the control plane's processes.
//!
//! Two lifetimes are supported:
//! - **tied**: the process dies with the process that started it (a test binary), even when that one is
//!   killed or panics. Linux delivers `PR_SET_PDEATHSIG` when the *thread* that forked the child exits, so
//!   every tied child is forked from one spawner thread that lives as long as the test binary.
//! - **detached**: the process outlives its starter (`cargo xtask cluster up`) in its own process group, and
//!   is stopped later by pid (`cargo xtask cluster down`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What is recorded about a started process, enough to stop it from another process later.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    /// Short name of the component (`etcd`, `kube-apiserver`, ...).
    pub name: String,
    /// Process id.
    pub pid: i32,
    /// Absolute path of the executable, used to recognise the process before signalling it.
    pub binary: PathBuf,
    /// File that receives the process's stdout and stderr.
    pub log: PathBuf,
}

/// A process started by this crate.
#[derive(Debug)]
pub struct ManagedProcess {
    /// What identifies the process.
    pub record: ProcessRecord,
    /// The child handle, present when this process started it (not when rebuilt from a state file).
    child: Option<Child>,
}

/// Whether a started process dies with its starter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when the starting process exits.
    Tied,
    /// Survives the starting process; stopped by pid.
    Detached,
}

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

/// The thread that forks every tied child. It never exits, so `PR_SET_PDEATHSIG` fires only when the whole
/// process goes away.
fn spawner() -> &'static Mutex<Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The receiver only goes away if the caller gave up; nothing to report then.
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|err| tracing::error!(%err, "cannot start the process spawner thread"));
        Mutex::new(tx)
    })
}

impl ManagedProcess {
    /// Starts `binary` with `args`, sending its output to `log`.
    pub fn start(
        name: &str,
        binary: &Path,
        args: &[String],
        log: &Path,
        lifetime: Lifetime,
    ) -> anyhow::Result<Self> {
        Self::start_inheriting(name, binary, args, log, lifetime, None)
    }

    /// Like [`ManagedProcess::start`], and the process inherits the open descriptor `inherit` (at the same
    /// number): a lock held with `flock` stays held while the process lives.
    pub fn start_inheriting(
        name: &str,
        binary: &Path,
        args: &[String],
        log: &Path,
        lifetime: Lifetime,
        inherit: Option<std::os::fd::RawFd>,
    ) -> anyhow::Result<Self> {
        let log_file = File::create(log)
            .with_context(|| format!("creating the log file {} for {name}", log.display()))?;
        close_inherited_fds_on_exec();
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating a log file handle")?)
            .stderr(log_file);
        if let Some(fd) = inherit {
            keep_open_on_exec(&mut command, fd);
        }
        let child = match lifetime {
            Lifetime::Detached => {
                detach_from_session(&mut command);
                command.spawn()
            }
            Lifetime::Tied => {
                tie_to_parent(&mut command);
                let (reply_tx, reply_rx) = channel();
                spawner()
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the process spawner lock is poisoned"))?
                    .send((command, reply_tx))
                    .context("the process spawner thread is gone")?;
                reply_rx
                    .recv()
                    .context("the process spawner thread did not answer")?
            }
        }
        .with_context(|| format!("starting {name} ({})", binary.display()))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        Ok(Self {
            record: ProcessRecord {
                name: name.to_owned(),
                pid,
                binary: binary.to_owned(),
                log: log.to_owned(),
            },
            child: Some(child),
        })
    }

    /// Rebuilds a handle from a record written by another process.
    pub fn from_record(record: ProcessRecord) -> Self {
        Self { record, child: None }
    }

    /// Gives up the handle without stopping the process (it keeps running on its own).
    pub fn release(mut self) {
        self.child = None;
    }

    /// Whether the process is still running (and is still the program that was started).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => pid_runs_binary(self.record.pid, &self.record.binary),
        }
    }

    /// The last `lines` lines of the process's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.record.log, lines)
    }

    /// Stops the process: SIGTERM, then SIGKILL after a grace period. Stopping a process that is already gone
    /// succeeds.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            self.reap();
            return Ok(());
        }
        let pid = Pid::from_raw(self.record.pid).context("invalid pid")?;
        let _ = rustix::process::kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.reap();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        std::thread::sleep(Duration::from_millis(100));
        self.reap();
        if self.is_running() {
            bail!(
                "{} (pid {}) did not stop after SIGKILL; stop it by hand with `kill -9 {}`",
                self.record.name,
                self.record.pid,
                self.record.pid
            );
        }
        Ok(())
    }

    fn reap(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.wait();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        // Only processes we started ourselves are stopped implicitly; a handle rebuilt from a state file must
        // be stopped explicitly.
        if self.child.is_some()
            && let Err(err) = self.stop()
        {
            tracing::warn!("{err:#}");
        }
    }
}

/// Makes the child receive SIGKILL when the thread that forked it exits.
#[allow(unsafe_code)]
fn tie_to_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe system call
    // (prctl); it neither allocates nor takes locks.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        });
    }
}

/// Clears close-on-exec on `fd` in the child, so the started program inherits it.
#[allow(unsafe_code)]
fn keep_open_on_exec(command: &mut Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe system call
    // (fcntl) on a descriptor the parent keeps open until the spawn returns; it neither allocates nor locks.
    unsafe {
        command.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
}

/// Marks every descriptor above stderr close-on-exec. Rust opens its own descriptors that way, but a process
/// can inherit open ones from whatever started it (a CI runner's or terminal's bookkeeping pipes). A
/// long-lived child holding such a pipe keeps its starter's job "running", and gets killed with it.
#[allow(unsafe_code)]
fn close_inherited_fds_on_exec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the descriptor was listed as open a moment ago and is only borrowed for one fcntl; if it
        // was closed meanwhile (the directory handle itself, for one) the call fails with EBADF, ignored.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
            let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
        }
    }
}

/// Makes the child a session leader, so that neither a closing terminal nor a signal to the starter's
/// session or process group reaches it.
#[allow(unsafe_code)]
fn detach_from_session(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe system call
    // (setsid); it neither allocates nor takes locks.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}

/// A child process that is killed when this guard is dropped, so a test that fails half-way leaves no
/// process of its own behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether `pid` is alive and runs `binary` (pids are reused, so a bare liveness check is not enough).
pub fn pid_runs_binary(pid: i32, binary: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    // A zombie has no exe link; a replaced binary shows " (deleted)".
    let exe = exe.to_string_lossy().trim_end_matches(" (deleted)").to_owned();
    let binary = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_owned());
    Path::new(&exe) == binary
}

/// Whether any process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The last `lines` lines of a file, or a note that it could not be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tied_process_is_stopped_and_recognised_by_binary() {
        let dir = std::env::temp_dir().join(format!("testkit-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sleep = PathBuf::from("/bin/sleep");
        let mut process = ManagedProcess::start(
            "sleep",
            &sleep,
            &["30".into()],
            &dir.join("sleep.log"),
            Lifetime::Tied,
        )
        .unwrap();
        assert!(process.is_running());
        assert!(pid_runs_binary(process.record.pid, &sleep));
        assert!(!pid_runs_binary(process.record.pid, Path::new("/bin/true")));
        process.stop().unwrap();
        assert!(!process.is_running());
        assert!(!pid_runs_binary(process.record.pid, &sleep));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kill_on_drop_ends_a_child_that_is_still_running() {
        let child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        drop(KillOnDrop(child));
        assert!(!pid_runs_binary(pid, Path::new("/bin/sleep")));
    }

    #[test]
    fn start_failure_names_the_binary() {
        let err = ManagedProcess::start(
            "ghost",
            Path::new("/nonexistent/ghost"),
            &[],
            &std::env::temp_dir().join("testkit-ghost.log"),
            Lifetime::Tied,
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/ghost"), "{err:#}");
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("testkit-tail-{}.log", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        std::fs::remove_file(path).unwrap();
    }
}
