//! The [`Pipeline`]: frames in, recognitions out. The CLI, the daemon, the
//! benchmarks and the tests all drive this one type.
//!
//! Work is batched across frames: the detector takes up to
//! `detector.max_batch` frames per call (pre-NMS export), and the crops of all
//! frames share embedder batches of up to `embedder.max_batch`, where the
//! reference runs every crop alone.
//!
//! The CPU path and the GPU path are this one sequence of stages; what
//! differs is where the data between them lives. With `preprocess.backend
//! = "cuda"` and a GPU provider, the frames are staged on the device once,
//! the kernels write each engine's input in place, only the detector's
//! small outputs come back for NMS, the features are normalised and
//! searched on the device (`search.device = "cuda"`), and the top-k comes
//! back (with the features, 2 KB a crop, for the answer).

use std::time::Instant;

use crate::config::{PreprocessBackend, Provider, Settings, WholeImage};
use crate::detect::{Detection, PicoDet};
use crate::embed::{Embedder, Features};
use crate::engine::{BatchProfile, Engine, Place};
use crate::error::Result;
use crate::geometry::CropBox;
use crate::gpu::FramePool;
use crate::input::Frame;
use crate::preprocess::Preprocessor;
use crate::report::{finalize_indexed, Match, Recognition, StageTimes};
use crate::search::Gallery;

/// Everything the pipeline found in one frame.
#[derive(Debug, Clone)]
pub struct Recognized {
    /// Detector boxes after selection and clipping.
    pub detections: Vec<Detection>,
    /// The crops that were embedded: one per detection, then the whole frame if the policy says so.
    pub crops: Vec<CropBox>,
    /// Unit-length features of the crops, `crops.len() × dim`, row-major.
    pub features: Vec<f32>,
    /// Each crop's best gallery match.
    pub matches: Vec<Match>,
    /// The final answer.
    pub results: Vec<Recognition>,
    /// For each result, the index of its crop in `crops`.
    pub result_crops: Vec<usize>,
    /// Each crop's best gallery matches, best first, as many as the query's `return_k`.
    pub top_k: Vec<Vec<(String, f32)>>,
    /// This frame's share of each stage's time (`decode` is left to the caller).
    pub timings: StageTimes,
}

/// Per-frame overrides of the search settings (a daemon request's options).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Query {
    /// Neighbours fetched and reported per crop; `search.return_k` if `None`.
    pub return_k: Option<usize>,
    /// Report a crop whose best match scores at least this; `search.score_threshold` if `None`.
    pub score_threshold: Option<f32>,
}

/// Detector, embedder and gallery, loaded and checked against each other.
#[derive(Debug)]
pub struct Pipeline {
    preprocess: Preprocessor,
    detector: PicoDet,
    embedder: Embedder,
    gallery: Gallery,
    settings: Settings,
}

impl PicoDet {
    /// Loads the detector the settings name.
    pub fn open(settings: &Settings) -> Result<PicoDet> {
        let d = &settings.detector;
        let engine = Engine::open(
            "detector",
            &d.model,
            &settings.engine,
            settings.gpu.device_id,
            BatchProfile {
                min: 1,
                opt: d.opt_batch,
                max: d.max_batch,
                side: crate::preprocess::DET_SIZE,
            },
        )?;
        // The input buffer goes on the GPU the preprocessing writes from.
        let place = match (
            settings.preprocess.backend,
            usize::try_from(settings.gpu.device_id),
        ) {
            (PreprocessBackend::Cuda, Ok(ordinal)) => Place::Cuda(ordinal),
            _ => Place::Host,
        };
        PicoDet::new(engine, &settings.detector, place)
    }
}

impl Embedder {
    /// Loads the recogniser the settings name.
    pub fn open(settings: &Settings) -> Result<Embedder> {
        let e = &settings.embedder;
        let engine = Engine::open(
            "embedder",
            &e.model,
            &settings.engine,
            settings.gpu.device_id,
            BatchProfile {
                min: 1,
                opt: e.opt_batch,
                max: e.max_batch,
                side: crate::preprocess::REC_SIZE,
            },
        )?;
        Embedder::new(
            engine,
            settings.embedder.max_batch,
            settings.preprocess.backend,
            settings.gpu.device_id,
        )
    }
}

impl Pipeline {
    /// Loads both models and the gallery, and refuses a gallery built by another recogniser.
    pub fn open(settings: &Settings) -> Result<Pipeline> {
        Pipeline::open_with(settings, false)
    }

    /// [`Pipeline::open`], as the gallery's one writer (the daemon): takes
    /// the gallery's lock, so [`Pipeline::enroll`] and [`Pipeline::remove`] work.
    pub fn open_writable(settings: &Settings) -> Result<Pipeline> {
        Pipeline::open_with(settings, true)
    }

