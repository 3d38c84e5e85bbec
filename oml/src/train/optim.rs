//! Optimisers whose whole state can be saved and restored (so a resumed run is exact): AdamW,
//! Adam, SGD with momentum and Nesterov; parameter groups with their own learning rates; learning
//! rate schedules; gradient clipping by global norm.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (torch's AdamW).
    Adamw {
        /// Learning rate.
        lr: f64,
        /// Decoupled weight decay.
        #[serde(default = "default_wd")]
        weight_decay: f64,
        /// (beta1, beta2).
        #[serde(default = "default_betas")]
        betas: (f64, f64),
        /// Epsilon.
        #[serde(default = "default_eps")]
        eps: f64,
    },
    /// Adam with L2 weight decay added to the gradient (torch's Adam).
    Adam {
        /// Learning rate.
        lr: f64,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
        /// (beta1, beta2).
        #[serde(default = "default_betas")]
        betas: (f64, f64),
        /// Epsilon.
        #[serde(default = "default_eps")]
        eps: f64,
    },
    /// SGD with momentum (torch's semantics, dampening 0) and optional Nesterov.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum.
        #[serde(default)]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_wd() -> f64 {
    0.01
}
fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}

impl OptimizerKind {
    /// AdamW with torch's defaults (weight decay 0.01, betas (0.9, 0.999), eps 1e-8).
    pub fn adamw(lr: f64) -> Self {
        OptimizerKind::Adamw {
            lr,
            weight_decay: default_wd(),
            betas: default_betas(),
            eps: default_eps(),
        }
    }

