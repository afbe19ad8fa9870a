//! Box types passed between stages.

use serde::{Deserialize, Serialize};

/// A box in image pixels, `[x1, y1, x2, y2]`, as the detector reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
}

impl BBox {
    /// A box from its corners.
    pub const fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        BBox { x1, y1, x2, y2 }
    }

    /// Clips the box to a `width` × `height` image.
    pub fn clip(self, width: u32, height: u32) -> BBox {
        let (w, h) = (width as f32, height as f32);
        BBox {
            x1: self.x1.clamp(0.0, w),
            y1: self.y1.clamp(0.0, h),
            x2: self.x2.clamp(0.0, w),
            y2: self.y2.clamp(0.0, h),
        }
    }

    /// Width (may be negative for an inverted box).
    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }

    /// Height (may be negative for an inverted box).
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }

    /// The crop PaddleClas takes for this box: corners truncated towards zero
    /// (`bbox.astype(int)`).
    pub fn to_crop(self) -> CropBox {
        CropBox {
            x1: self.x1 as i32,
            y1: self.y1 as i32,
            x2: self.x2 as i32,
            y2: self.y2 as i32,
        }
    }
}

/// An integer box `[x1, y1, x2, y2)` in image pixels: the crop that was embedded,
/// and the box reported in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    /// Left (inclusive).
    pub x1: i32,
    /// Top (inclusive).
    pub y1: i32,
    /// Right (exclusive).
    pub x2: i32,
    /// Bottom (exclusive).
    pub y2: i32,
}

impl CropBox {
    /// The whole `width` × `height` image.
    pub fn whole(width: u32, height: u32) -> CropBox {
        CropBox {
            x1: 0,
            y1: 0,
            x2: width as i32,
            y2: height as i32,
        }
    }

    /// `[x1, y1, x2, y2]`.
    pub fn to_array(self) -> [i32; 4] {
        [self.x1, self.y1, self.x2, self.y2]
    }
}
