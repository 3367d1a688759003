"""A deterministic, procedurally drawn demo dataset in the ImageNet layout.

Each class is a shape. Everything else is drawn at random per image -- the shape's
colour, fill texture (solid, stripes, checks), size, position and slight rotation,
and the background (flat, gradient or blotchy noise) -- so that no single cue such as
the mean colour gives the class away. Nothing is downloaded; the same seed gives the
same bytes.
"""
import math
import multiprocessing
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Class folders sort in this order, so folder labels and list labels agree.
DEMO_CLASSES = ('bars', 'diamond', 'disk', 'frame', 'plus', 'ring', 'square', 'star',
                'triangle', 'xcross')
SUPERSAMPLE = 4


def _polygon(cx: float, cy: float, radii: Sequence[float], angle: float) -> List[tuple]:
    n = len(radii)
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n),
             cy + r * math.sin(angle + 2 * math.pi * k / n)) for k, r in enumerate(radii)]


def _rotated_rect(cx, cy, half_w, half_h, angle) -> List[tuple]:
    c, s = math.cos(angle), math.sin(angle)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


def _draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float,
                tilt: float) -> None:
    """Draw shape ``name`` as white on a black mask."""
    fill = 255
    if name == 'disk':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif name == 'ring':
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        ri = 0.55 * r
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif name == 'square':
        draw.polygon(_rotated_rect(cx, cy, 0.85 * r, 0.85 * r, tilt), fill=fill)
    elif name == 'frame':
        draw.polygon(_rotated_rect(cx, cy, 0.9 * r, 0.9 * r, tilt), fill=fill)
        draw.polygon(_rotated_rect(cx, cy, 0.5 * r, 0.5 * r, tilt), fill=0)
    elif name == 'diamond':
        draw.polygon(_rotated_rect(cx, cy, 0.8 * r, 0.8 * r, tilt + math.pi / 4),
                     fill=fill)
    elif name == 'triangle':
        draw.polygon(_polygon(cx, cy + 0.15 * r, [1.1 * r] * 3, tilt - math.pi / 2),
                     fill=fill)
    elif name == 'star':
        radii = [r if k % 2 == 0 else 0.42 * r for k in range(10)]
        draw.polygon(_polygon(cx, cy, radii, tilt - math.pi / 2), fill=fill)
    elif name in ('plus', 'xcross'):
        angle = tilt + (math.pi / 4 if name == 'xcross' else 0)
        draw.polygon(_rotated_rect(cx, cy, r, 0.28 * r, angle), fill=fill)
        draw.polygon(_rotated_rect(cx, cy, 0.28 * r, r, angle), fill=fill)
    elif name == 'bars':
        off = 0.45 * r
        for sign in (-1, 1):
            dx, dy = -sign * off * math.sin(tilt), sign * off * math.cos(tilt)
            draw.polygon(_rotated_rect(cx + dx, cy + dy, r, 0.24 * r, tilt), fill=fill)
    else:
        raise ValueError(f'unknown demo shape {name!r}; known: {DEMO_CLASSES}')


