//! Fused CPU kernels with backward passes, for fine-tuning on the CPU.
//!
//! candle's CPU backend runs a layer norm, a softmax or a GELU as a chain of small tensor ops,
//! most of them single-threaded, and their backward passes as longer chains (a strided sum for
//! every broadcast bias). On a ViT step that chain cost more than the matrix products. Each op
//! here is one multi-threaded pass forward and one backward, on contiguous f32 tensors on the
//! CPU; every other device or dtype takes candle's own ops, so CUDA is unaffected.
//!
//! Sums across rows (the gradients of a bias or a norm's weights) are taken in a fixed order that
//! depends only on the shapes, never on the thread count, so training stays bit-reproducible.

pub mod linalg;
pub mod pixels;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Rows per parallel task: large enough to amortise scheduling, small enough to balance 2-16
/// cores. Also the unit of the fixed-order sums.
const ROWS_PER_TASK: usize = 32;
/// Elements per parallel task for element-wise ops.
const ELEMS_PER_TASK: usize = 1 << 14;

/// Whether `x` can take the fused kernels: a tensor of f32 on the CPU.
pub fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "{op}: expects a contiguous tensor"
        ))),
    }
}

fn last_dim(shape: &Shape, op: &str) -> CResult<usize> {
    match shape.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: expects a non-empty last dimension, got {shape:?}"
        ))),
    }
}

/// Sums `parts` (each of length `n`) in order: the fixed-order reduction of per-task partials.
fn sum_parts(parts: Vec<Vec<f32>>, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Defines `fn $name(args)` whose body is compiled twice: for AVX2 + FMA, taken when the CPU has
/// them (detected at run time), and for baseline x86-64, where the element-wise loops vectorise
/// only 4 wide. A named function with an always-inlined body, because a closure passed to a
/// `#[target_feature]` function is compiled without the features when LLVM declines to inline it
/// (measured: the GELU backward ran scalar). Same results either way: no FMA contraction happens
/// without fast-math.
macro_rules! simd_fn {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features `wide` is compiled for were detected on this CPU.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Layer norm over the last dimension.

struct LayerNorm {
    eps: f32,
}

fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = row.iter().sum::<f32>() / d;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_fn! {
    /// Normalised rows `ys` of `xs` (rows of `w.len()`), scaled by `w` and shifted by `b`.
    fn layer_norm_rows(ys: &mut [f32], xs: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let d = w.len();
        for (yr, xr) in ys.chunks_mut(d).zip(xs.chunks(d)) {
            let (mean, rstd) = row_stats(xr, eps);
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "oml-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let d = last_dim(l1.shape(), self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(ys, xs)| layer_norm_rows(ys, xs, w, b, self.eps));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count();
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, d)?.reshape(w.shape())?;
        let db = packed.narrow(0, n + d, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

simd_fn! {
    /// The input gradients `dxs` of rows `xs` with output gradients `gs`; adds each row's
    /// `g * xhat` and `g` to `part` (`[dw, db]`); `xhat` is scratch of one row.
    fn layer_norm_grad_rows(
        dxs: &mut [f32],
        part: &mut [f32],
        xhat: &mut [f32],
        xs: &[f32],
        gs: &[f32],
        w: &[f32],
        eps: f32,
    ) {
        let d = w.len();
        for ((dxr, xr), gr) in dxs.chunks_mut(d).zip(xs.chunks(d)).zip(gs.chunks(d)) {
            let (mean, rstd) = row_stats(xr, eps);
            let (mut m1, mut m2) = (0f32, 0f32);
            for i in 0..d {
                xhat[i] = (xr[i] - mean) * rstd;
                let dxh = gr[i] * w[i];
                m1 += dxh;
                m2 += dxh * xhat[i];
                part[i] += gr[i] * xhat[i];
                part[d + i] += gr[i];
            }
            let (m1, m2) = (m1 / d as f32, m2 / d as f32);
            for i in 0..d {
                dxr[i] = rstd * (gr[i] * w[i] - m1 - xhat[i] * m2);
            }
        }
    }
}

/// The layer norm's backward pass: `[dx (all of x), dw (d), db (d)]` in one flat tensor.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "oml-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let d = last_dim(l1.shape(), self.name())?;
        let n = x.len();
        let mut out = vec![0f32; n + 2 * d];
        let (dx, _) = out.split_at_mut(n);
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .zip(g.par_chunks(d * ROWS_PER_TASK))
            .map(|((dxs, xs), gs)| {
                let mut part = vec![0f32; 2 * d];
                let mut xhat = vec![0f32; d];
                layer_norm_grad_rows(dxs, &mut part, &mut xhat, xs, gs, w, self.eps);
                part
            })
            .collect();
        out[n..].copy_from_slice(&sum_parts(parts, 2 * d));
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * d)))
    }
}

/// `LayerNorm(x) * weight + bias` over the last dimension, differentiable in all three.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

// ---------------------------------------------------------------------------------------------
// Softmax over the last dimension, of a scaled input.

struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "oml-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = last_dim(l.shape(), self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(ys, xs)| {
                ys.copy_from_slice(xs);
                softmax_rows(ys, d, self.scale);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &SoftmaxBwd { scale: self.scale },
        )?))
    }
}

/// `softmax(scale * r)` of one row, in place.
#[inline(always)]
fn softmax_row(r: &mut [f32], scale: f32) {
    let max = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    for v in r.iter_mut() {
        *v = exp_f32(*v * scale - max);
    }
    let inv = 1.0 / r.iter().sum::<f32>();
    for v in r.iter_mut() {
        *v *= inv;
    }
}

