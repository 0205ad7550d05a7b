//! The tray's icons: one per state, told apart by shape (disc, diamond, ring, square,
//! triangle, slashed ring) and by glyph (check, arrows, dots, dashes, `!`), not only by colour.
//!
//! Each icon is a short list of geometric primitives in a unit square. The same list is
//! rasterized here at any size (4×4 supersampling, no GTK, no image library) and written out
//! as SVG, so the committed `assets/*.svg` and `assets/png/*.png` (`pacpool-tray
//! export-icons assets`) are exactly what the running tray shows.

use std::fmt::Write as _;

/// What the icon says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IconKind {
    InSync,
    Behind,
    Ahead,
    Diverged,
    Syncing,
    /// pacpoold runs but cannot reach the coordinator.
    Offline,
    /// pacpoold's socket does not answer.
    NotRunning,
    Error,
    /// No pool target yet, or local-only.
    Unknown,
}

impl IconKind {
    pub const ALL: [IconKind; 9] = [
        IconKind::InSync,
        IconKind::Behind,
        IconKind::Ahead,
        IconKind::Diverged,
        IconKind::Syncing,
        IconKind::Offline,
        IconKind::NotRunning,
        IconKind::Error,
        IconKind::Unknown,
    ];

    /// File stem in `assets/` (`pacpool-in-sync.svg`, `png/pacpool-in-sync-32.png`).
    pub fn name(self) -> &'static str {
        match self {
            IconKind::InSync => "in-sync",
            IconKind::Behind => "behind",
            IconKind::Ahead => "ahead",
            IconKind::Diverged => "diverged",
            IconKind::Syncing => "syncing",
            IconKind::Offline => "offline",
            IconKind::NotRunning => "not-running",
            IconKind::Error => "error",
            IconKind::Unknown => "unknown",
        }
    }

    fn shapes(self) -> Vec<(Shape, Rgb)> {
        use Shape::*;
        const WHITE: Rgb = Rgb(255, 255, 255);
        const GREEN: Rgb = Rgb(0x1f, 0x8f, 0x3a);
        const BLUE: Rgb = Rgb(0x1f, 0x63, 0xc6);
        const PURPLE: Rgb = Rgb(0x6f, 0x42, 0xc1);
        const ORANGE: Rgb = Rgb(0xd9, 0x6c, 0x00);
        const GREY: Rgb = Rgb(0x5f, 0x66, 0x70);
        const RED: Rgb = Rgb(0xc6, 0x28, 0x28);
        let w = 0.11; // glyph stroke width
        let arrow = |x: f32, y0: f32, y1: f32, head: f32| {
            // A vertical arrow from y0 to y1 (pointing at y1).
            let d = if y1 > y0 { -head } else { head };
            vec![
                (Line([x, y0], [x, y1], w), WHITE),
                (Line([x, y1], [x - head, y1 + d], w), WHITE),
                (Line([x, y1], [x + head, y1 + d], w), WHITE),
            ]
        };
        let mut v = Vec::new();
        match self {
            IconKind::InSync => {
                v.push((Disc([0.5, 0.5], 0.47), GREEN));
                v.push((Line([0.27, 0.52], [0.43, 0.68], w), WHITE));
                v.push((Line([0.43, 0.68], [0.73, 0.36], w), WHITE));
            }
            IconKind::Behind => {
                v.push((Disc([0.5, 0.5], 0.47), BLUE));
                v.extend(arrow(0.5, 0.24, 0.74, 0.18));
            }
            IconKind::Ahead => {
                v.push((Disc([0.5, 0.5], 0.47), PURPLE));
                v.extend(arrow(0.5, 0.76, 0.26, 0.18));
            }
            IconKind::Diverged => {
                v.push((
                    Polygon(vec![[0.5, 0.02], [0.98, 0.5], [0.5, 0.98], [0.02, 0.5]]),
                    ORANGE,
                ));
                v.extend(arrow(0.38, 0.66, 0.30, 0.1));
                v.extend(arrow(0.62, 0.34, 0.70, 0.1));
            }
            IconKind::Syncing => {
                v.push((Ring([0.5, 0.5], 0.47, 0.12), BLUE));
                for x in [0.31, 0.5, 0.69] {
                    v.push((Disc([x, 0.5], 0.075), BLUE));
                }
            }
            IconKind::Offline => {
                v.push((
                    Polygon(vec![[0.06, 0.06], [0.94, 0.06], [0.94, 0.94], [0.06, 0.94]]),
                    GREY,
                ));
                v.push((Line([0.22, 0.5], [0.40, 0.5], w), WHITE));
                v.push((Line([0.60, 0.5], [0.78, 0.5], w), WHITE));
            }
            IconKind::NotRunning => {
                v.push((Ring([0.5, 0.5], 0.45, 0.11), GREY));
                v.push((Line([0.24, 0.76], [0.76, 0.24], 0.11), GREY));
            }
            IconKind::Error => {
                v.push((Polygon(vec![[0.5, 0.04], [0.97, 0.92], [0.03, 0.92]]), RED));
                v.push((Line([0.5, 0.36], [0.5, 0.62], w), WHITE));
                v.push((Disc([0.5, 0.77], 0.065), WHITE));
            }
            IconKind::Unknown => {
                v.push((Disc([0.5, 0.5], 0.47), GREY));
                v.push((Line([0.3, 0.5], [0.7, 0.5], w), WHITE));
            }
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rgb(u8, u8, u8);

impl Rgb {
    fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// Coordinates in the unit square, y down.
#[derive(Debug, Clone)]
enum Shape {
    Disc([f32; 2], f32),
    /// Centre, outer radius, stroke width.
    Ring([f32; 2], f32, f32),
    /// A stroke with round caps.
    Line([f32; 2], [f32; 2], f32),
    Polygon(Vec<[f32; 2]>),
}

impl Shape {
    fn contains(&self, x: f32, y: f32) -> bool {
        match self {
            Shape::Disc([cx, cy], r) => (x - cx).powi(2) + (y - cy).powi(2) <= r * r,
            Shape::Ring([cx, cy], r, w) => {
                let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                d <= *r && d >= r - w
            }
            Shape::Line(a, b, w) => segment_distance([x, y], *a, *b) <= w / 2.0,
            Shape::Polygon(points) => {
                // Even-odd rule.
                let mut inside = false;
                let mut j = points.len() - 1;
                for i in 0..points.len() {
                    let ([xi, yi], [xj, yj]) = (points[i], points[j]);
                    if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                        inside = !inside;
                    }
                    j = i;
                }
                inside
            }
        }
    }

    fn svg(&self, fill: Rgb) -> String {
        let s = |v: f32| format!("{}", (v * 256.0 * 100.0).round() / 100.0);
        match self {
            Shape::Disc([cx, cy], r) => format!(
                r#"<circle cx="{}" cy="{}" r="{}" fill="{}"/>"#,
                s(*cx),
                s(*cy),
                s(*r),
                fill.hex()
            ),
            Shape::Ring([cx, cy], r, w) => format!(
                r#"<circle cx="{}" cy="{}" r="{}" fill="none" stroke="{}" stroke-width="{}"/>"#,
                s(*cx),
                s(*cy),
                s(r - w / 2.0),
                fill.hex(),
                s(*w)
            ),
            Shape::Line(a, b, w) => format!(
                r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="{}" stroke-linecap="round"/>"#,
                s(a[0]),
                s(a[1]),
                s(b[0]),
                s(b[1]),
                fill.hex(),
                s(*w)
            ),
            Shape::Polygon(points) => format!(
                r#"<polygon points="{}" fill="{}"/>"#,
                points
                    .iter()
                    .map(|[x, y]| format!("{},{}", s(*x), s(*y)))
                    .collect::<Vec<_>>()
                    .join(" "),
                fill.hex()
            ),
        }
    }
}

fn segment_distance(p: [f32; 2], a: [f32; 2], b: [f32; 2]) -> f32 {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
    };
    let (qx, qy) = (a[0] + t * dx, a[1] + t * dy);
    ((p[0] - qx).powi(2) + (p[1] - qy).powi(2)).sqrt()
}

/// Straight (not premultiplied) RGBA, `size × size`, rows top to bottom.
pub fn render(kind: IconKind, size: u32) -> Vec<u8> {
    const SS: u32 = 4;
    let shapes = kind.shapes();
    let mut out = vec![0u8; (size * size * 4) as usize];
    let mut cover = vec![0.0f32; shapes.len()];
    for py in 0..size {
        for px in 0..size {
            cover.iter_mut().for_each(|c| *c = 0.0);
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32) / size as f32;
                    for (i, (shape, _)) in shapes.iter().enumerate() {
                        if shape.contains(x, y) {
                            cover[i] += 1.0 / (SS * SS) as f32;
                        }
                    }
                }
            }
            // Source-over compositing of each primitive, in order.
            let (mut r, mut g, mut b, mut a) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            for (i, (_, Rgb(cr, cg, cb))) in shapes.iter().enumerate() {
                let sa = cover[i];
                if sa == 0.0 {
                    continue;
                }
                let na = sa + a * (1.0 - sa);
                r = (*cr as f32 * sa + r * a * (1.0 - sa)) / na;
                g = (*cg as f32 * sa + g * a * (1.0 - sa)) / na;
                b = (*cb as f32 * sa + b * a * (1.0 - sa)) / na;
                a = na;
            }
            let o = ((py * size + px) * 4) as usize;
            out[o] = r.round() as u8;
            out[o + 1] = g.round() as u8;
            out[o + 2] = b.round() as u8;
            out[o + 3] = (a * 255.0).round() as u8;
        }
    }
    out
}

