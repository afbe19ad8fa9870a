//! The first stage: bytes in, a checked RGB frame out.
//!
//! Images from a camera or a line controller are untrusted. Size limits are
//! checked on the header before anything is decoded, and truncated files are
//! refused instead of being decoded into grey half-frames, which OpenCV
//! would otherwise do silently.

pub mod camera;
mod header;

use std::path::Path;
use std::sync::Arc;

use opencv::core::{Mat, MatTraitConst, Vector, CV_8UC3};
use opencv::{imgcodecs, imgproc};

pub use header::{sniff, Format, Header};

use crate::config::InputSettings;
use crate::error::{Error, Result};
use crate::gpu::{FrameMemory, FramePool};

/// Smallest accepted side, in pixels. Anything smaller cannot hold a product
/// the detector (stride 8 to 64) could see; it is almost always a broken upload.
pub const MIN_SIDE: u32 = 8;

/// A decoded frame in RGB order, the layout both models take.
pub struct Frame {
    /// Where the frame came from (a path, or a request id).
    pub name: String,
    /// 8-bit, 3-channel, RGB, continuous. Private: for a frame in pool
    /// memory the `Mat` is only a view, which must not outlive the frame.
    rgb: Mat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pool memory `rgb`'s pixels live in, when decoded into a
    /// [`FramePool`]'s (declared after `rgb`: the view goes first).
    memory: Option<Arc<FrameMemory>>,
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

/// [`read`], with the pixels written into memory from `pool`.
pub fn read_in(path: &Path, limits: &InputSettings, pool: &FramePool) -> Result<Frame> {
    let bytes = read_bytes(path, limits)?;
    decode_in(path.display().to_string(), &bytes, limits, pool)
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
    decode_with(name.into(), bytes, limits, None)
}

/// [`decode`], with the RGB pixels written by the colour conversion
/// straight into memory from `pool`: page-locked memory where a GPU reads
/// the frame, so it is not copied again on its way to the device.
pub fn decode_in(
    name: impl Into<String>,
    bytes: &[u8],
    limits: &InputSettings,
    pool: &FramePool,
) -> Result<Frame> {
    decode_with(name.into(), bytes, limits, Some(pool))
}

fn decode_with(
    name: String,
    bytes: &[u8],
    limits: &InputSettings,
    pool: Option<&FramePool>,
) -> Result<Frame> {
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

    let (mut rgb, memory) = match pool {
        Some(pool) => lend(pool, &name, width, height)?,
        None => (Mat::default(), None),
    };
    imgproc::cvt_color_def(&bgr, &mut rgb, imgproc::COLOR_BGR2RGB)
        .map_err(|e| Error::image(&name, format!("colour conversion failed: {e}")))?;
    Ok(Frame::with_memory(name, rgb, memory))
}

/// A `width × height` RGB `Mat` over memory from `pool`; a plain `Mat`
/// (OpenCV's memory) where the pool cannot give any, since a frame is
/// better served from pageable memory than refused.
fn lend(
    pool: &FramePool,
    name: &str,
    width: u32,
    height: u32,
) -> Result<(Mat, Option<FrameMemory>)> {
    let step = 3 * width as usize;
    let mut mem = match pool.take(step * height as usize) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("{name}: {e}; decoding into ordinary memory");
            return Ok((Mat::default(), None));
        }
    };
    // SAFETY: the block holds `step × height` bytes, is written only
    // through this `Mat` until the frame is made, and then lives as long as
    // the frame, which keeps it beside the `Mat`, never hands the `Mat` out
    // by value and drops it first; OpenCV never frees memory it did not
    // allocate.
    let mat = unsafe {
        Mat::new_rows_cols_with_data_unsafe(
            height as i32,
            width as i32,
            CV_8UC3,
            mem.as_mut_ptr().cast(),
            step,
        )
    }
    .map_err(|e| Error::image(name, format!("cannot wrap frame memory: {e}")))?;
    Ok((mat, Some(mem)))
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
        if rgb.typ() != CV_8UC3 {
            return Err(Error::image(name, "frame must be 8-bit, 3-channel"));
        }
        Ok(Frame::with_memory(name, rgb, None))
    }

    /// A copy of the RGB `rgb` in memory from `pool` (a camera's frame,
    /// which its ring keeps for later triggers).
    pub fn copy_in(name: impl Into<String>, rgb: &Mat, pool: &FramePool) -> Result<Frame> {
        let name = name.into();
        if rgb.typ() != CV_8UC3 {
            return Err(Error::image(name, "frame must be 8-bit, 3-channel"));
        }
        let (mut copy, memory) = lend(pool, &name, rgb.cols() as u32, rgb.rows() as u32)?;
        rgb.copy_to(&mut copy)
            .map_err(|e| Error::image(&name, format!("cannot copy the frame: {e}")))?;
        Ok(Frame::with_memory(name, copy, memory))
    }

    /// Keeps `memory` only if `rgb` addresses it: OpenCV reallocates a
    /// destination whose size or type it did not expect.
    fn with_memory(name: String, rgb: Mat, memory: Option<FrameMemory>) -> Frame {
        let (width, height) = (rgb.cols() as u32, rgb.rows() as u32);
        let memory = memory.filter(|m| addresses(&rgb, m)).map(Arc::new);
        Frame {
            name,
            rgb,
            width,
            height,
            memory,
        }
    }

    /// The pixels: 8-bit, 3-channel, RGB, continuous.
    pub fn rgb(&self) -> &Mat {
        &self.rgb
    }

    /// The pool memory the pixels live in, if they were decoded or copied
    /// into a [`FramePool`]'s.
    pub fn memory(&self) -> Option<&Arc<FrameMemory>> {
        self.memory.as_ref()
    }
}