simd_fn! {
    /// [`softmax_row`] of every row (of `d`) of `rows`, in place.
    fn softmax_rows(rows: &mut [f32], d: usize, scale: f32) {
        for r in rows.chunks_mut(d) {
            softmax_row(r, scale);
        }
    }
}

simd_fn! {
    /// [`softmax_row_grad`] of every row (of `d`) of `gs` with the softmax rows `ys`, in place.
    fn softmax_grad_rows(gs: &mut [f32], ys: &[f32], d: usize, scale: f32) {
        for (gr, yr) in gs.chunks_mut(d).zip(ys.chunks(d)) {
            softmax_row_grad(gr, yr, scale);
        }
    }
}

/// Turns the gradient `g` of one softmax row into the gradient of its input:
/// `scale * y * (g - <g, y>)`, in place (`y` is the row's softmax).
#[inline(always)]
fn softmax_row_grad(g: &mut [f32], y: &[f32], scale: f32) {
    let dot: f32 = y.iter().zip(g.iter()).map(|(a, b)| a * b).sum();
    for (x, &p) in g.iter_mut().zip(y) {
        *x = scale * p * (*x - dot);
    }
}

/// `scale * y * (g - <g, y>)` per row.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "oml-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let d = last_dim(l1.shape(), self.name())?;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(y.par_chunks(d * ROWS_PER_TASK))
            .zip(g.par_chunks(d * ROWS_PER_TASK))
            .for_each(|((dxs, ys), gs)| {
                dxs.copy_from_slice(gs);
                softmax_grad_rows(dxs, ys, d, self.scale);
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `softmax(scale * x)` over the last dimension, differentiable; candle's ops off the CPU.
pub fn softmax_last(x: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Softmax {
            scale: scale as f32,
        });
    }
    let x = if scale == 1.0 {
        x.clone()
    } else {
        (x * scale)?
    };
    candle_nn::ops::softmax(&x, candle_core::D::Minus1)
}

// ---------------------------------------------------------------------------------------------
// GELU (the exact, erf form).

struct Gelu;

/// `e^x` for f32 without a library call, so that loops over it vectorise: `x = n ln 2 + r` with
/// `|r| <= ln 2 / 2`, a degree-6 Taylor polynomial for `e^r` (relative error < 3e-8 there), and
/// `2^n` built in the exponent bits. Inputs are clamped to [-87, 88], where `e^x` is a normal f32.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let ni = (t.to_bits() as i32) - (MAGIC.to_bits() as i32);
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `erf(x)` for f32 (Abramowitz and Stegun 7.1.26, branch-free): absolute error < 1.5e-7 in exact
/// arithmetic, 6.4e-7 measured in f32 (the test bounds it by 1e-6).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_f32(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu(v: f32) -> f32 {
    (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
}

#[inline(always)]
fn gelu_grad(v: f32) -> f32 {
    // d/dv [v * Phi(v)] = Phi(v) + v * phi(v)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let phi = exp_f32(-0.5 * v * v) * INV_SQRT_2PI;
    0.5 * (1.0 + erf_f32(v * std::f32::consts::FRAC_1_SQRT_2)) + v * phi
}

simd_fn! {
    /// `ys = gelu(xs)`.
    fn gelu_chunk(ys: &mut [f32], xs: &[f32]) {
        for (o, &v) in ys.iter_mut().zip(xs) {
            *o = gelu(v);
        }
    }
}

simd_fn! {
    /// `ds = gs * gelu'(xs)`.
    fn gelu_grad_chunk(ds: &mut [f32], xs: &[f32], gs: &[f32]) {
        for ((o, &v), &gv) in ds.iter_mut().zip(xs).zip(gs) {
            *o = gv * gelu_grad(v);
        }
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "oml-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .for_each(|(ys, xs)| gelu_chunk(ys, xs));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "oml-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(ELEMS_PER_TASK)
            .zip(x.par_chunks(ELEMS_PER_TASK))
            .zip(g.par_chunks(ELEMS_PER_TASK))
            .for_each(|((ds, xs), gs)| gelu_grad_chunk(ds, xs, gs));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The exact (erf) GELU, differentiable; candle's op off the CPU.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if fused(x) {
        return x.contiguous()?.apply_op1(Gelu);
    }
    x.gelu_erf()
}

// ---------------------------------------------------------------------------------------------
// Linear layer: x @ w^T + b in one matrix product, and its backward without strided sums.

struct Linear;

