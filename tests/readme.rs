//! The README's examples, run so that they cannot drift from the program: the policy example
//! (as a pool policy through `pacpool admin` and as `pacpoold.toml`'s `[policy]`), the admin
//! commands, the demo's "try" lines (the same commands the demo prints, checked against the script)
//! and the dashboard's configuration.

mod support;

use std::path::Path;
use std::process::Command;

use support::coordinator::{ADMIN, Coordinator};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The first fenced block of `lang` after the line `heading`.
fn block_after(text: &str, heading: &str, lang: &str) -> String {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let rest = &text[start..];
    let open = format!("```{lang}\n");
    let from = rest.find(&open).expect("a fenced block") + open.len();
    let len = rest[from..].find("```").expect("a closed block");
    rest[from..from + len].to_owned()
}

/// `pacpool ARGS` with the admin options of a clean environment plus `env`.
fn pacpool(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pacpool"));
    cmd.args(args);
    for var in [
        "PACPOOL_ADMIN_URL",
        "PACPOOL_ADMIN_TOKEN",
        "PACPOOL_CA_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).env("LC_ALL", "C");
    let out = cmd.output().expect("run pacpool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_policy_example_works_for_pools_and_machines() {
    let example = block_after(&readme(), "### Policy", "toml");
    // As pacpoold.toml's [policy].
    let config = pacpool::daemon::DaemonConfig::parse(
        &format!("[policy]\n{example}"),
        Path::new("README.md"),
    )
    .unwrap_or_else(|e| panic!("the README's policy is not a pacpoold [policy]: {e}"));
    assert_eq!(config.policy.ignore, ["*-git"]);

    // As a pool policy, through the admin commands.
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("c.db"), None);
    let url = coord.url();
    let env = [
        ("PACPOOL_ADMIN_URL", url.as_str()),
        ("PACPOOL_ADMIN_TOKEN", ADMIN),
    ];
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &example).unwrap();
    let file = file.to_str().unwrap();
    let (code, _, err) = pacpool(&["admin", "pools", "create", "lab"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = pacpool(
        &["admin", "pools", "set-policy", "lab", "--file", file],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "the defaults are kept: {err}");
    let (code, out, err) = pacpool(&["admin", "--json", "pools", "show", "lab"], &env);
    assert_eq!(code, 0, "{err}");
    let pool: serde_json::Value = serde_json::from_str(&out).unwrap();
    let plan = &pool["policy"]["plan"];
    assert_eq!(
        serde_json::from_value::<pacpool::plan::Policy>(plan.clone()).unwrap(),
        config.policy,
        "the same policy in both places"
    );

    // What `pools show` prints is taken back as it is.
    let (_, shown, _) = pacpool(&["admin", "pools", "show", "lab"], &env);
    let toml: String = shown
        .lines()
        .skip_while(|l| !l.starts_with("policy (TOML"))
        .skip(1)
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    std::fs::write(file, toml).unwrap();
    let (code, _, err) = pacpool(
        &["admin", "pools", "set-policy", "lab", "--file", file],
        &env,
    );
    assert_eq!(code, 0, "{err}");

    // Dropping default protections is allowed, with a warning that says what it means.
    std::fs::write(file, "protected = [\"base\"]\n").unwrap();
    let (code, _, err) = pacpool(
        &["admin", "pools", "set-policy", "lab", "--file", file],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("linux*, pacman, glibc, systemd"),
        "{err}"
    );
}

#[test]
fn the_admin_commands_run_as_written() {
    let block = block_after(
        &readme(),
        "Create a pool and a join token for its machines:",
        "sh",
    );
    let dir = tempfile::tempdir().unwrap();
    let coord = Coordinator::start(&dir.path().join("c.db"), None);
    let url = coord.url();
    let env = [
        ("PACPOOL_ADMIN_URL", url.as_str()),
        ("PACPOOL_ADMIN_TOKEN", ADMIN),
    ];
    let mut ran = 0;
    for line in block.lines() {
        let command = line.split('#').next().unwrap().trim();
        let Some(args) = command.strip_prefix("pacpool ") else {
            continue;
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        let (code, out, err) = pacpool(&args, &env);
        assert_eq!(code, 0, "README: {command}\n{out}{err}");
        ran += 1;
    }
    assert_eq!(ran, 3, "{block}");
    // Every list takes its pool the same way; an empty one says what it lists.
    let (code, out, err) = pacpool(&["admin", "operations", "list", "1"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("requested through the coordinator") && out.contains("pacpool history"),
        "{out}"
    );
}

#[test]
fn the_demo_prints_the_try_lines_the_readme_shows() {
    let text = readme();
    let block = block_after(&text, "After the demo, try", "sh");
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/demo.sh"))
            .unwrap();
    let mut n = 0;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        // The demo prints each with its own paths: $DEMO, $BIN and $URL stand for them.
        let line = line
            .trim()
            .replace("/tmp/pacpool-demo", "$DEMO")
            .replace("target/release/pacpool", "$BIN/pacpool")
            .replace("http://127.0.0.1:7300", "$URL");
        assert!(
            demo.lines().any(|l| l == line),
            "the README's try line is not what the demo prints: {line}"
        );
        n += 1;
    }
    assert!(
        text.contains("kill $(cat /tmp/pacpool-demo/*.pid)")
            && demo.contains("kill \\$(cat $DEMO/*.pid)"),
        "one command stops everything"
    );
    assert!(n >= 3, "{block}");
    // Each `pacpool` subcommand the try lines use exists.
    for line in block.lines() {
        if let Some(rest) = line.split("pacpool ").nth(1)
            && let Some(sub) = rest.split_whitespace().next()
        {
            let (code, _, err) = pacpool(&[sub, "--help"], &[]);
            assert_eq!(code, 0, "pacpool {sub}: {err}");
        }
    }
}

#[test]
fn the_dashboard_example_is_a_valid_coordinator_configuration() {
    let block = block_after(&readme(), "#### The web dashboard", "toml");
    let settings =
        pacpool::coordinator::Settings::from_toml(&block, Path::new("coordinator.toml")).unwrap();
    assert!(settings.dashboard.enabled);
    assert_eq!(settings.dashboard.session_secs, 43_200);
}
