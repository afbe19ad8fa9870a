//! The Yocto layer: `oelint-adv` finds no error in it, the recipe's crate
//! list is exactly Cargo.lock's crates.io packages, with their checksums, and
//! the recipe installs the same files as `scripts/install.sh`.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn layer() -> PathBuf {
    common::root().join("yocto/meta-shitu-edge")
}

fn recipe_dir() -> PathBuf {
    layer().join("recipes-shitu/shitu-edge")
}

/// (name, version) → sha256 of every crates.io package in Cargo.lock, read
/// line by line (independently of the generator script, which uses tomllib).
fn lock_crates() -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(common::root().join("Cargo.lock")).unwrap();
    let mut out = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = \""))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string)
            })
        };
        let (Some(name), Some(version)) = (field("name"), field("version")) else {
            panic!("odd Cargo.lock block: {block}")
        };
        match field("source").as_deref() {
            None => continue, // the project itself
            Some("registry+https://github.com/rust-lang/crates.io-index") => {}
            Some(other) => panic!(
                "{name} {version} comes from {other}: the recipe can only fetch crates.io crates"
            ),
        }
        out.insert((name, version), field("checksum").expect("checksum"));
    }
    out
}

#[test]
fn the_crate_list_matches_cargo_lock() {
    let inc = std::fs::read_to_string(recipe_dir().join("shitu-edge-crates.inc")).unwrap();
    let uris: Vec<(String, String)> = inc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("crate://crates.io/"))
        .map(|l| {
            let mut p = l.trim_end_matches('\\').trim().splitn(2, '/');
            (p.next().unwrap().to_string(), p.next().unwrap().to_string())
        })
        .collect();
    let sums: BTreeMap<String, String> = inc
        .lines()
        .filter_map(|l| l.strip_prefix("SRC_URI["))
        .map(|l| {
            let (key, value) = l.split_once("] = ").unwrap();
            (
                key.trim_end_matches(".sha256sum").to_string(),
                value.trim_matches('"').to_string(),
            )
        })
        .collect();
    let lock = lock_crates();
    let listed: std::collections::BTreeSet<_> = uris.iter().cloned().collect();
    assert_eq!(listed.len(), uris.len(), "a crate is listed twice");
    let locked: std::collections::BTreeSet<_> = lock.keys().cloned().collect();
    let stale = "run `python3 scripts/yocto-crates.py` after changing Cargo.lock";
    assert_eq!(
        listed.difference(&locked).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "listed in the recipe but not in Cargo.lock; {stale}"
    );
    assert_eq!(
        locked.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in Cargo.lock but not in the recipe; {stale}"
    );
    for ((name, version), sum) in &lock {
        assert_eq!(
            sums.get(&format!("{name}-{version}")),
            Some(sum),
            "checksum of {name} {version}; {stale}"
        );
    }
    assert_eq!(sums.len(), lock.len());
    eprintln!(
        "{} crates, all in Cargo.lock with the same checksums",
        lock.len()
    );
}

fn oelint() -> PathBuf {
    let venv = common::root().join(".deps/oelint/bin/oelint-adv");
    assert!(
        venv.exists(),
        "{} missing: scripts/setup.sh installs oelint-adv (PyPI) there",
        venv.display()
    );
    venv
}

/// Lint `files`; the `:error:` lines, and every finding.
fn lint(files: &[&Path]) -> (Vec<String>, String) {
    let out = Command::new(oelint())
        .args(["--quiet", "--release", "scarthgap"])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Traceback"), "oelint-adv crashed:\n{text}");
    (
        text.lines()
            .filter(|l| l.contains(":error:"))
            .map(str::to_string)
            .collect(),
        text,
    )
}

#[test]
fn oelint_adv_finds_no_error_in_the_layer() {
    let bb = recipe_dir().join("shitu-edge_0.1.0.bb");
    let conf = layer().join("conf/layer.conf");
    let (errors, text) = lint(&[&bb, &conf]);
    assert!(
        errors.is_empty(),
        "oelint-adv errors:\n{}",
        errors.join("\n")
    );
    eprintln!(
        "oelint-adv --release scarthgap, warnings and notes:\n{}",
        text.lines()
            .filter(|l| !l.contains(":info:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The linter is live: the same recipe with DEPENDS overwritten after the inherits is an error.
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(recipe_dir()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let broken = tmp.path().join("shitu-edge_0.1.0.bb");
    let mut text = std::fs::read_to_string(&broken).unwrap();
    text.push_str("\nDEPENDS = \"opencv\"\n");
    std::fs::write(&broken, text).unwrap();
    let (errors, all) = lint(&[&broken]);
    assert!(
        errors.iter().any(|e| e.contains("dependsappend")),
        "oelint-adv did not catch a planted error:\n{all}"
    );
}

/// What a recipe's `do_install:append` installs: the `install -m MODE SRC… DEST`
/// lines, with the bitbake paths of a usrmerge scarthgap image, plus the
/// binary the `cargo` class installs into `${bindir}`.
fn recipe_files(recipe: &str) -> std::collections::BTreeSet<String> {
    let vars = [
        ("${D}", ""),
        ("${systemd_system_unitdir}", "/usr/lib/systemd/system"),
        ("${nonarch_libdir}", "/usr/lib"),
        ("${sysconfdir}", "/etc"),
        ("${docdir}", "/usr/share/doc"),
        ("${datadir}", "/usr/share"),
        ("${PN}", "shitu-edge"),
    ];
    let body = recipe
        .split("do_install:append() {")
        .nth(1)
        .and_then(|b| b.split("\n}").next())
        .expect("a do_install:append block");
    let mut out = std::collections::BTreeSet::from(["/usr/bin/shitud".to_string()]);
    for cmd in body.replace("\\\n", " ").lines() {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if words.first() != Some(&"install") || words.get(1) != Some(&"-m") {
            continue;
        }
        let (dest, srcs) = words[3..].split_last().expect("install SRC… DEST");
        let mut dest = dest.to_string();
        for (k, v) in vars {
            dest = dest.replace(k, v);
        }
        assert!(!dest.contains("${"), "unknown variable in {cmd}");
        for src in srcs {
            let name = src.rsplit('/').next().unwrap();
            out.insert(if dest.ends_with('/') {
                format!("{dest}{name}")
            } else {
                dest.clone()
            });
        }
    }
    out
}

/// `scripts/install.sh` (the Debian/Ubuntu way) lays out the same files as
/// the recipe, except what Yocto gets from other packages (ONNX Runtime)
/// and the optional first-boot gallery.
#[test]
fn install_sh_lays_out_what_the_recipe_installs() {
    let recipe = std::fs::read_to_string(recipe_dir().join("shitu-edge_0.1.0.bb")).unwrap();
    let from_recipe = recipe_files(&recipe);
    let tmp = tempfile::tempdir().unwrap();
    common::install_into(tmp.path());
    let mut from_script = std::collections::BTreeSet::new();
    let mut dirs = vec![tmp.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let rel = format!("/{}", p.strip_prefix(tmp.path()).unwrap().display());
            if rel != "/usr/lib/shitu-edge/libonnxruntime.so"
                && !rel.starts_with("/usr/share/shitu-edge/gallery/")
            {
                from_script.insert(rel);
            }
        }
    }
    assert!(from_recipe.len() >= 9, "recipe parsed: {from_recipe:?}");
    assert_eq!(from_script, from_recipe, "install.sh and the recipe differ");
}
