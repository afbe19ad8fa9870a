//! The `recognize` output: one JSON object per line, per image. Scripts on
//! the line consume it, so the field names are a stable interface
//! (documented in the README):
//!
//! ```text
//! {"image":"a.jpg","results":[{"bbox":[x1,y1,x2,y2],"rec_docs":"label","rec_scores":0.93}],"timings_ms":{…}}
//! {"image":"b.jpg","error":"image b.jpg: truncated JPEG: …"}
//! ```

use serde::Serialize;

use crate::report::{Recognition, StageTimes};

/// A successful line.
#[derive(Debug, Serialize)]
pub struct ResultLine<'a> {
    /// The image as named on the command line.
    pub image: &'a str,
    /// Recognised objects, best first.
    pub results: &'a [Recognition],
    /// Per-stage times.
    pub timings_ms: &'a StageTimes,
}

/// A failed line.
#[derive(Debug, Serialize)]
pub struct ErrorLine<'a> {
    /// The image as named on the command line.
    pub image: &'a str,
    /// What went wrong.
    pub error: &'a str,
}

/// The line for one image.
pub fn result_line(image: &str, results: &[Recognition], timings: &StageTimes) -> String {
    serde_json::to_string(&ResultLine {
        image,
        results,
        timings_ms: timings,
    })
    .unwrap_or_default()
}

/// The line for an image that failed.
pub fn error_line(image: &str, error: &str) -> String {
    serde_json::to_string(&ErrorLine { image, error }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_documented_fields() {
        let r = [Recognition {
            bbox: [1, 2, 3, 4],
            rec_docs: "tea box".into(),
            rec_scores: 0.75,
        }];
        let v: serde_json::Value =
            serde_json::from_str(&result_line("a.jpg", &r, &StageTimes::default())).unwrap();
        assert_eq!(v["image"], "a.jpg");
        assert_eq!(v["results"][0]["bbox"], serde_json::json!([1, 2, 3, 4]));
        assert_eq!(v["results"][0]["rec_docs"], "tea box");
        assert_eq!(v["results"][0]["rec_scores"], 0.75);
        assert!(v["timings_ms"]["det_infer"].is_number());
        let v: serde_json::Value = serde_json::from_str(&error_line("b \"x\".jpg", "bad")).unwrap();
        assert_eq!(v["image"], "b \"x\".jpg");
        assert_eq!(v["error"], "bad");
    }
}
