//! What an uploaded image is, decided from its bytes alone (never the file name or the declared
//! type): JPEG, PNG, WebP or AVIF, structurally whole, with sane dimensions. Anything else is
//! refused before it is stored. Only headers and container structure are read; no pixel is
//! decoded, so a decompression bomb costs nothing to refuse.

/// The widest or tallest image accepted, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// The most pixels an image may have (width × height).
pub const MAX_PIXELS: u64 = 50_000_000;

/// An image that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    pub kind: ImageKind,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Webp,
    Avif,
}

impl ImageKind {
    pub fn content_type(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Webp => "image/webp",
            ImageKind::Avif => "image/avif",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
            ImageKind::Webp => "webp",
            ImageKind::Avif => "avif",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext {
            "jpg" => ImageKind::Jpeg,
            "png" => ImageKind::Png,
            "webp" => ImageKind::Webp,
            "avif" => ImageKind::Avif,
            _ => return None,
        })
    }
}

/// Why an upload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not one of the four formats (HTML, SVG, an executable, …): 415.
    #[error("only JPEG, PNG, WebP and AVIF images are accepted")]
    Unsupported,
    /// One of the four formats, but cut short or malformed: 422.
    #[error("the image is truncated or malformed: {0}")]
    Malformed(&'static str),
    /// Wider, taller or larger than allowed (or zero): 422.
    #[error("the image is {width}×{height}; at most {MAX_SIDE} pixels a side and {MAX_PIXELS} in all")]
    Dimensions { width: u32, height: u32 },
}

/// Checks `bytes` and says what image they are.
pub fn inspect(bytes: &[u8]) -> Result<Image, ImageError> {
    let kind = sniff(bytes).ok_or(ImageError::Unsupported)?;
    // Each reader checks the dimensions as soon as it has them, before reading further.
    let (width, height) = match kind {
        ImageKind::Png => png(bytes)?,
        ImageKind::Jpeg => jpeg(bytes)?,
        ImageKind::Webp => webp(bytes)?,
        ImageKind::Avif => avif(bytes)?,
    };
    Ok(Image { kind, width, height })
}

/// The format the first bytes announce.
fn sniff(b: &[u8]) -> Option<ImageKind> {
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(ImageKind::Jpeg);
    }
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(ImageKind::Png);
    }
    if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        return Some(ImageKind::Webp);
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        let size = be32(b, 0)? as usize;
        let brands = b.get(8..size.min(b.len()))?;
        // The major brand, then (after the minor version) the compatible brands.
        let avif = brands
            .chunks(4)
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .any(|(_, brand)| brand == b"avif" || brand == b"avis");
        return avif.then_some(ImageKind::Avif);
    }
    None
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// PNG: IHDR first; every chunk whole; IEND last.
fn png(b: &[u8]) -> Result<(u32, u32), ImageError> {
    let short = ImageError::Malformed("the PNG ends before its IEND chunk");
    if b.get(12..16) != Some(b"IHDR") || be32(b, 8) != Some(13) {
        return Err(ImageError::Malformed("the PNG does not start with its IHDR chunk"));
    }
    let (width, height) = (be32(b, 16).ok_or(short.clone())?, be32(b, 20).ok_or(short.clone())?);
    // Dimensions first: a bomb's header alone is enough to refuse it.
    check_dimensions(width, height)?;
    let mut at = 8usize;
    loop {
        let len = be32(b, at).ok_or(short.clone())? as usize;
        let kind = b.get(at + 4..at + 8).ok_or(short.clone())?;
        let end = at
            .checked_add(12)
            .and_then(|x| x.checked_add(len))
            .ok_or(short.clone())?;
        if end > b.len() {
            return Err(short);
        }
        if kind == b"IEND" {
            return Ok((width, height));
        }
        at = end;
    }
}

/// JPEG: segments from SOI to a frame header (SOFn), then scan data up to EOI at the end.
fn jpeg(b: &[u8]) -> Result<(u32, u32), ImageError> {
    let short = ImageError::Malformed("the JPEG ends before its end-of-image marker");
    let mut at = 2usize;
    let mut size = None;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while b.get(at) == Some(&0xFF) && b.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        if b.get(at) != Some(&0xFF) {
            return Err(ImageError::Malformed("the JPEG has bytes where a marker should be"));
        }
        let marker = *b.get(at + 1).ok_or(short.clone())?;
        match marker {
            0xD9 => return Err(ImageError::Malformed("the JPEG ends before any image data")),
            0x01 | 0xD0..=0xD7 => {
                at += 2;
                continue;
            }
            _ => {}
        }
        let len = usize::from(be16(b, at + 2).ok_or(short.clone())?);
        if len < 2 || at + 2 + len > b.len() {
            return Err(short);
        }
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            let height = u32::from(be16(b, at + 5).ok_or(short.clone())?);
            let width = u32::from(be16(b, at + 7).ok_or(short.clone())?);
            check_dimensions(width, height)?;
            size = Some((width, height));
        }
        if marker == 0xDA {
            let size = size.ok_or(ImageError::Malformed(
                "the JPEG's image data comes before its frame header",
            ))?;
            // Scan data follows; a whole file ends with EOI (trailing zero padding aside).
            let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
            if end < at + 4 || b[end - 2..end] != [0xFF, 0xD9] {
                return Err(short);
            }
            return Ok(size);
        }
        at += 2 + len;
    }
}

