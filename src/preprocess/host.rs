//! The preprocessing kernels (`kernels.cu`) compiled for the host by
//! build.rs and run over every pixel in turn: `preprocess.backend =
//! "kernels"`. Bit for bit what the GPU computes, and what OpenCV 4.x's
//! SSE path computes on x86, on any CPU (on ARM, OpenCV's own NEON path
//! rounds a little differently).

use std::os::raw::c_int;

use super::plan::{DetectorPlan, RecogniserPlan};
use super::Normalizer;
use crate::error::{Error, Result};

extern "C" {
    fn shitu_det_preprocess_host(
        base: *const u8,
        frames: *const i64,
        n: c_int,
        xofs: *const i32,
        alpha: *const i16,
        yofs: *const i32,
        beta: *const i16,
        side: c_int,
        lut: *const f32,
        dst: *mut f32,
    );
    fn shitu_rec_preprocess_host(
        base: *const u8,
        frames: *const i64,
        boxes: *const i32,
        crops: c_int,
        xofs: *const i32,
        alpha: *const i16,
        yofs: *const i32,
        beta: *const i16,
        side: c_int,
        lut: *const f32,
        dst: *mut f32,
    );
}

fn out_len(what: &str, need: usize, got: usize) -> Result<()> {
    if got < need {
        return Err(Error::Preprocess(format!(
            "the {what} needs {need} floats, the buffer has {got}"
        )));
    }
    Ok(())
}

fn side(side: u32) -> Result<c_int> {
    c_int::try_from(side).map_err(|_| Error::Preprocess(format!("output side {side} is too large")))
}

/// The detector's input for every frame of `plan`, read from `bytes` (the
/// buffer the plan was checked against), written to `out`.
pub fn detector(
    plan: &DetectorPlan,
    bytes: &[u8],
    norm: &Normalizer,
    out: &mut [f32],
) -> Result<()> {
    plan.check_buffer(bytes.len())?;
    out_len("detector input", plan.output_len(), out.len())?;
    let lut = norm.flat();
    let t = &plan.tables;
    // SAFETY: the plan checked every frame to lie inside a buffer of this
    // length and holds `side` table entries per frame; `out` was checked
    // above; the C code reads and writes nothing else.
    unsafe {
        shitu_det_preprocess_host(
            bytes.as_ptr(),
            plan.frames.as_ptr(),
            plan.len() as c_int,
            t.xofs.as_ptr(),
            t.alpha.as_ptr(),
            t.yofs.as_ptr(),
            t.beta.as_ptr(),
            side(plan.side)?,
            lut.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    Ok(())
}

/// The recogniser's input for every crop of `plan`, read from `bytes`,
/// written to `out`.
pub fn recogniser(
    plan: &RecogniserPlan,
    bytes: &[u8],
    norm: &Normalizer,
    out: &mut [f32],
) -> Result<()> {
    plan.check_buffer(bytes.len())?;
    out_len("recogniser input", plan.output_len(), out.len())?;
    let lut = norm.flat();
    let t = &plan.tables;
    // SAFETY: as for `detector`, and every box was checked to lie inside its frame.
    unsafe {
        shitu_rec_preprocess_host(
            bytes.as_ptr(),
            plan.frames.as_ptr(),
            plan.boxes.as_ptr(),
            plan.len() as c_int,
            t.xofs.as_ptr(),
            t.alpha.as_ptr(),
            t.yofs.as_ptr(),
            t.beta.as_ptr(),
            side(plan.side)?,
            lut.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    Ok(())
}
