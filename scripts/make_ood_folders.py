"""Write folders of NON-dermoscopic images, made offline, to measure the out-of-distribution check.

    python scripts/make_ood_folders.py --out runs/ood_sets

Nothing here comes from a dermoscopy data set: the photos are the ones Python packages ship
(scikit-image's `skimage.data`, matplotlib's and scikit-learn's sample images), everything else is
drawn with numpy, PIL and matplotlib from a seeded generator. One sub-folder per kind of image a public
demo receives instead of a dermoscopic photo:

| folder | what |
|---|---|
| everyday_photos | the shipped photos (people, a cat, coffee, a rocket, a motorbike, the moon, ...) and faces |
| medical_other | other medical images: retina fundus photos, histology, cells, an MRI slice (and crops of them) |
| charts_documents | matplotlib charts (lines, bars, scatter, pie, heatmaps) and rendered text pages and tables |
| solid_noise | solid colours (skin tones too), colour / grey noise, gradients, smooth low-frequency noise |
| screenshots | app-like user interfaces: title bars, side bars, buttons, text, chat bubbles, phone layouts |
| skin_no_lesion | smooth skin-toned "photos" without a lesion: shading, pores, hairs, a body edge on a background |
| photo_crops | heavy crops of the photos, recoloured (hue shifts, skin tint, sepia, inversion), rotated |

Requires scikit-image (`pip install -e ".[dev]"`). The images are written as JPEG (photos) or PNG.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

Rng = np.random.Generator

SKIN_TONES = [(255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 98), (161, 102, 70),
              (120, 72, 48), (86, 52, 36), (233, 190, 160)]
WORDS = ("the model image patient lesion result data analysis report figure table value sample method "
         "study group number total first second change rate level time year test mean range clinic "
         "summary please click here settings account profile message send share download upload").split()


# ---------------------------------------------------------------------------------------------
# Sources shipped with Python packages
# ---------------------------------------------------------------------------------------------

def to_rgb(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = np.clip(255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9), 0, 255).astype(np.uint8)
    img = Image.fromarray(a)
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.split()[3])
        return background
    return img.convert("RGB")


def shipped_photos() -> dict[str, Image.Image]:
    """Everyday photos that ship with scikit-image, matplotlib and scikit-learn (no download)."""
    import matplotlib.cbook
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    photos = {name: to_rgb(getattr(data, name)()) for name in (
        "astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "coins", "clock", "brick", "grass", "gravel",
        "hubble_deep_field", "colorwheel", "logo", "horse", "text", "page")}
    photos["motorcycle"] = to_rgb(data.stereo_motorcycle()[0])
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = Image.open(f).convert("RGB")
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images, strict=True):
        photos[Path(name).stem] = to_rgb(image)
    return photos


def faces(rng: Rng, n: int) -> Iterator[tuple[str, Image.Image]]:
    """Labelled Faces in the Wild crops that ship with scikit-image (25 px), enlarged like a blurry selfie."""
    import skimage.data as data

    subset = data.lfw_subset()
    for i in rng.choice(len(subset), size=min(n, len(subset)), replace=False):
        face = to_rgb(subset[i]).resize((200, 200), Image.Resampling.BICUBIC)
        yield f"face_{i:03d}", face


def medical_sources() -> dict[str, Image.Image]:
    import matplotlib.cbook
    import skimage.data as data

    images = {name: to_rgb(getattr(data, name)()) for name in ("retina", "microaneurysms", "immunohistochemistry",
                                                              "cell")}
    with matplotlib.cbook.get_sample_data("s1045.ima.gz") as f:  # a 256x256 16-bit MRI slice of a head
        raw = f.read()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw  # matplotlib decompresses .gz itself
    mri = np.frombuffer(raw, dtype=np.uint16).reshape(256, 256)
    images["mri_head"] = to_rgb(mri.astype(np.float64))
    return images


# ---------------------------------------------------------------------------------------------
# Transformations and drawings (pure: an rng in, an image out)
# ---------------------------------------------------------------------------------------------

def random_crop(img: Image.Image, rng: Rng, low: float, high: float) -> Image.Image:
    w, h = img.size
    side = int(min(w, h) * rng.uniform(low, high))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return img.crop((x, y, x + side, y + side))


def recolour(img: Image.Image, rng: Rng) -> tuple[str, Image.Image]:
    kind = str(rng.choice(["hue", "skin_tint", "sepia", "invert", "saturate", "grey"]))
    if kind == "hue":
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(30, 220))) % 256
        return kind, Image.fromarray(hsv, "HSV").convert("RGB")
    if kind == "skin_tint":
        tone = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], dtype=np.float64) / 255
        grey = np.asarray(img.convert("L"), dtype=np.float64)[..., None] / 255
        return kind, Image.fromarray(np.clip(255 * tone * (0.45 + 0.65 * grey), 0, 255).astype(np.uint8))
    if kind == "sepia":
        return kind, ImageOps.colorize(img.convert("L"), (60, 30, 10), (250, 225, 190))
    if kind == "invert":
        return kind, ImageOps.invert(img)
    if kind == "saturate":
        hsv = np.asarray(img.convert("HSV")).astype(np.float64)
        hsv[..., 1] = np.clip(hsv[..., 1] * 2.0 + 40, 0, 255)
        return kind, Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    return kind, ImageOps.grayscale(img).convert("RGB")


def smooth_noise(rng: Rng, size: tuple[int, int], scale: int) -> np.ndarray:
    """(H, W) low-frequency noise in [0, 1]: a coarse random grid, bicubically enlarged."""
    w, h = size
    coarse = rng.random((max(2, h // scale), max(2, w // scale)))
    up = Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float64) / 255


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed size
        return ImageFont.load_default()


def sentence(rng: Rng, n: int) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, size=n)).capitalize()


def chart(rng: Rng, i: int) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = ["line", "bar", "scatter", "pie", "hist", "heatmap"][i % 6]
    fig, ax = plt.subplots(figsize=(rng.uniform(4, 7), rng.uniform(3, 5)), dpi=100)
    x = np.arange(20)
    if kind == "line":
        for _ in range(int(rng.integers(1, 4))):
            ax.plot(x, np.cumsum(rng.normal(size=20)), marker="o" if rng.random() < 0.5 else None)
        ax.grid(rng.random() < 0.5)
    elif kind == "bar":
        ax.bar([f"g{j}" for j in range(6)], rng.uniform(1, 10, 6), color=plt.cm.tab10(rng.integers(0, 10, 6)))
    elif kind == "scatter":
        ax.scatter(rng.normal(size=200), rng.normal(size=200), c=rng.random(200), cmap="viridis", s=12)
    elif kind == "pie":
        ax.pie(rng.uniform(1, 5, 5), labels=[f"part {j}" for j in range(5)], autopct="%1.0f%%")
    elif kind == "hist":
        ax.hist(rng.normal(size=500), bins=30, color=plt.cm.Set2(rng.random()))
    else:
        im = ax.imshow(rng.random((12, 12)), cmap=str(rng.choice(["magma", "coolwarm", "viridis"])))
        fig.colorbar(im)
    ax.set_title(sentence(rng, 4))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return Image.open(buf).convert("RGB")


def document(rng: Rng, i: int) -> Image.Image:
    """A page of text (or a table) in black on white, as a scanned letter or a phone photo of one."""
    w, h = (620, 800) if i % 2 == 0 else (800, 520)
    paper = (255, 255, 255) if rng.random() < 0.6 else (245, 240, 228)
    img = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(img)
    y = 30
    draw.text((40, y), sentence(rng, 5).upper(), fill=(0, 0, 0), font=font(22))
    y += 50
    if i % 3 == 2:  # a table
        cols = int(rng.integers(3, 6))
        cw = (w - 80) // cols
        for _row in range(int(rng.integers(8, 16))):
            for c in range(cols):
                draw.rectangle((40 + c * cw, y, 40 + (c + 1) * cw, y + 28), outline=(90, 90, 90))
                draw.text((46 + c * cw, y + 6), f"{rng.uniform(0, 100):.1f}" if c else sentence(rng, 1),
                          fill=(0, 0, 0), font=font(14))
            y += 28
    while y < h - 40:
        for line in textwrap.wrap(sentence(rng, int(rng.integers(20, 60))) + ".", width=(w - 80) // 8):
            draw.text((40, y), line, fill=(20, 20, 20), font=font(14))
            y += 20
            if y > h - 40:
                break
        y += 14
    return img


def screenshot(rng: Rng, i: int) -> Image.Image:
    """An app-like UI: a title bar, sometimes a side bar, buttons, text, input fields or chat bubbles."""
    phone = i % 3 == 0
    w, h = (390, 780) if phone else (1000, 640)
    dark = rng.random() < 0.3
    bg, fg = ((32, 33, 36), (230, 230, 230)) if dark else ((250, 250, 252), (30, 30, 30))
    accent = tuple(int(v) for v in rng.integers(0, 220, 3))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, 56), fill=accent)
    draw.text((16, 18), sentence(rng, 2), fill=(255, 255, 255), font=font(20))
    x0 = 16
    if not phone and rng.random() < 0.6:
        draw.rectangle((0, 56, 200, h), fill=(44, 46, 52) if dark else (238, 240, 244))
        for k in range(8):
            draw.text((20, 80 + 36 * k), sentence(rng, 2), fill=fg, font=font(15))
        x0 = 220
    y = 76
    while y < h - 60:
        kind = rng.choice(["text", "button", "input", "bubble", "card"])
        if kind == "text":
            draw.text((x0, y), sentence(rng, int(rng.integers(4, 10))), fill=fg, font=font(16))
            y += 30
        elif kind == "button":
            draw.rounded_rectangle((x0, y, x0 + 160, y + 40), radius=8, fill=accent)
            draw.text((x0 + 20, y + 11), sentence(rng, 1), fill=(255, 255, 255), font=font(16))
            y += 56
        elif kind == "input":
            draw.rounded_rectangle((x0, y, w - 24, y + 40), radius=6, outline=(150, 150, 150), width=2)
            draw.text((x0 + 12, y + 11), sentence(rng, 3), fill=(140, 140, 140), font=font(15))
            y += 56
        elif kind == "bubble":
            right = rng.random() < 0.5
            bw = int(rng.uniform(0.3, 0.6) * (w - x0))
            bx = w - 24 - bw if right else x0
            draw.rounded_rectangle((bx, y, bx + bw, y + 48), radius=16, fill=accent if right else (200, 200, 210))
            draw.text((bx + 14, y + 15), sentence(rng, 3), fill=(255, 255, 255) if right else (20, 20, 20),
                      font=font(15))
            y += 62
        else:
            draw.rounded_rectangle((x0, y, w - 24, y + 110), radius=10, outline=(180, 180, 190), width=1,
                                   fill=(255, 255, 255) if not dark else (48, 50, 56))
            draw.text((x0 + 14, y + 14), sentence(rng, 4), fill=fg, font=font(18))
            draw.text((x0 + 14, y + 50), sentence(rng, 8), fill=fg, font=font(14))
            y += 126
    return img


def solid_or_noise(rng: Rng, i: int) -> tuple[str, Image.Image]:
    w, h = int(rng.integers(200, 700)), int(rng.integers(200, 700))
    kind = ["solid", "skin_solid", "colour_noise", "grey_noise", "gradient", "smooth_noise"][i % 6]
    if kind == "solid":
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        return kind, Image.new("RGB", (w, h), colour)
    if kind == "skin_solid":
        return kind, Image.new("RGB", (w, h), SKIN_TONES[int(rng.integers(len(SKIN_TONES)))])
    if kind == "colour_noise":
        return kind, Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if kind == "grey_noise":
        grey = np.clip(rng.normal(128, 50, (h, w)), 0, 255).astype(np.uint8)
        return kind, Image.fromarray(grey).convert("RGB")
    if kind == "gradient":
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
        grad = np.broadcast_to(a + (b - a) * t, (h, w, 3))
        return kind, Image.fromarray(grad.astype(np.uint8))
    field = np.stack([smooth_noise(rng, (w, h), int(rng.integers(20, 120))) for _ in range(3)], axis=-1)
    return kind, Image.fromarray((field * 255).astype(np.uint8))


def skin_without_lesion(rng: Rng, i: int) -> Image.Image:
    """Skin-toned smooth image: illumination falloff, pores/texture, sometimes hairs or a body edge."""
    w, h = int(rng.integers(300, 700)), int(rng.integers(250, 600))
    tone = np.array(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    falloff = 1.0 - rng.uniform(0.1, 0.45) * (((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2)
    shading = 0.85 + 0.3 * smooth_noise(rng, (w, h), int(rng.integers(60, 200)))
    img = tone[None, None, :] * (falloff * shading)[..., None]
    img += rng.normal(0, rng.uniform(2, 7), (h, w, 1))  # pores / sensor noise, same in every channel
    if i % 3 == 1:  # a limb's edge against a background (a phone photo of an arm or a back)
        edge = (0.5 + 0.25 * np.sin(xx / w * rng.uniform(2, 6) + rng.uniform(0, 6))) * h
        background = np.array(rng.integers(0, 256, 3), dtype=np.float64)
        img[yy > edge] = background * (0.7 + 0.3 * smooth_noise(rng, (w, h), 80))[yy > edge][:, None]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if i % 3 == 2:  # hairs
        draw = ImageDraw.Draw(out)
        for _ in range(int(rng.integers(5, 30))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            angle, length = rng.uniform(0, np.pi), rng.uniform(30, 160)
            draw.line((x, y, x + length * np.cos(angle), y + length * np.sin(angle)),
                      fill=tuple(int(v) for v in tone * 0.35), width=int(rng.integers(1, 3)))
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


# ---------------------------------------------------------------------------------------------
# The folders
# ---------------------------------------------------------------------------------------------

def make_sets(rng: Rng, n: int) -> dict[str, Callable[[], Iterator[tuple[str, Image.Image]]]]:
    """Folder name -> a generator of (file stem, image); `n` images for the drawn sets."""
    photos = shipped_photos()
    medical = medical_sources()

    def everyday():
        for name, img in photos.items():
            if name not in ("text", "page", "logo", "horse", "colorwheel"):  # graphics go elsewhere
                yield name, img
        yield from faces(rng, n // 2)

    def medical_other():
        for name, img in medical.items():
            yield name, img
            for k in range(4):
                yield f"{name}_crop{k}", random_crop(img, rng, 0.3, 0.7)

    def charts_documents():
        for i in range(n):
            yield (f"chart_{i:03d}", chart(rng, i)) if i % 2 == 0 else (f"document_{i:03d}", document(rng, i))
        for name in ("text", "page", "logo", "horse", "colorwheel"):
            yield name, photos[name]

    def solid_noise():
        for i in range(n):
            kind, img = solid_or_noise(rng, i)
            yield f"{kind}_{i:03d}", img

    def screenshots():
        for i in range(n):
            yield f"screen_{i:03d}", screenshot(rng, i)

    def skin_no_lesion():
        for i in range(n):
            yield f"skin_{i:03d}", skin_without_lesion(rng, i)

    def photo_crops():
        names = sorted(photos)
        for i in range(2 * n):
            name = names[i % len(names)]
            crop = random_crop(photos[name], rng, 0.12, 0.45).rotate(float(rng.choice([0, 90, 180, 270])))
            kind, img = recolour(crop, rng) if rng.random() < 0.7 else ("plain", crop)
            yield f"{name}_{kind}_{i:03d}", img

    return {"everyday_photos": everyday, "medical_other": medical_other, "charts_documents": charts_documents,
            "solid_noise": solid_noise, "screenshots": screenshots, "skin_no_lesion": skin_no_lesion,
            "photo_crops": photo_crops}


def write_sets(out: Path, *, n: int = 40, seed: int = 0, only: list[str] | None = None) -> dict[str, int]:
    """Write every set (or `only` those) under `out`; returns images per folder."""
    rng = np.random.default_rng(seed)
    counts = {}
    for name, images in make_sets(rng, n).items():
        if only and name not in only:
            continue
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for stem, img in images():
            photo_like = name in ("everyday_photos", "medical_other", "photo_crops", "skin_no_lesion")
            img.save(folder / f"{stem}.{'jpg' if photo_like else 'png'}", **({"quality": 90} if photo_like else {}))
            count += 1
        counts[name] = count
    (out / "README.json").write_text(json.dumps({"made_by": "scripts/make_ood_folders.py", "seed": seed, "n": n,
                                                 "counts": counts}, indent=2) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ood_sets"), help="folder to write the sets into")
    parser.add_argument("--n", type=int, default=40, help="images per drawn set (photo_crops: 2n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="write only these sets")
    args = parser.parse_args()
    print(json.dumps(write_sets(args.out, n=args.n, seed=args.seed, only=args.only), indent=2))


if __name__ == "__main__":
    main()
