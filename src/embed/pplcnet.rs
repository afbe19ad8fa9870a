//! PPLCNetV2_base_ShiTu + BNNeck: `[N, 3, 224, 224]` → `[N, D]` features.

use ndarray::Array4;

use crate::embed::l2_normalize;
use crate::engine::{describe, Engine};
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::input::Frame;
use crate::preprocess::{embedder_crop, Backend, REC_SIZE};

/// The recogniser: crops in, unit-length features out.
#[derive(Debug)]
pub struct Embedder {
    engine: Engine,
    input: String,
    dim: usize,
    max_batch: usize,
    preprocess: Backend,
}

impl Embedder {
    /// Wraps a loaded recogniser model, checking its input and output
    /// shapes; crops are prepared by the `preprocess` backend.
    pub fn new(engine: Engine, max_batch: usize, preprocess: Backend) -> Result<Embedder> {
        let path = engine.path().to_path_buf();
        let bad = |what: String| Error::model(&path, what);
        let side = REC_SIZE as i64;
        let fits = |got: i64, want: i64| got == want || got < 0;
        let [input] = engine.inputs() else {
            return Err(bad(format!(
                "expected one input x f32[N,3,{side},{side}], found: {}",
                describe(engine.inputs())
            )));
        };
        if input.shape.len() != 4
            || !fits(input.shape[1], 3)
            || !fits(input.shape[2], side)
            || !fits(input.shape[3], side)
        {
            return Err(bad(format!(
                "input {input} does not take [N,3,{side},{side}] crops"
            )));
        }
        let [output] = engine.outputs() else {
            return Err(bad(format!(
                "expected one output features f32[N,D], found: {}",
                describe(engine.outputs())
            )));
        };
        let dim = match output.shape.as_slice() {
            [_, d] if *d > 0 => *d as usize,
            _ => {
                return Err(bad(format!(
                    "output {output} is not [N,D] features with a fixed D"
                )))
            }
        };
        let max_batch = if input.shape[0] == 1 { 1 } else { max_batch };
        tracing::info!(model = %path.display(), dim, max_batch, "embedder ready");
        Ok(Embedder {
            input: input.name.clone(),
            engine,
            dim,
            max_batch,
            preprocess,
        })
    }

    /// Feature length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Most crops per [`Embedder::infer`] call.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// sha256 of the model file, recorded in galleries built with it.
    pub fn model_sha256(&self) -> &str {
        self.engine.model_sha256()
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Prepares a batch of crops (each a frame and a box within it).
    pub fn prepare(&self, crops: &[(&Frame, CropBox)]) -> Result<Array4<f32>> {
        let s = REC_SIZE as usize;
        let mut batch = Array4::<f32>::zeros((crops.len(), 3, s, s));
        let plane = 3 * s * s;
        let data = batch.as_slice_mut().expect("fresh array is contiguous");
        for ((frame, crop), out) in crops.iter().zip(data.chunks_exact_mut(plane)) {
            embedder_crop(frame, *crop, out, self.preprocess)?;
        }
        Ok(batch)
    }

    /// Runs a prepared batch; returns `N × dim` unit-length features, row-major.
    pub fn infer(&mut self, batch: &Array4<f32>) -> Result<Vec<f32>> {
        let mut out = self
            .engine
            .run("embedder", &[(&self.input, batch.view().into_dyn())])?;
        let features = out
            .pop()
            .ok_or_else(|| Error::model(self.engine.path(), "embedder returned no output"))?;
        if features.shape != [batch.shape()[0], self.dim] {
            return Err(Error::model(
                self.engine.path(),
                format!("embedder returned shape {:?}", features.shape),
            ));
        }
        let mut data = features.data;
        l2_normalize(&mut data, self.dim);
        Ok(data)
    }

    /// Prepares and runs any number of crops in batches of at most [`Embedder::max_batch`].
    pub fn embed(&mut self, crops: &[(&Frame, CropBox)]) -> Result<Vec<f32>> {
        let mut all = Vec::with_capacity(crops.len() * self.dim);
        for chunk in crops.chunks(self.max_batch) {
            let batch = self.prepare(chunk)?;
            all.extend(self.infer(&batch)?);
        }
        Ok(all)
    }
}
