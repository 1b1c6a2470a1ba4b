"""Datasets as uint8 NHWC arrays: digits, synthetic, CIFAR-10, or an .npz file.

The spec's `dataset` is a built-in name, an .npz path (the standalone trainer's, or the one
the worker passes for an uploaded dataset), or an uploaded dataset's id, which only the
service can turn into a file.

Every loader returns a `Dataset` whose images are 32x32: MiniGoogLeNet ends in a 7x7 average
pool that only fits the 7x7 map a 32x32 input produces, so inputs of any other size are RESIZED
to 32x32 (bilinear, antialiased). The channel count (1 or 3) is kept.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.dataset_files import DatasetError, load_npz

from .config import UserError

SIDE = 32
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray  # uint8 (N, 32, 32, C)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (SIDE, SIDE, int(self.x_train.shape[-1]))


def load_dataset(name: str | int) -> Dataset:
    """Load the spec's `dataset`: "digits", "synthetic", "cifar10" or a path to an .npz file."""
    if isinstance(name, int):
        raise UserError(
            f"dataset {name} is an uploaded dataset's id, which only the service resolves; "
            "outside it, pass the path to the dataset's .npz file instead"
        )
    if name == "digits":
        return load_digits()
    if name == "synthetic":
        return load_synthetic()
    if name == "cifar10":
        return load_cifar10()
    try:
        x_train, y_train, x_test, y_test = load_npz(name)
    except DatasetError as error:
        raise UserError(f"dataset {name}: {error}") from error
    return _finish(Path(name).stem, x_train, y_train, x_test, y_test)


def datasets_dir() -> Path:
    """Where CIFAR-10's archive or folder is looked for: the service's datasets folder,
    $TRAINYARD_DATA_DIR/datasets, with the same default data folder (platformdirs')."""
    data_dir = os.environ.get("TRAINYARD_DATA_DIR")
    if not data_dir:
        import platformdirs

        data_dir = platformdirs.user_data_dir("trainyard", appauthor=False)
    return Path(data_dir) / "datasets"


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), as 32x32x3 uint8.

    A fixed stratified 75/25 split, so every run and every test sees the same test set.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    # Pixel values are 0..16; scale to the 0..255 range the other datasets use.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = np.repeat(images, 3, axis=-1)
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=0
    )
    return _finish("digits", x_train, y_train, x_test, y_test)


def load_synthetic(
    train_images: int = 256, test_images: int = 64, classes: int = 10, noise: float = 40.0
) -> Dataset:
    """A small deterministic 32x32x3 set for fast end-to-end tests.

    Each class is a fixed smooth random pattern (low-frequency, so shifts and flips keep it
    recognisable); each image is its class pattern plus Gaussian noise. Learnable in an epoch
    or two, yet not trivially separable by one pixel.
    """
    rng = np.random.default_rng(12345)
    coarse = rng.uniform(0.0, 255.0, size=(classes, 4, 4, 3))
    patterns = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)  # (classes, 32, 32, 3)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % classes
        rng.shuffle(labels)
        pixels = patterns[labels] + rng.normal(0.0, noise, size=(count, SIDE, SIDE, 3))
        return np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = split(train_images)
    x_test, y_test = split(test_images)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, classes)


def load_cifar10() -> Dataset:
    """CIFAR-10 from the data directory, else from Keras' downloader; UserError if neither."""
    folder = datasets_dir()
    extracted = folder / CIFAR_FOLDER
    archive = folder / CIFAR_ARCHIVE
    if extracted.is_dir():
        return _finish("cifar10", *_cifar_from_folder(extracted))
    if archive.is_file():
        return _finish("cifar10", *_cifar_from_archive(archive))
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:  # no network, proxy, bad cache: all mean "put the file there"
        raise UserError(
            f"CIFAR-10 is not available offline and could not be downloaded "
            f"({type(error).__name__}); download {CIFAR_ARCHIVE} from "
            f"https://www.cs.toronto.edu/~kriz/{CIFAR_ARCHIVE} and put it in {folder}"
        ) from error
    return _finish("cifar10", x_train, y_train, x_test, y_test)


def _cifar_batch(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    # The official python batches are pickles of plain dicts of numpy arrays and lists.
    batch = pickle.loads(raw, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images.transpose(0, 2, 3, 1), np.asarray(batch[b"labels"], dtype=np.int64)


def _cifar_join(batches: dict[str, bytes]) -> tuple[np.ndarray, ...]:
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if n not in batches]
    if missing:
        raise UserError(f"CIFAR-10 files incomplete: {', '.join(missing)} missing")
    train = [_cifar_batch(batches[n]) for n in names]
    x_test, y_test = _cifar_batch(batches["test_batch"])
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _cifar_from_folder(folder: Path) -> tuple[np.ndarray, ...]:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    return _cifar_join(files)


def _cifar_from_archive(archive: Path) -> tuple[np.ndarray, ...]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files[Path(member.name).name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"{archive} is not a readable {CIFAR_ARCHIVE}: {error}") from error
    return _cifar_join(files)


def _finish(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    """Labels to 1-D int64, images to uint8 32x32 (resized if needed)."""
    y_train = np.asarray(y_train).reshape(-1).astype(np.int64)
    y_test = np.asarray(y_test).reshape(-1).astype(np.int64)
    classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, _to_uint8_32(x_train), y_train, _to_uint8_32(x_test), y_test, classes)


def _to_uint8_32(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        images = _float_to_uint8(images)
    if images.shape[1:3] == (SIDE, SIDE):
        return images
    import tensorflow as tf

    resized = tf.image.resize(images, (SIDE, SIDE), method="bilinear", antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def _float_to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images: [0, 1] is scaled by 255, [0, 255] kept, any other range min-max scaled."""
    images = images.astype(np.float32)
    low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if low >= 0.0 and high <= 1.0:
        images = images * 255.0
    elif low < 0.0 or high > 255.0:
        images = (images - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.round(images), 0, 255).astype(np.uint8)
