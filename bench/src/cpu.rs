//! CPU time counters the benchmarks that move traffic share: the machine's
//! (/proc/stat), this process's (/proc/self/stat) and its threads' by name
//! (/proc/self/task: the live agent runs as threads of the benchmark).

/// CPU time counters, in clock ticks: of the machine (/proc/stat) and of
/// this process (/proc/self/stat).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// Every CPU's time not idle and not waiting for I/O.
    pub busy: u64,
    /// Every CPU's time.
    pub total: u64,
    /// User time (nice included).
    pub user: u64,
    /// Time the hypervisor took away.
    pub steal: u64,
    /// This process's user time.
    pub own_user: u64,
}

/// The counters now.
#[must_use]
pub fn cpu_times() -> CpuTimes {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    CpuTimes {
        busy: total.saturating_sub(at(3) + at(4)),
        total,
        user: at(0) + at(1),
        steal: at(7),
        own_user: stat_times(&own).map_or(0, |t| t.0),
    }
}

/// `(utime, stime)` of a `/proc/.../stat` line, in clock ticks.
#[must_use]
pub fn stat_times(stat: &str) -> Option<(u64, u64)> {
    // Fields after the command name (which may contain spaces and
    // parentheses): utime and stime are the 12th and 13th of them.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace().skip(11);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// User plus system time of this process's threads whose name starts with
/// one of `prefixes`, in clock ticks (threads that ended are not counted).
#[must_use]
pub fn threads_ticks(prefixes: &[&str]) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| prefixes.iter().any(|p| c.trim_end().starts_with(p)))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|s| stat_times(&s))
        .map(|(u, s)| u + s)
        .sum()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 if it cannot tell).
#[must_use]
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a configuration value; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The 1-minute load average.
#[must_use]
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// CPUs this process may run on.
#[must_use]
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_skip_a_command_name_with_spaces_and_parentheses() {
        let line = "1234 (pf worker) 0) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    57 21 0 0 20 0 3 0 100 1000 100";
        assert_eq!(stat_times(line), Some((57, 21)));
        assert_eq!(stat_times("garbage"), None);
    }

    #[test]
    fn this_process_and_its_named_threads_are_counted() {
        let t = std::thread::Builder::new()
            .name("cpu-test-spin".into())
            .spawn(|| {
                // Spin until this thread's time shows (a tick or more),
                // for at most 10 s on a busy machine.
                let start = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    let ticks = threads_ticks(&["cpu-test-spin"]);
                    if ticks > 0 || start.elapsed() > std::time::Duration::from_secs(10) {
                        return ticks;
                    }
                }
            })
            .unwrap();
        let ticks = t.join().unwrap();
        assert!(
            ticks > 0,
            "a spinning thread's CPU time is counted by its name"
        );
        assert_eq!(threads_ticks(&["no-such-thread-name"]), 0);
        let now = cpu_times();
        assert!(now.total >= now.busy && now.total > 0);
        assert!(ticks_per_second() >= 1.0);
    }
}
