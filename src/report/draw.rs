//! Annotated images: boxes, labels and scores drawn on the frame.

use std::path::{Path, PathBuf};

use opencv::core::{Mat, Point, Rect, Scalar, Vector};
use opencv::{imgcodecs, imgproc};

use crate::error::{Error, Result};
use crate::input::Frame;
use crate::report::Recognition;

/// Draws `results` on a copy of `frame` and writes it as a JPEG into `dir`,
/// named after the frame. Returns the written path.
pub fn save_annotated(frame: &Frame, results: &[Recognition], dir: &Path) -> Result<PathBuf> {
    let fail = |e: opencv::Error| Error::image(&frame.name, format!("drawing failed: {e}"));
    let mut bgr = Mat::default();
    imgproc::cvt_color_def(frame.rgb(), &mut bgr, imgproc::COLOR_RGB2BGR).map_err(fail)?;
    let thickness = ((frame.width.max(frame.height) / 400) as i32).max(2);
    let scale = (frame.width.max(frame.height) as f64 / 1000.0).max(0.5);
    for (i, r) in results.iter().enumerate() {
        let colour = palette(i);
        let [x1, y1, x2, y2] = r.bbox;
        imgproc::rectangle(
            &mut bgr,
            Rect::new(x1, y1, x2 - x1, y2 - y1),
            colour,
            thickness,
            imgproc::LINE_8,
            0,
        )
        .map_err(fail)?;
        let text = format!("{} {:.3}", r.rec_docs, r.rec_scores);
        let mut baseline = 0;
        let size = imgproc::get_text_size(
            &text,
            imgproc::FONT_HERSHEY_SIMPLEX,
            scale,
            1,
            &mut baseline,
        )
        .map_err(fail)?;
        // The label sits above the box, or inside it when the box touches the top.
        let top = if y1 - size.height - 6 >= 0 {
            y1 - size.height - 6
        } else {
            y1
        };
        imgproc::rectangle(
            &mut bgr,
            Rect::new(x1, top, size.width + 6, size.height + 6),
            colour,
            imgproc::FILLED,
            imgproc::LINE_8,
            0,
        )
        .map_err(fail)?;
        imgproc::put_text(
            &mut bgr,
            &text,
            Point::new(x1 + 3, top + size.height + 2),
            imgproc::FONT_HERSHEY_SIMPLEX,
            scale,
            Scalar::all(255.0),
            1,
            imgproc::LINE_AA,
            false,
        )
        .map_err(fail)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let stem = Path::new(&frame.name)
        .file_stem()
        .map_or_else(|| "frame".into(), |s| s.to_string_lossy().into_owned());
    let out = dir.join(format!("{stem}.jpg"));
    let name = out.to_string_lossy().into_owned();
    let ok = imgcodecs::imwrite(&name, &bgr, &Vector::new()).map_err(fail)?;
    if !ok {
        return Err(Error::image(&frame.name, format!("could not write {name}")));
    }
    Ok(out)
}

fn palette(i: usize) -> Scalar {
    const COLOURS: [(f64, f64, f64); 6] = [
        (0.0, 140.0, 255.0),
        (60.0, 180.0, 75.0),
        (230.0, 50.0, 240.0),
        (255.0, 130.0, 0.0),
        (0.0, 0.0, 220.0),
        (128.0, 128.0, 0.0),
    ];
    let (b, g, r) = COLOURS[i % COLOURS.len()];
    Scalar::new(b, g, r, 0.0)
}