/// The icon as an SVG document (256 × 256 user units).
pub fn svg(kind: IconKind) -> String {
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"256\" height=\"256\" viewBox=\"0 0 256 256\">\n",
    );
    let _ = writeln!(s, "  <title>pacpool: {}</title>", kind.name());
    for (shape, fill) in kind.shapes() {
        let _ = writeln!(s, "  {}", shape.svg(fill));
    }
    s.push_str("</svg>\n");
    s
}

/// Encodes straight RGBA as a PNG (8-bit RGBA, one zlib stream, no filters).
pub fn png(rgba: &[u8], size: u32) -> Vec<u8> {
    use std::io::Write as _;
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut raw = Vec::with_capacity(rgba.len() + size as usize);
    for row in rgba.chunks(size as usize * 4) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&raw).expect("writing to a Vec cannot fail");
    let idat = z.finish().expect("writing to a Vec cannot fail");
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&size.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit, RGBA, deflate, no filter, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Sizes tray hosts ask for.
pub const PNG_SIZES: [u32; 7] = [16, 22, 24, 32, 48, 64, 256];

/// Writes `DIR/pacpool-STATE.svg` and `DIR/png/pacpool-STATE-SIZE.png` for every state.
pub fn export(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let png_dir = dir.join("png");
    std::fs::create_dir_all(&png_dir)?;
    let mut written = Vec::new();
    for kind in IconKind::ALL {
        let p = dir.join(format!("pacpool-{}.svg", kind.name()));
        std::fs::write(&p, svg(kind))?;
        written.push(p);
        for size in PNG_SIZES {
            let p = png_dir.join(format!("pacpool-{}-{size}.png", kind.name()));
            std::fs::write(&p, png(&render(kind, size), size))?;
            written.push(p);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_a_distinct_silhouette() {
        // Shape, not only colour: compare the alpha masks at the smallest size.
        let masks: Vec<(IconKind, Vec<u8>)> = IconKind::ALL
            .iter()
            .map(|&k| {
                let mut m = render(k, 16);
                // Glyphs are white: count them as "not the background colour" via luminance.
                let mask = m
                    .chunks_mut(4)
                    .map(|p| {
                        let lum = (p[0] as u32 + p[1] as u32 + p[2] as u32) / 3;
                        if p[3] < 128 {
                            0
                        } else if lum > 200 {
                            2
                        } else {
                            1
                        }
                    })
                    .collect();
                (k, mask)
            })
            .collect();
        for (i, (a, ma)) in masks.iter().enumerate() {
            for (b, mb) in &masks[i + 1..] {
                let differ = ma.iter().zip(mb).filter(|(x, y)| x != y).count();
                assert!(
                    differ >= 8,
                    "{a:?} and {b:?} differ in only {differ} pixels"
                );
            }
        }
    }

    #[test]
    fn png_has_the_right_header_and_svg_names_the_state() {
        let p = png(&render(IconKind::Behind, 24), 24);
        assert!(p.starts_with(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x18\0\0\0\x18\x08\x06"));
        assert!(p.ends_with(&[0xae, 0x42, 0x60, 0x82]), "IEND's CRC");
        let s = svg(IconKind::Diverged);
        assert!(s.contains("<title>pacpool: diverged</title>") && s.contains("<polygon"));
    }

    #[test]
    fn committed_assets_match_the_drawing() {
        // `pacpool-tray export-icons assets` regenerates them.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        for kind in IconKind::ALL {
            let svg_file = dir.join(format!("pacpool-{}.svg", kind.name()));
            assert_eq!(
                std::fs::read_to_string(&svg_file).ok().as_deref(),
                Some(svg(kind).as_str()),
                "{} is stale: run `pacpool-tray export-icons assets`",
                svg_file.display()
            );
            for size in PNG_SIZES {
                let f = dir.join(format!("png/pacpool-{}-{size}.png", kind.name()));
                assert_eq!(
                    std::fs::read(&f).ok(),
                    Some(png(&render(kind, size), size)),
                    "{} is stale: run `pacpool-tray export-icons assets`",
                    f.display()
                );
            }
        }
    }

    #[test]
    fn transparent_outside_and_opaque_inside() {
        let px = render(IconKind::InSync, 32);
        assert_eq!(px[3], 0, "corner is transparent");
        let centre = ((16 * 32 + 8) * 4) as usize;
        assert_eq!(px[centre + 3], 255);
    }
}
