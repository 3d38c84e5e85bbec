#!/usr/bin/env python3
"""Other weight-file layouts of the small random backbones: HuggingFace ``transformers`` and torch.save.

Input: the small seeded backbones written by ``tests/golden/make_extractor_fixtures.py``
(``tests/data/extractors/<name>.safetensors``) and OML's outputs for them
(``tests/golden/extractor_small.json``). Nothing here draws new backbone weights: every file below
is the same numbers in another layout, so a loader of that layout must reproduce OML's outputs.

(A) HuggingFace ``transformers`` layouts, one per ViT family:

    vit_dino_small        -> transformers.ViTModel(add_pooling_layer=False)   (facebook/dino-vit*)
    vit_dinov2_small      -> transformers.Dinov2Model                         (facebook/dinov2-*)
    vit_dinov2_reg_small  -> transformers.Dinov2WithRegistersModel            (facebook/dinov2-with-registers-*)
    vit_clip_small        -> transformers.CLIPVisionModelWithProjection       (openai/clip-vit-*)

    For each: the OML state dict is renamed (and split / transposed) into the Hub names
    (``HF_MAPPINGS`` below), written as ``model.safetensors`` + ``config.json`` into a temporary
    folder, loaded with ``from_pretrained(..., output_loading_info=True)`` (must report no missing,
    unexpected or mismatched keys), run on the fixture inputs, compared with OML's golden outputs,
    and written back with ``save_pretrained``; that file (its keys checked equal to the mapped
    dict, tensor for tensor) is copied to ``tests/data/extractors/<name>_hf.safetensors`` and its
    ``config.json`` to ``<name>_hf_config.json``.

(B) torch.save (zip + pickle) checkpoints, plus how OML 4.0's own loaders treat them:

    vit_dino_small_oml.ckpt           Lightning-style {"state_dict": {"model.<vit key>", "criterion.weight"}, ...}
    vit_dino_small_dino_teacher.pth   DINO-training-style {"teacher": {"backbone.*", "head.*"}, "student": ..., "epoch"}
    resnet_basic_small.pth            torch.save(resnet.state_dict())  (OrderedDict with _metadata, int64 counters)
    broken.pth                        the first 300 bytes of resnet_basic_small.pth

The measured differences, OML's key-cleaning outcome for every file and the file sizes go to
``tests/golden/layouts.json``; ``tests/golden/layouts.md`` explains them.

Run (CPU, one thread, a few seconds; needs transformers >= 4.48 for Dinov2WithRegistersModel):

    /work/venv/bin/python tests/golden/make_layout_fixtures.py

Seeded and deterministic: rerunning rewrites byte-identical files for the same torch/transformers.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import json
import shutil
import sys
import tempfile
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple
from unittest import mock

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

torch.set_num_threads(1)
torch.set_grad_enabled(False)

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTModel,
)

import oml  # noqa: E402
from oml.models.resnet.extractor import ResnetExtractor  # noqa: E402
from oml.models.utils import remove_criterion_in_state_dict, remove_prefix_from_state_dict  # noqa: E402
from oml.models.vit_dino.external import vision_transformer as dino_v1  # noqa: E402
from oml.models.vit_dino.extractor import ViTExtractor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
SMALL_DIR = REPO_ROOT / "tests" / "data" / "extractors"
GOLDEN_JSON = GOLDEN_DIR / "extractor_small.json"
OUT_JSON = GOLDEN_DIR / "layouts.json"

sys.path.insert(0, str(GOLDEN_DIR))
import make_extractor_fixtures as mef  # noqa: E402  (NarrowResNet, dinov2_module, SEED)

SEED = mef.SEED + 100  # only for the few new tensors (criterion, DINO head, student noise)
TOL = 1e-4
MAX_FILE_BYTES = 600_000


# ----------------------------------------------------------------------------- helpers


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def decode_f32(b64: str, shape: List[int]) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(b64), dtype="<f4").reshape(shape).copy())


def load_golden() -> Tuple[Dict[str, torch.Tensor], Dict[str, Dict[str, torch.Tensor]]]:
    data = json.loads(GOLDEN_JSON.read_text())
    inputs = {k: decode_f32(v["f32_b64"], v["shape"]) for k, v in data["inputs"].items()}
    outputs = {
        m["name"]: {r["input"]: decode_f32(r["output_f32_b64"], r["output_shape"]) for r in m["runs"]}
        for m in data["models"]
    }
    return inputs, outputs


def small(name: str) -> Dict[str, torch.Tensor]:
    return load_file(str(SMALL_DIR / f"{name}.safetensors"))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


def depth_of(state: Dict[str, torch.Tensor], block_prefix: str) -> int:
    return 1 + max(int(k[len(block_prefix):].split(".")[0]) for k in state if k.startswith(block_prefix))


# ----------------------------------------------------------------------------- (A) mappings

# Each mapping returns an OrderedDict hub_key -> tensor; ``table`` rows (hub name, OML name, op)
# are what layouts.md prints.


def split3(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused q|k|v rows [3D, ...] -> q [D, ...], k, v (the order both timm's qkv and torch MHA use)."""
    d = t.shape[0] // 3
    assert 3 * d == t.shape[0]
    return t[:d].clone(), t[d:2 * d].clone(), t[2 * d:].clone()


