#!/usr/bin/env python3
"""Generate a golden fixture for bicubic resizing, using Pillow as the reference.

Writes three small synthetic RGB images to tests/data/resize/input_{0,1,2}.png
and, for each, the result of ``PIL.Image.resize((w, h), Image.BICUBIC)`` at a
few target sizes (both down- and up-scaling) to tests/golden/resize_pillow.json:

    {"cases": [{"input": "tests/data/resize/input_0.png",
                "width": W, "height": H,
                "pixels_b64": <base64 of raw HWC uint8 RGB bytes, H*W*3 long>}, ...]}

Every generator below is seeded, so the output is deterministic for a given
Pillow version (recorded in the JSON as ``pillow_version``).

Run from anywhere:  python tests/golden/make_resize_fixture.py
"""

import base64
import json
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "tests" / "data" / "resize"
OUT_JSON = REPO_ROOT / "tests" / "golden" / "resize_pillow.json"


def gradient_with_noise(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    red = 255.0 * xs * np.ones_like(ys)
    green = 255.0 * ys * np.ones_like(xs)
    blue = 127.5 * (1.0 + np.sin(6.0 * xs + 4.0 * ys))
    base = np.stack([red, green, blue], axis=-1)
    noise = rng.normal(0.0, 12.0, size=base.shape)
    return np.clip(np.rint(base + noise), 0, 255).astype(np.uint8)


def checkerboard(width: int, height: int, cell: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    on = ((yy // cell) + (xx // cell)) % 2 == 1
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[on] = (250, 240, 10)
    img[~on] = (5, 20, 200)
    return img


def uniform_random(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# (array, list of (target_width, target_height))
def build_inputs():
    return [
        (gradient_with_noise(37, 53, seed=11), [(24, 24), (50, 70), (224, 224)]),
        (checkerboard(64, 48, cell=5), [(32, 24), (100, 75), (17, 29)]),
        (uniform_random(100, 80, seed=23), [(50, 40), (13, 7), (120, 96)]),
    ]


def main() -> None:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    cases = []
    for idx, (array, targets) in enumerate(build_inputs()):
        png_path = DATA_DIR / f"input_{idx}.png"
        Image.fromarray(array).save(png_path, format="PNG")

        # Resize what a reader of the PNG will actually see (PNG is lossless,
        # but reload anyway so the fixture is self-consistent).
        with Image.open(png_path) as loaded:
            src = loaded.convert("RGB")
            assert np.array_equal(np.asarray(src), array)
            for width, height in targets:
                out = src.resize((width, height), Image.BICUBIC)
                pixels = np.asarray(out, dtype=np.uint8)
                assert pixels.shape == (height, width, 3)
                cases.append(
                    {
                        "input": png_path.relative_to(REPO_ROOT).as_posix(),
                        "input_width": src.width,
                        "input_height": src.height,
                        "width": width,
                        "height": height,
                        "pixels_b64": base64.b64encode(pixels.tobytes()).decode("ascii"),
                    }
                )

    payload = {
        "generator": "tests/golden/make_resize_fixture.py",
        "reference": "PIL.Image.resize((width, height), Image.BICUBIC) on RGB uint8",
        "layout": "raw HWC uint8 RGB, row-major, base64",
        "pillow_version": PIL.__version__,
        "cases": cases,
    }
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT_JSON} ({OUT_JSON.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
