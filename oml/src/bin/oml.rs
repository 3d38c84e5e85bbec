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
        #[arg(long, conflicts_with = "decode")]
        no_files: bool,
        /// Also open every image (in parallel) to find the ones that cannot be decoded.
        #[arg(long)]
        decode: bool,
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
    /// Pretrained models: list them, download their weights, import checkpoints.
    #[command(subcommand)]
    Zoo(Zoo),
    /// Gallery indexes kept on disk: build one from embeddings, add to it, query it.
    #[command(subcommand)]
    Index(IndexCmd),
    /// Search an index with images: embeds them with the model the index was built with and
    /// prints the nearest items (optionally a grid and JSON).
    Search(Box<SearchArgs>),
    /// Embed every row of a CSV (file order) with a zoo model or an arch and a weights file.
    Embed(Box<EmbedArgs>),
    /// The main job: generate the glyph dataset, measure raw pixels and the backbone, fine-tune
    /// within a time budget, validate on unseen letters and write an HTML report. The backbone is
    /// the zoo's DINOv2 (downloaded when online), else a small ResNet trained from scratch.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// Fine-tuning budget in seconds.
        #[arg(long, default_value_t = 300.0)]
        budget: f64,
        /// Letters used (half train, half validation).
        #[arg(long, default_value_t = 400)]
        labels: usize,
        /// Pretrained DINOv2 ViT-S/14 weights to use instead of the zoo's.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Skip the zoo: train the small glyph ResNet from scratch.
        #[arg(long, conflicts_with = "weights")]
        from_scratch: bool,
        /// Input side in pixels (default: 56 for DINOv2, 32 from scratch).
        #[arg(long)]
        image_size: Option<u32>,
        /// Learning rate (default: 2e-5 for DINOv2, 3e-3 from scratch).
        #[arg(long)]
        lr: Option<f64>,
        /// Seed of the dataset, the initialisation and the sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Device of the backbone: cpu, cuda, cuda:i.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Precision of training and embedding: f32, bf16 (mixed), f16 (mixed).
        #[arg(long, default_value = "f32", value_parser = parse_precision)]
        precision: oml::Precision,
    },
    /// Check this build and machine: features, devices, every backbone family against the CPU,
    /// training steps in f32 / bf16 / f16, throughput. Exits 1 when a check fails.
    Doctor {
        /// Devices to check (`cpu`, `cuda`, `cuda:i`; repeatable); default: the CPU and every GPU.
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Tiny networks at 32 px instead of the real archs at 224 px (seconds on a CPU).
        #[arg(long)]
        quick: bool,
        /// Also write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Notebooks: set up the evcxr Jupyter kernel for oml's notebooks.
    #[command(subcommand)]
    Notebook(Notebook),
    /// Fine-tune from a YAML config (OML's train pipeline).
    Train {
        /// The config.
        #[arg(long)]
        config: PathBuf,
        /// Overrides, `key.path=value` (YAML values).
        #[arg(long = "set")]
        set: Vec<String>,
        /// Continue the run saved in DIR (default: the config's logs_dir) from its newest
        /// complete checkpoint; budgets (max_epochs, max_steps, max_seconds) may be raised.
        #[arg(long, value_name = "DIR", num_args = 0..=1)]
        #[allow(clippy::option_option)]
        resume: Option<Option<PathBuf>>,
    },
    /// Train OML's pairwise re-ranker (a siamese on a first-stage model's top-n) from a YAML
    /// config, reporting metrics before and after re-ranking.
    TrainPostprocessor {
        /// The config.
        #[arg(long)]
        config: PathBuf,
        /// Overrides, `key.path=value` (YAML values).
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Metrics of a config's model (or --weights) on its CSV's validation rows.
    Validate {
        /// The config.
        #[arg(long)]
        config: PathBuf,
        /// Weights to validate instead of the config's (e.g. runs/x/best.safetensors).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Overrides, `key.path=value`.
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Embeddings and top-n results for a CSV (labels optional).
    Predict {
        /// The config.
        #[arg(long)]
        config: PathBuf,
        /// Weights instead of the config's.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Output (.npy or .parquet; default logs_dir/embeddings.npy).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overrides, `key.path=value`.
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

#[derive(clap::Args)]
struct EvaluateArgs {
    /// float32 [N, D] .npy: row i = the i-th validation row of the CSV (file order), or one row
    /// per CSV row (as `oml embed` writes), of which the validation rows are taken.
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
    /// Search this index folder (`oml index build`) for the CSV's queries instead of the CSV's
    /// gallery rows: metrics of approximate results (pcf and fnmr@fmr need every embedding and
    /// are not computed).
    #[arg(long)]
    index: Option<PathBuf>,
}

/// The model of an index or a search: a zoo name, or an arch with weights.
#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// A zoo name.
    #[arg(long, conflicts_with_all = ["arch", "weights"])]
    model: Option<String>,
    /// An arch, with --weights.
    #[arg(long, requires = "weights")]
    arch: Option<String>,
    /// Weights for --arch.
    #[arg(long, requires = "arch")]
    weights: Option<PathBuf>,
    /// Image side the model embeds at (default: its transform's).
    #[arg(long)]
    image_size: Option<u32>,
}

impl ModelArgs {
    fn model_ref(&self) -> Option<oml::pipeline::ModelRef> {
        let source = match (&self.model, &self.arch, &self.weights) {
            (Some(name), ..) => oml::pipeline::ModelSource::Zoo(name.clone()),
            (None, Some(arch), Some(weights)) => oml::pipeline::ModelSource::File {
                arch: arch.clone(),
                weights: weights.clone(),
            },
            _ => return None,
        };
        Some(oml::pipeline::ModelRef {
            source,
            image_size: self.image_size,
        })
    }
}

#[derive(Subcommand)]
enum IndexCmd {
    /// Build an index from embeddings (the CSV's gallery rows, or every row of E without --data)
    /// and save it to a folder.
    Build {
        /// float32 [N, D] .npy or .parquet (one row per CSV row, as `oml embed` writes).
        #[arg(long)]
        embeddings: PathBuf,
        /// The OML CSV: its gallery rows are indexed, with their labels, paths, categories and
        /// sequences; ids are CSV row numbers. Without it: every row of E, ids 0..N-1.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Folder that relative image paths are relative to (default: the CSV's folder).
        #[arg(long)]
        dataset_root: Option<PathBuf>,
        /// The index folder.
        #[arg(long)]
        out: PathBuf,
        /// hnsw (approximate, USearch) or flat (exact).
        #[arg(long, default_value = "hnsw")]
        kind: String,
        /// euclidean or cosine.
        #[arg(long, default_value = "euclidean")]
        metric: String,
        /// Storage of hnsw vectors: f16 (half the size and faster at the same recall), f32, or
        /// i8 (cosine only). A flat index stores f32.
        #[arg(long)]
        dtype: Option<String>,
        /// HNSW links per node.
        #[arg(long, default_value_t = 16)]
        connectivity: usize,
        /// HNSW candidates while building.
        #[arg(long, default_value_t = 128)]
        expansion_add: usize,
        /// HNSW candidates while searching (recall against speed).
        #[arg(long, default_value_t = 64)]
        expansion_search: usize,
        /// The model the embeddings came from, recorded so that `oml search` embeds with it.
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Add embeddings to an index (new ids after its largest one).
    Add {
        /// The index folder.
        #[arg(long)]
        index: PathBuf,
        /// float32 [N, D] .npy or .parquet.
        #[arg(long)]
        embeddings: PathBuf,
        /// The CSV whose gallery rows these are (their labels, paths, ...).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Folder that relative image paths are relative to (default: the CSV's folder).
        #[arg(long)]
        dataset_root: Option<PathBuf>,
    },
    /// The nearest items of every row of a query embeddings file.
    Query {
        /// The index folder.
        #[arg(long)]
        index: PathBuf,
        /// float32 [Q, D] .npy or .parquet.
        #[arg(long)]
        embeddings: PathBuf,
        /// Hits per query.
        #[arg(long, default_value_t = 10)]
        top_n: usize,
        /// R.json (per query: ids, distances, paths, labels) or R.parquet (a row per hit).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct SearchArgs {
    /// The index folder.
    #[arg(long)]
    index: PathBuf,
    /// The model (default: the one the index records); another model is refused.
    #[command(flatten)]
    model: ModelArgs,
    /// Query images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Hits per image.
    #[arg(long, default_value_t = 5)]
    top_n: usize,
    /// Draw the images and their hits into this PNG.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Write the hits as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Zoo {
    /// Every model: name, arch, embedding size, Hub repository, whether its weights are cached.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a model's weights into the Hub cache (or find them there), check their sha256 and
    /// print the path.
    Download {
        /// A zoo name (see `oml zoo list`).
        name: String,
    },
    /// Convert an OML (Lightning) or DINO checkpoint, or any file the loader reads, into a clean
    /// safetensors file for `--arch` (checked tensor by tensor), ready to push to a Hub repository.
    Import {
        /// .ckpt / .pth / .pt / .bin / .safetensors.
        checkpoint: PathBuf,
        /// The arch it is a checkpoint of.
        #[arg(long)]
        arch: String,
        /// Sizes of an MLP head (OML's ExtractorWithMLP), comma-separated.
        #[arg(long, default_value = "")]
        mlp: String,
        /// The safetensors file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct EmbedArgs {
    /// A zoo name (weights from the Hub cache, downloaded when missing and online).
    #[arg(long, conflicts_with_all = ["arch", "weights", "pixels"])]
    model: Option<String>,
    /// The raw-pixel baseline instead of a network: grey SIZE x SIZE thumbnails, L2-normalised.
    #[arg(long, conflicts_with_all = ["arch", "weights"])]
    pixels: Option<u32>,
    /// An arch (vits14, resnet50, vitb32_224, ...), with --weights.
    #[arg(long, requires = "weights")]
    arch: Option<String>,
    /// Weights for --arch: safetensors or a PyTorch checkpoint, OML's or the Hub's layout.
    #[arg(long, requires = "arch")]
    weights: Option<PathBuf>,
    /// The OML CSV (labels optional).
    #[arg(long)]
    data: PathBuf,
    /// Folder that relative image paths are relative to (default: the CSV's folder).
    #[arg(long)]
    dataset_root: Option<PathBuf>,
    /// A transform preset (default: the model's, or for --arch the one OML pairs with it).
    #[arg(long)]
    transform: Option<String>,
    /// Image side for the transform (default: the model's).
    #[arg(long)]
    image_size: Option<u32>,
    /// L2-normalise the embeddings.
    #[arg(long)]
    normalise: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// cpu, cuda or cuda:i.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// float32 [N, D] .npy, or .parquet (path, label, embedding).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Notebook {
    /// Install the evcxr kernel (when missing) and set it up as CI runs it: a fixed build folder
    /// reused by every notebook, cells unoptimised, the crates they use optimised.
    Setup {
        /// The folder evcxr builds in (default ~/.cache/oml/evcxr).
        #[arg(long)]
        build_dir: Option<PathBuf>,
        /// oml's evcxr configuration folder (default ~/.config/oml/evcxr).
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// Jupyter's data folder holding kernels/ (default $JUPYTER_PATH or the user's).
        #[arg(long)]
        jupyter_dir: Option<PathBuf>,
        /// Fail instead of running `cargo install evcxr_jupyter` when it is missing.
        #[arg(long)]
        no_install: bool,
        /// The target folder of that `cargo install` (kept between runs: faster reinstalls).
        #[arg(long)]
        install_target_dir: Option<PathBuf>,
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
        /// Validation across font families (queries serif, gallery sans and mono).
        #[arg(long)]
        cross_font: bool,
        /// With --cross-font: queries drawn with handwriting-like variation (the demo's protocol).
        #[arg(long, requires = "cross_font")]
        distort_queries: bool,
    },
}

fn parse_precision(s: &str) -> Result<oml::Precision, String> {
    oml::Precision::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A short-lived process that mostly trains or embeds: reuse freed tensor memory.
    oml_kernels::keep_freed_memory();
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
            decode,
        } => check_data(&csv, dataset_root, strict, json, !no_files, decode),
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
            cross_font,
            distort_queries,
        }) => {
            let config = GlyphsConfig {
                size,
                fonts_dir: fonts,
                max_labels,
                seed,
                cross_font,
                distort_queries,
                ..GlyphsConfig::default()
            };
            glyphs(&out, &config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Evaluate(args) => evaluate(&args),
        Command::Zoo(z) => zoo(z),
        Command::Index(cmd) => index(cmd),
        Command::Search(args) => search(&args),
        Command::Embed(args) => embed(&args),
        Command::Demo {
            out,
            budget,
            labels,
            weights,
            from_scratch,
            image_size,
            lr,
            seed,
            device,
            precision,
        } => {
            let cfg = oml::demo::DemoConfig {
                out,
                budget_seconds: budget,
                max_labels: labels,
                weights,
                from_scratch,
                seed,
                lr,
                image_size,
                device,
                precision,
            };
            let r = oml::demo::run(&cfg)?;
            println!();
            println!("{}", r.table());
            println!("backbone: {}", r.backbone);
            println!("path: {}", r.path);
            println!(
                "fine-tuned for {} steps in {:.0} s; report: {}",
                r.steps,
                r.train_seconds,
                r.report.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Notebook(Notebook::Setup {
            build_dir,
            config_dir,
            jupyter_dir,
            no_install,
            install_target_dir,
        }) => {
            let defaults = oml::kernel::SetupOptions::default();
            let options = oml::kernel::SetupOptions {
                build_root: build_dir.unwrap_or(defaults.build_root),
                config_dir: config_dir.unwrap_or(defaults.config_dir),
                jupyter_dir,
                install_evcxr: !no_install,
                install_target_dir,
            };
            let r = oml::kernel::setup(&options)?;
            println!(
                "kernel: {} (display name \"Rust (oml)\")",
                r.kernel_json.display()
            );
            println!("evcxr configuration: {}", r.config_dir.display());
            println!(
                "build folder: {} (reused by every notebook; the first one compiles the stack)",
                r.build_dir.display()
            );
            match r.jupyter {
                Some(v) => {
                    println!("jupyter: {v}; open the notebooks with `jupyter lab notebooks/`")
                }
                None => println!(
                    "jupyter: not found; install it with `pip install jupyterlab`, then `jupyter lab notebooks/`"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor {
            devices,
            quick,
            json,
        } => {
            let report = oml::doctor::run(&oml::doctor::DoctorOptions { devices, quick })?;
            print!("{}", report.text());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)
                    .map_err(|e| oml::Error::Msg(format!("cannot write JSON: {e}")))?;
                std::fs::write(&path, text)
                    .map_err(|e| oml::Error::io("cannot write", &path, e))?;
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Train {
            config,
            set,
            resume,
        } => {
            let cfg = oml::pipeline::JobConfig::from_file(&config, &set)?;
            let resume = resume.map(|d| d.unwrap_or_else(|| cfg.logs_dir()));
            let r = oml::pipeline::train(&cfg, resume.as_deref())?;
            println!(
                "{:?} after {} steps ({} epochs, {:.0} s); best {}: {}; outputs in {}",
                r.ending,
                r.steps,
                r.epochs,
                r.seconds,
                cfg.fit.checkpoint_metric,
                r.best
                    .map(|(v, e)| format!("{v:.4} (epoch {e})"))
                    .unwrap_or_else(|| "-".into()),
                cfg.logs_dir().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::TrainPostprocessor { config, set } => {
            let job = oml::pipeline::PostprocessorJob::from_file(&config, &set)?;
            let r = oml::pipeline::train_postprocessor(&job)?;
            match r.validations.last() {
                Some(v) => {
                    let keys = ["OVERALL/cmc/1", "OVERALL/cmc/5", "OVERALL/map/5"];
                    let cells: Vec<String> = keys
                        .iter()
                        .filter_map(|k| {
                            Some(format!(
                                "{} {:.4} -> {:.4}",
                                k.trim_start_matches("OVERALL/"),
                                v.before.get(*k)?,
                                v.after.get(*k)?
                            ))
                        })
                        .collect();
                    println!(
                        "re-ranking the top {} after {} steps: {}",
                        job.fit.top_n,
                        r.steps,
                        cells.join(", ")
                    );
                }
                None => println!("{} steps; no validation rows in the CSV", r.steps),
            }
            println!("outputs in {}", job.logs_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            config,
            weights,
            set,
        } => {
            let cfg = oml::pipeline::JobConfig::from_file(&config, &set)?;
            let m = oml::pipeline::validate(&cfg, weights.as_deref())?;
            print!("{m}");
            println!(
                "written to {}",
                cfg.logs_dir().join("metrics.json").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            config,
            weights,
            out,
            set,
        } => {
            let cfg = oml::pipeline::JobConfig::from_file(&config, &set)?;
            let path = oml::pipeline::predict(&cfg, weights.as_deref(), out.as_deref())?;
            println!("embeddings written to {}", path.display());
            Ok(ExitCode::SUCCESS)
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
    decode: bool,
) -> oml::Result<ExitCode> {
    let options = CheckOptions {
        dataset_root,
        check_files,
        decode_images: decode,
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
    use oml::metrics::{MetricsConfig, NoGtPolicy};
    use oml::retrieval::SearchConfig;
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
    let mut job = oml::pipeline::EvaluateJob::new(args.embeddings.clone(), args.data.clone());
    job.dataset_root = args.dataset_root.clone();
    job.metrics = MetricsConfig {
        cmc_top_k: parse_list("--cmc", &args.cmc)?,
        precision_top_k: parse_list("--precision", &args.precision)?,
        map_top_k: parse_list("--map", &args.map)?,
        fmr_vals: parse_list("--fmr", &args.fmr)?,
        pcf_variance: parse_list("--pcf", &args.pcf)?,
        no_gt_policy,
        ..MetricsConfig::default()
    };
    job.search = SearchConfig {
        top_n: args.top_n,
        distance: args.distance.parse()?,
        ..SearchConfig::default()
    };
    job.out = args.out.clone();
    job.retrieved = args.retrieved.clone();
    job.grid = args.grid.clone();
    job.grid_queries = args.grid_queries;
    job.index = args.index.clone();
    if job.index.is_some() && !job.metrics.pcf_variance.is_empty() {
        println!("pcf needs every embedding: not computed from an index");
    }
    let metrics = oml::pipeline::evaluate(&job)?;
    print!("{metrics}");
    for (what, path) in [
        ("metrics", &job.out),
        ("per-query results", &job.retrieved),
        ("retrieval grid of the worst queries", &job.grid),
    ] {
        if let Some(p) = path {
            println!("{what} written to {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn zoo(command: Zoo) -> oml::Result<ExitCode> {
    use oml::zoo::{self, Hub};
    let hub = Hub::from_env();
    match command {
        Zoo::List { json } => {
            let models = zoo::models()?;
            if json {
                let rows: Vec<serde_json::Value> = models
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "name": m.name, "arch": m.arch, "feat_dim": m.feat_dim,
                            "source": m.source(), "hub_repo": m.hub_repo, "hub_file": m.hub_file,
                            "cached": zoo::is_cached(m, &hub), "supported": m.supported(),
                            "in_oml": m.in_oml, "confirmed": m.confirmed,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<12} {:>5}  {:<46} {:<6} note",
                "name", "arch", "dim", "source", "cached"
            );
            for m in models {
                let mut note = Vec::new();
                if !m.supported() {
                    note.push("no network in oml yet");
                }
                if !m.in_oml {
                    note.push("not in OML 4.0");
                }
                if !m.confirmed {
                    note.push("repository unconfirmed");
                }
                println!(
                    "{:<24} {:<12} {:>5}  {:<46} {:<6} {}",
                    m.name,
                    m.arch.as_deref().unwrap_or("-"),
                    m.feat_dim,
                    m.source(),
                    if zoo::is_cached(m, &hub) { "yes" } else { "no" },
                    note.join("; ")
                );
            }
            println!("cache: {}", hub.cache_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Zoo::Download { name } => {
            let model = zoo::find(&name)?;
            let path = zoo::weights(model, &hub)?;
            let checked = zoo::verify_blob(&path)?;
            println!(
                "{}{}",
                path.display(),
                if checked { " (sha256 verified)" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Zoo::Import {
            checkpoint,
            arch,
            mlp,
            out,
        } => {
            let mut spec = oml::models::ModelSpec::new(&arch);
            spec.mlp = parse_list("--mlp", &mlp)?;
            let varmap = oml::models::import(&spec, &checkpoint)?;
            let n = varmap.all_vars().len();
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| oml::Error::io("cannot create folder", parent, e))?;
            }
            varmap
                .save(&out)
                .map_err(|e| oml::Error::Msg(format!("cannot write {}: {e}", out.display())))?;
            println!(
                "wrote {} ({n} tensors of {arch}); embed with: oml embed --arch {arch} --weights {} --data df.csv --out e.npy",
                out.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn embed(args: &EmbedArgs) -> oml::Result<ExitCode> {
    use oml::pipeline::{EmbedJob, Embedder};
    let with = match (args.pixels, &args.model, &args.arch, &args.weights) {
        (Some(side), ..) => Embedder::Pixels(side),
        (None, Some(name), _, _) => Embedder::Model(oml::Model::from_pretrained(name)?),
        (None, None, Some(arch), Some(weights)) => {
            Embedder::Model(oml::Model::from_file(arch, weights)?)
        }
        _ => {
            return Err(oml::Error::Msg(
                "give --model NAME, --arch ARCH with --weights FILE, or --pixels SIDE".into(),
            ));
        }
    };
    let with = match with {
        Embedder::Model(mut m) => {
            if let Some(name) = &args.transform {
                let side = args
                    .image_size
                    .or(m.transform().output_size().map(|(h, _)| h))
                    .unwrap_or(224);
                m = m.with_transform(oml::data::Transform::preset(name, side)?);
            } else if let Some(side) = args.image_size {
                m = m.with_image_size(side)?;
            }
            println!("{}", m.summary());
            Embedder::Model(
                m.with_device(&args.device)?
                    .with_batch_size(args.batch_size)?,
            )
        }
        pixels => pixels,
    };
    let job = EmbedJob {
        data: args.data.clone(),
        dataset_root: args.dataset_root.clone(),
        out: args.out.clone(),
        normalise: args.normalise,
        with,
    };
    let start = std::time::Instant::now();
    let (n, d) = oml::pipeline::embed(&job)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {} ({n} x {d}) in {secs:.1} s ({:.1} images/s)",
        args.out.display(),
        n as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}

fn index(cmd: IndexCmd) -> oml::Result<ExitCode> {
    match cmd {
        IndexCmd::Build {
            embeddings,
            data,
            dataset_root,
            out,
            kind,
            metric,
            dtype,
            connectivity,
            expansion_add,
            expansion_search,
            model,
        } => {
            let job = oml::pipeline::IndexBuildJob {
                embeddings,
                data,
                dataset_root,
                out,
                config: oml::retrieval::IndexConfig {
                    kind: kind.parse()?,
                    metric: metric.parse()?,
                    dtype: match dtype {
                        Some(d) => d.parse()?,
                        None if kind == "flat" => oml::retrieval::IndexDtype::F32,
                        None => oml::retrieval::IndexDtype::F16,
                    },
                    connectivity,
                    expansion_add,
                    expansion_search,
                },
                model: model.model_ref(),
            };
            let start = std::time::Instant::now();
            let index = oml::pipeline::index_build(&job)?;
            println!(
                "built {} in {:.1} s ({} bytes on disk)",
                index.summary(),
                start.elapsed().as_secs_f64(),
                index.disk_bytes().unwrap_or(0)
            );
        }
        IndexCmd::Add {
            index,
            embeddings,
            data,
            dataset_root,
        } => {
            let (ix, first) = oml::pipeline::index_add(
                &index,
                &embeddings,
                data.as_deref(),
                dataset_root.as_ref(),
            )?;
            println!(
                "added ids {first}..{}; now {}",
                ix.items().ids.iter().max().copied().unwrap_or(0),
                ix.summary()
            );
        }
        IndexCmd::Query {
            index,
            embeddings,
            top_n,
            out,
        } => {
            let start = std::time::Instant::now();
            let rr = oml::pipeline::index_query(&index, &embeddings, top_n, &out)?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{} queries in {secs:.2} s; hits written to {}",
                rr.n_queries(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn search(args: &SearchArgs) -> oml::Result<ExitCode> {
    let job = oml::pipeline::SearchJob {
        index: args.index.clone(),
        model: args.model.model_ref(),
        images: args.images.clone(),
        top_n: args.top_n,
        grid: args.grid.clone(),
        out: args.out.clone(),
    };
    let found = oml::pipeline::search(&job)?;
    print!("{}", oml::notebook::Show::plain(&found));
    for (what, path) in [("grid", &job.grid), ("hits", &job.out)] {
        if let Some(p) = path {
            println!("{what} written to {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
