//! `oml notebook setup`: the evcxr Jupyter kernel set up for oml's notebooks, the way CI runs them.
//!
//! What it does, each step idempotent:
//! 1. finds `evcxr_jupyter` (installs it with `cargo install evcxr_jupyter --version 0.22.0
//!    --locked` when asked to and missing) and runs `evcxr_jupyter --install`, which writes the
//!    `rust` kernel into Jupyter's kernel folder (`$JUPYTER_PATH/kernels/rust`, else the user's
//!    Jupyter data folder);
//! 2. adds to that kernel's `kernel.json` an environment: `EVCXR_CONFIG_DIR` (an evcxr
//!    configuration of oml's, leaving the user's own untouched) and `LD_LIBRARY_PATH` with the
//!    toolchain's `libstd` (the library evcxr loads finds it even when a relative rpath does not);
//! 3. writes that configuration: `evcxr.toml` with a fixed build folder (every notebook and every
//!    later session reuses the compiled crates) and cells compiled unoptimised (`opt_level = "0"`:
//!    a cell compiles in seconds);
//! 4. writes `.cargo/config.toml` above the build folder: the crates cells use (candle, gemm,
//!    image, ...) optimised, polars not (slow to compile, it only reads small CSVs in notebooks).
//!    Without it a fine-tuning cell runs candle at opt-level 0, about 50x slower.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The evcxr version the notebooks are tested with.
pub const EVCXR_VERSION: &str = "0.22.0";

/// Where things go.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The folder evcxr builds notebooks in (`build/` inside) and whose `.cargo/config.toml` sets
    /// the optimisation of dependencies.
    pub build_root: PathBuf,
    /// oml's evcxr configuration folder.
    pub config_dir: PathBuf,
    /// Jupyter's data folder holding `kernels/` (default: `$JUPYTER_PATH`, else the user's).
    pub jupyter_dir: Option<PathBuf>,
    /// Run `cargo install evcxr_jupyter` when it is missing.
    pub install_evcxr: bool,
    /// The target folder of that `cargo install` (default: cargo's own temporary one).
    pub install_target_dir: Option<PathBuf>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

impl Default for SetupOptions {
    /// `~/.cache/oml/evcxr` (or `$XDG_CACHE_HOME/oml/evcxr`) and `~/.config/oml/evcxr`.
    fn default() -> Self {
        let xdg = |var: &str, fallback: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(fallback)))
                .unwrap_or_else(|| PathBuf::from(fallback))
        };
        SetupOptions {
            build_root: xdg("XDG_CACHE_HOME", ".cache").join("oml").join("evcxr"),
            config_dir: xdg("XDG_CONFIG_HOME", ".config").join("oml").join("evcxr"),
            jupyter_dir: None,
            install_evcxr: true,
            install_target_dir: None,
        }
    }
}

/// What setup did.
#[derive(Debug, Clone)]
pub struct SetupReport {
    /// The kernel's `kernel.json`.
    pub kernel_json: PathBuf,
    /// The build folder evcxr uses.
    pub build_dir: PathBuf,
    /// The evcxr configuration folder.
    pub config_dir: PathBuf,
    /// Whether `jupyter` answered (`None`: not found, with what to install).
    pub jupyter: Option<String>,
}

/// Jupyter's data folder as evcxr computes it (`$JUPYTER_PATH`, else the platform's).
fn jupyter_data_dir() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("JUPYTER_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = home().ok_or_else(|| Error::Msg("HOME is not set: give --jupyter-dir".into()))?;
    if cfg!(target_os = "macos") {
        return Ok(home.join("Library").join("Jupyter"));
    }
    Ok(std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".local").join("share"))
        .join("jupyter"))
}

