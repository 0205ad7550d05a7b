//! The coordinator process a bench measures, shared by the benches: started from the built
//! binary (or `PACPOOL_BENCH_COORDINATOR`, e.g. a copy of an earlier build, to compare before
//! and after a change with the same client) with a config file, its port read from its own
//! "coordinator listening" log line (no polling), killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct CoordinatorProc {
    config: PathBuf,
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl CoordinatorProc {
    /// Starts `pacpool-coordinator serve --config CONFIG` and returns once it listens.
    pub fn start(config: &Path) -> Self {
        let bin = std::env::var_os("PACPOOL_BENCH_COORDINATOR")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_pacpool-coordinator").into());
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,pacpool::coordinator=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pacpool-coordinator");
        // The log goes to stdout; the first line naming the address says it listens.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("the coordinator exited before listening")
                .unwrap();
            if line.contains("coordinator listening")
                && let Some((_, rest)) = line.split_once("addr=")
            {
                let addr = rest.split_whitespace().next().unwrap();
                break addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        };
        // Keep reading, so the coordinator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Self {
            config: config.to_owned(),
            child,
            port,
        }
    }

    #[allow(dead_code)] // not every bench samples the process
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a service restart), wait for the exit, start again with the same config;
    /// returns how long the shutdown took.
    #[allow(dead_code)] // not every bench restarts
    pub fn restart(&mut self) -> std::time::Duration {
        let t = std::time::Instant::now();
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
        let down = t.elapsed();
        *self = Self::start(&self.config);
        down
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
