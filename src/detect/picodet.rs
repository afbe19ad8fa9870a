//! PicoDet-LCNet mainbody, in either of its two ONNX export forms.
//!
//! - **NMS in the graph** (paddle2onnx of the official inference model):
//!   outputs `[K, 6]` rows `[class, score, x1, y1, x2, y2]` in original
//!   pixels and `[N]` counts. The graph's NMS only handles batch 1.
//! - **Before NMS**: `[N, A, 4]` boxes in 640-input pixels and `[N, C, A]`
//!   sigmoid scores. NMS runs here ([`super::nms`]), so this form batches.
//!
//! The form is told by output shapes, not names: paddle2onnx names every
//! output `fetch_name_N`.

use ndarray::Array2;

use crate::config::DetectorSettings;
use crate::detect::{nms, select, Detection};
use crate::engine::{describe, Arena, Engine, Feed, Output, Place, TensorSpec};
use crate::error::{Error, Result};
use crate::geometry::BBox;
use crate::input::Frame;
use crate::preprocess::DET_SIZE;

/// Which export of the detector is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportForm {
    /// `multiclass_nms3` inside the graph; batch 1.
    NmsInGraph,
    /// Decoded boxes and scores; NMS on the host; batches.
    PreNms,
}

/// The detector's outputs for one call, before decoding.
#[derive(Debug)]
pub struct RawDetections(Vec<Output>);

/// The mainbody detector.
#[derive(Debug)]
pub struct PicoDet {
    engine: Engine,
    form: ExportForm,
    image_input: String,
    scale_input: Option<String>,
    im_shape_input: Option<String>,
    max_batch: usize,
    settings: DetectorSettings,
    /// The image input, for `max_batch` frames, on the engine's GPU or the host.
    arena: Arena,
}

impl PicoDet {
    /// Wraps a loaded detector model, checking its inputs and outputs. Its
    /// input buffer is on `place` when the engine can read it there (the
    /// GPU the preprocessing runs on), on the host otherwise.
    pub fn new(engine: Engine, settings: &DetectorSettings, place: Place) -> Result<PicoDet> {
        let path = engine.path().to_path_buf();
        let bad = |what: String| Error::model(&path, what);
        let mut image_input = None;
        let (mut scale_input, mut im_shape_input) = (None, None);
        for input in engine.inputs() {
            match input.name.as_str() {
                "scale_factor" => scale_input = Some(input.name.clone()),
                "im_shape" => im_shape_input = Some(input.name.clone()),
                _ if input.shape.len() == 4 && image_input.is_none() => image_input = Some(input.clone()),
                _ => {
                    return Err(bad(format!(
                        "unexpected detector input {input}; expected image f32[N,3,640,640], and optionally scale_factor f32[N,2] and im_shape f32[N,2]"
                    )))
                }
            }
        }
        let image = image_input.ok_or_else(|| {
            bad(format!(
                "no image input f32[N,3,640,640]; the model's inputs are: {}",
                describe(engine.inputs())
            ))
        })?;
        let side = DET_SIZE as i64;
        let fits = |got: i64, want: i64| got == want || got < 0;
        if !(fits(image.shape[1], 3) && fits(image.shape[2], side) && fits(image.shape[3], side)) {
            return Err(bad(format!(
                "detector input {image} does not take [N,3,{side},{side}] images"
            )));
        }
        let form = form_of(engine.outputs()).ok_or_else(|| {
            bad(format!(
                "outputs {} are neither the NMS-in-graph form ([K,6] boxes, [N] counts) nor the pre-NMS form ([N,A,4] boxes, [N,C,A] scores)",
                describe(engine.outputs())
            ))
        })?;
        if form == ExportForm::NmsInGraph && scale_input.is_none() {
            return Err(bad("NMS-in-graph detector without a scale_factor input: its boxes could not be mapped back to the image".into()));
        }
        let max_batch = match (form, image.shape[0]) {
            (ExportForm::NmsInGraph, _) | (_, 1) => 1,
            (ExportForm::PreNms, n) if n < 0 => settings.max_batch,
            (_, n) => {
                return Err(bad(format!(
                    "fixed batch of {n} is not supported; export with a dynamic or unit batch"
                )))
            }
        };
        let len = max_batch * 3 * (DET_SIZE * DET_SIZE) as usize;
        let arena = match engine.device() {
            Some(d) if place == Place::Cuda(d.ordinal()) => Arena::cuda(d, len)?,
            _ => Arena::host(len),
        };
        tracing::info!(model = %path.display(), ?form, max_batch, buffers = %arena.place(), "detector ready");
        Ok(PicoDet {
            arena,
            engine,
            form,
            image_input: image.name,
            scale_input,
            im_shape_input,
            max_batch,
            settings: settings.clone(),
        })
    }

