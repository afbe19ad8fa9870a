//! Update bundles end to end through `shitud bundle`: keygen, pack, sign,
//! verify; and every kind of bad bundle refused with a reason naming what
//! is wrong: unsigned, untrusted key, manifest changed after signing,
//! tampered file, wrong target, path traversal, link entry, truncated.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use shitu_edge::ota::{bundle, keys};
use shitu_edge::search::Method;

fn shitud(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shitud"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("shitud runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    key: PathBuf,
    public: PathBuf,
    good: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut st = settings("det_prenms.onnx");
    build_gallery(&mut st, &dir.join("gallery"), Method::Flat);
    let key = dir.join("fleet.key");
    let o = shitud(&["bundle", "keygen", "--out", s(&key)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let good = dir.join("good.tar");
    let golden = format!(
        "{}={}",
        s(&data("images/scenes/scene_00002.jpg")),
        "whatever"
    );
    let o = shitud(&[
        "bundle",
        "pack",
        "--version",
        "2026.11.27-1",
        "--detector",
        s(&root().join("engines/demo/det_prenms.onnx")),
        "--embedder",
        s(&root().join("engines/demo/rec.onnx")),
        "--gallery",
        s(&dir.join("gallery")),
        "--golden",
        &golden,
        "--key",
        s(&key),
        "--out",
        s(&good),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("signed with key") && out.contains("detector models/detector-det_prenms.onnx"),
        "{out}"
    );
    let public = keys::public_path(&key);
    Fixture {
        _tmp: tmp,
        dir,
        key,
        public,
        good,
    }
}

fn verify(f: &Fixture, bundle: &Path) -> (bool, String) {
    let o = shitud(&["bundle", "verify", "--trust", s(&f.public), s(bundle)]);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Entries of a tar as (header, data), in order.
fn entries(path: &Path) -> Vec<(tar::Header, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.header().clone(), data)
        })
        .collect()
}

/// Writes entries back verbatim (headers as given: no path checks, so
/// hostile names get through, as an attacker's tool would write them).
fn write(path: &Path, items: &[(tar::Header, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (h, data) in items {
        let mut h = h.clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

fn name(h: &tar::Header) -> String {
    String::from_utf8_lossy(&h.path_bytes()).into_owned()
}

fn set_name(h: &mut tar::Header, n: &str) {
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name = [0; 100];
    gnu.name[..n.len()].copy_from_slice(n.as_bytes());
}

#[test]
fn a_signed_bundle_verifies_and_unpacks_byte_for_byte() {
    let f = fixture();
    let (ok, text) = verify(&f, &f.good);
    assert!(
        ok && text.contains("ok, bundle 2026.11.27-1 signed by key"),
        "{text}"
    );

    let trusted = [keys::read_public(s(&f.public)).unwrap()];
    let dest = f.dir.join("versions/1");
    let v = bundle::unpack(&f.good, &trusted, &dest).unwrap();
    assert_eq!(
        v.manifest
            .parts
            .iter()
            .map(|p| p.role.as_str())
            .collect::<Vec<_>>(),
        ["detector", "embedder", "gallery"]
    );
    assert_eq!(v.manifest.golden.len(), 1);
    assert_eq!(
        std::fs::read(dest.join("models/embedder-rec.onnx")).unwrap(),
        std::fs::read(root().join("engines/demo/rec.onnx")).unwrap()
    );
    for file in &v.manifest.files {
        assert_eq!(
            std::fs::metadata(dest.join(&file.path)).unwrap().len(),
            file.size,
            "{}",
            file.path
        );
    }
    assert!(bundle::unpack(&f.good, &trusted, &dest)
        .unwrap_err()
        .to_string()
        .contains("already exists"));
}

#[test]
fn unsigned_untrusted_and_resigned_bundles() {
    let f = fixture();
    // Unsigned: pack without a key.
    let unsigned = f.dir.join("unsigned.tar");
    let o = shitud(&[
        "bundle",
        "pack",
        "--version",
        "x",
        "--embedder",
        s(&root().join("engines/demo/rec.onnx")),
        "--out",
        s(&unsigned),
    ]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("unsigned"));
    let (ok, text) = verify(&f, &unsigned);
    assert!(
        !ok && text.contains("unsigned: sign it with `shitud bundle sign"),
        "{text}"
    );
    // Signed afterwards: accepted.
    let o = shitud(&["bundle", "sign", "--key", s(&f.key), s(&unsigned)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(verify(&f, &unsigned).0);

    // Signed by a key the box does not trust.
    let other = f.dir.join("other.key");
    keys::generate(&other).unwrap();
    let o = shitud(&["bundle", "sign", "--key", s(&other), s(&unsigned)]);
    assert!(o.status.success());
    let (ok, text) = verify(&f, &unsigned);
    assert!(!ok && text.contains("which is not trusted"), "{text}");

    // No trusted keys at all: configuration error, named.
    let o = shitud(&["bundle", "verify", s(&f.good)]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no trusted keys") && text.contains("ota.trusted_keys"),
        "{text}"
    );
}

#[test]
fn a_changed_manifest_or_file_is_refused() {
    let f = fixture();
    let mut items = entries(&f.good);
    // The manifest edited after signing (a bigger version number, say).
    let mut edited = items.clone();
    let text = String::from_utf8(edited[0].1.clone())
        .unwrap()
        .replace("2026.11.27-1", "2026.11.27-9");
    edited[0].1 = text.into_bytes();
    let p = f.dir.join("edited.tar");
    write(&p, &edited);
    let (ok, text) = verify(&f, &p);
    assert!(
        !ok && text.contains("does not match key") && text.contains("changed after signing"),
        "{text}"
    );

    // One byte of the recogniser model flipped.
    let i = items
        .iter()
        .position(|(h, _)| name(h) == "models/embedder-rec.onnx")
        .unwrap();
    let mid = items[i].1.len() / 2;
    items[i].1[mid] ^= 0x40;
    let p = f.dir.join("tampered.tar");
    write(&p, &items);
    let (ok, text) = verify(&f, &p);
    assert!(
        !ok && text.contains("\"models/embedder-rec.onnx\" does not match its sha256"),
        "{text}"
    );

    // Nothing of a refused bundle is left behind by unpack.
    let trusted = [keys::read_public(s(&f.public)).unwrap()];
    let dest = f.dir.join("versions/2");
    assert!(bundle::unpack(&p, &trusted, &dest).is_err());
    assert!(!dest.exists());
}

#[test]
fn wrong_target_traversal_links_and_truncation_are_refused() {
    let f = fixture();
    let foreign = f.dir.join("riscv.tar");
    let o = shitud(&[
        "bundle",
        "pack",
        "--version",
        "r",
        "--embedder",
        s(&root().join("engines/demo/rec.onnx")),
        "--target",
        "riscv64",
        "--key",
        s(&f.key),
        "--out",
        s(&foreign),
    ]);
    assert!(o.status.success());
    let (ok, text) = verify(&f, &foreign);
    assert!(
        !ok && text.contains(&format!(
            "made for riscv64, this box is {}",
            std::env::consts::ARCH
        )),
        "{text}"
    );

    let items = entries(&f.good);
    // An extra entry that climbs out of the unpack folder.
    let mut evil = items.clone();
    let mut h = items[2].0.clone();
    set_name(&mut h, "../../etc/cron.d/evil");
    evil.push((h, b"* * * * * root sh\n".to_vec()));
    let p = f.dir.join("traversal.tar");
    write(&p, &evil);
    let (ok, text) = verify(&f, &p);
    assert!(
        !ok && text.contains("\"../../etc/cron.d/evil\": climbs out of the bundle"),
        "{text}"
    );
    let trusted = [keys::read_public(s(&f.public)).unwrap()];
    let dest = f.dir.join("versions/3");
    assert!(bundle::unpack(&p, &trusted, &dest).is_err());
    assert!(!f.dir.join("etc").exists() && !dest.exists());

    // A listed file replaced by a symbolic link to somewhere else.
    let mut linked = items.clone();
    let i = linked
        .iter()
        .position(|(h, _)| name(h) == "models/embedder-rec.onnx")
        .unwrap();
    linked[i].0.set_entry_type(tar::EntryType::Symlink);
    linked[i].0.set_link_name("/etc/shadow").unwrap();
    linked[i].1 = Vec::new();
    let p = f.dir.join("symlink.tar");
    write(&p, &linked);
    let (ok, text) = verify(&f, &p);
    assert!(
        !ok && text.contains("is a symbolic link; bundles hold regular files only"),
        "{text}"
    );

    // A download that stopped halfway.
    let bytes = std::fs::read(&f.good).unwrap();
    let p = f.dir.join("truncated.tar");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, text) = verify(&f, &p);
    assert!(!ok && text.contains("truncated"), "{text}");
}

#[test]
fn config_check_names_a_bad_trusted_key() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("c.toml");
    std::fs::write(&conf, "[ota]\ntrusted_keys = [\"AAAA\"]\n").unwrap();
    let o = shitud(&["config", "check", "-c", s(&conf)]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ota.trusted_keys") && text.contains("not 32 bytes"),
        "{text}"
    );
}
