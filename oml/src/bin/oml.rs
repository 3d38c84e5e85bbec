//! The `oml` command line: parses arguments and calls the library, nothing more.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oml::data::{
    CheckOptions, GlyphsConfig, check_csv, convert_fashion_mnist, convert_image_folder,
    generate_glyphs,
};

#[derive(Parser)]
#[command(name = "oml", version, about = "Open Metric Learning in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a CSV in OML's format and print its summary, or every problem (exit 1).
    CheckData {
        /// The CSV file.
        csv: PathBuf,
        /// Folder that relative image paths are relative to (default: the CSV's folder).
        #[arg(long)]
        dataset_root: Option<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
        /// Do not check that image files exist.
        #[arg(long)]
        no_files: bool,
    },
    /// Convert other layouts into OML CSVs.
    #[command(subcommand)]
    Convert(Convert),
    /// Generate built-in datasets.
    #[command(subcommand)]
    Datasets(Datasets),
    /// The main job on the embedded default, offline: generate the glyph dataset, check it and
    /// print its summary.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// Folder with DejaVu .ttf files (default: the faces embedded in oml).
        #[arg(long)]
        fonts: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Convert {
    /// One folder per label (ROOT/<label>/<image>) to an OML CSV with a class-disjoint split.
    ImageFolder {
        /// Folder with one sub-folder per label.
        root: PathBuf,
        /// The CSV to write (paths in it are relative to ROOT).
        #[arg(long)]
        out: PathBuf,
        /// Fraction of the labels that go to validation.
        #[arg(long, default_value_t = 0.5)]
        val_labels_fraction: f64,
        /// Seed of the split.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Fashion-MNIST idx files to PNGs + an OML CSV (train classes 0-4, validation 5-9).
    FashionMnist {
        /// Folder with the idx files (e.g. /usr/share/datasets/fashion-mnist).
        dir: PathBuf,
        /// Output folder (gets images/ and df.csv).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Datasets {
    /// Every letter of every script in every DejaVu face: ~2,700 identities, 4-21 images each.
    Glyphs {
        /// Output folder (gets images/ and df.csv).
        #[arg(long)]
        out: PathBuf,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Folder with DejaVu .ttf files (default: the faces embedded in oml).
        #[arg(long)]
        fonts: Option<PathBuf>,
        /// Keep a random subset of this many labels.
        #[arg(long)]
        max_labels: Option<usize>,
        /// Seed of the split and the subset.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> oml::Result<ExitCode> {
    match command {
        Command::CheckData {
            csv,
            dataset_root,
            strict,
            json,
            no_files,
        } => check_data(&csv, dataset_root, strict, json, !no_files),
        Command::Convert(Convert::ImageFolder {
            root,
            out,
            val_labels_fraction,
            seed,
        }) => {
            let s = convert_image_folder(&root, &out, val_labels_fraction, seed)?;
            println!(
                "wrote {}: {} rows; train {} rows / {} labels; validation {} rows / {} labels",
                s.csv.display(),
                s.rows,
                s.train_rows,
                s.train_labels,
                s.validation_rows,
                s.validation_labels
            );
            println!(
                "check it with: oml check-data {} --dataset-root {}",
                out.display(),
                root.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Convert(Convert::FashionMnist { dir, out }) => {
            let s = convert_fashion_mnist(&dir, &out)?;
            println!(
                "wrote {}: {} rows; train {} rows / {} labels; validation {} rows / {} labels",
                s.csv.display(),
                s.rows,
                s.train_rows,
                s.train_labels,
                s.validation_rows,
                s.validation_labels
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Datasets(Datasets::Glyphs {
            out,
            size,
            fonts,
            max_labels,
            seed,
        }) => {
            let config = GlyphsConfig {
                size,
                fonts_dir: fonts,
                max_labels,
                seed,
                ..GlyphsConfig::default()
            };
            glyphs(&out, &config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { out, fonts } => {
            let root = out.join("glyphs");
            let config = GlyphsConfig {
                fonts_dir: fonts,
                ..GlyphsConfig::default()
            };
            println!(
                "oml demo: generating the glyph dataset in {}",
                root.display()
            );
            let summary = glyphs(&root, &config)?;
            println!("checking {}", summary.csv.display());
            check_data(&summary.csv, Some(root), false, false, true)
        }
    }
}

fn glyphs(out: &Path, config: &GlyphsConfig) -> oml::Result<oml::data::GlyphsSummary> {
    let start = std::time::Instant::now();
    let s = generate_glyphs(out, config)?;
    println!(
        "wrote {} images of {} labels ({} train, {} validation; {}-{} images per label, {} faces) in {:.1} s",
        s.images,
        s.labels,
        s.train_labels,
        s.validation_labels,
        s.images_per_label.0,
        s.images_per_label.1,
        s.faces,
        start.elapsed().as_secs_f64()
    );
    let scripts: Vec<String> = s.scripts.iter().map(|(n, k)| format!("{n} {k}")).collect();
    println!("scripts: {}", scripts.join(", "));
    println!("CSV: {}", s.csv.display());
    Ok(s)
}

fn check_data(
    csv: &Path,
    dataset_root: Option<PathBuf>,
    strict: bool,
    json: bool,
    check_files: bool,
) -> oml::Result<ExitCode> {
    let options = CheckOptions {
        dataset_root,
        check_files,
        strict,
        require_labels: true,
    };
    let report = check_csv(csv, &options)?;
    if json {
        let text = serde_json::to_string_pretty(&report.to_json())
            .map_err(|e| oml::Error::Msg(format!("cannot write JSON: {e}")))?;
        println!("{text}");
    } else {
        let errors: Vec<_> = report.errors().collect();
        let warnings: Vec<_> = report.warnings().collect();
        if !errors.is_empty() {
            eprintln!("{}: {} error(s)", csv.display(), errors.len());
            for p in &errors {
                eprintln!("{p}");
            }
        }
        if !warnings.is_empty() {
            eprintln!("{}: {} warning(s)", csv.display(), warnings.len());
            for p in &warnings {
                eprintln!("{p}");
            }
        }
        if report.is_ok() {
            println!("{}: OK", csv.display());
            println!("{}", report.summary);
        }
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
