//! PPLCNetV2_base_ShiTu + BNNeck: `[N, 3, 224, 224]` → `[N, D]` features.

use crate::embed::cuda::L2Kernel;
use crate::embed::l2_normalize;
use crate::engine::{describe, Arena, Engine, Feed, OutputArena, Place};
use crate::error::{Error, Result};
use crate::geometry::CropBox;
use crate::gpu::DeviceRows;
use crate::input::Frame;
use crate::preprocess::{Backend, Preprocessor, REC_SIZE};

/// The recogniser: crops in, unit-length features out.
///
/// Its input ([`Embedder::input_mut`]) and output are buffers allocated once
/// for `max_batch` crops, on the GPU when the engine runs there and the
/// preprocessing does too (`preprocess.backend = "cuda"`), on the host
/// otherwise. On the GPU the features are normalised there and stay there
/// for the search ([`Features::Device`]).
#[derive(Debug)]
pub struct Embedder {
    engine: Engine,
    input: String,
    dim: usize,
    max_batch: usize,
    /// Preprocessing for [`Embedder::embed`]'s own calls (gallery builds, enrolment).
    preprocess: Preprocessor,
    arena: Arena,
    output: OutputArena,
    l2: Option<L2Kernel>,
}

/// Unit-length features of a batch, `rows × dim`, where they were computed.
#[derive(Debug, Clone, Copy)]
pub enum Features<'a> {
    /// In host memory.
    Host(&'a [f32]),
    /// On the GPU.
    Device(DeviceRows<'a>),
}

impl Features<'_> {
    /// The features in host memory (copied back from a GPU).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match self {
            Features::Host(v) => Ok(v.to_vec()),
            Features::Device(rows) => rows.to_host().map_err(Error::Gpu),
        }
    }
}

impl Embedder {
    /// Wraps a loaded recogniser model, checking its input and output
    /// shapes; crops are prepared by the `preprocess` backend (`cuda` on
    /// GPU `device_id`).
    pub fn new(
        engine: Engine,
        max_batch: usize,
        preprocess: Backend,
        device_id: i32,
    ) -> Result<Embedder> {
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
        let max_batch = if input.shape[0] == 1 {
            1
        } else {
            max_batch.max(1)
        };
        let preprocess = Preprocessor::new(preprocess, device_id);
        // On the GPU only when both the engine and the preprocessing are
        // there: anything else would copy across twice.
        let place = match (engine.device(), preprocess.place()) {
            (Some(d), Place::Cuda(p)) if d.ordinal() == p => Place::Cuda(p),
            _ => Place::Host,
        };
        let len = max_batch * 3 * (REC_SIZE * REC_SIZE) as usize;
        let arena = match (place, engine.device()) {
            (Place::Cuda(_), Some(d)) => Arena::cuda(d, len)?,
            _ => Arena::host(len),
        };
        let l2 = match (place, engine.device()) {
            (Place::Cuda(_), Some(d)) => Some(L2Kernel::new(d.clone())?),
            _ => None,
        };
        let output = engine.output_arena(&output.name.clone(), place)?;
        tracing::info!(model = %path.display(), dim, max_batch, buffers = %place, "embedder ready");
        Ok(Embedder {
            input: input.name.clone(),
            engine,
            dim,
            max_batch,
            preprocess,
            arena,
            output,
            l2,
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

    /// Where its input and output buffers live.
    pub fn place(&self) -> Place {
        self.arena.place()
    }

    /// The input buffer the preprocessing writes a batch of crops into
    /// (`max_batch × 3 × 224 × 224` floats).
    pub fn input_mut(&mut self) -> &mut Arena {
        &mut self.arena
    }

    /// Runs the first `n` crops of the input buffer; returns their
    /// `n × dim` unit-length features, on the host or the GPU.
    pub fn infer(&mut self, n: usize) -> Result<Features<'_>> {
        if n == 0 || n > self.max_batch {
            return Err(Error::Runtime(format!(
                "a recogniser batch of {n} crops; it takes 1 to {}",
                self.max_batch
            )));
        }
        let s = REC_SIZE as usize;
        let feeds = vec![(
            self.input.as_str(),
            Feed::Arena(&mut self.arena, vec![n, 3, s, s]),
        )];
        self.engine
            .run_into("embedder", feeds, &mut self.output, n)?;
        match self.output.place() {
            Place::Host => {
                let data = self.output.host_mut(n)?;
                l2_normalize(data, self.dim);
                Ok(Features::Host(self.output.host(n)?))
            }
            Place::Cuda(ordinal) => {
                let ptr = self.output.device_ptr(n)?;
                // SAFETY: the output arena holds n·dim floats at `ptr` on
                // this device, written by the run just queued on the
                // device's stream, and lives as long as `self`'s borrow.
                let rows = unsafe { DeviceRows::new(ptr, n, self.dim, ordinal) };
                let l2 = self
                    .l2
                    .as_ref()
                    .ok_or_else(|| Error::Gpu("feature normalisation is not loaded".into()))?;
                l2.apply(&rows)?;
                Ok(Features::Device(rows))
            }
        }
    }

    /// Prepares and runs any number of crops in batches of at most
    /// [`Embedder::max_batch`]; returns `N × dim` features in host memory.
    pub fn embed(&mut self, crops: &[(&Frame, CropBox)]) -> Result<Vec<f32>> {
        let mut all = Vec::with_capacity(crops.len() * self.dim);
        for chunk in crops.chunks(self.max_batch) {
            let frames: Vec<&Frame> = chunk.iter().map(|&(f, _)| f).collect();
            let boxes: Vec<(usize, CropBox)> = chunk
                .iter()
                .enumerate()
                .map(|(i, &(_, c))| (i, c))
                .collect();
            {
                let staged = self.preprocess.stage(&frames)?;
                staged.crops(&boxes, &mut self.arena)?;
            }
            let features = self.infer(chunk.len())?.to_vec()?;
            all.extend(features);
            self.preprocess.release()?;
        }
        Ok(all)
    }
}
