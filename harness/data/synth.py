"""A synthetic hvc-format dataset: the embedded default when no real data is given.

`generate` writes `hvc_annotations.csv` (the real header, the real label strings) and
`resized/N.jpg` (224x224 RGB JPEG) drawn with PIL: a simple person on a cluttered background in
which every labelled attribute visibly changes the drawing, so each of the eight heads can be
learned above its majority rate and a broken model or pipeline shows up as a head stuck at it:

- pose: Front shows a face and two legs, Side a narrower body, a profile face and one leg,
  Back no face at all (hair covers the head);
- gender: long hair down to the shoulders (female) or a short cap (male);
- age: hair colour, from black (15-25) through brown and grey to white (55+);
- weight: body width;
- bag: a dark shoulder bag (Daily/Office/Work), a pale grocery bag with handles, or none;
- footwear: red (Fancy) or black (Normal) shoes; CantSee hides the feet behind a railing;
- emotion: the mouth (smile, frown with a tear, straight line under angry brows, small dash)
  and the face's tint (flushed, glowing, neutral, pale blue);
- image quality: Good is sharp; Average slightly blurred and noisy; Bad blurred, noisy and
  washed out.

Labels are drawn independently per head with the class frequencies of the real 6,000-row
subset (hard-coded below, measured once), so majority rates match the real ones. Everything is
a function of (seed, row): the same seed gives byte-identical files, and a smaller n gives
the first rows of a larger one. No TensorFlow.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from harness.core.labels import HVC_CSV_COLUMNS, HVC_CSV_HEADER, HVC_HEADS
from harness.core.errors import InputError

SIZE = 224
DEFAULT_N = 2000
DEFAULT_DIR = "hvc-synth"
# Every generated row's `filename`: how a synthetic set is told from real data once loaded.
SYNTH_PREFIX = "images/synth/"

# Class frequencies of the real 6,000-row subset (../shared/data/hvc), in HVC_HEADS order.
REAL_FREQUENCIES = {
    "gender": (0.4440, 0.5560),
    "image_quality": (0.5497, 0.1702, 0.2802),
    "age": (0.1890, 0.3965, 0.2512, 0.1083, 0.0550),
    "weight": (0.6298, 0.0650, 0.2440, 0.0612),
    "bag": (0.3268, 0.1032, 0.5700),
    "footwear": (0.3785, 0.1855, 0.4360),
    "pose": (0.1557, 0.6295, 0.2148),
    "emotion": (0.1027, 0.1118, 0.7315, 0.0540),
}

# age index -> hair colour: greyer with age.
_HAIR = ((25, 20, 18), (105, 58, 22), (112, 104, 96), (168, 168, 168), (242, 242, 242))
# weight index (normal, over, slightly-over, under) -> body width factor.
_WIDTH = (1.0, 1.8, 1.38, 0.6)
_SKIN = ((238, 200, 170), (205, 160, 120), (160, 115, 80), (110, 75, 50))


def sample_labels(n: int, seed: int) -> dict[str, np.ndarray]:
    """Head -> int class index per row, drawn independently with the real frequencies.

    One random stream per head, so the first k rows of a larger set are the set of size k.
    """
    labels = {}
    for number, (head, classes) in enumerate(HVC_HEADS.items()):
        p = np.asarray(REAL_FREQUENCIES[head], dtype=np.float64)
        labels[head] = np.random.default_rng([seed, 0x1AB, number]).choice(len(classes), size=n, p=p / p.sum())
    return labels


def draw_person(attrs: dict[str, int], rng: np.random.Generator) -> Image.Image:
    """One 224x224 RGB image for one row's class indices (see the module docstring)."""
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    pose = attrs["pose"]  # 0 Back, 1 Front, 2 Side
    female = attrs["gender"] == 0
    hair = _jitter(_HAIR[attrs["age"]], rng, 8)
    skin = _SKIN[rng.integers(len(_SKIN))]
    shirt = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.35, 0.9)))
    trousers = tuple(int(c) for c in rng.integers(20, 120, 3))
    cx = SIZE // 2 + int(rng.integers(-14, 15))
    scale = rng.uniform(0.95, 1.04)
    side_dir = 1 if rng.random() < 0.5 else -1

    def s(v: float) -> int:
        return int(round(v * scale))

    head_r, head_y = s(31), s(48)
    top, waist, ankle = s(84), s(152), s(200)
    half_w = s(24 * _WIDTH[attrs["weight"]] * (0.75 if pose == 2 else 1.0))

    # Long hair hangs behind the shoulders, so it is drawn before the body.
    if female:
        draw.rectangle([cx - head_r - s(5), head_y, cx + head_r + s(5), s(118)], fill=hair)
    # Legs and shoes.
    girth = _WIDTH[attrs["weight"]]
    legs = [cx - side_dir * s(2)] if pose == 2 else [cx - s(11 * girth), cx + s(11 * girth)]
    for lx in legs:
        draw.rectangle([lx - s(8 * girth), waist, lx + s(8 * girth), ankle], fill=trousers)
        shoe = (205, 25, 45) if attrs["footwear"] == 1 else (22, 22, 22)
        toe = side_dir * s(8) if pose == 2 else 0
        draw.ellipse([lx - s(11) + toe, ankle - s(3), lx + s(11) + toe, ankle + s(10)], fill=shoe)
    # Body and arms.
    draw.rounded_rectangle([cx - half_w, top, cx + half_w, waist + s(4)], radius=s(10), fill=shirt)
    arm_x = [cx + side_dir * s(3)] if pose == 2 else [cx - half_w - s(5 * girth), cx + half_w + s(5 * girth)]
    for ax in arm_x:
        draw.line([ax, top + s(6), ax, waist + s(12)], fill=shirt, width=s(9 * girth))
        draw.ellipse([ax - s(5), waist + s(8), ax + s(5), waist + s(18)], fill=skin)
    _draw_head(draw, attrs, pose, cx, head_y, head_r, hair, skin, side_dir, female, s)
    _draw_bag(draw, attrs["bag"], cx, half_w, top, waist, side_dir, s)
    if attrs["footwear"] == 0:  # CantSee: a railing hides legs and feet
        rail = tuple(int(c) for c in rng.integers(70, 160, 3))
        y0 = s(172) + int(rng.integers(-4, 5))
        draw.rectangle([0, y0, SIZE, SIZE], fill=rail)
        for x in range(int(rng.integers(0, 20)), SIZE, 26):
            draw.line([x, y0, x, SIZE], fill=tuple(max(0, c - 45) for c in rail), width=4)
    return _degrade(image, attrs["image_quality"], rng)


