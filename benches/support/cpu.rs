//! CPU time as the kernel accounts it, for `catchup`: this process (raa runs
//! in it) and the whole PostgreSQL server, so a stage's figures say which
//! side the machine's cores went to.

use procfs::process::{all_processes, Process, Stat};

fn seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// Own time of a process (its threads), without its children's.
fn own(stat: &Stat) -> u64 {
    stat.utime + stat.stime
}

/// This process's stat: its own time covers every thread, exited ones
/// included; `cutime` its children's (`pg_recvlogical`) once waited for.
fn this() -> Stat {
    Process::myself()
        .and_then(|p| p.stat())
        .expect("/proc/self/stat")
}

fn reaped(stat: &Stat) -> u64 {
    (stat.cutime + stat.cstime).max(0) as u64
}

/// A PostgreSQL server, by its postmaster.
pub struct Server {
    postmaster: i32,
}

impl Server {
    /// The server that runs backend `backend` (`SELECT pg_backend_pid()`).
    pub fn of_backend(backend: i32) -> Server {
        let stat = Process::new(backend)
            .and_then(|p| p.stat())
            .expect("the backend's /proc entry: the server must run on this machine");
        Server {
            postmaster: stat.ppid,
        }
    }

    /// CPU seconds of every process of the server so far: the postmaster,
    /// its live children (backends, walsenders, background processes), and
    /// the children it has reaped (their time is added to its own `cutime`
    /// when it waits for them, which it does at once).
    pub fn seconds(&self) -> f64 {
        for _ in 0..100 {
            let before = self.postmaster_stat();
            let live: u64 = all_processes()
                .expect("/proc")
                .filter_map(|p| p.ok()?.stat().ok())
                .filter(|s| s.ppid == self.postmaster)
                .map(|s| own(&s))
                .sum();
            let after = self.postmaster_stat();
            // A child reaped between the two reads would be counted twice
            // or not at all: read again.
            if (before.cutime, before.cstime) == (after.cutime, after.cstime) {
                return seconds(own(&after) + reaped(&after) + live);
            }
        }
        panic!("the server's processes kept ending while they were read, 100 times over");
    }

    fn postmaster_stat(&self) -> Stat {
        Process::new(self.postmaster)
            .and_then(|p| p.stat())
            .expect("the postmaster's /proc entry")
    }
}

/// CPU seconds spent over a stretch of the run: by this process (raa), by
/// its children (`pg_recvlogical`), and by the server.
#[derive(Clone, Copy)]
pub struct Spent {
    pub own: f64,
    pub children: f64,
    pub server: f64,
}

/// A reading to measure a stretch from, with [`Mark::spent`].
pub struct Mark(Spent);

impl Mark {
    pub fn now(server: &Server) -> Mark {
        let s = this();
        Mark(Spent {
            own: seconds(own(&s)),
            children: seconds(reaped(&s)),
            server: server.seconds(),
        })
    }

    /// What was spent since the mark. A backend's time counts once the
    /// postmaster has reaped it: call it after the stretch's backends end.
    pub fn spent(&self, server: &Server) -> Spent {
        let now = Mark::now(server).0;
        Spent {
            own: now.own - self.0.own,
            children: now.children - self.0.children,
            server: now.server - self.0.server,
        }
    }
}
