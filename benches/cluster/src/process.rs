//! The child processes of one measurement (kvnode nodes, etcd members, the
//! axum peer) and the CPU time they spend.
//!
//! A [`Processes`] owns a fresh data directory and every child started in
//! it; dropping it stops the children and removes the directory. A run that
//! fails, panics or is interrupted (Ctrl-C drops the run's future) therefore
//! leaves no process and no data behind. Children also get SIGKILL if this
//! process dies without unwinding (`PR_SET_PDEATHSIG`), so a killed
//! benchmark does not leave nodes burning the cores of a shared machine.
//!
//! CPU time is utime + stime of `/proc/PID/stat`, in clock ticks
//! (`sysconf(_SC_CLK_TCK)`, 10 ms on Linux): all the threads of a process
//! together, which over a 10 s window is precise to well under 1 %.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// How long stopped children get to exit after SIGTERM before SIGKILL: a
/// kvnode flushes its engine on SIGTERM, which on tmpfs takes milliseconds;
/// the data is removed right after anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Log lines shown when a child fails to start or dies.
const LOG_TAIL_LINES: usize = 20;

/// Children started in one data directory; stopped and removed on drop.
pub struct Processes {
    children: Vec<Named>,
    // Declared after the children so that it is removed after they stop.
    dir: TempDir,
}

struct Named {
    name: String,
    child: Child,
}

impl Processes {
    /// A fresh directory `strata-bench-<system>-XXXX` under `root`.
    pub fn new(root: &Path, system: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-bench-{system}-"))
            .tempdir_in(root)
            .with_context(|| format!("creating a data directory under {}", root.display()))?;
        Ok(Self {
            children: Vec::new(),
            dir,
        })
    }

    /// The data directory; children's logs are `<name>.log` in it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `command` as child `name`, its output to `<name>.log`.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> Result<()> {
        let log = File::create(self.log_path(name))
            .with_context(|| format!("creating the log of {name}"))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
        // parent, which is all a pre_exec hook may do. The signal fires when
        // the spawning thread exits: children are spawned from the main
        // thread or a runtime worker, which both live as long as the run.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        self.children.push(Named {
            name: name.to_owned(),
            child,
        });
        Ok(())
    }

    /// Fails, with the tail of its log, if any child has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let mut exited = None;
        for named in &mut self.children {
            if let Some(status) = named.child.try_wait()? {
                exited = Some((named.name.clone(), status));
                break;
            }
        }
        if let Some((name, status)) = exited {
            bail!(
                "{name} exited ({status}); last lines of its log:\n{}",
                self.log_tail(&name)
            );
        }
        Ok(())
    }

    /// The last lines of child `name`'s log.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// CPU time (user + system) the children have used so far, together.
    pub fn cpu(&self) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for named in &self.children {
            total += cpu_of(&named.child.id().to_string())
                .with_context(|| format!("CPU time of {}", named.name))?;
        }
        Ok(total)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for named in &self.children {
            if let Ok(pid) = i32::try_from(named.child.id()) {
                // SAFETY: kill(2) on our own child, not yet reaped, so the
                // pid cannot have been reused.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for named in &mut self.children {
            while matches!(named.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Both are no-ops on a child that has already exited and been reaped.
            let _ = named.child.kill();
            let _ = named.child.wait();
        }
    }
}

/// CPU time this process (the load generator) has used so far.
pub fn own_cpu() -> Result<Duration> {
    cpu_of("self")
}

/// The machine's load averages over 1, 5 and 15 minutes, as
/// `/proc/loadavg` gives them: on a shared machine they say how much the
/// figures of a run can be trusted.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    (fields.len() == 3).then(|| fields.join(" "))
}

fn cpu_of(pid: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("{path}: no utime and stime"))?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second)
        .ok()
        .filter(|&t| t > 0)
        .context("sysconf(_SC_CLK_TCK) failed")?;
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / per_second,
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts with field 3 (state): utime is the 12th field of rest.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `n` distinct free TCP ports on 127.0.0.1: bound to port 0 together,
/// read, released. Another process may take one before the child binds
/// it; the child then fails to start and says so.
pub fn free_tcp_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(held
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<_>>()?)
}

/// [`free_tcp_ports`] for UDP (gossip).
pub fn free_udp_ports(n: usize) -> Result<Vec<SocketAddr>> {
    let held = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(held
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<io::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_counts_fields_after_the_command_name() {
        // A command name with a space and a parenthesis, as a thread may
        // name itself: naive splitting would misplace every field.
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 8519 0 0 0 \
                    731 254 0 0 20 0 9 0 123456 1024000 2048 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(731 + 254));
    }

    #[test]
    fn cpu_ticks_refuses_a_short_or_garbled_line() {
        assert_eq!(cpu_ticks("4242 (kvnode) S 1 2 3"), None);
        assert_eq!(cpu_ticks("no parenthesis at all"), None);
        assert_eq!(cpu_ticks("1 (x) S 1 1 1 0 -1 0 0 0 0 0 seven 254 0"), None);
    }

    #[test]
    fn own_cpu_grows_with_work() {
        let before = own_cpu().expect("own CPU");
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(own_cpu().expect("own CPU") > before);
    }

    #[test]
    fn drop_stops_children_and_removes_their_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut procs = Processes::new(root.path(), "test").expect("processes");
        let mut sleep = Command::new("sleep");
        sleep.arg("600");
        procs.spawn("sleeper", sleep).expect("spawn sleep");
        procs.check_running().expect("running");
        let pid = procs.children[0].child.id();
        let dir = procs.dir().to_owned();
        assert!(dir.join("sleeper.log").exists());
        drop(procs);
        assert!(!dir.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_dead_child_is_reported_with_its_log() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut procs = Processes::new(root.path(), "test").expect("processes");
        let mut fail = Command::new("sh");
        fail.args(["-c", "echo bad flag >&2; exit 3"]);
        procs.spawn("failing", fail).expect("spawn sh");
        std::thread::sleep(Duration::from_millis(300));
        let err = procs.check_running().expect_err("exited").to_string();
        assert!(err.contains("failing exited"), "{err}");
        assert!(err.contains("bad flag"), "{err}");
    }
}