/// Whether `program arg` runs and succeeds; the first line it prints when it does.
fn answer_of(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| Error::Msg(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Msg(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `.cargo/config.toml` that optimises the notebooks' dependencies but not polars.
pub fn cargo_config() -> String {
    let mut s = String::from(
        "# Written by `oml notebook setup`: notebook cells compile unoptimised (evcxr's opt_level),\n\
         # the crates they use are optimised (candle's matrix products are ~50x slower at opt-level 0),\n\
         # polars is not (slow to compile; notebooks only read small CSVs with it).\n\
         [profile.dev]\ndebug = 0\n\n\
         # USearch (the gallery index) is C++ built by the `cc` crate: NDEBUG drops its debug checks.\n\
         [env]\nCXXFLAGS = \"-DNDEBUG\"\n\n\
         [profile.dev.package.\"*\"]\nopt-level = 3\ndebug = false\ndebug-assertions = false\noverflow-checks = false\n",
    );
    for p in [
        "polars",
        "polars-core",
        "polars-io",
        "polars-arrow",
        "polars-compute",
        "polars-utils",
        "polars-parquet",
        "polars-ops",
    ] {
        s += &format!("\n[profile.dev.package.{p}]\nopt-level = 0\n");
    }
    s
}

/// Sets up the kernel (see the module docs).
pub fn setup(options: &SetupOptions) -> Result<SetupReport> {
    // 1. evcxr_jupyter, and its kernel.
    if answer_of("evcxr_jupyter", "--help").is_none() {
        if !options.install_evcxr {
            return Err(Error::Msg(format!(
                "evcxr_jupyter is not on PATH: install it with `cargo install evcxr_jupyter \
                 --version {EVCXR_VERSION} --locked` (about 5 minutes), then run this again"
            )));
        }
        println!(
            "installing evcxr_jupyter {EVCXR_VERSION} (cargo install, about 5 minutes on 2 cores)"
        );
        let mut install = Command::new("cargo");
        install.args([
            "install",
            "evcxr_jupyter",
            "--version",
            EVCXR_VERSION,
            "--locked",
        ]);
        if let Some(dir) = &options.install_target_dir {
            install.arg("--target-dir").arg(dir);
        }
        let status = install
            .status()
            .map_err(|e| Error::Msg(format!("cannot run cargo: {e}")))?;
        if !status.success() {
            return Err(Error::Msg(format!(
                "cargo install evcxr_jupyter failed ({status})"
            )));
        }
        if answer_of("evcxr_jupyter", "--help").is_none() {
            return Err(Error::Msg(
                "evcxr_jupyter was installed but is not on PATH: add ~/.cargo/bin to PATH".into(),
            ));
        }
    }
    let jupyter_dir = match &options.jupyter_dir {
        Some(d) => d.clone(),
        None => jupyter_data_dir()?,
    };
    run(
        Command::new("evcxr_jupyter")
            .arg("--install")
            .env("JUPYTER_PATH", &jupyter_dir),
        "evcxr_jupyter --install",
    )?;
    let kernel_json = jupyter_dir.join("kernels").join("rust").join("kernel.json");

    // 2. The kernel's environment.
    let sysroot = run(
        Command::new("rustc").args(["--print", "sysroot"]),
        "rustc --print sysroot",
    )?;
    let host = run(Command::new("rustc").arg("-vV"), "rustc -vV")?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .unwrap_or_default();
    let libstd = Path::new(sysroot.trim())
        .join("lib")
        .join("rustlib")
        .join(host.trim())
        .join("lib");
    let mut ld = libstd.to_string_lossy().into_owned();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH")
        && !old.is_empty()
        && !old.split(':').any(|p| p == ld)
    {
        ld = format!("{ld}:{old}");
    }
    let text = std::fs::read_to_string(&kernel_json)
        .map_err(|e| Error::io("cannot read", &kernel_json, e))?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: kernel_json.clone(),
        message: format!("not a kernel spec: {e}"),
    })?;
    let Some(obj) = spec.as_object_mut() else {
        return Err(Error::Format {
            path: kernel_json.clone(),
            message: "not a JSON object".into(),
        });
    };
    obj.insert(
        "env".into(),
        serde_json::json!({
            "EVCXR_CONFIG_DIR": options.config_dir,
            "LD_LIBRARY_PATH": ld,
        }),
    );
    obj.insert("display_name".into(), "Rust (oml)".into());
    let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(&kernel_json, text).map_err(|e| Error::io("cannot write", &kernel_json, e))?;

    // 3. evcxr's configuration, 4. the dependencies' optimisation.
    let build_dir = options.build_root.join("build");
    for dir in [
        &options.config_dir,
        &build_dir,
        &options.build_root.join(".cargo"),
    ] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    let toml_path = options.config_dir.join("evcxr.toml");
    let toml = format!(
        "# Written by `oml notebook setup`.\n[evcxr]\ntmpdir = {}\nopt_level = \"0\"\n",
        serde_json::to_string(&build_dir.to_string_lossy())
            .map_err(|e| Error::Msg(e.to_string()))?
    );
    std::fs::write(&toml_path, toml).map_err(|e| Error::io("cannot write", &toml_path, e))?;
    let cargo_path = options.build_root.join(".cargo").join("config.toml");
    std::fs::write(&cargo_path, cargo_config())
        .map_err(|e| Error::io("cannot write", &cargo_path, e))?;

    let jupyter = answer_of("jupyter-lab", "--version")
        .map(|v| format!("jupyter-lab {v}"))
        .or_else(|| answer_of("jupyter", "--version"));
    Ok(SetupReport {
        kernel_json,
        build_dir,
        config_dir: options.config_dir.clone(),
        jupyter,
    })
}
