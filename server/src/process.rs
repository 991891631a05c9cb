//! This process's CPU time, resident memory and file descriptors, read from
//! `/proc/self` at each scrape and exported under the names every
//! Prometheus client uses (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`),
//! so stock dashboards and alerts work unchanged.
//!
//! Linux only, like the rest of kvnode's operations (fd limits, signals);
//! a value that cannot be read is left out of the exposition rather than
//! reported as zero.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::metrics::single;

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessStats {
    /// User + system CPU seconds.
    pub(crate) cpu_seconds: Option<f64>,
    /// Resident set size in bytes.
    pub(crate) resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub(crate) open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub(crate) max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads `/proc/self`.
    pub(crate) fn read() -> Self {
        let proc_file = |name: &str| std::fs::read_to_string(format!("/proc/self/{name}")).ok();
        Self {
            cpu_seconds: proc_file("stat").and_then(|s| cpu_seconds(&s, clock_ticks()?)),
            resident_bytes: proc_file("status").and_then(|s| resident_bytes(&s)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as u64),
            max_fds: proc_file("limits").and_then(|s| max_open_files(&s)),
        }
    }
}

/// Clock ticks per second, the unit of CPU times in `/proc`.
fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system, nothing else.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

/// User + system time from the text of `/proc/self/stat`. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses, so the
/// fields are counted from the last `)`: utime and stime are fields 14 and
/// 15, the 12th and 13th after it.
fn cpu_seconds(stat: &str, ticks_per_sec: f64) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_sec)
}

/// `VmRSS` (kB) of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kb.checked_mul(1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when
/// unlimited.
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The collector of the `process_*` families.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = ProcessStats::read();
        if let Some(cpu) = stats.cpu_seconds {
            single(
                &mut encoder,
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds.",
                &ConstCounter::new(cpu),
            )?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stats.resident_bytes,
            ),
            ("process_open_fds", "Open file descriptors.", stats.open_fds),
            (
                "process_max_fds",
                "The limit on open file descriptors.",
                stats.max_fds,
            ),
        ] {
            if let Some(value) = value {
                single(&mut encoder, name, help, &ConstGauge::new(value))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn proc_texts_parse_and_odd_command_names_do_not_shift_fields() {
        // A command name with a space and a parenthesis in it.
        let stat =
            "1234 (kv node) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0";
        assert_eq!(cpu_seconds(stat, 100.0), Some(3.0));
        assert_eq!(cpu_seconds("1234 (kvnode", 100.0), None);
        let status = "Name:\tkvnode\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(resident_bytes(status), Some(12345 * 1024));
        assert_eq!(resident_bytes("Name:\tkvnode\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            65536                524288               files\n";
        assert_eq!(max_open_files(limits), Some(65536));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_reads() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.unwrap() > 0);
        assert!(stats.open_fds.unwrap() >= 3);
        assert!(stats.cpu_seconds.is_some());
        assert!(stats.max_fds.unwrap() >= stats.open_fds.unwrap());
    }
}
