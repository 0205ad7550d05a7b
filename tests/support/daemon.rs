//! A real `pacpoold` process on a sandbox, and the real `pacpool` CLI talking to it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::Sandbox;

pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    /// The daemon's log lines after "ready", collected by a thread.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Writes a pacpoold.toml for `sb` (state and socket inside the sandbox's base directory).
/// Prefetching is off (`prefetch = false`): a background download racing the test's own steps
/// would change what a preview shows; `tests/pool_repo.rs` turns it on where it is tested.
pub fn write_config(sb: &Sandbox, name: &str, coordinator: Option<(&str, &str)>) -> PathBuf {
    let base = sb.base().join(format!("daemon-{name}"));
    let run = base.join("run");
    std::fs::create_dir_all(&run).unwrap();
    // 0755 so that unprivileged test users can reach the socket.
    for d in [sb.base(), base.as_path(), run.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let s = sb.pacman_settings();
    let coord = match coordinator {
        Some((url, join)) => {
            format!("coordinator_url = \"{url}\"\njoin_token = \"{join}\"\nname = \"{name}\"\n")
        }
        None => String::new(),
    };
    let text = format!(
        "{coord}state_dir = \"{state}\"\nsocket = \"{socket}\"\nsocket_group = \"pacpool-test-nonexistent\"\n\
         check_interval = 3600\nprefetch = false\n\n\
         [pacman]\nprogram = \"pacman\"\nroot = \"{root}\"\ndbpath = \"{dbpath}\"\nconfig = \"{config}\"\n\
         cachedir = \"{cache}\"\nhookdir = \"{hooks}\"\nlogfile = \"{log}\"\nlock_wait = 1\n\n\
         [paths]\nconfig = \"{config}\"\n",
        state = base.join("state").display(),
        socket = run.join("pacpoold.sock").display(),
        root = s.root.unwrap().display(),
        dbpath = s.dbpath.unwrap().display(),
        config = s.config.unwrap().display(),
        cache = s.cachedir.unwrap().display(),
        hooks = s.hookdir.unwrap().display(),
        log = s.logfile.unwrap().display(),
    );
    let path = base.join("pacpoold.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    /// Starts pacpoold with `config` and waits for its "ready" log line.
    pub fn start(config: &Path) -> Self {
        Self::start_wrapped(config, &[])
    }

    /// Starts pacpoold through `wrapper` (a program that execs its arguments, e.g.
    /// `ip netns exec NAME`, so the child is pacpoold itself); empty = directly.
    pub fn start_wrapped(config: &Path, wrapper: &[&str]) -> Self {
        let text = std::fs::read_to_string(config).unwrap();
        let value: toml::Value = toml::from_str(&text).unwrap();
        let socket = PathBuf::from(value["socket"].as_str().unwrap());
        let state_dir = PathBuf::from(value["state_dir"].as_str().unwrap());
        let exe = env!("CARGO_BIN_EXE_pacpoold");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            .env("PACPOOL_LOG", "info,pacpool=debug")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pacpoold");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) => {
                    let ready = line.contains("pacpoold ready");
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                _ => panic!("pacpoold exited before it was ready:\n{}", seen.join("\n")),
            }
        }
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child: Some(child),
            socket,
            state_dir,
            config: config.to_owned(),
            log,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs `pacpool ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_as(&self.socket, args, None)
    }

    /// Runs `pacpool ARGS`, panicking unless it exits with `code`; returns stdout.
    pub fn cli_code(&self, args: &[&str], code: i32) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "pacpool {args:?}:\n--- stdout\n{}--- stderr\n{}--- daemon log\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `pacpool status --json` as JSON.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_code(&["status", "--json"], 0)).unwrap()
    }

    /// Subscribes to the daemon's events and returns the first status for which `cond`
    /// holds; panics, with what it saw, if the stream ends first.
    pub fn wait_status(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        s.write_all(b"{\"v\":1,\"cmd\":\"subscribe\"}\n").unwrap();
        let mut seen = Vec::new();
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["event"]["event"] == "status" && cond(&v["event"]["status"]) {
                return v["event"]["status"].clone();
            }
            seen.push(line);
        }
        panic!(
            "event stream ended while waiting for {what}; saw:\n{}\n--- daemon log\n{}",
            seen.join("\n"),
            self.log()
        );
    }

    /// Stops the daemon with SIGKILL (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        c.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the CLI, optionally as another user (`setpriv`), with the socket given.
pub fn cli_as(socket: &Path, args: &[&str], user: Option<(&str, &str)>) -> Output {
    let exe = env!("CARGO_BIN_EXE_pacpool");
    let mut cmd = match user {
        Some((u, g)) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={g}"),
                "--clear-groups",
                exe,
            ]);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run pacpool")
}
