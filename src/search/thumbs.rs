//! Small pictures of gallery items, for the operator's page: the photo an
//! item was enrolled from, at most [`SIZE`] pixels on its long side, as
//! `thumbs/<id>.jpg` beside the gallery's files. A sidecar, not part of
//! the gallery: search never reads it, and an item without one (enrolled
//! by a version before thumbnails, or on another box of a line whose
//! photo this box never saw) is shown by its label alone.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Size, Vector, VectorToVec};
use opencv::{imgcodecs, imgproc};

use crate::error::{Error, Result};
use crate::input::Frame;

/// Longest side of a thumbnail, pixels.
pub const SIZE: u32 = 192;

/// The thumbnails of the gallery in `gallery_dir`.
#[derive(Debug, Clone)]
pub struct Thumbs {
    dir: PathBuf,
}

impl Thumbs {
    /// The thumbnails beside the gallery in `gallery_dir`.
    pub fn new(gallery_dir: &Path) -> Thumbs {
        Thumbs {
            dir: gallery_dir.join("thumbs"),
        }
    }

    /// Where item `id`'s thumbnail is, if it has one.
    pub fn get(&self, id: i64) -> Option<PathBuf> {
        let p = self.dir.join(format!("{id}.jpg"));
        p.is_file().then_some(p)
    }

    /// Writes item `id`'s thumbnail from its photo (RGB).
    pub fn write(&self, id: i64, photo: &Frame) -> Result<()> {
        let jpeg = encode(photo)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.dir.join(format!("{id}.jpg"));
        std::fs::write(&path, jpeg).map_err(|e| Error::io(&path, e))
    }

    /// Forgets the thumbnails of removed items.
    pub fn remove(&self, ids: &[i64]) {
        for id in ids {
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.jpg")));
        }
    }
}

/// The photo, shrunk to [`SIZE`] on its long side, as JPEG.
pub fn encode(photo: &Frame) -> Result<Vec<u8>> {
    let bad = |e: opencv::Error| Error::Image {
        name: photo.name.clone(),
        reason: format!("thumbnail: {e}"),
    };
    let long = photo.width.max(photo.height).max(1);
    let scale = (f64::from(SIZE) / f64::from(long)).min(1.0);
    let size = Size::new(
        ((f64::from(photo.width) * scale).round() as i32).max(1),
        ((f64::from(photo.height) * scale).round() as i32).max(1),
    );
    let mut small = Mat::default();
    imgproc::resize(photo.rgb(), &mut small, size, 0.0, 0.0, imgproc::INTER_AREA).map_err(bad)?;
    let mut bgr = Mat::default();
    imgproc::cvt_color_def(&small, &mut bgr, imgproc::COLOR_RGB2BGR).map_err(bad)?;
    let mut out = Vector::<u8>::new();
    let params = Vector::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, 80]);
    imgcodecs::imencode(".jpg", &bgr, &mut out, &params).map_err(bad)?;
    Ok(out.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{MatTraitConst, Scalar, CV_8UC3};

    #[test]
    fn thumbnails_are_small_and_go_with_their_items() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mat::new_rows_cols_with_default(300, 600, CV_8UC3, Scalar::all(90.0)).unwrap();
        let photo = Frame::from_rgb("p", m).unwrap();
        let t = Thumbs::new(dir.path());
        assert!(t.get(7).is_none());
        t.write(7, &photo).unwrap();
        let p = t.get(7).unwrap();
        let back = imgcodecs::imread(p.to_str().unwrap(), imgcodecs::IMREAD_COLOR).unwrap();
        assert_eq!((back.cols(), back.rows()), (192, 96));
        t.remove(&[7]);
        assert!(t.get(7).is_none());
    }
}