/// `dst (m x n, row stride dst_rs) = [dst +] lhs @ rhs`, every operand given by its row and
/// column strides.
///
/// # Safety
/// `dst` is valid for writes at `r * dst_rs + c` for every r < m, c < n, and nothing else reads or
/// writes those elements meanwhile; the strides describe matrices inside `lhs` and `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: gemm::Parallelism,
) {
    debug_assert!((m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len());
    debug_assert!((k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len());
    // SAFETY: upheld by the caller, as stated above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst (m x n, dense) = [dst +] lhs @ rhs` on all threads.
fn matmul_into(
    dst: &mut [f32],
    accumulate: bool,
    dims: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    let (m, n, _) = dims;
    debug_assert!(dst.len() >= m * n);
    // SAFETY: `dst` is an exclusively borrowed dense m x n matrix (row stride n); callers pass
    // strides of dense matrices of the stated dimensions for `lhs` and `rhs`.
    unsafe {
        gemm_strided(
            dst.as_mut_ptr(),
            n,
            accumulate,
            dims,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            gemm::Parallelism::Rayon(0),
        )
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "oml-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (y, shape) = linear_fwd(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        linear_bwd(x, w, grad)
    }
}

/// `x @ w^T + b` (bias rows, then the product accumulated onto them) and the output's shape.
fn linear_fwd(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> CResult<(Vec<f32>, Shape)> {
    let x = slice(s1, l1, op)?;
    let w = slice(s2, l2, op)?;
    let b = slice(s3, l3, op)?;
    let (n, k) = l2.shape().dims2()?;
    let m = x.len() / k;
    if m * k != x.len() || b.len() != n || last_dim(l1.shape(), op)? != k {
        return Err(candle_core::Error::Msg(format!(
            "{op}: input {:?} does not fit weight {:?} and bias {:?}",
            l1.shape(),
            l2.shape(),
            l3.shape()
        )));
    }
    let mut y = vec![0f32; m * n];
    y.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
        for r in rows.chunks_mut(n) {
            r.copy_from_slice(b);
        }
    });
    // w is n x k row-major, so w^T (k x n) has row stride 1 and column stride k.
    matmul_into(&mut y, true, (m, n, k), x, (k, 1), w, (1, k));
    let mut dims = l1.shape().dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Ok((y, Shape::from(dims)))
}

/// The gradients of `x`, `w` and `b` of `x @ w^T + b` from the output's gradient `g`.
#[allow(clippy::type_complexity)]
fn linear_bwd(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let packed = x.apply_op3_no_bwd(w, &g.contiguous()?, &LinearBwd)?;
    let (n, k) = w.dims2()?;
    let nx = x.elem_count();
    let dx = packed.narrow(0, 0, nx)?.reshape(x.shape())?;
    let dw = packed.narrow(0, nx, n * k)?.reshape((n, k))?;
    let db = packed.narrow(0, nx + n * k, n)?;
    Ok((Some(dx), Some(dw), Some(db)))
}

/// `gelu(x @ w^T + b)` in one op: the GELU applied as the product's rows are done, and its
/// backward folded into the linear one. The pre-activation, which the backward pass needs, is kept
/// by the op itself (the graph keeps the op as long as it kept the separate linear's output), so
/// the graph has one node where it had two: one gradient fewer to zero-fill and accumulate.
struct LinearGelu {
    pre: std::sync::Mutex<Option<Tensor>>,
}

impl CustomOp3 for LinearGelu {
    fn name(&self) -> &'static str {
        "oml-linear-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (pre, shape) = linear_fwd(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        let mut y = vec![0f32; pre.len()];
        y.par_chunks_mut(ELEMS_PER_TASK)
            .zip(pre.par_chunks(ELEMS_PER_TASK))
            .for_each(|(ys, xs)| gelu_chunk(ys, xs));
        let pre = Tensor::from_vec(pre, shape.clone(), &candle_core::Device::Cpu)?;
        *self.pre.lock().unwrap_or_else(|p| p.into_inner()) = Some(pre);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let pre = self
            .pre
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no forward pass", self.name())))?;
        let dpre = pre.apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?;
        linear_bwd(x, w, &dpre)
    }
}

/// `gelu_erf(x @ w^T + b)`: one fused, differentiable op on the CPU (see [`linear`]); the two
/// ops elsewhere.
pub fn linear_gelu(layer: &candle_nn::Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    match layer.bias() {
        Some(b) if fused(x) && fused(layer.weight()) => x.contiguous()?.apply_op3(
            &layer.weight().contiguous()?,
            &b.contiguous()?,
            LinearGelu {
                pre: std::sync::Mutex::new(None),
            },
        ),
        _ => gelu_erf(&linear(layer, x)?),
    }
}

/// The linear layer's backward: `[dx = g @ w, dw = g^T @ x, db = column sums of g]` flat.
struct LinearBwd;

impl CustomOp3 for LinearBwd {
    fn name(&self) -> &'static str {
        "oml-linear-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let (n, k) = l2.shape().dims2()?;
        let m = x.len() / k;
        if g.len() != m * n {
            return Err(candle_core::Error::Msg(format!(
                "{}: gradient {:?} does not fit input {:?} and weight {:?}",
                self.name(),
                l3.shape(),
                l1.shape(),
                l2.shape()
            )));
        }
        let mut out = vec![0f32; m * k + n * k + n];
        let (dx, rest) = out.split_at_mut(m * k);
        let (dw, db) = rest.split_at_mut(n * k);
        // dx (m x k) = g (m x n) @ w (n x k)
        matmul_into(dx, false, (m, k, n), g, (n, 1), w, (k, 1));
        // dw (n x k) = g^T (n x m) @ x (m x k); g^T has row stride 1 and column stride n.
        matmul_into(dw, false, (n, k, m), g, (1, n), x, (k, 1));
        // db: column sums, each task owning a block of columns and adding rows in order.
        db.par_chunks_mut(64).enumerate().for_each(|(ci, cols)| {
            let c0 = ci * 64;
            for row in g.chunks(n) {
                for (o, v) in cols.iter_mut().zip(&row[c0..]) {
                    *o += v;
                }
            }
        });
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `x @ w^T + b` over the last dimension of `x`, differentiable in all three; candle's
/// [`candle_nn::Linear`] off the CPU or without a bias.
pub fn linear(layer: &candle_nn::Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    use candle_core::Module;
    match layer.bias() {
        Some(b) if fused(x) && fused(layer.weight()) => {
            x.contiguous()?
                .apply_op3(&layer.weight().contiguous()?, &b.contiguous()?, Linear)
        }
        _ => layer.forward(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Residual branch with a layer scale: x + a * gamma.

/// `x + a * gamma` (`gamma` over the last dimension; DINOv2's LayerScale and the residual add).
struct ResidualScale;

impl CustomOp3 for ResidualScale {
    fn name(&self) -> &'static str {
        "oml-residual-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let a = slice(s2, l2, self.name())?;
        let gamma = slice(s3, l3, self.name())?;
        let d = gamma.len();
        if l1.shape() != l2.shape() || last_dim(l1.shape(), self.name())? != d {
            return Err(candle_core::Error::Msg(format!(
                "{}: {:?} + {:?} * {:?} do not fit",
                self.name(),
                l1.shape(),
                l2.shape(),
                l3.shape()
            )));
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .zip(a.par_chunks(d * ROWS_PER_TASK))
            .for_each(|((ys, xs), as_)| residual_scale_rows(ys, xs, as_, gamma));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        a: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let packed = a.apply_op3_no_bwd(gamma, &grad, &ResidualScaleBwd)?;
        let n = a.elem_count();
        let da = packed.narrow(0, 0, n)?.reshape(a.shape())?;
        let dgamma = packed
            .narrow(0, n, gamma.elem_count())?
            .reshape(gamma.shape())?;
        Ok((Some(grad), Some(da), Some(dgamma)))
    }
}

simd_fn! {
    /// `ys = xs + as_ * gamma` row by row.
    fn residual_scale_rows(ys: &mut [f32], xs: &[f32], as_: &[f32], gamma: &[f32]) {
        let d = gamma.len();
        for ((yr, xr), ar) in ys.chunks_mut(d).zip(xs.chunks(d)).zip(as_.chunks(d)) {
            for i in 0..d {
                yr[i] = xr[i] + ar[i] * gamma[i];
            }
        }
    }
}

simd_fn! {
    /// `das = gs * gamma` row by row; adds `gs * as_` to `part` (the gradient of `gamma`).
    fn residual_scale_grad_rows(
        das: &mut [f32],
        part: &mut [f32],
        as_: &[f32],
        gs: &[f32],
        gamma: &[f32],
    ) {
        let d = gamma.len();
        for ((dr, ar), gr) in das.chunks_mut(d).zip(as_.chunks(d)).zip(gs.chunks(d)) {
            for i in 0..d {
                dr[i] = gr[i] * gamma[i];
                part[i] += gr[i] * ar[i];
            }
        }
    }
}

/// The backward pass of [`ResidualScale`] for `a` and `gamma`: `[da (all of a), dgamma (d)]` flat.
struct ResidualScaleBwd;

impl CustomOp3 for ResidualScaleBwd {
    fn name(&self) -> &'static str {
        "oml-residual-scale-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let a = slice(s1, l1, self.name())?;
        let gamma = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let (n, d) = (a.len(), gamma.len());
        let mut out = vec![0f32; n + d];
        let (da, _) = out.split_at_mut(n);
        let parts: Vec<Vec<f32>> = da
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(a.par_chunks(d * ROWS_PER_TASK))
            .zip(g.par_chunks(d * ROWS_PER_TASK))
            .map(|((das, as_), gs)| {
                let mut part = vec![0f32; d];
                residual_scale_grad_rows(das, &mut part, as_, gs, gamma);
                part
            })
            .collect();
        out[n..].copy_from_slice(&sum_parts(parts, d));
        Ok((CpuStorage::F32(out), Shape::from(n + d)))
    }
}

/// `x + a * gamma` (`gamma` broadcast over the last dimension): one differentiable op on the CPU
/// (f32), where the tensor ops would add a node for the product and sum `dgamma` with a strided
/// reduction; the tensor ops elsewhere.
pub fn residual_scale(x: &Tensor, a: &Tensor, gamma: &Tensor) -> CResult<Tensor> {
    if fused(x) && fused(a) && fused(gamma) && x.shape() == a.shape() && gamma.rank() == 1 {
        return x
            .contiguous()?
            .apply_op3(&a.contiguous()?, &gamma.contiguous()?, ResidualScale);
    }
    x + a.broadcast_mul(gamma)?
}

// ---------------------------------------------------------------------------------------------
// Multi-head self-attention from the fused q/k/v projection.

/// A raw pointer that tasks writing disjoint parts of one buffer can share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used by tasks that write pairwise disjoint elements (each task owns one
// (batch, head) pair's rows and columns), and the buffer outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer to element `offset` (a method, so that closures capture the whole `Send`
    /// wrapper rather than its raw-pointer field).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `softmax(scale * Q K^T) V` for every batch item and head, reading Q, K and V straight out of
/// the `[batch, tokens, 3 * dim]` q/k/v projection (laid out `[3][heads][head_dim]` as timm's and
/// DINO's `qkv` linear) and writing `[batch, tokens, dim]` (heads concatenated): no head
/// permutes, no q/k/v slices, no score tensor kept for the backward pass, which recomputes it.
struct Attention {
    heads: usize,
    scale: f32,
}

struct AttnDims {
    b: usize,
    n: usize,
    d: usize,
    h: usize,
    hd: usize,
}

impl Attention {
    fn dims(&self, shape: &Shape) -> CResult<AttnDims> {
        let (b, n, d3) = shape.dims3()?;
        if d3 % 3 != 0 || (d3 / 3) % self.heads != 0 {
            return Err(candle_core::Error::Msg(format!(
                "oml-attention: a q/k/v projection of {shape:?} does not split into 3 x {} heads",
                self.heads
            )));
        }
        let d = d3 / 3;
        Ok(AttnDims {
            b,
            n,
            d,
            h: self.heads,
            hd: d / self.heads,
        })
    }

    /// The attention probabilities of one (batch, head) into `a` (n x n): `q` points at the
    /// head's first query element, keys follow `d` elements later.
    fn probs(&self, dm: &AttnDims, q: &[f32], a: &mut [f32]) {
        let (n, hd, row) = (dm.n, dm.hd, 3 * dm.d);
        let k = &q[dm.d..];
        debug_assert_eq!(a.len(), n * n);
        // a (n x n) = q (n x hd, row stride 3d) @ k^T (hd x n: row stride 1, column stride 3d)
        // SAFETY: `a` holds n x n elements and is this thread's own.
        unsafe { gemm_single(a.as_mut_ptr(), (n, n, hd), q, (row, 1), k, (1, row), n) };
        softmax_rows(a, n, self.scale);
    }
}

/// `dst (m x n, row stride dst_rs) = lhs @ rhs` on the calling thread.
///
/// # Safety
/// As [`gemm_strided`].
unsafe fn gemm_single(
    dst: *mut f32,
    dims: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    dst_rs: usize,
) {
    // SAFETY: upheld by the caller.
    unsafe {
        gemm_strided(
            dst,
            dst_rs,
            false,
            dims,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            gemm::Parallelism::None,
        )
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "oml-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let qkv = slice(s, l, self.name())?;
        let dm = self.dims(l.shape())?;
        let (n, d, hd) = (dm.n, dm.d, dm.hd);
        let mut out = vec![0f32; dm.b * n * d];
        let dst = SharedMut(out.as_mut_ptr());
        (0..dm.b * dm.h).into_par_iter().for_each_init(
            || vec![0f32; n * n],
            |a, task| {
                let (bi, hi) = (task / dm.h, task % dm.h);
                let q = &qkv[bi * n * 3 * d + hi * hd..];
                self.probs(&dm, q, a);
                let v = &q[2 * d..];
                let o = dst.at(bi * n * d + hi * hd);
                // o (n x hd, row stride d) = a (n x n) @ v (n x hd, row stride 3d)
                // SAFETY: this task alone writes rows bi*n..(bi+1)*n, columns
                // hi*hd..(hi+1)*hd of `out`, which outlives the loop.
                unsafe { gemm_single(o, (n, hd, n), a, (n, 1), v, (3 * d, 1), d) };
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((dm.b, n, d))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(qkv.apply_op2_no_bwd(
            &grad.contiguous()?,
            &AttentionBwd {
                heads: self.heads,
                scale: self.scale,
            },
        )?))
    }
}

/// The gradient of [`Attention`] with respect to the q/k/v projection, in its layout.
struct AttentionBwd {
    heads: usize,
    scale: f32,
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "oml-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let fwd = Attention {
            heads: self.heads,
            scale: self.scale,
        };
        let qkv = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let dm = fwd.dims(l1.shape())?;
        let (n, d, hd) = (dm.n, dm.d, dm.hd);
        if g.len() != dm.b * n * d {
            return Err(candle_core::Error::Msg(format!(
                "{}: gradient {:?} does not fit {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            )));
        }
        let mut dqkv = vec![0f32; qkv.len()];
        let dst = SharedMut(dqkv.as_mut_ptr());
        (0..dm.b * dm.h).into_par_iter().for_each_init(
            || (vec![0f32; n * n], vec![0f32; n * n]),
            |(a, da), task| {
                let (bi, hi) = (task / dm.h, task % dm.h);
                let base = bi * n * 3 * d + hi * hd;
                let q = &qkv[base..];
                let (k, v) = (&q[d..], &q[2 * d..]);
                let go = &g[bi * n * d + hi * hd..];
                fwd.probs(&dm, q, a);
                let (dq, dk, dv) = (dst.at(base), dst.at(base + d), dst.at(base + 2 * d));
                // SAFETY (the three writes below): this task alone writes rows bi*n..(bi+1)*n
                // and, in each, the columns of head hi in the q, k and v parts of `dqkv`, which
                // outlives the loop.
                // dv (n x hd) = a^T (n x n) @ go (n x hd, row stride d)
                unsafe { gemm_single(dv, (n, hd, n), a, (1, n), go, (d, 1), 3 * d) };
                // da (n x n) = go @ v^T
                unsafe { gemm_single(da.as_mut_ptr(), (n, n, hd), go, (d, 1), v, (1, 3 * d), n) };
                softmax_grad_rows(da, a, n, self.scale);
                // dq = ds @ k ; dk = ds^T @ q
                unsafe { gemm_single(dq, (n, hd, n), da, (n, 1), k, (3 * d, 1), 3 * d) };
                unsafe { gemm_single(dk, (n, hd, n), da, (1, n), q, (3 * d, 1), 3 * d) };
            },
        );
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

/// Multi-head self-attention of a `[batch, tokens, 3 * dim]` q/k/v projection (`[3][heads]
/// [head_dim]` in the last dimension) with scores scaled by `scale`: `[batch, tokens, dim]`,
/// differentiable. `None` when the input is not f32 on the CPU (the caller then uses tensor ops).
pub fn attention(qkv: &Tensor, heads: usize, scale: f64) -> CResult<Option<Tensor>> {
    if !fused(qkv) {
        return Ok(None);
    }
    Ok(Some(qkv.contiguous()?.apply_op1(Attention {
        heads,
        scale: scale as f32,
    })?))
}

// ---------------------------------------------------------------------------------------------
// Adam / AdamW update: one pass over a parameter instead of a dozen tensor ops.

/// One Adam step's settings, as torch's `Adam` / `AdamW` apply them.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: the decay shrinks the parameter; Adam: it is added to the gradient.
    pub decoupled: bool,
    /// The parameter's step count, from 1 (bias correction).
    pub step: i32,
    /// Multiplies the gradient first (clipping).
    pub grad_scale: f64,
}

fn with_cpu_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cs) => f(slice(cs, layout, "oml-adam")?),
        _ => Err(candle_core::Error::Msg(
            "oml-adam: expects a CPU tensor".into(),
        )),
    }
}

/// The new `(parameter, first moment, second moment)` after one step from `p` with gradient `g`
/// (moments start at zero when `None`), or `None` when the tensors are not contiguous f32 on the
/// CPU (the caller then uses tensor ops). Per element, as torch's single-tensor Adam:
/// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
pub fn adam_step(
    p: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    h: &AdamStep,
) -> CResult<Option<(Tensor, Tensor, Tensor)>> {
    let eligible = |t: &Tensor| fused(t) && t.is_contiguous() && t.shape() == p.shape();
    if !eligible(p) || !eligible(g) || !m.is_none_or(eligible) || !v.is_none_or(eligible) {
        return Ok(None);
    }
    let zeros;
    let (m, v) = match (m, v) {
        (Some(m), Some(v)) => (m, v),
        _ => {
            zeros = p.zeros_like()?;
            (m.unwrap_or(&zeros), v.unwrap_or(&zeros))
        }
    };
    let n = p.elem_count();
    let (mut p2, mut m2, mut v2) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    let (b1, b2) = (h.beta1 as f32, h.beta2 as f32);
    let step_size = (h.lr / (1.0 - h.beta1.powi(h.step))) as f32;
    let bc2_sqrt = (1.0 - h.beta2.powi(h.step)).sqrt() as f32;
    let (eps, gs) = (h.eps as f32, h.grad_scale as f32);
    let (shrink, l2) = match h.decoupled {
        true => ((1.0 - h.lr * h.weight_decay) as f32, 0.0),
        false => (1.0, h.weight_decay as f32),
    };
    let k = AdamConsts {
        b1,
        b2,
        step_size,
        bc2_sqrt,
        eps,
        gs,
        shrink,
        l2,
    };
    with_cpu_slice(p, |ps| {
        with_cpu_slice(g, |gs_| {
            with_cpu_slice(m, |ms| {
                with_cpu_slice(v, |vs| {
                    p2.par_chunks_mut(ELEMS_PER_TASK)
                        .zip(m2.par_chunks_mut(ELEMS_PER_TASK))
                        .zip(v2.par_chunks_mut(ELEMS_PER_TASK))
                        .enumerate()
                        .for_each(|(c, ((po, mo), vo))| {
                            let r = c * ELEMS_PER_TASK..(c * ELEMS_PER_TASK + po.len());
                            let (pi, gi) = (&ps[r.clone()], &gs_[r.clone()]);
                            let (mi, vi) = (&ms[r.clone()], &vs[r]);
                            adam_chunk([po, mo, vo], [pi, gi, mi, vi], &k);
                        });
                    Ok(())
                })
            })
        })
    })?;
    let dev = p.device();
    Ok(Some((
        Tensor::from_vec(p2, p.shape(), dev)?,
        Tensor::from_vec(m2, p.shape(), dev)?,
        Tensor::from_vec(v2, p.shape(), dev)?,
    )))
}

/// The per-step constants of [`adam_chunk`].
struct AdamConsts {
    b1: f32,
    b2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
    gs: f32,
    shrink: f32,
    l2: f32,
}

simd_fn! {
    /// One Adam update of a chunk: new parameters, first and second moments from the old ones
    /// and the gradient.
    fn adam_chunk(out: [&mut [f32]; 3], inp: [&[f32]; 4], k: &AdamConsts) {
        let [po, mo, vo] = out;
        let [pi, gi, mi, vi] = inp;
        for i in 0..po.len() {
            let grad = gi[i] * k.gs + k.l2 * pi[i];
            let mm = k.b1 * mi[i] + (1.0 - k.b1) * grad;
            let vv = k.b2 * vi[i] + (1.0 - k.b2) * grad * grad;
            let denom = vv.sqrt() / k.bc2_sqrt + k.eps;
            po[i] = pi[i] * k.shrink - k.step_size * mm / denom;
            mo[i] = mm;
            vo[i] = vv;
        }
    }
}

/// The sum of squares of a contiguous f32 CPU tensor in f64 (gradient norms), or `None` for other
/// tensors. Summed per fixed-size block, then over blocks in order: reproducible.
pub fn sum_squares(t: &Tensor) -> CResult<Option<f64>> {
    if !fused(t) || !t.is_contiguous() {
        return Ok(None);
    }
    with_cpu_slice(t, |xs| {
        let parts: Vec<f64> = xs
            .par_chunks(ELEMS_PER_TASK)
            .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .collect();
        Ok(Some(parts.iter().sum()))
    })
}

// ---------------------------------------------------------------------------------------------
// Allocator settings for a training process.

/// Makes glibc's `malloc` serve every allocation from its heap and keep freed memory (up to
/// 2 GiB above the peak) instead of returning it to the system. A training step allocates and
/// frees tensors of tens of MB each; by default each of them is a fresh `mmap` whose pages fault
/// in one by one, about a tenth of a ViT step on 2 cores here. Peak memory is unchanged (measured:
/// 2.71 vs 2.66 GB for a ViT-S/16 224 px batch-32 step); the process just does not shrink after
/// it. Meant for a process that trains (the `oml` command calls it); a no-op off glibc Linux.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only changes malloc's tuning parameters; any value is valid for these
        // two, and glibc serialises the change against concurrent allocations.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }
}

/// The search's scan of one query row against a gallery block: every `c` whose key
/// `a + s * norms[c] - f * dots[c]` is below `threshold`, appended to `out` as `(key, c)` in
/// column order. (Euclidean: `a = |q|^2, s = 1, f = 2`, the key is the squared distance; cosine:
/// `a = 1, s = 0, f = 1`.) Here rather than in `oml` so that it runs optimised in every profile:
/// it is the inner loop of retrieval over all pairs.
pub fn keys_below(
    dots: &[f32],
    norms: &[f32],
    (a, s, f): (f32, f32, f32),
    threshold: f32,
    out: &mut Vec<(f32, u32)>,
) {
    for (c, (&dot, &norm)) in dots.iter().zip(norms).enumerate() {
        let key = a + s * norm - f * dot;
        if key < threshold {
            out.push((key, c as u32));
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read CPU tensors directly
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> CResult<f32> {
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(diff < tol, "max |diff| {diff} >= {tol}");
        Ok(diff)
    }

    fn composed_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> CResult<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let c = x.broadcast_sub(&mean)?;
        let var = c.sqr()?.mean_keepdim(D::Minus1)?;
        c.broadcast_div(&(var + eps)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    /// Values and gradients of each fused op against candle's composed ops, with a loss that
    /// weights every output differently so that a wrong gradient cannot cancel out.
    #[test]
    fn fused_ops_match_candles_composed_ones() -> CResult<()> {
        let dev = Device::Cpu;
        // 70 rows: two full tasks of 32 and a partial one.
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 35, 24), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 24, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 24, &dev)?)?;
        let lw = Var::from_tensor(&Tensor::randn(0f32, 0.2, (80, 24), &dev)?)?;
        let lb = Var::from_tensor(&Tensor::randn(0f32, 0.2, 80, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 35, 80), &dev)?;
        let layer = candle_nn::Linear::new(lw.as_tensor().clone(), Some(lb.as_tensor().clone()));
        // 0: candle's composed ops; 1: our kernels; 2: ours with linear + GELU fused.
        let run = |mode: u8| -> CResult<(Tensor, Vec<Tensor>)> {
            let fast = mode > 0;
            let h = if fast {
                layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6)?
            } else {
                composed_layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-6)?
            };
            let h = match mode {
                0 => candle_core::Module::forward(&layer, &h)?.gelu_erf()?,
                1 => gelu_erf(&linear(&layer, &h)?)?,
                _ => linear_gelu(&layer, &h)?,
            };
            let h = if fast {
                softmax_last(&h, 0.7)?
            } else {
                candle_nn::ops::softmax(&(h * 0.7)?, D::Minus1)?
            };
            let loss = (&h * &probe)?.sum_all()?;
            let grads = loss.backward()?;
            let gs = [&x, &w, &b, &lw, &lb]
                .iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
                })
                .collect::<CResult<Vec<_>>>()?;
            Ok((h, gs))
        };
        let (fast, fast_g) = run(1)?;
        let (slow, slow_g) = run(0)?;
        close(&fast, &slow, 1e-6)?;
        // Fusing changes no arithmetic: the same values and gradients, bit for bit.
        let (fused, fused_g) = run(2)?;
        let bits = |t: &Tensor| -> CResult<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        assert_eq!(bits(&fused)?, bits(&fast)?);
        for (a, b) in fused_g.iter().zip(&fast_g) {
            assert_eq!(bits(a)?, bits(b)?);
        }
        for (f, s) in fast_g.iter().zip(&slow_g) {
            let scale = s.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(scale > 0.0);
            close(f, s, 1e-4 * scale.max(1.0))?;
        }
        Ok(())
    }

    #[test]
    fn fast_exp_and_erf_match_the_library_ones() {
        let mut worst = (0f32, 0f32);
        for i in -40_000..=40_000 {
            let x = i as f32 * 2e-3; // -80 .. 80
            let e = (exp_f32(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
            worst.0 = worst.0.max(e as f32);
            let x = x / 10.0; // -8 .. 8
            let r = candle_core::cpu::erf::erf_f64(x as f64);
            worst.1 = worst.1.max((erf_f32(x) as f64 - r).abs() as f32);
        }
        assert!(worst.0 < 5e-7, "exp: relative error {}", worst.0);
        assert!(worst.1 < 1e-6, "erf: absolute error {}", worst.1);
        assert_eq!(exp_f32(-1e4), exp_f32(-87.0));
        assert!(exp_f32(1e4).is_finite());
    }

    #[test]
    fn fused_sums_do_not_depend_on_the_thread_count() -> CResult<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (300, 48), &dev)?)?;
        let w = Var::from_tensor(&Tensor::ones(48, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(48, DType::F32, &dev)?)?;
        let grads = |threads: usize| -> CResult<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            pool.install(|| {
                let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
                let g = (y.sqr()? * 0.5)?.sum_all()?.backward()?;
                match g.get(w.as_tensor()) {
                    Some(t) => t.to_vec1::<f32>(),
                    None => Err(candle_core::Error::Msg("no gradient".into())),
                }
            })
        };
        assert_eq!(grads(1)?, grads(3)?);
        Ok(())
    }

    /// The fused attention against the composed one: values, and the gradient of a loss that
    /// weights every output element differently.
    #[test]
    fn fused_attention_matches_the_composed_one() -> CResult<()> {
        let dev = Device::Cpu;
        let (b, n, heads, hd) = (3, 7, 2, 5);
        let d = heads * hd;
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, n, 3 * d), &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (b, n, d), &dev)?;
        let scale = (hd as f64).powf(-0.5);
        let composed = |x: &Tensor| -> CResult<Tensor> {
            let x = x.reshape((b, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
            let q = x.get(0)?.contiguous()?;
            let k = x.get(1)?.contiguous()?;
            let v = x.get(2)?.contiguous()?;
            let a = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * scale)?, D::Minus1)?;
            a.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))
        };
        let fast = match attention(qkv.as_tensor(), heads, scale)? {
            Some(t) => t,
            None => panic!("f32 on the CPU must take the kernel"),
        };
        let slow = composed(qkv.as_tensor())?;
        close(&fast, &slow, 1e-5)?;
        let gf = (&fast * &probe)?.sum_all()?.backward()?;
        let gs = (&slow * &probe)?.sum_all()?.backward()?;
        let (Some(gf), Some(gs)) = (gf.get(qkv.as_tensor()), gs.get(qkv.as_tensor())) else {
            panic!("no gradient for the q/k/v projection");
        };
        // every part (q, k and v) of the gradient is non-zero and matches
        for part in 0..3 {
            let s = gs.narrow(2, part * d, d)?;
            assert!(s.abs()?.sum_all()?.to_scalar::<f32>()? > 1e-3);
            close(&gf.narrow(2, part * d, d)?, &s, 1e-5)?;
        }
        assert!(attention(&Tensor::zeros((2, 3, 10), DType::F32, &dev)?, 4, 1.0).is_err());
        Ok(())
    }

    /// Two Adam / AdamW steps against the same formula written with tensor ops.
    #[test]
    fn adam_step_matches_the_formula() -> CResult<()> {
        let dev = Device::Cpu;
        let p = Tensor::randn(0f32, 1.0, 40_000, &dev)?;
        let grads = [
            Tensor::randn(0f32, 1.0, 40_000, &dev)?,
            Tensor::randn(0f32, 1.0, 40_000, &dev)?,
        ];
        for decoupled in [true, false] {
            let (mut fp, mut fm, mut fv) = (p.clone(), None::<Tensor>, None::<Tensor>);
            let (mut rp, mut rm, mut rv) = (p.clone(), p.zeros_like()?, p.zeros_like()?);
            for (t, g) in grads.iter().enumerate() {
                let h = AdamStep {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    decoupled,
                    step: t as i32 + 1,
                    grad_scale: 0.5,
                };
                let out = adam_step(&fp, g, fm.as_ref(), fv.as_ref(), &h)?;
                let Some((np, nm, nv)) = out else {
                    panic!("a contiguous f32 CPU tensor must take the kernel");
                };
                (fp, fm, fv) = (np, Some(nm), Some(nv));
                let mut grad = (g * h.grad_scale)?;
                if !decoupled {
                    grad = (grad + (&rp * h.weight_decay)?)?;
                }
                rm = ((&rm * h.beta1)? + (&grad * (1.0 - h.beta1))?)?;
                rv = ((&rv * h.beta2)? + (grad.sqr()? * (1.0 - h.beta2))?)?;
                let denom = ((rv.sqrt()? / (1.0 - h.beta2.powi(h.step)).sqrt())? + h.eps)?;
                let base = match decoupled {
                    true => (&rp * (1.0 - h.lr * h.weight_decay))?,
                    false => rp.clone(),
                };
                let step = h.lr / (1.0 - h.beta1.powi(h.step));
                rp = (base - ((&rm / denom)? * step)?)?;
            }
            close(&fp, &rp, 1e-6)?;
            assert!(close(&fp, &p, 1.0)? > 1e-3, "the parameter moved");
        }
        let t = Tensor::new(&[3f32, 4.0], &dev)?;
        assert_eq!(sum_squares(&t)?, Some(25.0));
        assert_eq!(sum_squares(&t.to_dtype(DType::F64)?)?, None);
        Ok(())
    }

    #[test]
    fn the_residual_with_layer_scale_matches_the_composed_ops() -> CResult<()> {
        let dev = Device::Cpu;
        // 70 rows of 24: two full tasks and a partial one.
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 35, 24), &dev)?)?;
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 35, 24), &dev)?)?;
        let g = Var::from_tensor(&Tensor::randn(0f32, 0.5, 24, &dev)?)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 35, 24), &dev)?;
        let run = |fast: bool| -> CResult<(Tensor, Vec<Tensor>)> {
            let y = if fast {
                residual_scale(x.as_tensor(), a.as_tensor(), g.as_tensor())?
            } else {
                (x.as_tensor() + a.as_tensor().broadcast_mul(g.as_tensor())?)?
            };
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let gs = [&x, &a, &g]
                .iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
                })
                .collect::<CResult<Vec<_>>>()?;
            Ok((y, gs))
        };
        let (fast, fast_g) = run(true)?;
        let (slow, slow_g) = run(false)?;
        close(&fast, &slow, 1e-6)?;
        for (f, s) in fast_g.iter().zip(&slow_g) {
            close(f, s, 1e-4)?;
        }
        // A gamma that does not fit the last dimension is an error, not a panic.
        let bad = Tensor::ones(5, DType::F32, &dev)?;
        assert!(residual_scale(x.as_tensor(), a.as_tensor(), &bad).is_err());
        Ok(())
    }

    #[test]
    fn a_misshapen_linear_input_is_an_error() -> CResult<()> {
        let dev = Device::Cpu;
        let layer = candle_nn::Linear::new(
            Tensor::zeros((4, 3), DType::F32, &dev)?,
            Some(Tensor::zeros(4, DType::F32, &dev)?),
        );
        let x = Tensor::zeros((2, 5), DType::F32, &dev)?;
        assert!(linear(&layer, &x).is_err());
        Ok(())
    }
}