    fn open_with(settings: &Settings, writable: bool) -> Result<Pipeline> {
        settings.validate()?;
        let tuning = settings.into();
        let gallery = if writable {
            Gallery::open_for_write(&settings.search.index, tuning)?
        } else {
            Gallery::open(&settings.search.index, tuning)?
        };
        if gallery.is_empty() {
            return Err(crate::Error::gallery(
                gallery.dir(),
                "the gallery is empty: there is nothing to recognise against",
            ));
        }
        let embedder = Embedder::open(settings)?;
        gallery.check_model(embedder.model_sha256(), &settings.embedder.model)?;
        if gallery.manifest().dim != embedder.dim() {
            return Err(crate::Error::gallery(
                gallery.dir(),
                format!(
                    "holds {}-d vectors but the recogniser makes {}-d features",
                    gallery.manifest().dim,
                    embedder.dim()
                ),
            ));
        }
        let detector = PicoDet::open(settings)?;
        let preprocess = Preprocessor::new(settings.preprocess.backend, settings.gpu.device_id);
        tracing::info!(
            preprocess = %preprocess.backend(),
            frames_on = %preprocess.place(),
            detector_input = %detector.input_place(),
            embedder_buffers = %embedder.place(),
            search = %gallery.searcher(),
            "pipeline ready"
        );
        Ok(Pipeline {
            preprocess,
            detector,
            embedder,
            gallery,
            settings: settings.clone(),
        })
    }

    /// The memory to decode this pipeline's frames into
    /// ([`crate::input::decode_in`]): page-locked where preprocessing runs
    /// on a GPU, so a frame goes from the decoder to the device by DMA.
    pub fn frame_pool(&self) -> FramePool {
        self.preprocess.frame_pool().clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The detector.
    pub fn detector(&self) -> &PicoDet {
        &self.detector
    }

    /// The execution providers that run the detector and the embedder, after any fallback.
    pub fn providers(&self) -> (Provider, Provider) {
        (
            self.detector.engine().provider(),
            self.embedder.engine().provider(),
        )
    }

    /// The gallery.
    pub fn gallery(&self) -> &Gallery {
        &self.gallery
    }

    /// Recognises every frame. Frames are independent: the answer for one does
    /// not depend on which others share its batch.
    pub fn recognize(&mut self, frames: &[Frame]) -> Result<Vec<Recognized>> {
        self.recognize_with(frames, &vec![Query::default(); frames.len()])
    }

    /// [`Pipeline::recognize`] with per-frame search options; `queries` pairs with `frames`.
    pub fn recognize_with(
        &mut self,
        frames: &[Frame],
        queries: &[Query],
    ) -> Result<Vec<Recognized>> {
        if queries.len() != frames.len() {
            return Err(crate::Error::Config(format!(
                "{} queries for {} frames",
                queries.len(),
                frames.len()
            )));
        }
        let refs: Vec<&Frame> = frames.iter().collect();
        let mut times = vec![StageTimes::default(); frames.len()];
        let s = &self.settings.search;
        let k_of = |q: &Query| q.return_k.unwrap_or(s.return_k).max(1);
        let k_max = queries.iter().map(k_of).max().unwrap_or(s.return_k);

        // Frames go where the preprocessing reads them, once for both stages.
        let t = Instant::now();
        let staged = self.preprocess.stage(&refs)?;
        let staging = ms(t) / frames.len().max(1) as f64;

        // Detect, in detector-sized batches.
        let mut detections = Vec::with_capacity(frames.len());
        let starts = (0..frames.len()).step_by(self.detector.max_batch());
        for start in starts {
            let range = start..(start + self.detector.max_batch()).min(frames.len());
            let n = range.len() as f64;
            let t = Instant::now();
            let scale = staged.detector(range.clone(), self.detector.input_mut())?;
            let pre = ms(t);
            let t = Instant::now();
            let raw = self.detector.infer(range.len(), &scale)?;
            let infer = ms(t);
            let t = Instant::now();
            detections.extend(self.detector.decode(raw, &refs[range.clone()], &scale)?);
            let post = ms(t);
            for tm in &mut times[range] {
                tm.det_pre = staging + pre / n;
                tm.det_infer = infer / n;
                tm.det_post = post / n;
            }
        }

        // Candidates: detections, then the whole frame as the policy says.
        let policy = self.settings.detector.whole_image;
        let crops: Vec<Vec<CropBox>> = detections
            .iter()
            .zip(frames)
            .map(|(dets, f)| {
                let mut c: Vec<CropBox> = dets.iter().map(|d| d.bbox.to_crop()).collect();
                let whole = policy == WholeImage::Always
                    || (policy == WholeImage::WhenEmpty && dets.is_empty());
                if whole {
                    c.push(CropBox::whole(f.width, f.height));
                }
                c
            })
            .collect();
        let flat: Vec<(usize, CropBox)> = crops
            .iter()
            .enumerate()
            .flat_map(|(i, cs)| cs.iter().map(move |&c| (i, c)))
            .collect();

        // Embed all crops of all frames together, and search each batch
        // where its features are.
        let dim = self.embedder.dim();
        let mut features = Vec::with_capacity(flat.len() * dim);
        let mut neighbours = Vec::with_capacity(flat.len());
        let mut search_ms = 0.0;
        for chunk in flat.chunks(self.embedder.max_batch()) {
            let t = Instant::now();
            staged.crops(chunk, self.embedder.input_mut())?;
            let pre = ms(t) / chunk.len() as f64;
            let t = Instant::now();
            let batch = self.embedder.infer(chunk.len())?;
            let infer = ms(t) / chunk.len() as f64;
            let t = Instant::now();
            neighbours.extend(match &batch {
                Features::Host(f) => self.gallery.search(f, k_max)?,
                Features::Device(rows) => self.gallery.search_device(rows, k_max)?,
            });
            features.extend(batch.to_vec()?);
            search_ms += ms(t);
            for &(i, _) in chunk {
                times[i].rec_pre += pre;
                times[i].rec_infer += infer;
            }
        }
        drop(staged);
        self.preprocess.release()?;

        // Each frame's answer.
        let t = Instant::now();
        let mut out = Vec::with_capacity(frames.len());
        let mut next = 0;
        for (i, (dets, cs)) in detections.into_iter().zip(crops).enumerate() {
            let matches: Vec<Match> = cs
                .iter()
                .enumerate()
                .map(|(j, &crop)| {
                    let best = neighbours.get(next + j).and_then(|n| n.first());
                    Match {
                        crop,
                        label: best
                            .and_then(|b| self.gallery.item(b.id))
                            .map(|item| item.label.clone()),
                        score: best.map_or(f32::NEG_INFINITY, |b| b.score),
                    }
                })
                .collect();
            let threshold = queries[i].score_threshold.unwrap_or(s.score_threshold);
            let (result_crops, results) =
                finalize_indexed(&matches, threshold, s.rec_nms_threshold)
                    .into_iter()
                    .unzip();
            let k = k_of(&queries[i]);
            let top_k = (0..cs.len())
                .map(|j| {
                    let hits = neighbours
                        .get(next + j)
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    hits.iter()
                        .take(k)
                        .filter_map(|n| {
                            self.gallery
                                .item(n.id)
                                .map(|item| (item.label.clone(), n.score))
                        })
                        .collect()
                })
                .collect();
            let feats = features[next * dim..(next + cs.len()) * dim].to_vec();
            next += cs.len();
            out.push(Recognized {
                detections: dets,
                crops: cs,
                features: feats,
                matches,
                results,
                result_crops,
                top_k,
                timings: times[i],
            });
        }
        let search = (search_ms + ms(t)) / frames.len().max(1) as f64;
        for r in &mut out {
            r.timings.search = search;
        }
        Ok(out)
    }
}

impl Pipeline {
    /// Enrols a product photo under `label`: its whole-frame feature goes into
    /// the gallery. Returns the new item's id once the change is durable.
    pub fn enroll(
        &mut self,
        photo: &Frame,
        label: &str,
        source: &str,
        sha256: Option<String>,
    ) -> Result<i64> {
        let feature = self.feature(photo)?;
        let id = self.gallery.add(label, source, sha256, &feature)?;
        self.gallery
            .compact_if_due(self.settings.search.compact_after)?;
        Ok(id)
    }

