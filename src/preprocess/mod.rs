//! The second stage: frames and crops become normalised CHW tensors.
//!
//! Pixels must match PaddleClas's `cv2` preprocessing bit for bit.
//! Normalisation goes through per-channel lookup tables computed with the
//! same float widths numpy uses (see [`Normalizer`]). Resizing is OpenCV's,
//! by one of three backends (`preprocess.backend`, [`Backend`]):
//! - `opencv`: `cv::resize` itself;
//! - `kernels`: `kernels.cu`, OpenCV's fixed-point arithmetic reproduced
//!   to the bit, compiled for the host ([`host`]);
//! - `cuda`: the same source on the GPU ([`cuda`]), so the CPU and GPU
//!   paths are held to one reference.
//!
//! The pipeline drives them through [`Preprocessor`]: frames staged once
//! per call, inputs written into the engines' buffers where they live.

pub mod cuda;
pub mod host;
pub mod normalize;
pub mod plan;
pub mod stage;

use ndarray::{Array2, Array4};
use opencv::core::{Mat, MatTraitConstManual, Rect, Size};
use opencv::imgproc;

pub use normalize::Normalizer;
pub use stage::{Preprocessor, Staged};

pub use crate::config::PreprocessBackend as Backend;
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::input::Frame;
use plan::{DetectorPlan, FrameLayout, RecogniserPlan};

/// The detector's input side (PicoDet mainbody: 640).
pub const DET_SIZE: u32 = 640;
/// The recogniser's input side (PPLCNetV2: 224).
pub const REC_SIZE: u32 = 224;

/// A batch ready for the detector.
#[derive(Debug, Clone)]
pub struct DetectorInput {
    /// `[N, 3, 640, 640]`, RGB, normalised.
    pub image: Array4<f32>,
    /// `[N, 2]` = `[640 / h, 640 / w]`, as PaddleDetection's `scale_factor`.
    pub scale_factor: Array2<f32>,
}

/// Resizes each frame to 640×640 with `INTER_CUBIC`, ignoring aspect ratio,
/// and normalises with ImageNet mean/std (PaddleClas `DetResize` + `DetNormalizeImage`).
pub fn detector_input(frames: &[&Frame], backend: Backend) -> Result<DetectorInput> {
    let s = DET_SIZE as usize;
    let mut image = Array4::<f32>::zeros((frames.len(), 3, s, s));
    let out = image.as_slice_mut().expect("fresh array is contiguous");
    detector_into(frames, backend, out)?;
    Ok(DetectorInput {
        image,
        scale_factor: scale_factors(frames),
    })
}

/// [`detector_input`]'s image, written into `out` (`n × 3 × 640 × 640`
/// floats) on the CPU; `cuda` runs the same kernels' host build.
pub fn detector_into(frames: &[&Frame], backend: Backend, out: &mut [f32]) -> Result<()> {
    let plane = 3 * (DET_SIZE * DET_SIZE) as usize;
    if out.len() != frames.len() * plane {
        return Err(Error::Preprocess(format!(
            "the detector input of {} frames is {} floats, not {}",
            frames.len(),
            frames.len() * plane,
            out.len()
        )));
    }
    let norm = Normalizer::detector();
    for (frame, out) in frames.iter().zip(out.chunks_exact_mut(plane)) {
        match backend {
            Backend::Opencv => {
                let resized = resize(&frame.name, frame.rgb(), DET_SIZE, imgproc::INTER_CUBIC)?;
                norm.hwc_to_chw(bytes(&frame.name, &resized)?, out);
            }
            Backend::Kernels | Backend::Cuda => {
                let px = bytes(&frame.name, frame.rgb())?;
                let plan = DetectorPlan::new(&[layout(frame)], px.len(), DET_SIZE)?;
                host::detector(&plan, px, norm, out)?;
            }
        }
    }
    Ok(())
}

/// `[N, 2]` = `[640 / h, 640 / w]` per frame, as PaddleDetection's `scale_factor`.
pub fn scale_factors(frames: &[&Frame]) -> Array2<f32> {
    let mut scale_factor = Array2::<f32>::zeros((frames.len(), 2));
    for (i, frame) in frames.iter().enumerate() {
        // Paddle computes these in double precision, then casts to float32.
        scale_factor[[i, 0]] = (DET_SIZE as f64 / frame.height as f64) as f32;
        scale_factor[[i, 1]] = (DET_SIZE as f64 / frame.width as f64) as f32;
    }
    scale_factor
}