def map_vit_common(src: Dict[str, torch.Tensor], *, dinov2: bool) -> "OrderedDict[str, torch.Tensor]":
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    out["embeddings.cls_token"] = src["cls_token"]
    if dinov2:
        out["embeddings.mask_token"] = src["mask_token"]  # [1, D] in both
        if "register_tokens" in src:
            out["embeddings.register_tokens"] = src["register_tokens"]
    out["embeddings.position_embeddings"] = src["pos_embed"]  # class slot first in both
    out["embeddings.patch_embeddings.projection.weight"] = src["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.projection.bias"] = src["patch_embed.proj.bias"]
    for n in range(depth_of(src, "blocks.")):
        b, h = f"blocks.{n}.", f"encoder.layer.{n}."
        q, k, v = split3(src[b + "attn.qkv.weight"])
        qb, kb, vb = split3(src[b + "attn.qkv.bias"])
        norm1, norm2 = ("norm1", "norm2") if dinov2 else ("layernorm_before", "layernorm_after")
        fc1, fc2 = ("mlp.fc1", "mlp.fc2") if dinov2 else ("intermediate.dense", "output.dense")
        for leaf in ("weight", "bias"):
            out[h + f"{norm1}.{leaf}"] = src[b + f"norm1.{leaf}"]
        out[h + "attention.attention.query.weight"], out[h + "attention.attention.query.bias"] = q, qb
        out[h + "attention.attention.key.weight"], out[h + "attention.attention.key.bias"] = k, kb
        out[h + "attention.attention.value.weight"], out[h + "attention.attention.value.bias"] = v, vb
        for leaf in ("weight", "bias"):
            out[h + f"attention.output.dense.{leaf}"] = src[b + f"attn.proj.{leaf}"]
        if dinov2:
            out[h + "layer_scale1.lambda1"] = src[b + "ls1.gamma"]
        for leaf in ("weight", "bias"):
            out[h + f"{norm2}.{leaf}"] = src[b + f"norm2.{leaf}"]
            out[h + f"{fc1}.{leaf}"] = src[b + f"mlp.fc1.{leaf}"]
            out[h + f"{fc2}.{leaf}"] = src[b + f"mlp.fc2.{leaf}"]
        if dinov2:
            out[h + "layer_scale2.lambda1"] = src[b + "ls2.gamma"]
    out["layernorm.weight"] = src["norm.weight"]
    out["layernorm.bias"] = src["norm.bias"]
    return out