def _random_colour(rng: np.random.RandomState) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _contrasting_colour(rng: np.random.RandomState, background: np.ndarray) -> np.ndarray:
    """A random colour at least a fixed distance from the background's mean colour."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(100):
        colour = _random_colour(rng)
        if np.linalg.norm(colour - mean) > 120:
            return colour
    return 255 - mean


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    kind = rng.randint(3)
    if kind == 0:  # flat
        return np.broadcast_to(_random_colour(rng), (size, size, 3)).copy()
    if kind == 1:  # linear gradient in a random direction
        a, b = _random_colour(rng), _random_colour(rng)
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xx * math.cos(theta) + yy * math.sin(theta))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        return a + (b - a) * t[..., None]
    # soft blotches around a random colour: a coarse random grid upsampled
    coarse = rng.uniform(-50, 50, size=(3, 3, 3)) + _random_colour(rng)
    coarse = np.clip(coarse, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC),
                      dtype=np.float64)


def _fill_texture(rng: np.random.RandomState, size: int) -> np.ndarray:
    """Foreground colour field: solid, stripes or checks of two colours."""
    a = _random_colour(rng)
    kind = rng.randint(3)
    if kind == 0:
        return np.broadcast_to(a, (size, size, 3)).copy()
    b = np.clip(a + rng.choice([-1, 1]) * rng.uniform(30, 50), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(0.12, 0.22) * size
    if kind == 1:
        theta = rng.uniform(0, math.pi)
        on = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period) > 0
    else:
        on = (np.floor(xx / period) + np.floor(yy / period)) % 2 == 0
    return np.where(on[..., None], a, b)


def draw_demo_image(class_name: str, rng: np.random.RandomState, size: int) -> Image.Image:
    """Draw one demo image of ``class_name`` with everything but the shape random."""
    big = size * SUPERSAMPLE
    background = _background(rng, big)
    texture = _fill_texture(rng, big)
    # Shift the foreground away from the background colour so the shape is visible.
    offset = _contrasting_colour(rng, background) - texture.reshape(-1, 3).mean(0)
    texture = np.clip(texture + offset, 0, 255)

    r = rng.uniform(0.28, 0.4) * big
    margin = r * 1.1
    cx, cy = rng.uniform(margin, big - margin, size=2)
    tilt = rng.uniform(-0.3, 0.3)
    mask = Image.new('L', (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask), class_name, cx, cy, r, tilt)
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    image = background * (1 - alpha) + texture * alpha
    image = image + rng.normal(0, 4, size=image.shape)
    image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    return image.resize((size, size), Image.BOX)


def _write_class_images(job) -> List[str]:
    """Draw and save the images of one (split, class); returns their list lines."""
    root, split, split_index, label, name, per_class, image_size, seed = job
    folder = osp.join(root, split, name)
    os.makedirs(folder, exist_ok=True)
    lines = []
    for index in range(per_class):
        rng = np.random.RandomState([seed, split_index, label, index])
        rel = f'{split}/{name}/{name}_{index:05d}.JPEG'
        draw_demo_image(name, rng, image_size).save(osp.join(root, rel), format='JPEG',
                                                    quality=95)
        lines.append(f'{rel} {label}\n')
    return lines


def generate_demo_dataset(root: str, train_per_class: int = 300, val_per_class: int = 50,
                          image_size: int = 32, seed: int = 0,
                          classes: Sequence[str] = DEMO_CLASSES,
                          workers: Optional[int] = None) -> Dict[str, int]:
    """Write the demo dataset to ``root`` in the ImageNet layout, lists included.

    Writes ``root/{train,val}/<class>/<class>_<index>.JPEG`` and
    ``root/{train,val}_list.txt`` (``<path relative to root> <label>``), labels in
    sorted class order. The lists are written last, through a temporary name, so a
    list file exists only when its split is complete.

    Every image is drawn from its own random state (seed, split, label, index), so the
    bytes do not depend on ``workers``: the number of processes drawing (default: one
    per CPU core; 1 draws in this process).

    Returns:
        dict: Number of images written per split.
    """
    classes = sorted(classes)
    splits = (('train', train_per_class), ('val', val_per_class))
    jobs = [(root, split, split_index, label, name, per_class, image_size, seed)
            for split_index, (split, per_class) in enumerate(splits)
            for label, name in enumerate(classes)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers > 1:
        # fork: the children need nothing but this module, already imported
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            per_job = pool.map(_write_class_images, jobs, chunksize=1)
    else:
        per_job = [_write_class_images(job) for job in jobs]
    counts = {}
    for split, _ in splits:
        lines = [line for job, job_lines in zip(jobs, per_job) if job[1] == split
                 for line in job_lines]
        list_path = osp.join(root, f'{split}_list.txt')
        with open(list_path + '.tmp', 'w') as f:
            f.writelines(lines)
        os.replace(list_path + '.tmp', list_path)
        counts[split] = len(lines)
    return counts