/// Crops `frame[y1:y2, x1:x2]`, resizes to 224×224 with `INTER_LINEAR` and
/// normalises (PaddleClas `ResizeImage` + `NormalizeImage`), writing into `out`
/// (`3 × 224 × 224` floats) on the CPU; `cuda` runs the same kernels' host build.
pub fn embedder_crop(
    frame: &Frame,
    crop: CropBox,
    out: &mut [f32],
    backend: Backend,
) -> Result<()> {
    let rect = Rect::new(crop.x1, crop.y1, crop.x2 - crop.x1, crop.y2 - crop.y1);
    if rect.width < 1
        || rect.height < 1
        || crop.x2 > frame.width as i32
        || crop.y2 > frame.height as i32
        || crop.x1 < 0
        || crop.y1 < 0
    {
        return Err(Error::image(
            &frame.name,
            format!(
                "crop {:?} is empty or outside the {}x{} image",
                crop.to_array(),
                frame.width,
                frame.height
            ),
        ));
    }
    let norm = Normalizer::embedder();
    match backend {
        Backend::Opencv => {
            let roi = Mat::roi(frame.rgb(), rect)
                .map_err(|e| Error::image(&frame.name, format!("crop failed: {e}")))?;
            let resized = resize(&frame.name, &roi, REC_SIZE, imgproc::INTER_LINEAR)?;
            norm.hwc_to_chw(bytes(&frame.name, &resized)?, out);
        }
        Backend::Kernels | Backend::Cuda => {
            let px = bytes(&frame.name, frame.rgb())?;
            let plan = RecogniserPlan::new(&[layout(frame)], px.len(), &[(0, crop)], REC_SIZE)?;
            host::recogniser(&plan, px, norm, out)?;
        }
    }
    Ok(())
}

/// A decoded frame as the only one of a batch buffer: its own pixels, rows packed.
fn layout(frame: &Frame) -> FrameLayout {
    FrameLayout {
        offset: 0,
        width: frame.width,
        height: frame.height,
        pitch: 3 * frame.width as usize,
    }
}

fn resize(
    name: &str,
    src: &impl opencv::core::ToInputArray,
    side: u32,
    interpolation: i32,
) -> Result<Mat> {
    let mut dst = Mat::default();
    // dsize with fx = fy = 0 makes OpenCV use side/width as the scale, the same
    // double that `cv2.resize(fx=side/width)` passes in the reference.
    imgproc::resize(
        src,
        &mut dst,
        Size::new(side as i32, side as i32),
        0.0,
        0.0,
        interpolation,
    )
    .map_err(|e| Error::image(name, format!("resize failed: {e}")))?;
    Ok(dst)
}

fn bytes<'m>(name: &str, mat: &'m Mat) -> Result<&'m [u8]> {
    mat.data_bytes()
        .map_err(|e| Error::image(name, format!("unexpected pixel layout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Scalar, CV_8UC3};

    fn frame(w: i32, h: i32) -> Frame {
        let m = Mat::new_rows_cols_with_default(h, w, CV_8UC3, Scalar::new(0.0, 128.0, 255.0, 0.0))
            .unwrap();
        Frame::from_rgb("t", m).unwrap()
    }

    #[test]
    fn detector_input_is_chw_normalised_with_scale_factors() {
        let f = frame(320, 160);
        let d = detector_input(&[&f, &f], Backend::Opencv).unwrap();
        let k = detector_input(&[&f, &f], Backend::Kernels).unwrap();
        assert_eq!(d.image, k.image);
        assert_eq!(d.scale_factor, k.scale_factor);
        assert_eq!(d.image.shape(), &[2, 3, 640, 640]);
        assert_eq!(d.scale_factor.row(1).to_vec(), vec![4.0, 2.0]);
        // R=0, G=128, B=255 through ImageNet mean/std.
        assert!((d.image[[1, 0, 10, 10]] - (0.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((d.image[[1, 1, 10, 10]] - (128.0 / 255.0 - 0.456) / 0.224).abs() < 1e-5);
        assert!((d.image[[0, 2, 639, 639]] - (1.0 - 0.406) / 0.225).abs() < 1e-5);
    }

    #[test]
    fn crop_outside_the_image_is_an_error() {
        let f = frame(50, 40);
        let mut out = vec![0.0; 3 * 224 * 224];
        assert!(embedder_crop(
            &f,
            CropBox {
                x1: 0,
                y1: 0,
                x2: 50,
                y2: 40
            },
            &mut out,
            Backend::Opencv
        )
        .is_ok());
        let err = embedder_crop(
            &f,
            CropBox {
                x1: 10,
                y1: 0,
                x2: 10,
                y2: 40,
            },
            &mut out,
            Backend::Opencv,
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty or outside"));
        assert!(embedder_crop(
            &f,
            CropBox {
                x1: 0,
                y1: 0,
                x2: 51,
                y2: 40
            },
            &mut out,
            Backend::Kernels
        )
        .is_err());
    }
}