def map_clip(src: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    v, e = "visual.", "vision_model."
    out[e + "embeddings.class_embedding"] = src[v + "class_embedding"]  # [D]
    out[e + "embeddings.patch_embedding.weight"] = src[v + "conv1.weight"]  # no bias in either
    out[e + "embeddings.position_embedding.weight"] = src[v + "positional_embedding"]  # [1+g*g, D]
    for leaf in ("weight", "bias"):
        out[e + f"pre_layrnorm.{leaf}"] = src[v + f"ln_pre.{leaf}"]  # sic: "layrnorm" on the Hub
    for n in range(depth_of(src, v + "transformer.resblocks.")):
        b, h = f"{v}transformer.resblocks.{n}.", f"{e}encoder.layers.{n}."
        q, k, vv = split3(src[b + "attn.in_proj_weight"])
        qb, kb, vb = split3(src[b + "attn.in_proj_bias"])
        for leaf in ("weight", "bias"):
            out[h + f"layer_norm1.{leaf}"] = src[b + f"ln_1.{leaf}"]
        out[h + "self_attn.q_proj.weight"], out[h + "self_attn.q_proj.bias"] = q, qb
        out[h + "self_attn.k_proj.weight"], out[h + "self_attn.k_proj.bias"] = k, kb
        out[h + "self_attn.v_proj.weight"], out[h + "self_attn.v_proj.bias"] = vv, vb
        for leaf in ("weight", "bias"):
            out[h + f"self_attn.out_proj.{leaf}"] = src[b + f"attn.out_proj.{leaf}"]
            out[h + f"layer_norm2.{leaf}"] = src[b + f"ln_2.{leaf}"]
            out[h + f"mlp.fc1.{leaf}"] = src[b + f"mlp.c_fc.{leaf}"]
            out[h + f"mlp.fc2.{leaf}"] = src[b + f"mlp.c_proj.{leaf}"]
    for leaf in ("weight", "bias"):
        out[e + f"post_layernorm.{leaf}"] = src[v + f"ln_post.{leaf}"]
    out["visual_projection.weight"] = src[v + "proj"].t().contiguous()  # OML: x @ proj [D, out]; HF: Linear [out, D]
    return out


def vit_config() -> ViTConfig:
    # facebook/dino-vits16's config.json, smaller: layer_norm_eps 1e-6 (ViTConfig's default is 1e-12!)
    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     hidden_act="gelu", layer_norm_eps=1e-6, image_size=64, patch_size=16, num_channels=3,
                     qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def dinov2_config(registers: int):
    kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, hidden_act="gelu",
                  layer_norm_eps=1e-6, image_size=70, patch_size=14, num_channels=3, qkv_bias=True,
                  layerscale_value=1.0, use_swiglu_ffn=False, drop_path_rate=0.0)
    if registers:
        return Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
    return Dinov2Config(**kwargs)


def clip_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=128, projection_dim=16, num_hidden_layers=2,
                            num_attention_heads=2, image_size=64, patch_size=16, num_channels=3,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5)


HF_MODELS: List[Dict[str, Any]] = [
    {"name": "vit_dino_small", "cls": ViTModel, "config": vit_config, "load_kwargs": {"add_pooling_layer": False},
     "map": partial(map_vit_common, dinov2=False), "native": "x64", "others": ["x48", "x48x64"],
     "call_kwargs": {"interpolate_pos_encoding": True}, "output": "last_hidden_state[:, 0]"},
    {"name": "vit_dinov2_small", "cls": Dinov2Model, "config": partial(dinov2_config, 0), "load_kwargs": {},
     "map": partial(map_vit_common, dinov2=True), "native": "x70", "others": ["x56", "x42x56", "x84"],
     "call_kwargs": {}, "output": "pooler_output (= last_hidden_state[:, 0])"},
    {"name": "vit_dinov2_reg_small", "cls": Dinov2WithRegistersModel, "config": partial(dinov2_config, 4),
     "load_kwargs": {}, "map": partial(map_vit_common, dinov2=True), "native": "x70",
     "others": ["x56", "x42x56", "x84"], "call_kwargs": {}, "output": "pooler_output (= last_hidden_state[:, 0])"},
    {"name": "vit_clip_small", "cls": CLIPVisionModelWithProjection, "config": clip_config, "load_kwargs": {},
     "map": map_clip, "native": "x64", "others": [], "call_kwargs": {}, "output": "image_embeds"},
]

# non-persistent buffers the Hub files may carry (old CLIP files: vision_model.embeddings.position_ids)
ALLOWED_EXTRA = {"vision_model.embeddings.position_ids"}


def hf_embedding(model: nn.Module, x: torch.Tensor, spec: Dict[str, Any]) -> torch.Tensor:
    out = model(pixel_values=x, **spec["call_kwargs"])
    if spec["cls"] is CLIPVisionModelWithProjection:
        return out.image_embeds
    cls = out.last_hidden_state[:, 0]
    if out.pooler_output is not None:
        assert torch.equal(out.pooler_output, cls)
    return cls