/// WebP: the RIFF container holds exactly the file; the first chunk gives the size.
fn webp(b: &[u8]) -> Result<(u32, u32), ImageError> {
    let short = ImageError::Malformed("the WebP is shorter than its RIFF header says");
    let riff = le32(b, 4).ok_or(short.clone())? as usize;
    if riff.checked_add(8).is_none_or(|total| total > b.len()) {
        return Err(short);
    }
    let chunk = b.get(12..16).ok_or(short.clone())?;
    let data = 20usize;
    let chunk_len = le32(b, 16).ok_or(short.clone())? as usize;
    if data.checked_add(chunk_len).is_none_or(|end| end > b.len()) {
        return Err(short);
    }
    let (width, height) = match chunk {
        b"VP8 " => {
            if b.get(data + 3..data + 6) != Some(&[0x9D, 0x01, 0x2A]) {
                return Err(ImageError::Malformed("the WebP's VP8 frame has no start code"));
            }
            (
                u32::from(le16(b, data + 6).ok_or(short.clone())? & 0x3FFF),
                u32::from(le16(b, data + 8).ok_or(short.clone())? & 0x3FFF),
            )
        }
        b"VP8L" => {
            if b.get(data) != Some(&0x2F) {
                return Err(ImageError::Malformed("the WebP's lossless frame has no signature"));
            }
            let bits = le32(b, data + 1).ok_or(short.clone())?;
            ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        }
        b"VP8X" => (
            le24(b, data + 4).ok_or(short.clone())? + 1,
            le24(b, data + 7).ok_or(short.clone())? + 1,
        ),
        _ => return Err(ImageError::Malformed("the WebP's first chunk is not an image")),
    };
    check_dimensions(width, height)?;
    Ok((width, height))
}

/// AVIF: every ISO-BMFF box whole; the largest `ispe` (image spatial extents) gives the size.
fn avif(b: &[u8]) -> Result<(u32, u32), ImageError> {
    let mut best = None;
    boxes(b, 0, b.len(), 0, &mut best)?;
    let (width, height) = best.ok_or(ImageError::Malformed("the AVIF names no image size (ispe)"))?;
    check_dimensions(width, height)?;
    Ok((width, height))
}

/// Walks the boxes in `b[from..to]`, descending into the containers that lead to `ispe`.
fn boxes(b: &[u8], from: usize, to: usize, depth: u8, best: &mut Option<(u32, u32)>) -> Result<(), ImageError> {
    let short = ImageError::Malformed("the AVIF is shorter than its boxes say");
    if depth > 8 {
        return Err(ImageError::Malformed("the AVIF nests its boxes too deep"));
    }
    let mut at = from;
    while at < to {
        let size32 = be32(b, at).ok_or(short.clone())?;
        let kind = b.get(at + 4..at + 8).ok_or(short.clone())?;
        let (header, size) = match size32 {
            0 => (8usize, to - at),
            1 => {
                let hi = u64::from(be32(b, at + 8).ok_or(short.clone())?);
                let lo = u64::from(be32(b, at + 12).ok_or(short.clone())?);
                (16usize, usize::try_from(hi << 32 | lo).map_err(|_| short.clone())?)
            }
            n => (8usize, n as usize),
        };
        if size < header || at.checked_add(size).is_none_or(|end| end > to) {
            return Err(short);
        }
        let body = at + header;
        match kind {
            // Full boxes carry 4 bytes of version and flags before their children.
            b"meta" => boxes(b, body + 4, at + size, depth + 1, best)?,
            b"iprp" | b"ipco" => boxes(b, body, at + size, depth + 1, best)?,
            b"ispe" => {
                let w = be32(b, body + 4).ok_or(short.clone())?;
                let h = be32(b, body + 8).ok_or(short.clone())?;
                if best.is_none_or(|(bw, bh)| u64::from(w) * u64::from(h) > u64::from(bw) * u64::from(bh)) {
                    *best = Some((w, h));
                }
            }
            _ => {}
        }
        at += size;
    }
    Ok(())
}