def _draw_head(draw, attrs, pose, cx, head_y, head_r, hair, skin, side_dir, female, s) -> None:
    box = [cx - head_r, head_y - head_r, cx + head_r, head_y + head_r]
    if pose == 0:  # Back: the head is all hair, no face
        draw.ellipse(box, fill=hair)
        return
    emotion = attrs["emotion"]  # 0 Angry/Serious, 1 Happy, 2 Neutral, 3 Sad
    # The face's colour carries the mood too (flushed, glowing, neutral, pale blue): the mouth
    # alone is a few pixels at the CPU profile's 64 px, too little to learn in a dozen epochs.
    skin = _tint(skin, _MOOD_TINT[emotion])
    draw.ellipse(box, fill=skin)
    # Hair cap: a band over the top of the head (long hair was drawn behind already).
    draw.chord([box[0] - s(2), box[1] - s(3), box[2] + s(2), box[3] - s(4)], 180, 360, fill=hair)
    dark, lip = (20, 20, 20), (150, 20, 35)
    if pose == 1:
        eyes = [cx - s(11), cx + s(11)]
        mouth_x, mouth_w = cx, s(15)
    else:  # Side: one eye and the mouth toward the facing side, a nose bump
        eyes = [cx + side_dir * s(12)]
        mouth_x, mouth_w = cx + side_dir * s(12), s(10)
        nose_x = cx + side_dir * (head_r - s(1))
        draw.polygon([(nose_x, head_y - s(5)), (nose_x + side_dir * s(8), head_y + s(5)),
                      (nose_x, head_y + s(7))], fill=skin)
    eye_y, mouth_y = head_y - s(5), head_y + s(13)
    for ex in eyes:
        draw.ellipse([ex - s(4), eye_y - s(4), ex + s(4), eye_y + s(4)], fill=dark)
    left, right = mouth_x - mouth_w, mouth_x + mouth_w
    if emotion == 1:  # Happy: a wide open smile
        draw.chord([left, mouth_y - s(12), right, mouth_y + s(11)], 0, 180, fill=lip)
        draw.chord([left + s(3), mouth_y - s(9), right - s(3), mouth_y + s(4)], 0, 180, fill=(250, 250, 250))
    elif emotion == 3:  # Sad: a deep frown and a big tear
        draw.arc([left, mouth_y - s(2), right, mouth_y + s(18)], 200, 340, fill=lip, width=s(6))
        tx = eyes[0] + s(2)
        draw.ellipse([tx - s(5), eye_y + s(6), tx + s(5), eye_y + s(19)], fill=(30, 100, 240))
    elif emotion == 0:  # Angry/Serious: a thick straight mouth under heavy slanted brows
        draw.rectangle([left, mouth_y - s(4), right, mouth_y + s(4)], fill=(90, 10, 20))
        for ex in eyes:
            inner = -1 if ex > cx else 1
            draw.line([ex - inner * s(9), eye_y - s(14), ex + inner * s(6), eye_y - s(6)], fill=dark, width=s(6))
    else:  # Neutral: a small dash
        draw.line([mouth_x - s(5), mouth_y, mouth_x + s(5), mouth_y], fill=lip, width=s(3))


