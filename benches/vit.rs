//! Benchmark: DINOv2 ViT-S/14 forward on the CPU, batch 32 at 224 px (random weights of the real
//! shape unless `OML_SHARED_WEIGHTS` points at the shared folder; speed does not depend on them).
//! Compare with torch at 2 threads (the backbones issue quotes ViT-S/16 at 17.1 images/s).
//!
//! `cargo bench --bench vit`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use oml::models::{ViTConfig, ViTExtractor};

fn main() {
    let cfg = ViTConfig::from_arch("vits14").expect("arch");
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let vit = ViTExtractor::new(&cfg, vb).expect("vit");
    let x = Tensor::randn(0f32, 1.0, (32, 3, 224, 224), &device).expect("input");
    let _ = vit.forward(&x).expect("warm-up");
    let mut rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let y = vit.forward(&x).expect("forward");
        assert_eq!(y.dims(), &[32, 384]);
        rates.push(32.0 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"vits14_forward_224_b32\", \"threads\": {}, \"images_per_s\": {:.1}}}",
        rayon::current_num_threads(),
        rates[1]
    );
}
