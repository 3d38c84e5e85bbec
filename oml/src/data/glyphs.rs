//! The built-in many-identities dataset: every letter of every script drawn in every DejaVu face
//! that has it (an Omniglot-like set of about 2,700 identities with 4 to 21 images each).
//!
//! A class is a Unicode letter; its images are its renderings in the DejaVu faces (Sans, Serif,
//! Mono, their bold/oblique/condensed/light variants; the math face is left out). Letters that render
//! exactly like an earlier letter in the reference face (Latin A, Greek Alpha, Cyrillic A) are
//! dropped, as are letters found in fewer than 4 faces. Labels are split class-disjointly into train
//! and validation (1-vs-rest: every validation image is query and gallery); `category` is the script.
//!
//! The fonts are the DejaVu 2.37 faces embedded in the binary (the `dejavu` crate; their licence
//! allows it), so the dataset is the same on every machine; a folder of `.ttf` files can be given
//! instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontArc, PxScale, point};
use image::GrayImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use super::csv::write_csv;
use crate::{Error, Result};

/// Settings of [`generate_glyphs`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GlyphsConfig {
    /// Side of every image in pixels.
    pub size: u32,
    /// Folder with DejaVu `.ttf` files; `None`: the faces embedded in oml.
    pub fonts_dir: Option<PathBuf>,
    /// Fraction of the labels that go to validation.
    pub val_fraction: f64,
    /// Seed of the train/validation split (and of the subset when `max_labels` is set).
    pub seed: u64,
    /// Keep only this many labels (a random subset across scripts), for quick experiments.
    pub max_labels: Option<usize>,
    /// Smallest number of faces a letter must be drawn in to become a class.
    pub min_images: usize,
    /// Validation across font families: queries are the serif faces, the gallery the sans and
    /// mono faces (a letter drawn only without serifs is a gallery distractor). Without it every
    /// validation image is both query and gallery, and near-identical faces (Sans vs Sans
    /// Condensed) make retrieval easy.
    #[serde(default)]
    pub cross_font: bool,
    /// With `cross_font`: the queries drawn with handwriting-like variation
    /// ([`crate::data::transforms::glyph_variation`]: affine jitter, stroke weight, blur, noise;
    /// seeded per image), so that retrieval needs invariances raw pixels do not have.
    #[serde(default)]
    pub distort_queries: bool,
}

impl Default for GlyphsConfig {
    fn default() -> Self {
        GlyphsConfig {
            size: 64,
            fonts_dir: None,
            val_fraction: 0.5,
            seed: 0,
            max_labels: None,
            min_images: 4,
            cross_font: false,
            distort_queries: false,
        }
    }
}

/// What [`generate_glyphs`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GlyphsSummary {
    /// The CSV (`<out>/df.csv`).
    pub csv: PathBuf,
    /// Number of labels (letters).
    pub labels: usize,
    /// Number of images.
    pub images: usize,
    /// Labels in the train split.
    pub train_labels: usize,
    /// Labels in the validation split.
    pub validation_labels: usize,
    /// Font faces used.
    pub faces: usize,
    /// Labels per script.
    pub scripts: Vec<(String, usize)>,
    /// Fewest and most images of a label.
    pub images_per_label: (usize, usize),
}

/// Unicode blocks drawn, by script.
const SCRIPTS: &[(&str, &[(u32, u32)])] = &[
    (
        "latin",
        &[
            (0x41, 0x5A),
            (0x61, 0x7A),
            (0xC0, 0x2AF),
            (0x1D00, 0x1DBF),
            (0x1E00, 0x1EFF),
            (0x2C60, 0x2C7F),
            (0xA720, 0xA7FF),
        ],
    ),
    ("greek", &[(0x370, 0x3FF), (0x1F00, 0x1FFF)]),
    ("cyrillic", &[(0x400, 0x52F), (0xA640, 0xA69F)]),
    ("armenian", &[(0x531, 0x587)]),
    ("hebrew", &[(0x5D0, 0x5EA)]),
    (
        "arabic",
        &[(0x620, 0x64A), (0x66E, 0x6D3), (0xFE70, 0xFEFC)],
    ),
    ("nko", &[(0x7CA, 0x7EA)]),
    ("lao", &[(0xE81, 0xEAE)]),
    ("georgian", &[(0x10A0, 0x10FF), (0x2D00, 0x2D2F)]),
    ("canadian_syllabics", &[(0x1401, 0x167F)]),
    ("ogham", &[(0x1681, 0x169A)]),
    ("tifinagh", &[(0x2D30, 0x2D6F)]),
];

struct Face {
    name: String,
    font: FontArc,
}