/// Whether `rgb` is a whole RGB image in exactly the memory `m`.
fn addresses(rgb: &Mat, m: &FrameMemory) -> bool {
    rgb.data() == m.as_ptr()
        && rgb.is_continuous()
        && rgb.typ() == CV_8UC3
        && rgb.total() * 3 == m.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::prelude::*;

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
    fn frames_decode_into_pool_memory_with_the_same_pixels() {
        let pool = FramePool::host();
        // A pattern, so that a channel swap or a shifted row shows.
        let mut img =
            Mat::new_rows_cols_with_default(30, 40, CV_8UC3, opencv::core::Scalar::all(0.0))
                .unwrap();
        for (i, b) in img.data_bytes_mut().unwrap().iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let mut png = Vector::<u8>::new();
        imgcodecs::imencode_def(".png", &img, &mut png).unwrap();
        let png: Vec<u8> = png.iter().collect();
        let plain = decode("p", &png, &limits()).unwrap();
        assert!(plain.memory().is_none());
        let pooled = decode_in("p", &png, &limits(), &pool).unwrap();
        let mem = pooled.memory().expect("decoded into the pool").clone();
        assert_eq!(pooled.rgb.data(), mem.as_ptr());
        assert_eq!(mem.len(), 40 * 30 * 3);
        assert_eq!(
            pooled.rgb.data_bytes().unwrap(),
            plain.rgb.data_bytes().unwrap()
        );
        // The block goes back only when the last holder lets go.
        let ptr = mem.as_ptr();
        drop(pooled);
        let held = decode_in("q", &png, &limits(), &pool).unwrap();
        assert_ne!(held.rgb.data(), ptr, "a block still held was lent again");
        drop((held, mem));
        let again = decode_in("r", &png, &limits(), &pool).unwrap();
        assert!(again.memory().is_some());
        assert_eq!(
            again.rgb.data_bytes().unwrap(),
            plain.rgb.data_bytes().unwrap()
        );
        // A camera frame copied in.
        let copy = Frame::copy_in("c", &plain.rgb, &pool).unwrap();
        assert!(copy.memory().is_some());
        assert_eq!(
            copy.rgb.data_bytes().unwrap(),
            plain.rgb.data_bytes().unwrap()
        );
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