# emotion index -> (colour, blend weight) applied to the face.
_MOOD_TINT = (((225, 40, 30), 0.55), ((255, 225, 60), 0.5), ((0, 0, 0), 0.0), ((70, 120, 255), 0.55))


def _tint(skin, tint):
    colour, weight = tint
    return tuple(int(round((1 - weight) * c + weight * t)) for c, t in zip(skin, colour))


def _draw_bag(draw, bag, cx, half_w, top, waist, side_dir, s) -> None:
    if bag == 2:  # None
        return
    x = cx + side_dir * (half_w + s(10))
    if bag == 0:  # Daily/Office/Work: a dark shoulder bag on a strap
        draw.line([cx - side_dir * s(10), top + s(2), x, waist - s(18)], fill=(60, 35, 15), width=s(4))
        draw.rectangle([x - s(16), waist - s(22), x + s(16), waist + s(6)], fill=(85, 45, 15))
        draw.rectangle([x - s(16), waist - s(22), x + s(16), waist - s(15)], fill=(45, 25, 10))
    else:  # Grocery/Home/Plastic: a pale bag hanging from the hand, with handles
        y = waist + s(14)
        draw.arc([x - s(12), y - s(10), x + s(4), y + s(8)], 180, 360, fill=(235, 235, 245), width=s(3))
        draw.polygon([(x - s(16), y), (x + s(14), y), (x + s(19), y + s(38)), (x - s(21), y + s(38))],
                     fill=(225, 235, 250), outline=(170, 190, 220))


def _background(rng: np.random.Generator) -> Image.Image:
    """Light, low-saturation clutter, so attribute colours stand out from it."""
    base = rng.integers(150, 235)
    tint = rng.integers(-20, 21, 3)
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(np.clip(base + t, 0, 255)) for t in tint))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = (int(v) for v in rng.integers(-40, SIZE, 2))
        w, h = (int(v) for v in rng.integers(30, 120, 2))
        shade = int(rng.integers(120, 245))
        colour = tuple(int(np.clip(shade + t, 0, 255)) for t in rng.integers(-25, 26, 3))
        shape = draw.rectangle if rng.random() < 0.6 else draw.ellipse
        shape([x0, y0, x0 + w, y0 + h], fill=colour)
    return image


