//! Backbones that turn images `[B, 3, H, W]` into embeddings `[B, D]`.
//!
//! So far: the ViT of DINO and DINOv2 ([`vit`]); ResNet, CLIP and the zoo come with the backbones
//! issue's next steps.

pub mod vit;

pub use vit::{ViTConfig, ViTExtractor};