def quiet_from_pretrained(cls, folder: str, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cls.from_pretrained(folder, output_loading_info=True, **kwargs)


def quiet_save_pretrained(model: nn.Module, folder: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model.save_pretrained(folder)


def run_hf(spec: Dict[str, Any], inputs, golden) -> Dict[str, Any]:
    name = spec["name"]
    src = small(name)
    mapped = spec["map"](src)
    # every OML tensor used exactly once (by element count: qkv -> 3 pieces, proj -> its transpose)
    assert sum(t.numel() for t in mapped.values()) == sum(t.numel() for t in src.values()), name
    config = spec["config"]()
    report: Dict[str, Any] = {"transformers_class": spec["cls"].__name__, "output": spec["output"]}
    with tempfile.TemporaryDirectory() as tmp_in, tempfile.TemporaryDirectory() as tmp_out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in mapped.items()}, f"{tmp_in}/model.safetensors",
                  metadata={"format": "pt"})
        config.save_pretrained(tmp_in)
        loaded = {}
        for attn in ("eager", "sdpa"):
            model, info = quiet_from_pretrained(spec["cls"], tmp_in, attn_implementation=attn, **spec["load_kwargs"])
            problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                                      "mismatched_keys", "error_msgs")}
            problems = {k: [x for x in v if x not in ALLOWED_EXTRA] for k, v in problems.items()}
            assert not any(problems.values()), (name, attn, problems)
            model.eval()
            loaded[attn] = model
        report["from_pretrained_loading_info"] = "no missing, unexpected or mismatched keys, no errors"
        # the model's own parameters must be the mapped tensors (no silent re-init)
        quiet_save_pretrained(loaded["eager"], tmp_out)
        out_file = Path(tmp_out) / "model.safetensors"
        with safe_open(str(out_file), "pt") as f:
            saved_keys = sorted(f.keys())
            assert saved_keys == sorted(mapped), (name, set(saved_keys) ^ set(mapped))
            for k in saved_keys:
                assert torch.equal(f.get_tensor(k), mapped[k]), (name, k)
        report["save_pretrained_keys_equal_mapping"] = True

        diffs: Dict[str, Any] = {}
        for key in [spec["native"], *spec["others"]]:
            ref = golden[name][key]
            row = {}
            for attn, model in loaded.items():
                row[attn] = max_diff(hf_embedding(model, inputs[key], spec), ref)
            row["within_1e-4"] = bool(max(row["eager"], row["sdpa"]) < TOL)
            diffs[key] = row
        native = diffs[spec["native"]]
        assert native["within_1e-4"], (name, native)
        report["max_abs_diff_vs_oml"] = diffs
        report["native_input"] = spec["native"]

        dst = SMALL_DIR / f"{name}_hf.safetensors"
        dst_cfg = SMALL_DIR / f"{name}_hf_config.json"
        shutil.copyfile(out_file, dst)
        shutil.copyfile(Path(tmp_out) / "config.json", dst_cfg)
    for p in (dst, dst_cfg):
        p.chmod(0o644)
    # the written file itself loads and gives the same numbers
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(dst, f"{tmp}/model.safetensors")
        shutil.copyfile(dst_cfg, f"{tmp}/config.json")
        model, info = quiet_from_pretrained(spec["cls"], tmp, attn_implementation="eager", **spec["load_kwargs"])
        model.eval()
        x = inputs[spec["native"]]
        assert torch.equal(hf_embedding(model, x, spec), hf_embedding(loaded["eager"], x, spec))
    report["files"] = {"weights": file_info(dst), "config": file_info(dst_cfg)}
    report["keys"] = list(mapped)
    return report


def file_info(path: Path) -> Dict[str, Any]:
    size = path.stat().st_size
    assert size < MAX_FILE_BYTES, (path, size)
    return {"file": rel(path), "bytes": size, "sha256": sha256(path)}


# ----------------------------------------------------------------------------- (B) checkpoints