    /// The whole-frame feature of a product photo, as enrolling computes it.
    pub fn feature(&mut self, photo: &Frame) -> Result<Vec<f32>> {
        self.embedder
            .embed(&[(photo, CropBox::whole(photo.width, photo.height))])
    }

    /// Applies gallery changes published on the box's line (see
    /// [`crate::search::line`]).
    pub fn apply_line(
        &mut self,
        changes: Vec<crate::search::line::Logged>,
    ) -> Result<crate::search::gallery::LineApplied> {
        let applied = self.gallery.apply_line(changes)?;
        self.gallery
            .compact_if_due(self.settings.search.compact_after)?;
        Ok(applied)
    }

    /// Removes gallery items, all or none.
    pub fn remove(&mut self, ids: &[i64]) -> Result<()> {
        self.gallery.remove(ids)?;
        self.gallery
            .compact_if_due(self.settings.search.compact_after)
    }

    /// The recogniser alone: embeds the given crops of `frame` and returns
    /// each crop's `k` best gallery labels with their scores, best first.
    pub fn rank_crops(
        &mut self,
        frame: &Frame,
        crops: &[CropBox],
        k: usize,
    ) -> Result<Vec<Vec<(String, f32)>>> {
        let pairs: Vec<(&Frame, CropBox)> = crops.iter().map(|&c| (frame, c)).collect();
        let features = self.embedder.embed(&pairs)?;
        let hits = self.gallery.search(&features, k)?;
        Ok(hits
            .into_iter()
            .map(|h| {
                h.into_iter()
                    .filter_map(|n| self.gallery.item(n.id).map(|i| (i.label.clone(), n.score)))
                    .collect()
            })
            .collect())
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
