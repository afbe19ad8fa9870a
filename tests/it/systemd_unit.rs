//! The installed layout and the systemd files, checked by systemd's own tools
//! the way CI must: `scripts/install.sh` into a scratch root, then
//! `systemd-analyze verify` (no warning allowed), `systemd-analyze security`
//! (exposure at most 2.0), `systemd-sysusers` and `systemd-tmpfiles` applied
//! to that root.

use crate::common;

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs systemd)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Installs into a fresh root that also holds the host's own units, so that
/// `verify` resolves `network-online.target`, `multi-user.target` and so on.
fn installed_root(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    common::install_into(&root);
    let units = root.join("usr/lib/systemd/system");
    for host in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        if Path::new(host).is_dir() {
            let (ok, text) = run(Command::new("cp")
                .arg("-an")
                .arg(format!("{host}/."))
                .arg(&units));
            assert!(ok, "{text}");
            break;
        }
    }
    root
}

#[test]
fn the_unit_verifies_without_warnings_and_is_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let root = installed_root(tmp.path());
    for f in [
        "usr/bin/shitud",
        "etc/shitu-edge/config.toml",
        "usr/lib/sysusers.d/shitu-edge.conf",
        "usr/lib/tmpfiles.d/shitu-edge.conf",
        "usr/share/shitu-edge/engines/rec.onnx",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }

    let (ok, text) = run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .args(["verify", "/usr/lib/systemd/system/shitu-edge.service"]));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify must pass with no warning:\n{text}"
    );

    let unit = root.join("usr/lib/systemd/system/shitu-edge.service");
    let (_, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for shitu-edge.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in:\n{text}"));
    eprintln!("systemd-analyze security --offline=true: exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
    assert!(!text.contains("Unknown key"), "{text}");
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_fresh_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = installed_root(tmp.path());
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nvideo:x:44:\n").unwrap();
    let (ok, text) =
        run(Command::new("systemd-sysusers").arg(format!("--root={}", root.display())));
    assert!(ok, "systemd-sysusers:\n{text}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("shitu-edge:")
            && l.ends_with(":/var/lib/shitu-edge:/usr/sbin/nologin")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("video:x:44:") && l.contains("shitu-edge")),
        "shitu-edge joins video:\n{group}"
    );

    let (ok, text) = run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .args(["--create", "shitu-edge.conf"]));
    assert!(ok, "systemd-tmpfiles:\n{text}");
    for d in ["var/lib/shitu-edge/spool", "var/lib/shitu-edge/engines"] {
        assert!(root.join(d).is_dir(), "{d} not created");
    }
}
