"""A folder of image files (searched recursively), read with Pillow."""
from __future__ import annotations

import os
import warnings

import numpy as np

from ._io import require_exists

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Pillow modes with at most 8 bits per channel. Pillow's convert() clips 16-bit, 32-bit and float pixels
# ("I;16*", "I", "F") to 0..255 instead of scaling them, and "I"/"F" have no defined range to scale by.
EIGHT_BIT_MODES = frozenset(("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "LAB", "HSV"))
GRAY_MODES = frozenset(("1", "L", "LA", "La"))


_ORIENTATION = 0x0112  # the EXIF tag


def list_images(path) -> list[str]:
    """The image files under path, recursively, symlinked folders included (each real folder once: a link to an
    enclosing folder would loop). Hidden files and folders (a leading dot: macOS's AppleDouble `._name.png`, which
    is no image, thumbnail caches such as `.cache/`) are left out. Each real file is listed once, as its first
    name in walk order, with a warning: a folder of links into a pool beside the pool itself would otherwise train
    on each image twice, as folders are read once for the same reason."""
    files, seen, real_files, repeats = [], set(), {}, []
    for root, dirs, names in os.walk(path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if not n.lower().endswith(EXTENSIONS) or n.startswith("."):
                continue
            f = os.path.join(root, n)
            first = real_files.setdefault(os.path.realpath(f), f)
            if first is f:
                files.append(f)
            else:
                repeats.append((f, first))
    if repeats:
        warnings.warn(f"{path}: {len(repeats)} image file name(s) lead to a file already listed (e.g. "
                      f"{repeats[0][0]} is {repeats[0][1]}); each file is read once", stacklevel=2)
    return files


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def _gray_pixels(im) -> bool:
    """Whether a colour-mode image's pixels are all gray (R = G = B)."""
    a = np.asarray(im.convert("RGB"))
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def load_image_folder(path, image_size: int | None = None, channels: int = 0,
                      max_samples: int | None = None) -> np.ndarray:
    """uint8 images (N, C, H, W).

    channels: 1 (grayscale), 3 (RGB) or 0 (from the first image: grayscale modes, with or without alpha, give 1;
    colour and palette modes 3). Alpha is dropped, not composited. Images with more than 8 bits per channel
    are refused.
    image_size: resize the short side to this and centre-crop to a square; without it every image must
    already have the first image's size (after the EXIF orientation tag is applied).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = require_exists(path, "image folder", "point data.path at a folder of images (--set data.path=DIR)")
    if not os.path.isdir(path):
        raise ValueError(f"{path}: image_folder data.path must be a folder")
    files = list_images(path)
    if not files:
        raise ValueError(f"{path}: no image files found (extensions {', '.join(EXTENSIONS)})")
    if max_samples is not None:
        files = files[:max_samples]
    out, first_size = None, None  # allocated at the first image: a list of images and np.stack held the set twice
    inferred_from, warned = None, False
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                mode = im.mode
                if mode in EIGHT_BIT_MODES:
                    im.load()
                    if channels == 0:
                        channels, inferred_from = (1 if mode in GRAY_MODES else 3), f
                    elif inferred_from is not None and channels == 1 and mode not in GRAY_MODES and not warned \
                            and not _gray_pixels(im):
                        # a folder of colour images whose first file happens to be grayscale: all of it would be
                        # trained on in gray, without a word (gray pixels stored as RGB lose nothing)
                        warned = True
                        warnings.warn(f"{f}: a colour image (mode {mode}) read as grayscale: data.channels was "
                                      f"taken from the first image, {os.path.basename(inferred_from)}, which is "
                                      "grayscale; set data.channels=3 to keep colour", stacklevel=2)
                    turned = im.getexif().get(_ORIENTATION, 1) != 1  # exif_transpose copies every image
                    im = im.convert("L" if channels == 1 else "RGB")
                    if turned:  # upright as a viewer shows it: cameras store the pixels as shot plus this tag
                        im = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError as e:  # not an OSError
            raise ValueError(f"{f}: refusing a possible decompression bomb ({e}); raise PIL.Image.MAX_IMAGE_PIXELS "
                             f"if the image is genuine") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{f}: cannot read image ({type(e).__name__}: {e})") from None
        if mode not in EIGHT_BIT_MODES:
            raise ValueError(f"{f}: image mode {mode!r} has more than 8 bits per channel; only 8-bit images are "
                             f"read (convert them to 8 bits, or store the pixels in an .npz with data.value_range)")
        if image_size is not None:
            im = _resize_center_crop(im, image_size)
        elif first_size is None:
            first_size = im.size
        elif im.size != first_size:
            raise ValueError(f"{f}: image size {im.size} differs from the first image's {first_size} "
                             f"(set data.image_size to resize)")
        a = np.asarray(im, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(files), *a.shape), dtype=np.uint8)
        out[i] = a  # every image has the first one's channels and size (checked above)
    return out