/// The 21 text faces of DejaVu 2.37 embedded through the `dejavu` crate, by file stem.
fn embedded_faces() -> Result<Vec<Face>> {
    let faces: [(&str, &'static [u8]); 21] = [
        ("DejaVuSans", dejavu::sans::regular()),
        ("DejaVuSans-Bold", dejavu::sans::bold()),
        ("DejaVuSans-BoldOblique", dejavu::sans::bold_oblique()),
        ("DejaVuSans-ExtraLight", dejavu::sans::extra_light()),
        ("DejaVuSans-Oblique", dejavu::sans::oblique()),
        ("DejaVuSansCondensed", dejavu::sans_condensed::regular()),
        ("DejaVuSansCondensed-Bold", dejavu::sans_condensed::bold()),
        (
            "DejaVuSansCondensed-BoldOblique",
            dejavu::sans_condensed::bold_oblique(),
        ),
        (
            "DejaVuSansCondensed-Oblique",
            dejavu::sans_condensed::oblique(),
        ),
        ("DejaVuSansMono", dejavu::sans_mono::regular()),
        ("DejaVuSansMono-Bold", dejavu::sans_mono::bold()),
        (
            "DejaVuSansMono-BoldOblique",
            dejavu::sans_mono::bold_oblique(),
        ),
        ("DejaVuSansMono-Oblique", dejavu::sans_mono::oblique()),
        ("DejaVuSerif", dejavu::serif::regular()),
        ("DejaVuSerif-Bold", dejavu::serif::bold()),
        ("DejaVuSerif-BoldItalic", dejavu::serif::bold_italic()),
        ("DejaVuSerif-Italic", dejavu::serif::italic()),
        ("DejaVuSerifCondensed", dejavu::serif_condensed::regular()),
        ("DejaVuSerifCondensed-Bold", dejavu::serif_condensed::bold()),
        (
            "DejaVuSerifCondensed-BoldItalic",
            dejavu::serif_condensed::bold_italic(),
        ),
        (
            "DejaVuSerifCondensed-Italic",
            dejavu::serif_condensed::italic(),
        ),
    ];
    let mut faces: Vec<Face> = faces
        .into_iter()
        .map(|(name, bytes)| {
            FontArc::try_from_slice(bytes)
                .map(|font| Face {
                    name: name.to_owned(),
                    font,
                })
                .map_err(|e| Error::Msg(format!("embedded font {name} is unusable: {e}")))
        })
        .collect::<Result<_>>()?;
    faces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(faces)
}

/// Loads the DejaVu faces of `dir` (every `DejaVu*.ttf` but the math face), sorted by file name.
fn load_faces(dir: &Path) -> Result<Vec<Face>> {
    let hint = "give a folder with the DejaVu .ttf files (Debian: /usr/share/fonts/truetype/dejavu from fonts-dejavu-core and fonts-dejavu-extra), or no --fonts to use the faces embedded in oml";
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Format {
        path: dir.to_path_buf(),
        message: format!("cannot read the fonts folder ({e}); {hint}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("DejaVu") && name.ends_with(".ttf") && !name.contains("Math")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            message: format!("no DejaVu*.ttf files in this folder; {hint}"),
        });
    }
    files
        .into_iter()
        .map(|path| {
            let bytes =
                std::fs::read(&path).map_err(|e| Error::io("cannot read font", &path, e))?;
            let font = FontArc::try_from_vec(bytes).map_err(|e| Error::Format {
                path: path.clone(),
                message: format!("not a usable TrueType font: {e}"),
            })?;
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("face")
                .to_owned();
            Ok(Face { name, font })
        })
        .collect()
}

/// Draws `c` black on white, centred, at a fixed scale (so case and diacritics stay visible),
/// shrunk only when it would not fit. `None` when the face lacks the letter or draws nothing.
fn render(font: &FontArc, c: char, size: u32) -> Option<GrayImage> {
    let id = font.glyph_id(c);
    if id.0 == 0 {
        return None;
    }
    let mut scale = size as f32 * 0.75;
    for _ in 0..2 {
        let glyph = id.with_scale_and_position(PxScale::from(scale), point(0.0, 0.0));
        let outlined = font.outline_glyph(glyph)?;
        let b = outlined.px_bounds();
        let (bw, bh) = (b.width(), b.height());
        let limit = size as f32 * 0.92;
        if bw > limit || bh > limit {
            scale *= limit / bw.max(bh);
            continue;
        }
        let dx = ((size as f32 - bw) / 2.0).floor() as i64;
        let dy = ((size as f32 - bh) / 2.0).floor() as i64;
        let mut img = GrayImage::from_pixel(size, size, image::Luma([255]));
        let mut ink = 0.0f32;
        outlined.draw(|x, y, cov| {
            let (px, py) = (x as i64 + dx, y as i64 + dy);
            if (0..size as i64).contains(&px) && (0..size as i64).contains(&py) {
                let v = (255.0 * (1.0 - cov.clamp(0.0, 1.0))).round() as u8;
                let p = img.get_pixel_mut(px as u32, py as u32);
                p.0[0] = p.0[0].min(v);
                ink += cov;
            }
        });
        return (ink > 1.0).then_some(img);
    }
    None
}

