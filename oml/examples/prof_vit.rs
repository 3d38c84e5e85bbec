use candle_core::{DType, Device, Module, Tensor};
use std::time::Instant;
fn t<F: FnMut() -> Tensor>(name: &str, n: usize, mut f: F) {
    let _ = f();
    let s = Instant::now();
    for _ in 0..n {
        let _ = f();
    }
    println!(
        "{name}: {:.1} ms",
        s.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}
fn main() {
    let d = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), &d).unwrap();
    let s0 = Instant::now();
    for _ in 0..5 {
        let _ = a.matmul(&a).unwrap();
    }
    println!(
        "1024^2 matmul: {:.1} GFLOP/s",
        5.0 * 2.0 * 1024f64.powi(3) / s0.elapsed().as_secs_f64() / 1e9
    );
    let b = 32;
    let n = 257;
    let dim = 384;
    let x = Tensor::randn(0f32, 1.0, (b, n, dim), &d).unwrap();
    let w = Tensor::randn(0f32, 0.02, (3 * dim, dim), &d).unwrap();
    let lin = candle_nn::Linear::new(w.clone(), None);
    t("qkv linear [32,257,384]x[384,1152]", 3, || {
        lin.forward(&x).unwrap()
    });
    let x2 = x.reshape((b * n, dim)).unwrap();
    t("qkv 2d x w.t()", 3, || x2.matmul(&w.t().unwrap()).unwrap());
    let wt = w.t().unwrap().contiguous().unwrap();
    t("qkv 2d x wt contiguous", 3, || x2.matmul(&wt).unwrap());
    let w1 = Tensor::randn(0f32, 0.02, (4 * dim, dim), &d).unwrap();
    let fc1 = candle_nn::Linear::new(w1, None);
    t("fc1", 3, || fc1.forward(&x).unwrap());
    let h = fc1.forward(&x).unwrap();
    t("gelu_erf on hidden", 3, || h.gelu_erf().unwrap());
    t("gelu (tanh) on hidden", 3, || h.gelu().unwrap());
    let q = Tensor::randn(0f32, 1.0, (b, 6, n, 64), &d).unwrap();
    let k = Tensor::randn(0f32, 1.0, (b, 6, n, 64), &d).unwrap();
    t("q k^T", 3, || q.matmul(&k.t().unwrap()).unwrap());
    let att = q.matmul(&k.t().unwrap()).unwrap();
    t("softmax_last_dim", 3, || {
        candle_nn::ops::softmax_last_dim(&att).unwrap()
    });
    t("att v", 3, || att.matmul(&q).unwrap());
    let ones = Tensor::ones(dim, DType::F32, &d).unwrap();
    let zeros = Tensor::zeros(dim, DType::F32, &d).unwrap();
    t("layer_norm", 3, || {
        candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-6).unwrap()
    });
    let qkv = lin
        .forward(&x)
        .unwrap()
        .reshape((b, n, 3, 6, 64))
        .unwrap()
        .permute((2, 0, 3, 1, 4))
        .unwrap();
    t("qkv permute+contiguous", 3, || {
        qkv.get(0).unwrap().contiguous().unwrap()
    });
    let img = Tensor::randn(0f32, 1.0, (b, 3, 224, 224), &d).unwrap();
    let cw = Tensor::randn(0f32, 0.02, (dim, 3, 14, 14), &d).unwrap();
    let conv = candle_nn::Conv2d::new(
        cw,
        None,
        candle_nn::Conv2dConfig {
            stride: 14,
            ..Default::default()
        },
    );
    t("patch conv", 3, || conv.forward(&img).unwrap());
    let o = att.matmul(&q).unwrap();
    t("transpose+reshape out", 3, || {
        o.transpose(1, 2).unwrap().reshape((b, n, dim)).unwrap()
    });
}
#[allow(dead_code)]
fn square() {}