    /// The same rule with another base learning rate.
    pub fn with_lr(self, rate: f64) -> OptimizerKind {
        let mut k = self;
        match &mut k {
            OptimizerKind::Adamw { lr, .. }
            | OptimizerKind::Adam { lr, .. }
            | OptimizerKind::Sgd { lr, .. } => *lr = rate,
        }
        k
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerKind::Adamw { lr, .. }
            | OptimizerKind::Adam { lr, .. }
            | OptimizerKind::Sgd { lr, .. } => lr,
        }
    }

    /// The same rule with its momentum (Adam's beta1, SGD's momentum) set to `m`.
    pub fn with_momentum(self, m: f64) -> OptimizerKind {
        let mut k = self;
        match &mut k {
            OptimizerKind::Adamw { betas, .. } | OptimizerKind::Adam { betas, .. } => betas.0 = m,
            OptimizerKind::Sgd { momentum, .. } => *momentum = m,
        }
        k
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        let lr = self.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(Error::param("optimizer.lr", lr, "a positive number"));
        }
        match *self {
            OptimizerKind::Adamw { betas, eps, .. } | OptimizerKind::Adam { betas, eps, .. } => {
                if !(0.0..1.0).contains(&betas.0) || !(0.0..1.0).contains(&betas.1) || eps <= 0.0 {
                    return Err(Error::param(
                        "optimizer.betas/eps",
                        format!("{betas:?}/{eps}"),
                        "betas in [0, 1), eps > 0",
                    ));
                }
            }
            OptimizerKind::Sgd {
                momentum, nesterov, ..
            } => {
                if nesterov && momentum <= 0.0 {
                    return Err(Error::param(
                        "optimizer.nesterov",
                        true,
                        "Nesterov needs momentum > 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A named group of parameters with a learning-rate factor (backbone vs head).
pub struct ParamGroup {
    /// Name (`backbone`, `head`, `criterion`).
    pub name: String,
    /// `(name, variable)` pairs.
    pub params: Vec<(String, Var)>,
    /// Multiplies the scheduled learning rate.
    pub lr_scale: f64,
    /// Frozen groups are skipped (no update, no state change).
    pub frozen: bool,
}

impl ParamGroup {
    /// The float variables of `varmap`, sorted by name (a fixed order, so that sums over
    /// parameters such as the gradient norm are reproducible).
    pub fn vars_of(varmap: &VarMap) -> Vec<(String, Var)> {
        let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, Var)> = data
            .iter()
            .filter(|(_, var)| var.dtype().is_float())
            .map(|(k, var)| (k.clone(), var.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// One trainable group of every float variable of `varmap`, at the scheduled learning rate.
    pub fn all(name: &str, varmap: &VarMap) -> ParamGroup {
        ParamGroup {
            name: name.to_owned(),
            params: Self::vars_of(varmap),
            lr_scale: 1.0,
            frozen: false,
        }
    }
}

/// An optimiser over parameter groups, with state kept by parameter name.
pub struct Optimizer {
    kind: OptimizerKind,
    /// The groups.
    pub groups: Vec<ParamGroup>,
    /// First moments (Adam) or momentum buffers (SGD), by parameter name.
    m: HashMap<String, Tensor>,
    /// Second moments (Adam), by parameter name.
    v: HashMap<String, Tensor>,
    /// Updates applied per parameter (Adam's bias correction counts per parameter, as torch).
    steps: HashMap<String, u64>,
    /// The momentum a schedule sets (Adam's beta1, SGD's momentum) instead of the configured one.
    momentum: Option<f64>,
}

impl Optimizer {
    /// An optimiser with fresh state.
    pub fn new(kind: OptimizerKind, groups: Vec<ParamGroup>) -> Result<Self> {
        kind.validate()?;
        Ok(Optimizer {
            kind,
            groups,
            m: HashMap::new(),
            v: HashMap::new(),
            steps: HashMap::new(),
            momentum: None,
        })
    }

    /// Sets the momentum of the next steps (Adam's beta1, SGD's momentum), as torch's one-cycle
    /// schedule writes it into the parameter groups; `None` goes back to the configured one.
    pub fn set_momentum(&mut self, momentum: Option<f64>) {
        self.momentum = momentum;
    }

    /// The update rule.
    pub fn kind(&self) -> &OptimizerKind {
        &self.kind
    }

    /// Global L2 norm of the gradients of the trainable parameters (read to the host).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        match self.grad_norm_sq(grads)? {
            Some(sq) => Ok(crate::host::scalar::<f64>(&sq, "optimizer: gradient norm")?.sqrt()),
            None => Ok(0.0),
        }
    }

    /// The squared global L2 norm of the gradients of the trainable parameters, as an `f64`
    /// scalar on their device (summed there: nothing is read back); `None` without gradients.
    pub fn grad_norm_sq(&self, grads: &GradStore) -> Result<Option<Tensor>> {
        let mut host: Option<f64> = None;
        let mut on_device: Option<Tensor> = None;
        let mut device = None;
        for g in self.groups.iter().filter(|g| !g.frozen) {
            for (_, var) in &g.params {
                if let Some(grad) = grads.get(var.as_tensor()) {
                    device.get_or_insert_with(|| grad.device().clone());
                    // The CPU's fused kernel sums on the host, where the gradient is.
                    if let Some(sq) = oml_kernels::sum_squares(grad)? {
                        *host.get_or_insert(0.0) += sq;
                        continue;
                    }
                    let sq = grad.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?;
                    on_device = Some(match on_device {
                        Some(t) => (t + sq)?,
                        None => sq,
                    });
                }
            }
        }
        let Some(device) = device else {
            return Ok(None);
        };
        Ok(Some(match (on_device, host) {
            (Some(t), Some(h)) => (t + h)?,
            (Some(t), None) => t,
            (None, h) => Tensor::new(h.unwrap_or(0.0), &device)?,
        }))
    }

    /// One update with learning rate `lr` (times each group's scale); gradients are scaled by
    /// `grad_scale` first (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        let kind = match self.momentum {
            Some(m) => self.kind.with_momentum(m),
            None => self.kind,
        };
        for group in self.groups.iter().filter(|g| !g.frozen) {
            let lr = lr * group.lr_scale;
            for (name, var) in &group.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                // Only the tensor-op paths need it (the fused Adam scales inside its one pass).
                let scaled_grad = || -> Result<Tensor> {
                    Ok(if grad_scale != 1.0 {
                        (grad * grad_scale)?
                    } else {
                        grad.clone()
                    })
                };
                let p = var.as_tensor();
                let t = self.steps.entry(name.clone()).or_insert(0);
                *t += 1;
                let t = *t as i32;
                match kind {
                    OptimizerKind::Adamw {
                        weight_decay,
                        betas,
                        eps,
                        ..
                    }
                    | OptimizerKind::Adam {
                        weight_decay,
                        betas,
                        eps,
                        ..
                    } => {
                        let decoupled = matches!(kind, OptimizerKind::Adamw { .. });
                        let fused = oml_kernels::adam_step(
                            p,
                            grad,
                            self.m.get(name),
                            self.v.get(name),
                            &oml_kernels::AdamStep {
                                lr,
                                beta1: betas.0,
                                beta2: betas.1,
                                eps,
                                weight_decay,
                                decoupled,
                                step: t,
                                grad_scale,
                            },
                        )?;
                        if let Some((np, m, v)) = fused {
                            var.set(&np)?;
                            self.m.insert(name.clone(), m);
                            self.v.insert(name.clone(), v);
                            continue;
                        }
                        let mut g = scaled_grad()?;
                        let mut base = p.detach();
                        if weight_decay != 0.0 {
                            if decoupled {
                                base = (base * (1.0 - lr * weight_decay))?;
                            } else {
                                g = (g + (p.detach() * weight_decay)?)?;
                            }
                        }
                        let m = match self.m.get(name) {
                            Some(m) => ((m * betas.0)? + (&g * (1.0 - betas.0))?)?,
                            None => (&g * (1.0 - betas.0))?,
                        };
                        let v = match self.v.get(name) {
                            Some(v) => ((v * betas.1)? + (g.sqr()? * (1.0 - betas.1))?)?,
                            None => (g.sqr()? * (1.0 - betas.1))?,
                        };
                        let bc1 = 1.0 - betas.0.powi(t);
                        let bc2 = 1.0 - betas.1.powi(t);
                        let denom = ((v.clone() / bc2)?.sqrt()? + eps)?;
                        let update = ((m.clone() / bc1)? / denom)?;
                        var.set(&(base - (update * lr)?)?)?;
                        self.m.insert(name.clone(), m);
                        self.v.insert(name.clone(), v);
                    }
                    OptimizerKind::Sgd {
                        momentum,
                        nesterov,
                        weight_decay,
                        ..
                    } => {
                        let mut g = scaled_grad()?;
                        if weight_decay != 0.0 {
                            g = (g + (p.detach() * weight_decay)?)?;
                        }
                        let direction = if momentum > 0.0 {
                            let buf = match self.m.get(name) {
                                Some(b) => ((b * momentum)? + &g)?,
                                None => g.clone(),
                            };
                            let d = if nesterov {
                                (&g + (&buf * momentum)?)?
                            } else {
                                buf.clone()
                            };
                            self.m.insert(name.clone(), buf);
                            d
                        } else {
                            g
                        };
                        var.set(&(p.detach() - (direction * lr)?)?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`m.<param>`, `v.<param>`) plus per-parameter step counts.
    pub fn state(&self) -> (HashMap<String, Tensor>, HashMap<String, u64>) {
        let mut t = HashMap::new();
        for (k, v) in &self.m {
            t.insert(format!("m.{k}"), v.clone());
        }
        for (k, v) in &self.v {
            t.insert(format!("v.{k}"), v.clone());
        }
        (t, self.steps.clone())
    }

    /// Restores a state saved by [`Optimizer::state`].
    pub fn load_state(
        &mut self,
        tensors: HashMap<String, Tensor>,
        steps: HashMap<String, u64>,
    ) -> Result<()> {
        self.m.clear();
        self.v.clear();
        for (k, t) in tensors {
            if let Some(name) = k.strip_prefix("m.") {
                self.m.insert(name.to_owned(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.v.insert(name.to_owned(), t);
            } else {
                return Err(Error::Msg(format!(
                    "optimiser state: unexpected tensor {k}"
                )));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Dynamic loss scaling for f16 mixed precision (PyTorch's `GradScaler` with its defaults): the
/// loss is multiplied by `scale` before the backward pass so that small gradients survive f16;
/// the gradients are divided by it before the update. A step whose gradients overflow (an
/// infinite or NaN norm) is skipped and halves the scale; 2000 good steps in a row double it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    /// The current factor.
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: Self::INIT,
            good_steps: 0,
        }
    }
}

impl GradScaler {
    /// The initial scale, 2^16.
    pub const INIT: f64 = 65536.0;
    /// Good steps before the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// Records whether the gradients (scaled by [`GradScaler::scale`]) were finite: returns
    /// whether the optimiser may step, and updates the scale for the next step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale *= 0.5;
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}

/// Learning rate over steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout (after warm-up).
    Constant {
        /// Linear warm-up steps from 0.
        #[serde(default)]
        warmup_steps: usize,
    },
    /// Multiply by `gamma` every `step_size` steps.
    Step {
        /// Steps between decays.
        step_size: usize,
        /// Factor.
        #[serde(default = "half")]
        gamma: f64,
        /// Linear warm-up steps.
        #[serde(default)]
        warmup_steps: usize,
    },
    /// Multiply by `gamma` at each milestone step.
    MultiStep {
        /// Steps where the rate drops.
        milestones: Vec<usize>,
        /// Factor.
        #[serde(default = "tenth")]
        gamma: f64,
        /// Linear warm-up steps.
        #[serde(default)]
        warmup_steps: usize,
    },
    /// Cosine decay to `min_lr_ratio` of the base over the run.
    Cosine {
        /// Linear warm-up steps.
        #[serde(default)]
        warmup_steps: usize,
        /// Final rate over the base.
        #[serde(default)]
        min_lr_ratio: f64,
    },
    /// One cycle: up from `base/25` to the base over `pct_start` of the run, then cosine down to
    /// `base/1e4` (torch's defaults); the momentum (Adam's beta1, SGD's momentum) cycles the other
    /// way, from `max_momentum` down to `base_momentum` and back (torch's `cycle_momentum`).
    OneCycle {
        /// Fraction of the run spent rising.
        #[serde(default = "pct")]
        pct_start: f64,
        /// Whether the momentum cycles.
        #[serde(default = "yes")]
        cycle_momentum: bool,
        /// The momentum at the learning rate's peak.
        #[serde(default = "base_momentum")]
        base_momentum: f64,
        /// The momentum at the start and the end.
        #[serde(default = "max_momentum")]
        max_momentum: f64,
    },
    /// torch's `ReduceLROnPlateau` (mode `max`, relative threshold) on the checkpoint metric:
    /// after more than `patience` validations without a value above `best * (1 + threshold)`,
    /// the rate is multiplied by `factor` (never below `min_lr`), then `cooldown` validations
    /// pass before counting again.
    Plateau {
        /// Multiplier on each reduction.
        #[serde(default = "tenth")]
        factor: f64,
        /// Validations without an improvement that are tolerated.
        #[serde(default = "ten")]
        patience: usize,
        /// Relative improvement that counts.
        #[serde(default = "plateau_threshold")]
        threshold: f64,
        /// Validations after a reduction before counting again.
        #[serde(default)]
        cooldown: usize,
        /// The lowest base rate (absolute; groups with an `lr_scale` keep their ratio to it).
        #[serde(default)]
        min_lr: f64,
        /// Linear warm-up steps.
        #[serde(default)]
        warmup_steps: usize,
    },
}

fn ten() -> usize {
    10
}
fn plateau_threshold() -> f64 {
    1e-4
}

/// What `ReduceLROnPlateau` and early stopping keep between validations (saved with a run's
/// state, so that a resumed run goes on counting).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlateauState {
    /// The factor on the scheduled rate (1 until a reduction).
    pub lr_factor: f64,
    /// The best value seen by the plateau test.
    pub best: Option<f64>,
    /// Validations without an improvement (the plateau test's count).
    pub bad: usize,
    /// Validations of cooldown left.
    pub cooldown: usize,
    /// Validations since the checkpoint metric last improved (early stopping's count).
    pub stale: usize,
}

impl Default for PlateauState {
    fn default() -> Self {
        PlateauState {
            lr_factor: 1.0,
            best: None,
            bad: 0,
            cooldown: 0,
            stale: 0,
        }
    }
}

impl PlateauState {
    /// One validation's `value` for a `Plateau` schedule (nothing for the others), as torch's
    /// `ReduceLROnPlateau.step`; returns the new factor when the rate was reduced. `base_lr`
    /// turns `min_lr` into a factor.
    pub fn observe(&mut self, schedule: &Schedule, value: f64, base_lr: f64) -> Option<f64> {
        let Schedule::Plateau {
            factor,
            patience,
            threshold,
            cooldown,
            min_lr,
            ..
        } = schedule
        else {
            return None;
        };
        let better = match self.best {
            None => !value.is_nan(),
            Some(b) => value > b * (1.0 + threshold),
        };
        if better {
            self.best = Some(value);
            self.bad = 0;
        } else {
            self.bad += 1;
        }
        if self.cooldown > 0 {
            self.cooldown -= 1;
            self.bad = 0;
        }
        if self.bad > *patience {
            self.bad = 0;
            self.cooldown = *cooldown;
            let old = self.lr_factor * base_lr;
            let new = (old * factor).max(*min_lr);
            // torch's eps: a change below 1e-8 is not made.
            if old - new > 1e-8 {
                self.lr_factor = new / base_lr;
                return Some(self.lr_factor);
            }
        }
        None
    }
}

fn half() -> f64 {
    0.5
}
fn tenth() -> f64 {
    0.1
}
fn pct() -> f64 {
    0.3
}
fn yes() -> bool {
    true
}
fn base_momentum() -> f64 {
    0.85
}
fn max_momentum() -> f64 {
    0.95
}

/// A value that follows one cycle's two cosine phases as torch's `OneCycleLR` steps them: from
/// `a` at step 0 to `b` at step `pct * total - 1`, then to `c` at the last step, `total - 1`.
fn one_cycle(step: usize, total: usize, pct: f64, (a, b, c): (f64, f64, f64)) -> f64 {
    let peak = pct * total as f64 - 1.0;
    let last = total as f64 - 1.0;
    let s = step as f64;
    let cos = |from: f64, to: f64, t: f64| {
        to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos())
    };
    if s <= peak {
        // A peak at step 0 (torch divides 0 by 0 there): the peak's value.
        if peak <= 0.0 { b } else { cos(a, b, s / peak) }
    } else {
        cos(b, c, (s - peak) / (last - peak).max(f64::MIN_POSITIVE))
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant { warmup_steps: 0 }
    }
}

impl Schedule {
    /// Checks the parameters (as torch's schedulers do when built).
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Step { step_size: 0, .. } => {
                Err(Error::param("scheduler.step_size", 0, "at least 1"))
            }
            Schedule::Cosine { min_lr_ratio, .. } if !(0.0..=1.0).contains(min_lr_ratio) => Err(
                Error::param("scheduler.min_lr_ratio", min_lr_ratio, "in [0, 1]"),
            ),
            Schedule::OneCycle {
                pct_start,
                base_momentum,
                max_momentum,
                ..
            } => {
                if !(*pct_start > 0.0 && *pct_start <= 1.0) {
                    return Err(Error::param("scheduler.pct_start", pct_start, "in (0, 1]"));
                }
                let momentum = 0.0..1.0;
                if !momentum.contains(base_momentum) || !momentum.contains(max_momentum) {
                    return Err(Error::param(
                        "scheduler.base_momentum/max_momentum",
                        format!("{base_momentum}/{max_momentum}"),
                        "both in [0, 1) (Adam's beta1 and SGD's momentum must stay below 1)",
                    ));
                }
                Ok(())
            }
            Schedule::Plateau {
                factor,
                threshold,
                min_lr,
                ..
            } => {
                if !(*factor > 0.0 && *factor < 1.0) {
                    return Err(Error::param("scheduler.factor", factor, "in (0, 1)"));
                }
                if !(threshold.is_finite() && *threshold >= 0.0) {
                    return Err(Error::param("scheduler.threshold", threshold, ">= 0"));
                }
                if !(min_lr.is_finite() && *min_lr >= 0.0) {
                    return Err(Error::param("scheduler.min_lr", min_lr, ">= 0"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// torch's `ReduceLROnPlateau` with its defaults (factor 0.1, patience 10, threshold 1e-4).
    pub fn plateau(factor: f64, patience: usize) -> Self {
        Schedule::Plateau {
            factor,
            patience,
            threshold: plateau_threshold(),
            cooldown: 0,
            min_lr: 0.0,
            warmup_steps: 0,
        }
    }

    /// The factor on the base rate at `step` (0-based) of `total` steps.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        let warm = |w: usize| -> f64 {
            if w > 0 && step < w {
                (step + 1) as f64 / w as f64
            } else {
                1.0
            }
        };
        let total = total.max(1);
        match self {
            Schedule::Constant { warmup_steps } => warm(*warmup_steps),
            Schedule::Step {
                step_size,
                gamma,
                warmup_steps,
            } => warm(*warmup_steps) * gamma.powi((step / (*step_size).max(1)) as i32),
            Schedule::MultiStep {
                milestones,
                gamma,
                warmup_steps,
            } => {
                warm(*warmup_steps)
                    * gamma.powi(milestones.iter().filter(|&&m| step >= m).count() as i32)
            }
            Schedule::Cosine {
                warmup_steps,
                min_lr_ratio,
            } => {
                if step < *warmup_steps {
                    return warm(*warmup_steps);
                }
                let span = total.saturating_sub(*warmup_steps).max(1) as f64;
                let t = ((step - warmup_steps) as f64 / span).min(1.0);
                min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::OneCycle { pct_start, .. } => {
                one_cycle(step, total, *pct_start, (1.0 / 25.0, 1.0, 1.0 / 25.0 / 1e4))
            }
            // The reductions are the run's (`PlateauState`), applied on top.
            Schedule::Plateau { warmup_steps, .. } => warm(*warmup_steps),
        }
    }

    /// The momentum at `step` of `total` when the schedule sets it (one cycle), else `None` (the
    /// optimiser's own).
    pub fn momentum(&self, step: usize, total: usize) -> Option<f64> {
        match self {
            Schedule::OneCycle {
                pct_start,
                cycle_momentum: true,
                base_momentum,
                max_momentum,
            } => Some(one_cycle(
                step,
                total.max(1),
                *pct_start,
                (*max_momentum, *base_momentum, *max_momentum),
            )),
            _ => None,
        }
    }
}
