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
    /// Retrieval metrics (and optionally per-query results and a retrieval grid) of precomputed
    /// embeddings: row i of the .npy is the i-th validation row of the CSV.
    Evaluate(Box<EvaluateArgs>),
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

#[derive(clap::Args)]
struct EvaluateArgs {
    /// float32 [N, D] .npy: row i = the i-th validation row of the CSV (file order).
    #[arg(long)]
    embeddings: PathBuf,
    /// The OML CSV.
    #[arg(long)]
    data: PathBuf,
    /// Folder that relative image paths are relative to (default: the CSV's folder).
    #[arg(long)]
    dataset_root: Option<PathBuf>,
    /// cmc@k for these k (comma-separated; empty for none).
    #[arg(long, default_value = "1,5")]
    cmc: String,
    /// precision@k.
    #[arg(long, default_value = "5")]
    precision: String,
    /// map@k.
    #[arg(long, default_value = "5")]
    map: String,
    /// fnmr@fmr for these fractions (over all pairs).
    #[arg(long, default_value = "")]
    fmr: String,
    /// pcf for these fractions of the variance.
    #[arg(long, default_value = "0.5")]
    pcf: String,
    /// euclidean or cosine.
    #[arg(long, default_value = "euclidean")]
    distance: String,
    /// Queries without ground truth: oml, skip or error.
    #[arg(long, default_value = "oml")]
    no_gt: String,
    /// Write the nested metrics JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Results kept per query (at least the largest k).
    #[arg(long, default_value_t = 10)]
    top_n: usize,
    /// Write per-query results (paths, distances, hits) as JSON here.
    #[arg(long)]
    retrieved: Option<PathBuf>,
    /// Draw the retrieval grid of the worst queries by cmc@1 into this PNG.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Queries in the grid.
    #[arg(long, default_value_t = 8)]
    grid_queries: usize,
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
        Command::Evaluate(args) => evaluate(&args),
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

fn parse_list<T: std::str::FromStr>(name: &'static str, text: &str) -> oml::Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| oml::Error::param(name, s, "a comma-separated list of numbers"))
        })
        .collect()
}

fn evaluate(args: &EvaluateArgs) -> oml::Result<ExitCode> {
    use oml::metrics::{MetricsConfig, NoGtPolicy, QueryMetric};
    use oml::retrieval::{QueryGalleryInfo, SearchConfig};
    let no_gt_policy = match args.no_gt.as_str() {
        "oml" => NoGtPolicy::Oml,
        "skip" => NoGtPolicy::Skip,
        "error" => NoGtPolicy::Error,
        other => {
            return Err(oml::Error::UnknownName {
                kind: "--no-gt policy",
                name: other.to_owned(),
                known: vec!["oml".into(), "skip".into(), "error".into()],
            });
        }
    };
    let config = MetricsConfig {
        cmc_top_k: parse_list("--cmc", &args.cmc)?,
        precision_top_k: parse_list("--precision", &args.precision)?,
        map_top_k: parse_list("--map", &args.map)?,
        fmr_vals: parse_list("--fmr", &args.fmr)?,
        pcf_variance: parse_list("--pcf", &args.pcf)?,
        no_gt_policy,
        ..MetricsConfig::default()
    };
    let search = SearchConfig {
        top_n: args.top_n,
        distance: args.distance.parse()?,
        ..SearchConfig::default()
    };
    let options = CheckOptions {
        dataset_root: args.dataset_root.clone(),
        check_files: args.grid.is_some(),
        ..CheckOptions::default()
    };
    let table = std::sync::Arc::new(oml::data::SampleTable::from_csv(&args.data, &options)?);
    let embeddings = oml::retrieval::read_embeddings(&args.embeddings)?;
    let info = QueryGalleryInfo::from_table(&table);
    let (rr, metrics) = oml::metrics::evaluate(&embeddings, &info, &config, &search)
        .map_err(|e| oml::Error::Msg(format!("{}: {e}", args.embeddings.display())))?;
    print!("{metrics}");
    if let Some(out) = &args.out {
        write_json(out, &metrics.to_json())?;
        println!("metrics written to {}", out.display());
    }
    let dataset = oml::data::ImageQueryGalleryLabeledDataset::from_table(table.clone())?;
    if let Some(path) = &args.retrieved {
        let names: Vec<String> = (0..dataset.len())
            .map(|i| table.paths[dataset.row(i)].clone())
            .collect();
        write_json(path, &rr.to_json(Some(&names), 10))?;
        println!("per-query results written to {}", path.display());
    }
    if let Some(path) = &args.grid {
        let worst = rr.worst_queries(QueryMetric::Cmc(1), args.grid_queries);
        let grid = oml::viz::retrieval_grid(&rr, &dataset, &worst, args.top_n.min(8), 3, 96)?;
        grid.save_png(path)?;
        println!(
            "retrieval grid of the {} worst queries written to {}",
            worst.len(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn write_json(path: &Path, value: &serde_json::Value) -> oml::Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| oml::Error::Msg(format!("cannot write JSON: {e}")))?;
    std::fs::write(path, text).map_err(|e| oml::Error::io("cannot write", path, e))
}