    /// The export form in use.
    pub fn form(&self) -> ExportForm {
        self.form
    }

    /// Most frames per [`PicoDet::infer`] call.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where its image input buffer lives.
    pub fn input_place(&self) -> Place {
        self.arena.place()
    }

    /// The image input buffer the preprocessing writes a batch into
    /// (`max_batch × 3 × 640 × 640` floats).
    pub fn input_mut(&mut self) -> &mut Arena {
        &mut self.arena
    }

    /// Runs the model on the first `n` images of the input buffer, at most
    /// [`PicoDet::max_batch`], whose `[n, 2]` scale factors are `scale_factor`.
    pub fn infer(&mut self, n: usize, scale_factor: &Array2<f32>) -> Result<RawDetections> {
        if n == 0 || n > self.max_batch || scale_factor.dim() != (n, 2) {
            return Err(Error::Runtime(format!(
                "a detector batch of {n} frames with {} scale factors; it takes 1 to {}",
                scale_factor.nrows(),
                self.max_batch
            )));
        }
        let s = DET_SIZE as usize;
        let im_shape = Array2::<f32>::from_elem((n, 2), DET_SIZE as f32);
        let mut feeds = vec![(
            self.image_input.as_str(),
            Feed::Arena(&mut self.arena, vec![n, 3, s, s]),
        )];
        if let Some(name) = &self.scale_input {
            feeds.push((name, Feed::Array(scale_factor.view().into_dyn())));
        }
        if let Some(name) = &self.im_shape_input {
            feeds.push((name, Feed::Array(im_shape.view().into_dyn())));
        }
        Ok(RawDetections(self.engine.run("detector", feeds)?))
    }

    /// Turns raw outputs into the selected detections of each frame, in original pixels.
    pub fn decode(
        &self,
        raw: RawDetections,
        frames: &[&Frame],
        scale_factor: &Array2<f32>,
    ) -> Result<Vec<Vec<Detection>>> {
        let all = match self.form {
            ExportForm::NmsInGraph => self.decode_nms_rows(&raw.0, frames.len())?,
            ExportForm::PreNms => self.decode_pre_nms(&raw.0, scale_factor)?,
        };
        let s = &self.settings;
        Ok(all
            .into_iter()
            .zip(frames)
            .map(|(dets, f)| select(dets, s.max_results, s.threshold, f.width, f.height))
            .collect())
    }

    fn decode_nms_rows(&self, out: &[Output], frames: usize) -> Result<Vec<Vec<Detection>>> {
        let [a, b] = out else {
            return Err(self.bad_output());
        };
        let (rows, counts) = if a.shape.len() == 2 { (a, b) } else { (b, a) };
        if rows.shape.len() != 2 || rows.shape[1] != 6 {
            return Err(self.bad_output());
        }
        let total = rows.shape[0];
        let mut per_frame = Vec::with_capacity(frames);
        let mut start = 0usize;
        for i in 0..frames {
            let count = counts
                .data
                .get(i)
                .map_or(total, |&c| c.max(0.0) as usize)
                .min(total - start);
            let dets = rows.data[start * 6..(start + count) * 6]
                .chunks_exact(6)
                // Paddle pads "no detection" with a row of class -1.
                .filter(|r| r[0] >= 0.0)
                .map(|r| Detection { bbox: BBox::new(r[2], r[3], r[4], r[5]), score: r[1], class_id: r[0] as i32 })
                .collect();
            per_frame.push(dets);
            start += count;
        }
        Ok(per_frame)
    }