def small_dino_vit() -> nn.Module:
    """The vit_dino_small module (OML's vendored DINO ViT, make_extractor_fixtures' arguments)."""
    vit = dino_v1.VisionTransformer(img_size=[mef.PATCH16_NATIVE], patch_size=16, embed_dim=32, depth=2,
                                    num_heads=2, mlp_ratio=4, qkv_bias=True, num_classes=0,
                                    norm_layer=partial(nn.LayerNorm, eps=1e-6))
    vit.load_state_dict(small("vit_dino_small"), strict=True)
    return vit.eval()


def small_resnet_basic() -> nn.Module:
    from torchvision.models import resnet as tv_resnet

    net = mef.NarrowResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], width=8, num_classes=10)
    net.load_state_dict(small("resnet_basic_small"), strict=True)
    return net.eval()


class Holder(nn.Module):
    """A bare module whose state_dict() has the given children / parameters (names are the keys)."""

    def __init__(self, **parts: Any) -> None:
        super().__init__()
        for k, v in parts.items():
            if isinstance(v, torch.Tensor):
                self.register_parameter(k, nn.Parameter(v, requires_grad=False))
            else:
                self.add_module(k, v)


def torch_save(obj: Any, path: Path) -> None:
    torch.save(obj, path)
    path.chmod(0o644)


def zip_names(path: Path) -> List[str]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return z.namelist()


def first_line(e: BaseException) -> str:
    """Type and first line of an exception; for load_state_dict errors also the first 'size mismatch' line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else ''}"
    mismatch = [ln for ln in lines[1:] if ln.startswith("size mismatch")]
    return text + (f" ... {mismatch[0]}" if mismatch else "")


def oml_clean(obj: Any, trial_key: str) -> Dict[str, Any]:
    """OML 4.0's ViT/ResNet load steps (oml/models/vit_dino/extractor.py, resnet/extractor.py), on a copy."""
    obj = copy.copy(obj)
    sd = obj["state_dict"] if "state_dict" in obj else obj
    sd = OrderedDict(sd)
    sd = remove_criterion_in_state_dict(sd)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            sd = remove_prefix_from_state_dict(sd, trial_key=trial_key)
        return {"ok": True, "keys": list(sd), "printed": printed.getvalue().strip()}
    except AssertionError as e:
        return {"ok": False, "error": first_line(e)}


