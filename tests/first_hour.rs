//! What a new user meets in the first hour (issue 16): output into a closed pipe, pacman paths
//! that must follow each other, configuration errors said once, secrets not shown, and the
//! words of `status` and `history`. Real binaries, real pacman in a sandbox.

mod support;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use support::daemon::{Daemon, write_config};
use support::{PkgSpec, Sandbox, host_arch};

/// A pipe whose reading end is already closed: the first write to the other end fails with
/// EPIPE (as `| head -1` does once head has its line).
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `pipe` fills two new descriptors, each owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

fn assert_quiet_on_epipe(mut cmd: Command, what: &str) {
    let out = cmd
        .env("LC_ALL", "C")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .output()
        .expect("run the program");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what} panicked:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what} did not end quietly:\n{stderr}"
    );
}

#[test]
fn every_program_ends_quietly_when_its_reader_has_gone() {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pacpool"));
    c.args(["vercmp", "1.0", "2.0"]);
    assert_quiet_on_epipe(c, "pacpool vercmp");
    let mut c = Command::new(env!("CARGO_BIN_EXE_pacpoold"));
    c.arg("default-config");
    assert_quiet_on_epipe(c, "pacpoold default-config");
    let mut c = Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"));
    c.arg("default-config");
    assert_quiet_on_epipe(c, "pacpool-coordinator default-config");

    // `pacpool status | head -1` against a real daemon: the exit code is still status's own.
    let sb = Sandbox::new();
    let d = Daemon::start(&write_config(&sb, "a", None));
    for args in [
        &["status"][..],
        &["history"],
        &["snapshots"],
        &["status", "--json"],
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pacpool"));
        c.arg("--socket").arg(&d.socket).args(args);
        assert_quiet_on_epipe(c, &format!("pacpool {args:?}"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pacpool"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("status")
        .stdout(closed_pipe())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn pacpool_reads_the_database_pacman_is_run_on() {
    let sb = Sandbox::new();
    sb.publish(&[
        sb.build_package(&PkgSpec::new("alpha", "1.0-1").arch(&host_arch())),
        sb.build_package(&PkgSpec::new("beta", "1.0-1").arch(&host_arch())),
    ]);
    sb.pacman_ok(&["-Sy", "alpha", "beta"]);
    // pacman.conf names another (empty) database; pacman is run with --dbpath on the real
    // one, which wins in pacman. The configuration says so only in [pacman].
    let conf = sb.base().join("other-pacman.conf");
    let text = std::fs::read_to_string(sb.config()).unwrap();
    let empty = sb.base().join("empty-db");
    std::fs::create_dir_all(empty.join("local")).unwrap();
    std::fs::write(empty.join("local/ALPM_DB_VERSION"), "9\n").unwrap();
    let dbline = format!("DBPath = {}/", sb.dbpath().display());
    assert!(text.contains(&dbline));
    std::fs::write(
        &conf,
        text.replace(&dbline, &format!("DBPath = {}/", empty.display())),
    )
    .unwrap();
    let config = write_config(&sb, "a", None);
    let daemon_text = std::fs::read_to_string(&config).unwrap();
    let paths_section = format!("[paths]\nconfig = \"{}\"\n", sb.config().display());
    assert!(daemon_text.contains(&paths_section));
    let daemon_text = daemon_text
        .replace(&paths_section, "")
        .replace(&sb.config().display().to_string(), conf.to_str().unwrap());
    std::fs::write(&config, &daemon_text).unwrap();
    let d = Daemon::start(&config);
    let status = d.status();
    assert_eq!(
        status["current"]["package_count"], 2,
        "the daemon recorded the database pacman is run on: {status}"
    );
    drop(d);

    // Said differently in [paths]: refused at start, naming both.
    let refused = format!("{daemon_text}\n[paths]\ndbpath = \"{}\"\n", empty.display());
    std::fs::write(&config, refused).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pacpoold"))
        .arg("--config")
        .arg(&config)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[paths] dbpath")
            && stderr.contains(empty.to_str().unwrap())
            && stderr.contains(sb.dbpath().to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn configuration_errors_are_said_once_and_secrets_are_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_pacpoold"))
        .arg("--config")
        .arg(&missing)
        .arg("show-config")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "said once:\n{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause once:\n{stderr}"
    );
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");

    let config = dir.path().join("pacpoold.toml");
    std::fs::write(&config, "join_token = \"ppj_secret-join-token\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pacpoold"))
        .arg("--config")
        .arg(&config)
        .arg("show-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("ppj_secret"), "{stdout}");
    assert!(
        stdout.contains("join_token = \"(set, not shown)\""),
        "{stdout}"
    );
}

#[test]
fn status_and_history_say_what_they_show() {
    let sb = Sandbox::new();
    let d = Daemon::start(&write_config(&sb, "a", None));
    let text = d.cli_code(&["status"], 0);
    assert!(text.contains("state:       no pool target yet"), "{text}");
    assert!(!text.contains("unknown"), "{text}");
    let history = d.cli_code(&["history"], 0);
    let head = history.lines().next().unwrap_or_default();
    assert!(
        head.contains("id") && head.contains("started (UTC)") && head.contains("kind"),
        "{history}"
    );
    // Logs written to a file (not a terminal) carry no colour codes.
    assert!(!d.log().contains('\u{1b}'), "{}", d.log());
}

/// Under systemd (standard error is the stream `JOURNAL_STREAM` names) each log line starts
/// with its syslog priority, which journald keeps as `PRIORITY`, and carries no colour; in a
/// file, no colour either.
#[test]
fn logs_carry_journald_priorities_under_systemd_and_no_colour() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let run = |journal: bool| {
        let path = dir.path().join(format!("log-{journal}"));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_pacpool"));
        c.arg("--socket")
            .arg(dir.path().join("no-daemon.sock"))
            .arg("notify")
            .env("PACPOOL_LOG", "info")
            .stderr(file);
        if journal {
            c.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            c.env_remove("JOURNAL_STREAM");
        }
        let status = c.status().unwrap();
        assert!(status.success(), "notify without a daemon succeeds");
        std::fs::read_to_string(&path).unwrap()
    };
    let journal = run(true);
    assert!(
        journal.starts_with("<6>") && journal.contains("pacpoold is not running"),
        "{journal:?}"
    );
    assert!(!journal.contains('\u{1b}'), "{journal:?}");
    let file = run(false);
    assert!(file.contains("pacpoold is not running"), "{file:?}");
    assert!(
        !file.starts_with('<') && !file.contains('\u{1b}'),
        "{file:?}"
    );
}

/// Each command's help lists the options it uses, grouped: `admin` the coordinator's, not
/// the daemon socket.
#[test]
fn help_groups_options_by_what_they_reach() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pacpool"))
            .args(args)
            .env_remove("PACPOOL_ADMIN_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let admin = help(&["admin", "--help"]);
    assert!(admin.contains("Coordinator options:"), "{admin}");
    assert!(!admin.contains("--socket"), "{admin}");
    let top = help(&["--help"]);
    assert!(
        top.contains("Daemon options:") && top.contains("--socket"),
        "{top}"
    );
    let status = help(&["status", "--help"]);
    assert!(
        !status.contains("--url") && !status.contains("--ca-file"),
        "{status}"
    );
}

/// `serve --database X --admin-token-file Y` keeps everything where it is told: the admin
/// token is written to Y, not to /var/lib/pacpool-coordinator.
#[test]
fn the_coordinator_writes_its_admin_token_where_it_is_told() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pacpool-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(dir.path().join("c.db"))
        .arg("--admin-token-file")
        .arg(&token)
        .env("RUST_LOG", "info")
        .env_remove("PACPOOL_COORDINATOR_ADMIN_TOKEN_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.map_while(Result::ok) {
        let ready = line.contains("coordinator listening");
        seen.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("coordinator listening")),
        "{seen:?}"
    );
    let text = std::fs::read_to_string(&token).expect("the token is where it was told");
    assert!(!text.trim().is_empty());
}