    fn decode_pre_nms(
        &self,
        out: &[Output],
        scale_factor: &Array2<f32>,
    ) -> Result<Vec<Vec<Detection>>> {
        let [a, b] = out else {
            return Err(self.bad_output());
        };
        let (boxes, scores) = if a.shape.last() == Some(&4) {
            (a, b)
        } else {
            (b, a)
        };
        if boxes.shape.len() != 3 || scores.shape.len() != 3 {
            return Err(self.bad_output());
        }
        let (n, anchors) = (boxes.shape[0], boxes.shape[1]);
        let classes = scores.shape[1];
        if scores.shape != [n, classes, anchors]
            || boxes.shape != [n, anchors, 4]
            || scale_factor.nrows() != n
        {
            return Err(self.bad_output());
        }
        let mut per_frame = Vec::with_capacity(n);
        for i in 0..n {
            let b: Vec<[f32; 4]> = boxes.data[i * anchors * 4..(i + 1) * anchors * 4]
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect();
            let s = &scores.data[i * classes * anchors..(i + 1) * classes * anchors];
            let (sy, sx) = (scale_factor[[i, 0]], scale_factor[[i, 1]]);
            let dets = nms::multiclass_nms(&b, s, classes, &self.settings.nms)
                .into_iter()
                .map(|d| Detection {
                    bbox: BBox::new(
                        d.bbox.x1 / sx,
                        d.bbox.y1 / sy,
                        d.bbox.x2 / sx,
                        d.bbox.y2 / sy,
                    ),
                    ..d
                })
                .collect();
            per_frame.push(dets);
        }
        Ok(per_frame)
    }

    fn bad_output(&self) -> Error {
        Error::model(
            self.engine.path(),
            format!(
                "detector returned outputs of unexpected shape for the {:?} form",
                self.form
            ),
        )
    }
}

fn form_of(outputs: &[TensorSpec]) -> Option<ExportForm> {
    if outputs.len() != 2 {
        return None;
    }
    let ranks = (outputs[0].shape.len(), outputs[1].shape.len());
    let last = |s: &TensorSpec| s.shape.last().copied();
    match ranks {
        (2, 1) if last(&outputs[0]) == Some(6) => Some(ExportForm::NmsInGraph),
        (1, 2) if last(&outputs[1]) == Some(6) => Some(ExportForm::NmsInGraph),
        (3, 3) if last(&outputs[0]) == Some(4) || last(&outputs[1]) == Some(4) => {
            Some(ExportForm::PreNms)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shape: Vec<i64>) -> TensorSpec {
        TensorSpec {
            name: "fetch_name_0".into(),
            shape,
            dtype: "float32".into(),
        }
    }

    #[test]
    fn tells_the_export_forms_apart_by_shape() {
        assert_eq!(
            form_of(&[spec(vec![-1, 6]), spec(vec![-1])]),
            Some(ExportForm::NmsInGraph)
        );
        assert_eq!(
            form_of(&[spec(vec![-1, 8500, 4]), spec(vec![-1, 1, 8500])]),
            Some(ExportForm::PreNms)
        );
        assert_eq!(
            form_of(&[spec(vec![-1, 1, 8500]), spec(vec![-1, 8500, 4])]),
            Some(ExportForm::PreNms)
        );
        assert_eq!(form_of(&[spec(vec![-1, 512])]), None);
        assert_eq!(form_of(&[spec(vec![-1, 5]), spec(vec![-1])]), None);
    }
}
