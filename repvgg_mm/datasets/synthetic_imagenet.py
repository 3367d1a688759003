"""An ImageNet-like folder of random JPEG photos, for measuring training speed where
ImageNet is absent: ImageNet's layout and list files, 1,000 class folders, typical
resolutions around 500x375 and file sizes around 100 kB (what a decoder's cost
depends on). The pictures carry no class information."""
import os
import os.path as osp
from multiprocessing import Pool
from typing import Dict, Tuple

import numpy as np
from PIL import Image

# (width, height) of ImageNet's most common shapes, most of them 500x375 or 375x500
SHAPES = ((500, 375), (500, 375), (500, 375), (375, 500), (500, 333), (500, 400),
          (400, 300), (640, 480))


def class_name(label: int) -> str:
    """A WordNet-id-like folder name for class ``label``."""
    return f'n{label:08d}'


def draw_photo(rng: np.random.RandomState, width: int, height: int) -> Image.Image:
    """A smooth random colour field with mid-frequency texture and sensor-like noise:
    it compresses like a photo (about 100 kB at 500x375, JPEG quality 90)."""
    coarse = rng.uniform(0, 255, size=(rng.randint(3, 9), rng.randint(3, 9), 3))
    base = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32)
    texture = rng.normal(128, 40, size=(max(height // 4, 1), max(width // 4, 1)))
    texture = np.asarray(Image.fromarray(texture.clip(0, 255).astype(np.uint8)).resize(
        (width, height), Image.BILINEAR), dtype=np.float32)[..., None] - 128
    noise = rng.normal(0, rng.uniform(10, 18), size=(height, width, 3))
    return Image.fromarray((base + texture + noise).clip(0, 255).astype(np.uint8))


def _write_one(job: Tuple[str, str, int, int]) -> int:
    root, rel, seed, index = job
    rng = np.random.RandomState([seed, index])
    width, height = SHAPES[rng.randint(len(SHAPES))]
    path = osp.join(root, rel)
    draw_photo(rng, width, height).save(path, format='JPEG', quality=90)
    return osp.getsize(path)


def make_synthetic_imagenet(root: str, images: int = 20000, val_images: int = 0,
                            classes: int = 1000, seed: int = 0,
                            workers: int = 1) -> Dict[str, float]:
    """Write ``root/{train,val}/<class>/<class>_<i>.JPEG`` and ``{train,val}_list.txt``.

    Images are spread round-robin over ``classes`` folders; the list files are written
    last, through a temporary name, so a list exists only when its split is complete.
    The same seed gives the same bytes.

    Returns:
        dict: ``train``/``val`` image counts and ``mean_kb`` (mean file size).

    Raises:
        ValueError: if a split would leave a class folder empty.
    """
    for split, count, may_be_empty in (('train', images, False), ('val', val_images, True)):
        if count < classes and not (may_be_empty and count == 0):
            raise ValueError(f'{split}: {count} images cannot fill {classes} class folders; '
                             f'give at least {classes}' + (' (or 0)' if may_be_empty else ''))
    total_bytes, written = 0, 0
    result: Dict[str, float] = dict(train=0, val=0)
    for split_index, (split, count) in enumerate((('train', images), ('val', val_images))):
        if not count:
            continue
        jobs, lines = [], []
        for label in range(classes):
            os.makedirs(osp.join(root, split, class_name(label)), exist_ok=True)
        for i in range(count):
            label = i % classes
            rel = f'{split}/{class_name(label)}/{class_name(label)}_{i:07d}.JPEG'
            jobs.append((root, rel, seed, split_index * 10**8 + i))
            lines.append(f'{rel} {label}\n')
        if workers > 1:
            with Pool(workers) as pool:
                sizes = pool.map(_write_one, jobs, chunksize=64)
        else:
            sizes = [_write_one(job) for job in jobs]
        total_bytes += sum(sizes)
        written += len(sizes)
        list_path = osp.join(root, f'{split}_list.txt')
        with open(list_path + '.tmp', 'w') as f:
            f.writelines(lines)
        os.replace(list_path + '.tmp', list_path)
        result[split] = count
    result['mean_kb'] = total_bytes / max(written, 1) / 1e3
    return result


def make_member_archive(root: str, members: int = 1281167, classes: int = 1000,
                        split: str = 'train') -> Dict[str, float]:
    """``root/<split>.zip`` holding ``members`` tiny members named as ImageNet's
    (``<class>/<class>_<i>.JPEG``, round-robin over ``classes`` folders, stored), and
    ``root/<split>_list.txt`` listing them as ``tools/dataset/pack_zip.py`` does
    (``<split>.zip@/<member> <label>``): an archive with ImageNet's member count, for
    measuring member tables, without ImageNet's 140 GB. Written to temporary names and
    renamed when complete.
    """
    import zipfile
    os.makedirs(root, exist_ok=True)
    archive, listing = osp.join(root, f'{split}.zip'), osp.join(root, f'{split}_list.txt')
    lines = []
    with zipfile.ZipFile(archive + '.part', 'w', zipfile.ZIP_STORED) as zf:
        for i in range(members):
            label = i % classes
            name = f'{class_name(label)}/{class_name(label)}_{i // classes:07d}.JPEG'
            info = zipfile.ZipInfo(name, date_time=(2012, 1, 1, 0, 0, 0))
            zf.writestr(info, name.encode()[-12:])  # a few bytes of its own
            lines.append(f'{split}.zip@/{name} {label}\n')
    with open(listing + '.part', 'w') as f:
        f.writelines(lines)
    os.replace(archive + '.part', archive)
    os.replace(listing + '.part', listing)
    return dict(members=members, archive_mb=osp.getsize(archive) / 2**20)
