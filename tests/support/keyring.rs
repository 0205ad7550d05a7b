//! Real signatures for sandboxes: a pacman keyring made by `pacman-key --init` in the
//! sandbox's `GPGDir`, and packager keys made by gpg in their own home directories.
//!
//! Nothing here touches the host's keyring: every gpg and pacman-key call names its home.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Sandbox;

/// A packager: a signing key in its own gpg home.
pub struct Packager {
    home: tempfile::TempDir,
    pub fingerprint: String,
    pub public_key: PathBuf,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Packager {
    /// Generates an ed25519 signing key without a passphrase.
    pub fn new(name: &str) -> Self {
        let home = tempfile::Builder::new()
            .prefix("pacpool-gpg-")
            .tempdir()
            .unwrap();
        let gpg = |args: &[&str]| {
            run(Command::new("gpg")
                .arg("--homedir")
                .arg(home.path())
                .args(["--batch", "--no-tty"])
                .args(args))
        };
        gpg(&[
            "--passphrase",
            "",
            "--pinentry-mode",
            "loopback",
            "--quick-generate-key",
            &format!("{name} <{name}@example.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-keys"]);
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("gpg lists the new key's fingerprint")
            .to_owned();
        let public_key = home.path().join("public.asc");
        gpg(&[
            "--armor",
            "--output",
            public_key.to_str().unwrap(),
            "--export",
            &fingerprint,
        ]);
        Self {
            home,
            fingerprint,
            public_key,
        }
    }

    /// Writes `FILE.sig`, a binary detached signature as makepkg makes it.
    pub fn sign(&self, file: &Path) -> PathBuf {
        let sig = PathBuf::from(format!("{}.sig", file.display()));
        run(Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--batch", "--no-tty", "--yes", "--local-user"])
            .arg(&self.fingerprint)
            .arg("--output")
            .arg(&sig)
            .arg("--detach-sign")
            .arg(file));
        sig
    }
}

impl Drop for Packager {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .stderr(Stdio::null())
            .status();
    }
}

/// pacman's keyring of a sandbox (its `GPGDir`, `BASE/gnupg`).
pub struct Keyring {
    pub dir: PathBuf,
}

impl Keyring {
    /// `pacman-key --init` in the sandbox's `GPGDir`.
    pub fn init(sb: &Sandbox) -> Self {
        let dir = sb.base().join("gnupg");
        let k = Self { dir };
        k.pacman_key(&["--init"]);
        k
    }

    fn pacman_key(&self, args: &[&str]) -> String {
        run(Command::new("pacman-key")
            .arg("--gpgdir")
            .arg(&self.dir)
            .args(args))
    }

    /// Adds the packager's key without trusting it.
    pub fn add(&self, p: &Packager) {
        self.pacman_key(&["--add", p.public_key.to_str().unwrap()]);
    }

    /// Adds the packager's key and signs it locally with the keyring's master key, as
    /// `archlinux-keyring` does for Arch's packagers: its signatures are then fully trusted.
    pub fn trust(&self, p: &Packager) {
        self.add(p);
        self.pacman_key(&["--lsign-key", &p.fingerprint]);
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.dir)
            .args(["--kill", "gpg-agent"])
            .stderr(Stdio::null())
            .status();
    }
}
