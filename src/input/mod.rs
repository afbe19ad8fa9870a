//! The first stage: bytes in, a checked RGB frame out.
//!
//! Images from a camera or a line controller are untrusted. Size limits are
//! checked on the header before anything is decoded, and truncated files are
//! refused instead of being decoded into grey half-frames, which OpenCV
//! would otherwise do silently.

pub mod camera;
mod header;

use std::path::Path;

use opencv::core::{Mat, MatTraitConst, Vector};
use opencv::{imgcodecs, imgproc};

pub use header::{sniff, Format, Header};

use crate::config::InputSettings;
use crate::error::{Error, Result};

/// Smallest accepted side, in pixels. Anything smaller cannot hold a product
/// the detector (stride 8 to 64) could see; it is almost always a broken upload.
pub const MIN_SIDE: u32 = 8;

/// A decoded frame in RGB order, the layout both models take.
pub struct Frame {
    /// Where the frame came from (a path, or a request id).
    pub name: String,
    /// 8-bit, 3-channel, RGB, continuous.
    pub rgb: Mat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} {}x{})", self.name, self.width, self.height)
    }
}

/// Reads and decodes the image file at `path`.
pub fn read(path: &Path, limits: &InputSettings) -> Result<Frame> {
    let bytes = read_bytes(path, limits)?;
    decode(path.display().to_string(), &bytes, limits)
}

/// Reads the encoded file at `path`, refusing one over `input.max_file_bytes`
/// before reading it. For callers that need the bytes too (hashing).
pub fn read_bytes(path: &Path, limits: &InputSettings) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| Error::image(&name, format!("cannot read: {e}")))?;
    if meta.len() > limits.max_file_bytes {
        return Err(Error::image(
            &name,
            format!(
                "file is {} bytes, over the limit of {} (input.max_file_bytes)",
                meta.len(),
                limits.max_file_bytes
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::image(&name, format!("cannot read: {e}")))
}

/// Decodes an encoded image (JPEG, PNG, BMP, …) held in memory.
pub fn decode(name: impl Into<String>, bytes: &[u8], limits: &InputSettings) -> Result<Frame> {
    let name = name.into();
    if bytes.is_empty() {
        return Err(Error::image(name, "file is empty"));
    }
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Error::image(
            name,
            format!(
                "{} bytes, over the limit of {} (input.max_file_bytes)",
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    let header = sniff(bytes).map_err(|reason| Error::image(&name, reason))?;
    if let Some(h) = &header {
        check_size(&name, h.width, h.height, limits)?;
    }

    let buf = Vector::<u8>::from_slice(bytes);
    let bgr = imgcodecs::imdecode(&buf, imgcodecs::IMREAD_COLOR)
        .map_err(|e| Error::image(&name, format!("decoder failed: {e}")))?;
    if bgr.empty() {
        let what = match header {
            Some(h) => format!("corrupt {} data", h.format),
            None => "not an image OpenCV can decode (unknown format)".to_string(),
        };
        return Err(Error::image(name, what));
    }
    let (width, height) = (bgr.cols() as u32, bgr.rows() as u32);
    // Formats we do not sniff (TIFF, WebP, …) are size-checked after decoding.
    check_size(&name, width, height, limits)?;

    let mut rgb = Mat::default();
    imgproc::cvt_color_def(&bgr, &mut rgb, imgproc::COLOR_BGR2RGB)
        .map_err(|e| Error::image(&name, format!("colour conversion failed: {e}")))?;
    Ok(Frame {
        name,
        rgb,
        width,
        height,
    })
}

fn check_size(name: &str, width: u32, height: u32, limits: &InputSettings) -> Result<()> {
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(Error::image(
            name,
            format!("{width}x{height} is too small; both sides must be at least {MIN_SIDE} px"),
        ));
    }
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(Error::image(
            name,
            format!(
                "{width}x{height} = {pixels} pixels, over the limit of {} (input.max_pixels)",
                limits.max_pixels
            ),
        ));
    }
    Ok(())
}

impl Frame {
    /// Wraps an RGB `Mat` that is already in memory (tests, camera capture).
    pub fn from_rgb(name: impl Into<String>, rgb: Mat) -> Result<Frame> {
        let name = name.into();
        if rgb.typ() != opencv::core::CV_8UC3 {
            return Err(Error::image(name, "frame must be 8-bit, 3-channel"));
        }
        let (width, height) = (rgb.cols() as u32, rgb.rows() as u32);
        Ok(Frame {
            name,
            rgb,
            width,
            height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> InputSettings {
        InputSettings::default()
    }

    fn encode(w: i32, h: i32, ext: &str) -> Vec<u8> {
        let img = Mat::new_rows_cols_with_default(
            h,
            w,
            opencv::core::CV_8UC3,
            opencv::core::Scalar::all(90.0),
        )
        .unwrap();
        let mut out = Vector::<u8>::new();
        imgcodecs::imencode_def(ext, &img, &mut out).unwrap();
        out.iter().collect()
    }

    #[test]
    fn decodes_jpeg_and_png() {
        for ext in [".jpg", ".png"] {
            let f = decode("x", &encode(40, 30, ext), &limits()).unwrap();
            assert_eq!((f.width, f.height), (40, 30));
            assert_eq!(f.rgb.typ(), opencv::core::CV_8UC3);
        }
    }

    #[test]
    fn refuses_truncated_jpeg_and_png() {
        for ext in [".jpg", ".png"] {
            let bytes = encode(64, 64, ext);
            let err = decode("cut", &bytes[..bytes.len() * 2 / 3], &limits())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cut") && err.contains("truncated"),
                "{ext}: {err}"
            );
        }
    }

    #[test]
    fn refuses_tiny_huge_empty_and_non_images() {
        let err = decode("one", &encode(1, 1, ".png"), &limits())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1x1 is too small"), "{err}");
        let small = InputSettings {
            max_pixels: 1000,
            ..limits()
        };
        let err = decode("big", &encode(40, 30, ".jpg"), &small)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("40x30") && err.contains("input.max_pixels"),
            "{err}"
        );
        let err = decode("e", &[], &limits()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = decode("t.txt", b"hello, I am text", &limits())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.txt") && err.contains("not an image"),
            "{err}"
        );
    }
}
