//! Enrolment: a PaddleClas list of product photos becomes a gallery.
//!
//! Gallery features come from the whole photo (no detector), as in
//! PaddleClas's `build_gallery.py`. Unlike it, the label is everything after
//! the first tab, so labels with spaces survive.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::InputSettings;
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::input::{self, Frame};
use crate::search::gallery::unix_now;
use crate::search::{Gallery, GalleryItem, Method};

/// One line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// 1-based line number, for messages.
    pub line: usize,
    /// Path relative to the image root.
    pub path: String,
    /// Label: all text after the first tab.
    pub label: String,
}

/// Parses `path<TAB>label` lines. Blank lines and `#` comments are skipped.
pub fn parse_list(text: &str, list: &Path) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, label) = line.split_once('\t').ok_or_else(|| {
            Error::gallery(
                list,
                format!("line {}: expected `path<TAB>label`, found {line:?}", i + 1),
            )
        })?;
        if path.is_empty() || label.trim().is_empty() {
            return Err(Error::gallery(
                list,
                format!("line {}: empty path or label in {line:?}", i + 1),
            ));
        }
        out.push(ListEntry {
            line: i + 1,
            path: path.to_string(),
            label: label.to_string(),
        });
    }
    Ok(out)
}

/// A product photo to enrol: decoded, with the sha256 of its file.
pub struct Photo {
    /// The decoded photo.
    pub frame: Frame,
    /// sha256 of the file's bytes.
    pub sha256: String,
}

impl Photo {
    /// Reads the file once, for both the hash and the pixels.
    pub fn read(path: &Path, limits: &InputSettings) -> Result<Photo> {
        let bytes = input::read_bytes(path, limits)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(Photo {
            frame: input::decode(path.display().to_string(), &bytes, limits)?,
            sha256,
        })
    }

    /// Its feature: gallery features come from the whole photo.
    pub fn embed(&self, embedder: &mut Embedder) -> Result<Vec<f32>> {
        embedder.embed(&[(
            &self.frame,
            CropBox::whole(self.frame.width, self.frame.height),
        )])
    }
}

/// What to do with list entries whose image is missing or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadImage {
    /// Report each one, and build from the rest.
    #[default]
    Skip,
    /// Report and stop without writing anything.
    Fail,
}

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The list file.
    pub list: PathBuf,
    /// Where list paths are resolved.
    pub image_root: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Index kind.
    pub method: Method,
    /// Missing or unreadable images.
    pub on_bad_image: OnBadImage,
    /// Decoding limits.
    pub input: InputSettings,
}

/// What [`build`] did.
#[derive(Debug)]
pub struct BuildReport {
    /// The gallery written.
    pub gallery: Gallery,
    /// Entries that were skipped, with why.
    pub skipped: Vec<(ListEntry, String)>,
}

/// Embeds every listed image and writes a gallery. `progress` is called after
/// each image with (done, total).
pub fn build(
    embedder: &mut Embedder,
    rec_model: &Path,
    opts: &BuildOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<BuildReport> {
    let text = std::fs::read_to_string(&opts.list).map_err(|e| Error::io(&opts.list, e))?;
    let entries = parse_list(&text, &opts.list)?;
    if entries.is_empty() {
        return Err(Error::gallery(
            &opts.list,
            "the list has no images: the gallery would be empty",
        ));
    }
    let mut items = Vec::new();
    let mut vectors = Vec::new();
    let mut skipped = Vec::new();
    // Written as they are made (a large gallery's would not fit in memory);
    // the gallery's files come after, all at once.
    let thumbs = opts.out.join("thumbs");
    let mut thumbs_ok = std::fs::create_dir_all(&thumbs).is_ok();
    for (n, entry) in entries.iter().enumerate() {
        let path = opts.image_root.join(&entry.path);
        let read = Photo::read(&path, &opts.input).and_then(|p| {
            let thumb = crate::search::thumbs::encode(&p.frame).ok();
            Ok((p.embed(embedder)?, p.sha256, thumb))
        });
        match read {
            Ok((feature, sha256, thumb)) => {
                if let (Some(t), true) = (thumb, thumbs_ok) {
                    let path = thumbs.join(format!("{}.jpg", items.len()));
                    if let Err(e) = std::fs::write(&path, t) {
                        tracing::warn!(
                            "gallery thumbnails (for the operator's page) not written: {}: {e}",
                            path.display()
                        );
                        thumbs_ok = false;
                    }
                }
                items.push(GalleryItem {
                    id: items.len() as i64,
                    label: entry.label.clone(),
                    source: entry.path.clone(),
                    sha256: Some(sha256),
                    added_unix: Some(unix_now()),
                });
                vectors.extend(feature);
            }
            Err(e) => {
                tracing::warn!(list = %opts.list.display(), line = entry.line, "{e}");
                if opts.on_bad_image == OnBadImage::Fail {
                    let _ = std::fs::remove_dir_all(&thumbs);
                    return Err(Error::gallery(&opts.list, format!("line {}: {e} (nothing was written; pass --skip-missing to build from the rest)", entry.line)));
                }
                skipped.push((entry.clone(), e.to_string()));
            }
        }
        progress(n + 1, entries.len());
    }
    let model_file = rec_model.file_name().map_or_else(
        || rec_model.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let gallery = Gallery::create(
        &opts.out,
        opts.method,
        embedder.dim(),
        embedder.model_sha256(),
        &model_file,
        items,
        &vectors,
    )?;
    Ok(BuildReport { gallery, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_their_spaces_and_bad_lines_are_named() {
        let list = Path::new("g.txt");
        let e = parse_list("a/b.jpg\tgreen tea 500 ml\n\n# comment\nc.jpg\tx\r\n", list).unwrap();
        assert_eq!(e[0].label, "green tea 500 ml");
        assert_eq!(
            e[1],
            ListEntry {
                line: 4,
                path: "c.jpg".into(),
                label: "x".into()
            }
        );
        let err = parse_list("ok.jpg\tx\nno-tab-here\n", list)
            .unwrap_err()
            .to_string();
        assert!(err.contains("g.txt") && err.contains("line 2"), "{err}");
    }
}