def _degrade(image: Image.Image, quality: int, rng: np.random.Generator) -> Image.Image:
    """0 Average: slight blur and noise; 1 Bad: strong blur, noise, washed out; 2 Good: as drawn."""
    if quality == 2:
        return image
    blur, noise, fade = (1.2, 7.0, 0.10) if quality == 0 else (3.0, 24.0, 0.38)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    pixels = pixels * (1 - fade) + 128 * fade
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jitter(colour, rng, amount) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def generate(out_dir: Union[str, Path], n: int = DEFAULT_N, seed: int = 0) -> Path:
    """Write `n` rows and images into `out_dir` in the real hvc format; returns `out_dir`.

    The CSV is written last (through a temporary name), so a folder holding
    `hvc_annotations.csv` always holds a complete set.
    """
    if n < 1:
        raise InputError([f"--n {n}: the synthetic set needs at least 1 image"])
    out_dir = Path(out_dir)
    _refuse_to_overwrite_real_data(out_dir / "hvc_annotations.csv")
    (out_dir / "resized").mkdir(parents=True, exist_ok=True)
    labels = sample_labels(n, seed)
    for row in range(n):
        attrs = {head: int(values[row]) for head, values in labels.items()}
        image = draw_person(attrs, np.random.default_rng([seed, row]))
        image.save(out_dir / "resized" / f"{row + 1}.jpg", format="JPEG", quality=90)
    frame = pd.DataFrame({"filename": [f"{SYNTH_PREFIX}{row + 1}.jpg" for row in range(n)]})
    for head, classes in HVC_HEADS.items():
        frame[HVC_CSV_COLUMNS[head]] = np.asarray(classes, dtype=object)[labels[head]]
    frame["image_path"] = [f"resized/{row + 1}.jpg" for row in range(n)]
    partial = out_dir / "hvc_annotations.csv.partial"
    frame[list(HVC_CSV_HEADER)].to_csv(partial, index=False, lineterminator="\n")
    os.replace(partial, out_dir / "hvc_annotations.csv")
    return out_dir


def is_synthetic(table) -> bool:
    """Whether a loaded table is generated data (this module's hvc set, whose CSV filenames are
    images/synth/..., or the synthetic CIFAR stand-in): its runs are tagged so that their numbers
    never pass for real ones."""
    frame = getattr(table, "frame", None)
    if frame is not None and "filename" in frame and len(frame):
        return bool(frame["filename"].astype(str).str.startswith(SYNTH_PREFIX).all())
    return "synthetic" in str(getattr(table, "source", "")).lower()


def _refuse_to_overwrite_real_data(csv: Path) -> None:
    """`--out` pointing at a real dataset must not replace its annotations."""
    if not csv.is_file():
        return
    with open(csv, encoding="utf-8", errors="replace") as handle:
        handle.readline()
        first_row = handle.readline()
    if first_row and not first_row.startswith(SYNTH_PREFIX):
        raise InputError([f"{csv}:2: not a synthetic set (filename is not images/synth/...); "
                          f"refusing to overwrite it, choose another --out"])


def ensure_default_data(root: Union[str, Path] = "data") -> tuple[Path, Optional[str]]:
    """The synthetic default set under `root/hvc-synth`, generated on first use.

    Returns (folder, message): the message (None when the set already existed) is meant for
    the first line of the run's output, saying what happened and how to use the real data.
    """
    folder = Path(root) / DEFAULT_DIR
    if (folder / "hvc_annotations.csv").is_file():
        return folder, None
    generate(folder, DEFAULT_N, seed=0)
    return folder, (
        f"no data given: generated {DEFAULT_N:,} synthetic hvc images in {folder} (once; reused from now on). "
        f"For the real dataset pass --data DIR (make run DATA=DIR) or set HARNESS_DATA=DIR, "
        f"DIR holding hvc_annotations.csv and resized/"
    )
