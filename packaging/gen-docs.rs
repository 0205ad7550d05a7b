//! Generates shell completions (bash, zsh, fish) and man pages for pacpool's binaries; the
//! Arch package's `build()` runs it (packaging/arch/PKGBUILD). A binary behind cargo feature
//! `gen-docs` (not an example), so that building it compiles clap's two helpers and none of
//! the dev-dependencies; the package does not install it.
//!
//! ```sh
//! cargo build --release --features gen-docs --bins
//! target/release/pacpool-gen-docs --out docs \
//!     target/release/pacpool target/release/pacpoold target/release/pacpool-coordinator
//! ```
//!
//! writes `docs/NAME/completions/{NAME.bash,_NAME,NAME.fish}` and `docs/NAME/man/*.{1,8}`
//! (one page per command and subcommand; the daemons `pacpoold` and `pacpool-coordinator` in
//! section 8, the others in 1).
//!
//! The binaries' `clap` definitions are private to each binary, so this program reads them
//! back from the binaries themselves: it runs `BIN [SUB…] -h` for every (sub)command, parses
//! clap's help layout (about, usage, `Arguments:`, `Options:`, `Commands:`, trailing text)
//! into a `clap::Command` and hands that to `clap_complete` and `clap_mangen`. Options,
//! value names, possible values, defaults and subcommands all come through.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgAction, Command, ValueHint};
use clap_complete::Shell;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pacpool-gen-docs: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let mut out = None;
    let mut bins = Vec::new();
    while let Some(a) = args.next() {
        if a == "--out" {
            out = Some(PathBuf::from(args.next().ok_or("--out needs a directory")?));
        } else {
            bins.push(PathBuf::from(a));
        }
    }
    let out = out.ok_or("usage: pacpool-gen-docs --out DIR BINARY...")?;
    if bins.is_empty() {
        return Err("usage: pacpool-gen-docs --out DIR BINARY...".into());
    }
    for bin in &bins {
        let name = bin
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{} has no file name", bin.display()))?
            .to_owned();
        let mut cmd = read_command(bin, &name, &[])?;
        if let Some(v) = version(bin)? {
            cmd = cmd.version(leak(v));
        }
        write_docs(cmd, &name, &out.join(&name))?;
    }
    Ok(())
}

/// `BIN --version` prints `NAME VERSION`.
fn version(bin: &Path) -> Result<Option<String>, String> {
    let text = run_bin(bin, &["--version"])?;
    Ok(text.split_whitespace().nth(1).map(str::to_owned))
}

/// clap takes names as `&'static str` (without its `string` feature); this program runs
/// once and exits, so leaking the few strings it reads is fine.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn run_bin(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Process::new(bin)
        .args(args)
        .env("LC_ALL", "C")
        .env_remove("PACPOOL_SOCKET")
        .env_remove("PACPOOL_ADMIN_URL")
        .env_remove("PACPOOL_ADMIN_TOKEN")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{} printed non-UTF-8", bin.display()))
}

/// Builds the `clap::Command` for `BIN path… -h`, recursing into subcommands.
fn read_command(bin: &Path, name: &str, path: &[String]) -> Result<Command, String> {
    let mut argv: Vec<&str> = path.iter().map(String::as_str).collect();
    argv.push("-h");
    let help = parse_help(&run_bin(bin, &argv)?);
    let mut cmd = Command::new(leak(name.to_owned()))
        .about(help.about)
        .disable_version_flag(true)
        .disable_help_subcommand(true);
    if !help.after.is_empty() {
        cmd = cmd.after_help(help.after);
    }
    for arg in help.args {
        cmd = cmd.arg(arg);
    }
    for (sub, about) in help.commands {
        let mut sub_path = path.to_vec();
        sub_path.push(sub.clone());
        let sub_cmd = read_command(bin, &sub, &sub_path)?;
        cmd = cmd.subcommand(sub_cmd.about(about));
    }
    if help.subcommand_required {
        cmd = cmd.subcommand_required(true);
    }
    Ok(cmd)
}

#[derive(Default)]
struct Help {
    about: String,
    after: String,
    args: Vec<Arg>,
    commands: Vec<(String, String)>,
    subcommand_required: bool,
}

/// Parses clap 4's short help (`-h`): unwrapped, one line per item.
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "about";
    let mut about = Vec::new();
    let mut after = Vec::new();
    for line in text.lines() {
        if let Some(usage) = line.strip_prefix("Usage: ") {
            help.subcommand_required = usage.contains("<COMMAND>");
            section = "usage";
            continue;
        }
        if !line.starts_with(' ') && line.ends_with(':') && !line.contains(' ') {
            section = match line {
                "Commands:" => "commands",
                "Arguments:" => "arguments",
                _ => "options",
            };
            continue;
        }
        if line.is_empty() {
            if section == "about" {
                about.push(String::new());
            } else if section == "after" {
                after.push(String::new());
            }
            continue;
        }
        if !line.starts_with(' ') && section != "about" {
            section = "after";
        }
        let item = line.trim_start();
        let (spec, desc) = match item.split_once("  ") {
            Some((s, d)) => (s.trim(), d.trim()),
            None => (item.trim(), ""),
        };
        match section {
            "about" => about.push(line.to_owned()),
            "after" => after.push(line.to_owned()),
            "commands" if spec != "help" => help.commands.push((spec.into(), desc.into())),
            "arguments" => help.args.push(positional(spec, desc, help.args.len())),
            "options" => {
                if let Some(arg) = option(spec, desc) {
                    help.args.push(arg);
                }
            }
            _ => {}
        }
    }
    help.about = about.join("\n").trim().to_owned();
    help.after = after.join("\n").trim().to_owned();
    help
}