fn check_dimensions(width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0
        || height == 0
        || width > MAX_SIDE
        || height > MAX_SIDE
        || u64::from(width) * u64::from(height) > MAX_PIXELS
    {
        return Err(ImageError::Dimensions { width, height });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod samples {
    //! Small, valid images of each format, built byte by byte, and hostile ones.

    /// A 2×1 PNG (IHDR, IDAT, IEND; CRCs are not checked).
    pub fn png(width: u32, height: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        let chunk = |b: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(kind);
            b.extend_from_slice(data);
            b.extend_from_slice(&[0, 0, 0, 0]);
        };
        let mut ihdr = width.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut b, b"IHDR", &ihdr);
        chunk(&mut b, b"IDAT", &[0x78, 0x9C, 0x63, 0x60, 0, 0, 0, 4, 0, 1]);
        chunk(&mut b, b"IEND", &[]);
        b
    }

    /// A 3×2 baseline JPEG skeleton: SOI, APP0, SOF0, SOS, scan bytes, EOI.
    pub fn jpeg() -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        b.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
        b.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        b.extend_from_slice(&[
            0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x02, 0x00, 0x03, 0x01, 0x01, 0x11, 0x00,
        ]);
        b.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
        b.extend_from_slice(&[0x12, 0x34, 0x56]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    /// A 4×3 lossless WebP header.
    pub fn webp() -> Vec<u8> {
        let bits: u32 = 3 | (2 << 14);
        let mut data = vec![0x2F];
        data.extend_from_slice(&bits.to_le_bytes());
        data.extend_from_slice(&[0, 0, 0]);
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&((4 + 8 + data.len()) as u32).to_le_bytes());
        b.extend_from_slice(b"WEBPVP8L");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&data);
        b
    }

    /// A 5×4 AVIF skeleton: ftyp, meta > iprp > ipco > ispe, mdat.
    pub fn avif() -> Vec<u8> {
        fn boxed(kind: &[u8], body: &[u8]) -> Vec<u8> {
            let mut b = ((8 + body.len()) as u32).to_be_bytes().to_vec();
            b.extend_from_slice(kind);
            b.extend_from_slice(body);
            b
        }
        let mut ispe = vec![0, 0, 0, 0];
        ispe.extend_from_slice(&5u32.to_be_bytes());
        ispe.extend_from_slice(&4u32.to_be_bytes());
        let ipco = boxed(b"ipco", &boxed(b"ispe", &ispe));
        let iprp = boxed(b"iprp", &ipco);
        let mut meta_body = vec![0, 0, 0, 0];
        meta_body.extend_from_slice(&iprp);
        let mut b = boxed(b"ftyp", b"avif\0\0\0\0avifmif1");
        b.extend_from_slice(&boxed(b"meta", &meta_body));
        b.extend_from_slice(&boxed(b"mdat", &[1, 2, 3]));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::{ImageError, ImageKind, inspect, samples};

    #[test]
    fn each_format_is_known_by_its_bytes_with_its_size() {
        let cases = [
            (samples::png(2, 1), ImageKind::Png, 2, 1),
            (samples::jpeg(), ImageKind::Jpeg, 3, 2),
            (samples::webp(), ImageKind::Webp, 4, 3),
            (samples::avif(), ImageKind::Avif, 5, 4),
        ];
        for (bytes, kind, width, height) in cases {
            let image = inspect(&bytes).unwrap();
            assert_eq!((image.kind, image.width, image.height), (kind, width, height));
        }
    }

    #[test]
    fn anything_but_the_four_formats_is_unsupported() {
        for bytes in [
            &b"<!doctype html><html><script>alert(1)</script>"[..],
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
            b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff",
            b"\x7fELF\x02\x01\x01",
            b"GIF89a\x01\x00\x01\x00",
            b"",
        ] {
            assert_eq!(inspect(bytes), Err(ImageError::Unsupported), "{bytes:?}");
        }
    }

    #[test]
    fn a_truncated_image_is_malformed() {
        for whole in [samples::png(2, 1), samples::jpeg(), samples::webp(), samples::avif()] {
            for cut in [whole.len() - 1, whole.len() - 3, whole.len() / 2, 14] {
                let got = inspect(&whole[..cut]);
                assert!(
                    matches!(got, Err(ImageError::Malformed(_))),
                    "{:?} cut at {cut}/{}: {got:?}",
                    &whole[..4],
                    whole.len()
                );
            }
        }
    }

    #[test]
    fn a_huge_header_is_refused_before_anything_else_is_read() {
        // A 100,000 × 100,000 PNG header, nothing after it.
        let bomb = samples::png(100_000, 100_000);
        assert_eq!(
            inspect(&bomb[..33]),
            Err(ImageError::Dimensions {
                width: 100_000,
                height: 100_000
            })
        );
        // Within each side's limit, too many pixels in all.
        assert!(matches!(
            inspect(&samples::png(16_000, 16_000)),
            Err(ImageError::Dimensions { .. })
        ));
        assert!(matches!(
            inspect(&samples::png(0, 10)),
            Err(ImageError::Dimensions { .. })
        ));
        assert!(inspect(&samples::png(16_384, 3_000)).is_ok());
    }
}