/// A letter that may become a class: the faces that have it and its look in the reference face.
struct Candidate {
    c: char,
    script: &'static str,
    faces: Vec<usize>,
}

/// The first face of `order` that draws `c`, and the drawing.
fn first_drawing(
    faces: &[Face],
    order: &[usize],
    c: char,
    size: u32,
) -> Option<(usize, GrayImage)> {
    order
        .iter()
        .find_map(|&k| render(&faces[k].font, c, size).map(|img| (k, img)))
}

/// Writes the glyph dataset to `out`: `out/images/<label>_<codepoint>/<face>.png` and `out/df.csv`.
///
/// Letters are first drawn once (in the reference face) to drop look-alikes; only the classes kept
/// (after `max_labels`) are drawn in every face and written, one class at a time.
pub fn generate_glyphs(out: &Path, config: &GlyphsConfig) -> Result<GlyphsSummary> {
    if !(8..=1024).contains(&config.size) {
        return Err(Error::param(
            "size",
            config.size,
            "an image side between 8 and 1024 pixels",
        ));
    }
    if !(0.0..=1.0).contains(&config.val_fraction) {
        return Err(Error::param(
            "val_fraction",
            config.val_fraction,
            "a fraction in [0, 1]",
        ));
    }
    let faces = match &config.fonts_dir {
        Some(dir) => load_faces(dir)?,
        None => embedded_faces()?,
    };
    let reference = faces
        .iter()
        .position(|f| f.name == "DejaVuSans")
        .unwrap_or(0);
    let mut order: Vec<usize> = vec![reference];
    order.extend((0..faces.len()).filter(|&k| k != reference));
    let min_images = config.min_images.max(2);
    let size = config.size;
    let letters: Vec<(char, &'static str)> = SCRIPTS
        .iter()
        .flat_map(|(script, ranges)| {
            ranges
                .iter()
                .flat_map(|&(a, b)| a..=b)
                .filter_map(char::from_u32)
                .filter(|c| c.is_alphabetic())
                .map(move |c| (c, *script))
        })
        .collect();
    // Pass 1: which faces have each letter, and its drawing in the first of them.
    let looks: Vec<Option<(Candidate, usize, Vec<u8>)>> = letters
        .par_iter()
        .map(|&(c, script)| {
            let have: Vec<usize> = (0..faces.len())
                .filter(|&k| faces[k].font.glyph_id(c).0 != 0)
                .collect();
            if have.len() < min_images {
                return None;
            }
            let (k, img) = first_drawing(&faces, &order, c, size)?;
            Some((
                Candidate {
                    c,
                    script,
                    faces: have,
                },
                k,
                img.into_raw(),
            ))
        })
        .collect();
    // Drop letters that look like an earlier one in the same face.
    let mut seen: HashMap<(usize, Vec<u8>), char> = HashMap::new();
    let mut classes: Vec<Candidate> = Vec::new();
    for (cand, k, raw) in looks.into_iter().flatten() {
        if seen.insert((k, raw), cand.c).is_none() {
            classes.push(cand);
        }
    }
    // Keep letters drawn (not blank) in at least `min_images` faces: all of them, or the first
    // `max_labels` of a seeded shuffle.
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..classes.len()).collect();
    let want = match config.max_labels {
        Some(max) if max < 2 => return Err(Error::param("max_labels", max, "at least 2 labels")),
        Some(max) => {
            order.shuffle(&mut rng);
            max
        }
        None => usize::MAX,
    };
    let drawable = |cand: &Candidate| {
        cand.faces
            .iter()
            .filter(|&&k| render(&faces[k].font, cand.c, size).is_some())
            .count()
    };
    let mut chosen: Vec<usize> = Vec::new();
    let mut pos = 0;
    while chosen.len() < want && pos < order.len() {
        let take = (want - chosen.len()).min(order.len() - pos);
        let batch = &order[pos..pos + take];
        pos += take;
        chosen.extend(
            batch
                .par_iter()
                .copied()
                .filter(|&i| drawable(&classes[i]) >= min_images)
                .collect::<Vec<_>>(),
        );
    }
    chosen.sort_unstable();
    let mut taken: Vec<Option<Candidate>> = classes.into_iter().map(Some).collect();
    let classes: Vec<Candidate> = chosen.into_iter().filter_map(|i| taken[i].take()).collect();
    if classes.len() < 2 {
        return Err(Error::Msg(
            "these fonts give fewer than 2 letters; use the DejaVu fonts".to_owned(),
        ));
    }
    let is_val = split_labels(classes.len(), config.val_fraction, &mut rng);

    // Pass 2: draw each kept class in every face and write it.
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir)
        .map_err(|e| Error::io("cannot create folder", &images_dir, e))?;
    let rows: Vec<Vec<[String; 6]>> = classes
        .par_iter()
        .enumerate()
        .map(|(label, cl)| {
            let drawings: Vec<(usize, GrayImage)> = cl
                .faces
                .iter()
                .filter_map(|&k| render(&faces[k].font, cl.c, size).map(|img| (k, img)))
                .collect();
            if drawings.is_empty() {
                return Ok(Vec::new());
            }
            let folder = format!("{label:04}_U+{:04X}", cl.c as u32);
            let dir = images_dir.join(&folder);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("cannot create folder", &dir, e))?;
            let val = is_val[label];
            let serifs = drawings
                .iter()
                .filter(|(k, _)| faces[*k].name.contains("Serif"))
                .count();
            // Cross-font queries need both kinds; otherwise the letter is a gallery distractor.
            let both = serifs > 0 && serifs < drawings.len();
            drawings
                .iter()
                .map(|(k, img)| {
                    let file = dir.join(format!("{}.png", faces[*k].name));
                    let serif = faces[*k].name.contains("Serif");
                    let (query, gallery) = match (val, config.cross_font) {
                        (false, _) => (false, false),
                        (true, false) => (true, true),
                        (true, true) => (serif && both, !serif || !both),
                    };
                    let img = if query && config.distort_queries {
                        distort(img, config.seed, label, *k)
                    } else {
                        img.clone()
                    };
                    img.save(&file).map_err(|e| Error::Image {
                        path: file.clone(),
                        message: format!("cannot write: {e}"),
                    })?;
                    // Train rows leave the flags empty; validation rows say True or False.
                    let flag = |b: bool| {
                        match (val, b) {
                            (false, _) => "",
                            (true, true) => "True",
                            (true, false) => "False",
                        }
                        .to_owned()
                    };
                    Ok([
                        label.to_string(),
                        format!("images/{folder}/{}.png", faces[*k].name),
                        if val { "validation" } else { "train" }.to_owned(),
                        flag(query),
                        flag(gallery),
                        cl.script.to_owned(),
                    ])
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let per_label: Vec<usize> = rows.iter().map(Vec::len).filter(|&n| n > 0).collect();
    let written: Vec<bool> = rows.iter().map(|r| !r.is_empty()).collect();
    let rows: Vec<[String; 6]> = rows.into_iter().flatten().collect();
    let header = [
        "label",
        "path",
        "split",
        "is_query",
        "is_gallery",
        "category",
    ];
    let columns = header
        .iter()
        .enumerate()
        .map(|(k, name)| (*name, rows.iter().map(|r| r[k].clone()).collect()))
        .collect();
    let csv = out.join("df.csv");
    write_csv(&csv, columns)?;

    let kept = |pred: &dyn Fn(usize) -> bool| {
        (0..classes.len())
            .filter(|&i| written[i] && pred(i))
            .count()
    };
    let mut scripts: Vec<(String, usize)> = Vec::new();
    for (name, _) in SCRIPTS {
        let n = kept(&|i| classes[i].script == *name);
        if n > 0 {
            scripts.push((name.to_string(), n));
        }
    }
    Ok(GlyphsSummary {
        csv,
        labels: per_label.len(),
        images: rows.len(),
        train_labels: kept(&|i| !is_val[i]),
        validation_labels: kept(&|i| is_val[i]),
        faces: faces.len(),
        scripts,
        images_per_label: (
            per_label.iter().copied().min().unwrap_or(0),
            per_label.iter().copied().max().unwrap_or(0),
        ),
    })
}

/// `img` with the handwriting-like variation, drawn from a stream of `(seed, label, face)`.
fn distort(img: &GrayImage, seed: u64, label: usize, face: usize) -> GrayImage {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ 0x9e37_79b9_7f4a_7c15 ^ ((label as u64) << 20) ^ face as u64,
    );
    let t = super::Transform {
        name: "glyph_variation".into(),
        ops: super::transforms::glyph_variation(),
        mean: [0.0; 3],
        std: [1.0; 3],
    };
    let rgb = image::DynamicImage::ImageLuma8(img.clone()).to_rgb8();
    image::DynamicImage::ImageRgb8(t.apply_image(&rgb, &mut rng)).to_luma8()
}

/// A class-disjoint split: `round(n * fraction)` of `n` labels, drawn with `rng`, are validation.
pub(crate) fn split_labels(n: usize, fraction: f64, rng: &mut ChaCha8Rng) -> Vec<bool> {
    let n_val = ((n as f64) * fraction).round() as usize;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut is_val = vec![false; n];
    for &i in order.iter().take(n_val) {
        is_val[i] = true;
    }
    is_val
}