/// Splits clap's trailing `[default: …]`, `[env: …]`, `[possible values: …]` off a
/// description; returns the text (with default and env kept) and the possible values.
fn split_desc(desc: &str) -> (String, Vec<String>) {
    match desc.find("[possible values: ") {
        Some(start) => {
            let rest = &desc[start + "[possible values: ".len()..];
            let end = rest.find(']').unwrap_or(rest.len());
            let values = rest[..end].split(", ").map(str::to_owned).collect();
            let text = format!("{}{}", &desc[..start], rest.get(end + 1..).unwrap_or(""));
            (text.trim().to_owned(), values)
        }
        None => (desc.to_owned(), Vec::new()),
    }
}

fn hint(value_name: &str) -> ValueHint {
    match value_name {
        "FILE" | "CONFIG" | "TARGET" | "FROM" | "TO" => ValueHint::FilePath,
        "DIR" | "STATE_DIR" => ValueHint::DirPath,
        "SOCKET" => ValueHint::AnyPath,
        "URL" | "COORDINATOR" => ValueHint::Url,
        _ => ValueHint::Other,
    }
}

/// `<NAME>`, `[NAME]`, `<NAME>...`.
fn positional(spec: &str, desc: &str, index: usize) -> Arg {
    let required = spec.starts_with('<');
    let many = spec.ends_with("...");
    let value_name = spec
        .trim_end_matches("...")
        .trim_matches(|c| matches!(c, '<' | '>' | '[' | ']'))
        .to_owned();
    let (text, values) = split_desc(desc);
    let mut arg = Arg::new(leak(format!("{}-{index}", value_name.to_lowercase())))
        .value_name(leak(value_name.clone()))
        .required(required)
        .help(text)
        .value_hint(hint(&value_name));
    if many {
        arg = arg.num_args(1..).action(ArgAction::Append);
    }
    if !values.is_empty() {
        arg = arg.value_parser(PossibleValuesParser::new(values.into_iter().map(leak)));
    }
    arg
}

/// `-c, --config <CONFIG>`, `--json`, `-y, --yes`, `--cachedir <DIR>`; None for the
/// help and version flags clap adds itself.
fn option(spec: &str, desc: &str) -> Option<Arg> {
    let mut short = None;
    let mut long = None;
    let mut values = Vec::new();
    for token in spec.split_whitespace() {
        let token = token.trim_end_matches(',');
        if let Some(l) = token.strip_prefix("--") {
            long = Some(l.to_owned());
        } else if let Some(s) = token.strip_prefix('-') {
            short = s.chars().next();
        } else {
            values.push(token.to_owned());
        }
    }
    if matches!(long.as_deref(), Some("help" | "version")) {
        return None;
    }
    let id = long.clone().or(short.map(String::from))?;
    let (text, possible) = split_desc(desc);
    let mut arg = Arg::new(leak(id)).help(text);
    if let Some(l) = long {
        arg = arg.long(leak(l));
    }
    if let Some(s) = short {
        arg = arg.short(s);
    }
    if values.is_empty() {
        arg = arg.action(ArgAction::SetTrue);
    } else {
        let name = values[0]
            .trim_end_matches("...")
            .trim_matches(|c| matches!(c, '<' | '>' | '[' | ']'))
            .to_owned();
        arg = arg
            .value_name(leak(name.clone()))
            .value_hint(hint(&name))
            .action(ArgAction::Append);
        if !possible.is_empty() {
            arg = arg.value_parser(PossibleValuesParser::new(possible.into_iter().map(leak)));
        }
    }
    Some(arg)
}

fn write_docs(cmd: Command, name: &str, dir: &Path) -> Result<(), String> {
    let io = |what: &str, e: std::io::Error| format!("cannot write {what} for {name}: {e}");
    let completions = dir.join("completions");
    let man = dir.join("man");
    for d in [&completions, &man] {
        std::fs::create_dir_all(d).map_err(|e| io("a directory", e))?;
    }
    let mut cmd = cmd;
    cmd.build();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, name, &completions)
            .map_err(|e| io("completions", e))?;
    }
    let section = match name {
        "pacpoold" | "pacpool-coordinator" => "8",
        _ => "1",
    };
    write_man(&cmd, section, &man).map_err(|e| io("man pages", e))
}

/// One page per command and subcommand (`pacpool-admin-pools.1`, …), like
/// `clap_mangen::generate_to` but in `section`.
fn write_man(cmd: &Command, section: &str, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands() {
        write_man(sub, section, dir)?;
    }
    let source = format!(
        "pacpool {}",
        cmd.get_version().unwrap_or(env!("CARGO_PKG_VERSION"))
    );
    clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(source)
        .manual("pacpool")
        .generate_to(dir)?;
    Ok(())
}