def make_checkpoints(inputs, golden) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(SEED)
    report: Dict[str, Any] = {}
    vit_small = small("vit_dino_small")

    # 1. OML / Lightning-style checkpoint
    lit = Holder(model=small_dino_vit(), criterion=Holder(weight=torch.randn(5, 32, generator=g)))
    # criterion is a child module holding one parameter "weight" -> key "criterion.weight"
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": lit.state_dict(),
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5}]}],
        "hyper_parameters": {"lr": 1e-5},
    }
    assert list(ckpt["state_dict"]) == [f"model.{k}" for k in small_dino_vit().state_dict()] + ["criterion.weight"]
    p_ckpt = SMALL_DIR / "vit_dino_small_oml.ckpt"
    torch_save(ckpt, p_ckpt)

    # 2. DINO-training-style checkpoint (teacher = MultiCropWrapper(backbone, head), student under DDP "module.")
    head = Holder(mlp=nn.Sequential(Holder(weight=torch.randn(16, 32, generator=g) / 32 ** 0.5)),
                  last_layer=Holder(weight_v=torch.randn(64, 16, generator=g) / 4.0))
    teacher = Holder(backbone=small_dino_vit(), head=head)
    student_backbone = small_dino_vit()
    with torch.no_grad():  # the student differs from the teacher, so loading the wrong one is visible
        for p in student_backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    student = Holder(module=Holder(backbone=student_backbone))
    dino = {"teacher": teacher.state_dict(), "student": student.state_dict(), "epoch": 10}
    p_dino = SMALL_DIR / "vit_dino_small_dino_teacher.pth"
    torch_save(dino, p_dino)

    # 3. plain torchvision state dict
    p_res = SMALL_DIR / "resnet_basic_small.pth"
    torch_save(small_resnet_basic().state_dict(), p_res)

    # 4. truncated
    p_broken = SMALL_DIR / "broken.pth"
    p_broken.write_bytes(p_res.read_bytes()[:300])
    p_broken.chmod(0o644)

    # ---- checks: the files hold the small weights
    back = torch.load(p_ckpt, map_location="cpu", weights_only=True)
    for k, v in vit_small.items():
        assert torch.equal(back["state_dict"]["model." + k], v), k
    back = torch.load(p_dino, map_location="cpu", weights_only=True)
    for k, v in vit_small.items():
        assert torch.equal(back["teacher"]["backbone." + k], v), k
    back = torch.load(p_res, map_location="cpu", weights_only=True)
    res_small = small("resnet_basic_small")
    assert list(back) == list(small_resnet_basic().state_dict())
    for k, v in res_small.items():
        assert torch.equal(back[k], v) and back[k].dtype == v.dtype, k
    assert type(back) is OrderedDict and hasattr(back, "_metadata")

    def vit_ctor(pretrained: bool = False) -> nn.Module:
        return dino_v1.VisionTransformer(img_size=[mef.PATCH16_NATIVE], patch_size=16, embed_dim=32, depth=2,
                                         num_heads=2, mlp_ratio=4, qkv_bias=True, num_classes=0,
                                         norm_layer=partial(nn.LayerNorm, eps=1e-6))

    def res_ctor() -> nn.Module:
        from torchvision.models import resnet as tv_resnet

        return mef.NarrowResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], width=8, num_classes=10)

    def oml_vit(path: Path, arch: str) -> Tuple[Any, str]:
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                ex = ViTExtractor(weights=str(path), arch=arch, normalise_features=False).eval()
            return ex, printed.getvalue().strip()
        except (RuntimeError, AssertionError, KeyError) as e:
            return None, first_line(e)

    def oml_resnet(path: Path, arch: str) -> Tuple[Any, str]:
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                ex = ResnetExtractor(weights=str(path), arch=arch, gem_p=None, remove_fc=True,
                                     normalise_features=False).eval()
            return ex, printed.getvalue().strip()
        except (RuntimeError, AssertionError, KeyError) as e:
            return None, first_line(e)

    ckpt_obj = torch.load(p_ckpt, map_location="cpu", weights_only=False)
    dino_obj = torch.load(p_dino, map_location="cpu", weights_only=False)
    res_obj = torch.load(p_res, map_location="cpu", weights_only=False)

    # OML's real arch: shapes differ (384-d vits16 vs 32-d small) -> load_state_dict(strict=True) fails
    real_vit = oml_vit(p_ckpt, "vits16")
    assert real_vit[0] is None and "size mismatch" in real_vit[1], real_vit
    real_res = oml_resnet(p_res, "resnet18")
    assert real_res[0] is None and "size mismatch" in real_res[1], real_res

    # OML's own loading code, with the arch constructor swapped for the small one
    with mock.patch.dict(ViTExtractor.constructors, {"small_test": vit_ctor}), \
            mock.patch.dict(ResnetExtractor.constructors, {"small_test": res_ctor}):
        ex_ckpt, msg_ckpt = oml_vit(p_ckpt, "small_test")
        ex_dino, msg_dino = oml_vit(p_dino, "small_test")
        ex_res, msg_res = oml_resnet(p_res, "small_test")
    assert ex_ckpt is not None and ex_res is not None and ex_dino is None, (msg_ckpt, msg_dino, msg_res)
    d_ckpt = max_diff(ex_ckpt.extract(inputs["x64"]), golden["vit_dino_small"]["x64"])
    d_res = max_diff(ex_res.extract(inputs["x64"]), golden["resnet_basic_small"]["x64"])
    assert d_ckpt == 0.0 and d_res == 0.0, (d_ckpt, d_res)
    try:
        torch.load(p_broken, map_location="cpu", weights_only=False)
        raise AssertionError("broken.pth loaded")
    except RuntimeError as e:
        msg_broken = first_line(e)

    # what the key cleaning does with sub-dicts of the DINO file (not something OML itself does)
    teacher_clean = oml_clean(dino_obj["teacher"], "norm.bias")
    student_clean = oml_clean(dino_obj["student"], "norm.bias")
    assert not teacher_clean["ok"] and student_clean["ok"]
    # what DINO's own loader (utils.load_pretrained_weights) does: take ["teacher"], strip "module." and
    # "backbone.", load_state_dict(strict=False) so head.* are ignored
    dino_repo_rule = {k.replace("module.", "").replace("backbone.", ""): v for k, v in dino_obj["teacher"].items()}
    vit = vit_ctor()
    res = vit.load_state_dict(dino_repo_rule, strict=False)
    assert not res.missing_keys and sorted(res.unexpected_keys) == ["head.last_layer.weight_v", "head.mlp.0.weight"]
    d_teacher = max_diff(ViTExtractorLike(vit)(inputs["x64"]), golden["vit_dino_small"]["x64"])
    vit_s = vit_ctor()
    vit_s.load_state_dict({k[len("module.backbone."):]: v for k, v in dino_obj["student"].items()}, strict=True)
    d_student = max_diff(ViTExtractorLike(vit_s)(inputs["x64"]), golden["vit_dino_small"]["x64"])
    assert d_teacher == 0.0 and d_student > 1e-2

    report["vit_dino_small_oml.ckpt"] = {
        **file_info(p_ckpt),
        "zip_entries": zip_names(p_ckpt),
        "top_level_keys": list(ckpt_obj),
        "state_dict_keys": list(ckpt_obj["state_dict"]),
        "oml_real_arch_vits16": real_vit[1],
        "oml_load_with_small_constructor": {"ok": True, "printed": msg_ckpt,
                                            "max_abs_diff_vs_oml_golden_x64": d_ckpt},
        "oml_cleaning": oml_clean(ckpt_obj, "norm.bias"),
    }
    report["vit_dino_small_dino_teacher.pth"] = {
        **file_info(p_dino),
        "zip_entries": zip_names(p_dino),
        "top_level_keys": list(dino_obj),
        "teacher_keys": list(dino_obj["teacher"]),
        "student_keys": list(dino_obj["student"]),
        "student": "teacher backbone + 0.05 * N(0, 1) per element (seeded): differs on purpose",
        "oml_load_with_small_constructor": {"ok": False, "error": msg_dino},
        "oml_cleaning_whole_file": oml_clean(dino_obj, "norm.bias"),
        "oml_cleaning_of_teacher_subdict": teacher_clean,
        "oml_cleaning_of_student_subdict": student_clean,
        "dino_repo_rule_teacher": {"keys_unexpected_with_strict_false": sorted(res.unexpected_keys),
                                   "max_abs_diff_vs_oml_golden_x64": d_teacher},
        "student_backbone_max_abs_diff_vs_oml_golden_x64": d_student,
    }
    report["resnet_basic_small.pth"] = {
        **file_info(p_res),
        "zip_entries": zip_names(p_res),
        "pickled_type": "collections.OrderedDict with a _metadata attribute (BUILD of {'_metadata': ...})",
        "int64_keys": [k for k, v in res_obj.items() if v.dtype == torch.int64],
        "oml_real_arch_resnet18": real_res[1],
        "oml_load_with_small_constructor": {"ok": True, "printed": msg_res,
                                            "max_abs_diff_vs_oml_golden_x64": d_res},
        "oml_cleaning": oml_clean(res_obj, "layer4."),
    }
    report["broken.pth"] = {**file_info(p_broken), "torch_load": msg_broken,
                            "made_as": "first 300 bytes of resnet_basic_small.pth"}
    return report


class ViTExtractorLike(nn.Module):
    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)


# ----------------------------------------------------------------------------- main


def main() -> None:
    inputs, golden = load_golden()
    hf = {spec["name"]: run_hf(spec, inputs, golden) for spec in HF_MODELS}
    ckpts = make_checkpoints(inputs, golden)
    summary = {
        "generator": "tests/golden/make_layout_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "oml": oml.__version__, "torch_num_threads": str(torch.get_num_threads())},
        "seed": SEED,
        "tolerance": TOL,
        "hf": hf,
        "checkpoints": ckpts,
    }
    OUT_JSON.write_text(json.dumps(summary, indent=1) + "\n")
    for spec in HF_MODELS:
        r = hf[spec["name"]]
        print(spec["name"], r["transformers_class"], json.dumps(r["max_abs_diff_vs_oml"]))
        for f in r["files"].values():
            print(f"  {f['file']}: {f['bytes']} bytes")
    for name, r in ckpts.items():
        print(f"{r['file']}: {r['bytes']} bytes")
    print(f"{rel(OUT_JSON)}: {OUT_JSON.stat().st_size} bytes")


if __name__ == "__main__":
    main()
