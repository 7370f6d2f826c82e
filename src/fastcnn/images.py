"""What ``fastcnn predict`` reads: image files, folders of them, and arrays, as a model's input.

- An image file (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM: whatever Pillow, the ``image``
  extra, decodes) becomes one sample ``(C, H, W)`` in [0, 1], like the training data (uint8
  pixels / 255): converted to the model's channels (1: luminance; 3: RGB; a transparent
  background is laid on white first), resized to the model's (H, W) with Pillow's antialiased
  bilinear filter when its size differs, and inverted (``1 - x``) when asked, or with
  ``invert="auto"`` when its background is the opposite of the training images' (below).
- A folder stands for the image and array files directly in it, in name order.
- ``.npy`` / ``.npz`` arrays are taken as they are (``x`` in an .npz, else its first array):
  ``(N, C, H, W)`` or ``(N, H, W)``, with the array rules of training (integer pixels 0..255
  divided by 255, channel-last refused); never resized or inverted.

**Dark or light background.** MNIST digits are white on black; a digit photographed or drawn
black on white is the negative of what such a model learned, and gets wrong answers with high
confidence. With ``invert="auto"``, a one-channel image is inverted when its background (the
median of its border pixels) is light (> 0.5) while the training images were mostly dark
(mean < 0.3), or the other way round (mean > 0.7). Colour images and models without a stored
training mean are never inverted automatically.
"""
from __future__ import annotations

import os

import numpy as np

from fastcnn.data.arrays import as_images

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                  ".ppm", ".pbm")
INVERT_CHOICES = ("auto", "yes", "no")


def expand_inputs(paths) -> list:
    """The files ``paths`` name: files as given, a folder as the image and array files
    directly in it (sorted by name). FileNotFoundError for a missing path, ValueError for a
    folder with no such file or a file of another kind."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if name.lower().endswith(IMAGE_SUFFIXES + ARRAY_SUFFIXES)
                           and os.path.isfile(os.path.join(path, name)))
            if not found:
                raise ValueError(f"{path}: a folder with no image or array file "
                                 f"({', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)})")
            files.extend(found)
        elif not os.path.exists(path):
            raise FileNotFoundError(f"input not found: {path}")
        elif not path.lower().endswith(IMAGE_SUFFIXES + ARRAY_SUFFIXES):
            raise ValueError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor an array "
                             f"(.npy, .npz) file")
        else:
            files.append(path)
    return files


def read_array(path: str, input_shape) -> np.ndarray:
    """The images of a .npy / .npz file as float32 ``(N, C, H, W)``, checked against the
    model's ``input_shape`` ``(C, H, W)``."""
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise ValueError(f"{path}: an empty .npz")
                x = archive["x" if "x" in archive.files else archive.files[0]]
        else:
            x = np.load(path, allow_pickle=False)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable NumPy file ({exc})") from None
    if np.ndim(x) == 2 and tuple(np.shape(x)) == tuple(input_shape[-2:]):
        x = np.asarray(x)[None]                            # one (H, W) image
    x = as_images(path, x)
    shape = tuple(int(s) for s in input_shape)
    if x.shape[1:] != shape:
        raise ValueError(f"{path}: holds images of shape {x.shape[1:]}, the model takes "
                         f"{shape}: arrays are not resized (save them as image files to have "
                         f"them resized, or resize them to {shape[1]}x{shape[2]} first)")
    return x


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading image files needs Pillow: pip install 'fastcnn[image]' "
                          "(or pass a .npy/.npz array)") from None
    return Image


class _Unsupported(ValueError):
    """A readable image fastcnn does not convert (its message is the whole story)."""


def read_image(path: str, input_shape) -> tuple:
    """One image file as float32 ``(C, H, W)`` in [0, 1] for a model taking ``input_shape``
    ``(C, H, W)``, and its original ``(width, height)``."""
    Image = _pillow()
    channels, height, width = (int(s) for s in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"{path}: the model takes {channels} channels; image files give 1 "
                         f"(grayscale) or 3 (RGB): pass a .npy/.npz array")
    try:
        with Image.open(path) as image:
            image.load()
            size = image.size
            if image.mode.startswith(("I", "F")):
                raise _Unsupported(f"{path}: a {image.mode} image (16-bit or floating-point "
                                   f"pixels): save it with 8 bits per channel, or pass the "
                                   f"pixels as a .npy array")
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image.alpha_composite(rgba)                # transparent = white paper
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                bilinear = getattr(Image, "Resampling", Image).BILINEAR   # Pillow >= 9.1
                image = image.resize((width, height), bilinear)
            pixels = np.asarray(image, dtype=np.uint8)
    except _Unsupported:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None   # Pillow's errors
    x = np.divide(pixels, np.float32(255), dtype=np.float32)
    x = x[None] if channels == 1 else np.moveaxis(x, 2, 0)
    return np.ascontiguousarray(x), size


def background(image: np.ndarray) -> float:
    """The median of an image's border pixels ``(C, H, W)``: its background brightness."""
    border = np.concatenate([image[:, 0, :].ravel(), image[:, -1, :].ravel(),
                             image[:, :, 0].ravel(), image[:, :, -1].ravel()])
    return float(np.median(border))


def needs_inverting(image: np.ndarray, training_mean) -> bool:
    """True when a one-channel ``image`` ``(1, H, W)`` has a light background and the training
    images were mostly dark (``training_mean`` < 0.3), or the reverse (> 0.7)."""
    if image.shape[0] != 1 or training_mean is None or len(training_mean) != 1:
        return False
    mean, light = float(training_mean[0]), background(image) > 0.5
    return (mean < 0.3 and light) or (mean > 0.7 and not light)


def read_inputs(paths, input_shape, invert: str = "auto", training_mean=None) -> tuple:
    """Every sample the ``paths`` hold (see the module docstring), for a model taking
    ``input_shape``. Returns ``(x, records)``: x float32 ``(N, C, H, W)`` in the model's input
    range before its preprocessing, and per sample a dict with ``input`` (the file), ``index``
    (the position in that file), and for image files ``size`` ([width, height] as read) and
    ``inverted``."""
    if invert not in INVERT_CHOICES:
        raise ValueError(f"invert: expected one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
    samples, records = [], []
    for path in expand_inputs(paths):
        if path.lower().endswith(ARRAY_SUFFIXES):
            x = read_array(path, input_shape)
            samples.append(x)
            records.extend({"input": path, "index": i} for i in range(len(x)))
            continue
        image, size = read_image(path, input_shape)
        flip = invert == "yes" or (invert == "auto" and needs_inverting(image, training_mean))
        if flip:
            image = np.subtract(np.float32(1), image, dtype=np.float32)
        samples.append(image[None])
        records.append({"input": path, "index": 0, "size": list(size), "inverted": flip})
    return np.concatenate(samples), records
