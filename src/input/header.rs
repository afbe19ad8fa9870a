//! Reads an image's dimensions from its header without decoding it, and
//! checks that the file is complete.

/// Container formats recognised by [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG/JFIF/EXIF.
    Jpeg,
    /// PNG.
    Png,
    /// Windows bitmap.
    Bmp,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Bmp => "BMP",
        })
    }
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The container.
    pub format: Format,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// `Ok(None)` for formats not sniffed here (the decoder decides), `Err` with a
/// reason for a file that is recognisably broken.
pub fn sniff(b: &[u8]) -> Result<Option<Header>, String> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg(b).map(Some)
    } else if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(b).map(Some)
    } else if b.starts_with(b"BM") && b.len() >= 26 {
        let w = i32::from_le_bytes([b[18], b[19], b[20], b[21]]);
        let h = i32::from_le_bytes([b[22], b[23], b[24], b[25]]);
        Ok(Some(Header {
            format: Format::Bmp,
            width: w.unsigned_abs(),
            height: h.unsigned_abs(),
        }))
    } else {
        Ok(None)
    }
}

fn png(b: &[u8]) -> Result<Header, String> {
    if b.len() < 24 || &b[12..16] != b"IHDR" {
        return Err("truncated PNG: no IHDR chunk".into());
    }
    let width = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let height = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
    // IEND is the last chunk; without it the file was cut short.
    if b.len() < 12 || &b[b.len() - 8..b.len() - 4] != b"IEND" {
        return Err("truncated PNG: no IEND chunk at the end".into());
    }
    Ok(Header {
        format: Format::Png,
        width,
        height,
    })
}

fn jpeg(b: &[u8]) -> Result<Header, String> {
    // Walk the marker segments up to the first scan. Walking by length skips
    // APPn segments, so an EXIF thumbnail's markers are never mistaken for ours.
    let mut i = 2;
    let mut dims = None;
    loop {
        while i < b.len() && b[i] == 0xFF && i + 1 < b.len() && b[i + 1] == 0xFF {
            i += 1; // fill bytes
        }
        if i + 4 > b.len() || b[i] != 0xFF {
            return Err("truncated or corrupt JPEG: header ends before the image data".into());
        }
        let marker = b[i + 1];
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        if len < 2 || i + 2 + len > b.len() {
            return Err("truncated JPEG: a header segment runs past the end of the file".into());
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof && len >= 7 {
            let height = u16::from_be_bytes([b[i + 5], b[i + 6]]) as u32;
            let width = u16::from_be_bytes([b[i + 7], b[i + 8]]) as u32;
            dims = Some((width, height));
        }
        if marker == 0xDA {
            break;
        }
        i += 2 + len;
    }
    let (width, height) =
        dims.ok_or("corrupt JPEG: no frame header (SOF) before the image data")?;
    // Entropy-coded data never contains FF D9 (FF is stuffed as FF 00), so an
    // EOI anywhere after the first scan means the file is complete.
    let scan = &b[i..];
    // Searched from the end: that is where a complete file has it.
    if !scan.windows(2).rev().any(|w| w == [0xFF, 0xD9]) {
        return Err("truncated JPEG: image data ends without an end-of-image marker".into());
    }
    Ok(Header {
        format: Format::Jpeg,
        width,
        height,
    })
}
