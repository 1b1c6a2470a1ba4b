"""Reading and checking user-supplied .npz datasets, with numpy only.

The API checks an upload with it before storing it, and the trainer loads a dataset file with
it, so it imports neither TensorFlow nor anything of the service. Every problem raises
DatasetError with a one-line message that names the key at fault, so the API can return it as
a 4xx body as is.

Expected layout: x_train, y_train, x_test, y_test; images (N, H, W, C) with C 1 or 3 and
H, W >= 8, uint8 or float16/32/64; labels integers 0..K-1 (K >= 2, not uint64), shaped (N,)
or (N, 1). Entries stored or deflated, as np.savez and np.savez_compressed write them.
"""

from __future__ import annotations

import os
import zipfile
from typing import IO, Any

import numpy as np

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_DTYPES = (
    np.dtype(np.uint8),
    np.dtype(np.float16),
    np.dtype(np.float32),
    np.dtype(np.float64),
)
MIN_SIDE = 8


class DatasetError(ValueError):
    """The .npz file cannot be used as a training dataset; the message says why."""


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_npz(path: str | os.PathLike[str], max_bytes: int | None = None) -> Arrays:
    """Load and validate `path`; return (x_train, y_train, x_test, y_test).

    Labels come back as 1-D int64 arrays. Images keep their dtype (uint8 or float).
    With `max_bytes`, the archive's declared unpacked size is checked before loading.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset file {path} does not exist")
    size = os.path.getsize(path)
    if max_bytes is not None and size > max_bytes:
        raise DatasetError(f"dataset file is {size} bytes, more than the limit of {max_bytes}")
    if not zipfile.is_zipfile(path):
        raise DatasetError("dataset file is not an .npz archive (not a zip file)")
    if max_bytes is not None:
        check_unpacked_size(path, max_bytes)
    try:
        # allow_pickle=False: an uploaded file must never be able to run code when loaded.
        with np.load(path, allow_pickle=False) as archive:
            present = set(archive.files)
            for key in KEYS:
                if key not in present:
                    found = ", ".join(sorted(present)) or "none"
                    raise DatasetError(f"missing key {key} in the .npz (found: {found})")
            arrays = {key: _read(archive, key) for key in KEYS}
    except DatasetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(f"dataset file cannot be read as .npz: {_one_line(error)}") from error
    return validate_arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"])


# np.savez stores entries, np.savez_compressed deflates them. Deflate expands at most ~1032
# to 1; other methods (bzip2, lzma) expand a few kilobytes into gigabytes.
COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def check_unpacked_size(archive_file: str | IO[bytes], max_bytes: int) -> None:
    """Refuse an archive (a path or a seekable binary file) whose entries, all of them
    whatever their names, declare more than `max_bytes` unpacked, or use a compression other
    than np.savez's, before anything is decompressed: only its central directory is read.
    Reading an entry never yields more than its declared size (zipfile cuts it off there),
    so the declared sizes bound what loading can take."""
    total = 0
    try:
        with zipfile.ZipFile(archive_file) as archive:
            for member in archive.infolist():
                if member.compress_type not in COMPRESSIONS:
                    raise DatasetError(
                        f"entry {member.filename[:80]!r} uses zip compression method "
                        f"{member.compress_type}; only stored or deflate (np.savez, "
                        "np.savez_compressed) are accepted"
                    )
                # Deflate never grows data by more than a few bytes per 16 KiB block: an entry
                # holding far more than it declares unpacked is lying about its size (a bomb
                # whose headers look small), refused before a byte of it is inflated.
                if member.compress_size > member.file_size + member.file_size // 1000 + 1024:
                    raise DatasetError(
                        f"entry {member.filename[:80]!r} declares {member.file_size} bytes "
                        f"unpacked but holds {member.compress_size} compressed: its sizes are "
                        "not true"
                    )
                total += member.file_size
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"dataset file cannot be read as .npz: {_one_line(error)}") from error
    if total > max_bytes:
        raise DatasetError(
            f"the archive unpacks to {total} bytes, more than the limit of {max_bytes}"
        )


def _read(archive: Any, key: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as error:
        # np.load raises ValueError for object arrays when allow_pickle=False.
        raise DatasetError(f"{key} cannot be loaded: {_one_line(error)}") from error


def validate_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Arrays:
    """Check shapes, dtypes and labels of the four arrays; return them with 1-D int64 labels."""
    _check_images("x_train", x_train)
    _check_images("x_test", x_test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"x_test images are {_shape(x_test.shape[1:])} but x_train images are "
            f"{_shape(x_train.shape[1:])}; both splits need the same image shape"
        )
    y_train = _check_labels("y_train", y_train, len(x_train), "x_train")
    y_test = _check_labels("y_test", y_test, len(x_test), "x_test")
    if int(y_train.max()) >= len(y_train):
        raise DatasetError(
            f"y_train has label {int(y_train.max())} but only {len(y_train)} images; labels "
            "must be 0..K-1 with every class present"
        )
    classes = int(y_train.max()) + 1
    if classes < 2:
        raise DatasetError("y_train has a single class; at least 2 classes are needed")
    missing = sorted(set(range(classes)) - set(np.unique(y_train).tolist()))
    if missing:
        raise DatasetError(
            f"y_train labels must be 0..K-1 with every class present; "
            f"class(es) {_list(missing)} never occur"
        )
    if int(y_test.max()) >= classes:
        raise DatasetError(
            f"y_test has label {int(y_test.max())} but y_train only has classes 0..{classes - 1}"
        )
    return x_train, y_train, x_test, y_test


def _check_images(key: str, x: np.ndarray) -> None:
    if x.ndim != 4:
        raise DatasetError(f"{key} must be 4-D (N, H, W, C), got shape {_shape(x.shape)}")
    count, height, width, channels = x.shape
    if count == 0:
        raise DatasetError(f"{key} holds no images")
    if channels not in (1, 3):
        raise DatasetError(
            f"{key} must have 1 or 3 channels last (N, H, W, C), got {channels} channels "
            f"in shape {_shape(x.shape)}"
        )
    if height < MIN_SIDE or width < MIN_SIDE:
        raise DatasetError(
            f"{key} images are {height}x{width}; height and width must be at least {MIN_SIDE}"
        )
    if x.dtype not in IMAGE_DTYPES:
        raise DatasetError(f"{key} must be uint8, float16, float32 or float64, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DatasetError(f"{key} contains NaN or infinite values")


def _check_labels(key: str, y: np.ndarray, count: int, images_key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DatasetError(
            f"{key} must be integer class ids shaped (N,) or (N, 1), got shape {_shape(y.shape)}"
            " (one-hot labels are not accepted)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{key} must hold integer class ids, got dtype {y.dtype}")
    if y.dtype == np.uint64:  # values from 2**63 on would wrap to negative ids in int64
        raise DatasetError(f"{key} must not be uint64; store class ids as int64 or smaller")
    if len(y) != count:
        raise DatasetError(f"{key} has {len(y)} labels but {images_key} has {count} images")
    if y.min() < 0:
        raise DatasetError(f"{key} has negative label {int(y.min())}; labels must be 0..K-1")
    return y.astype(np.int64)


def describe(arrays: Arrays) -> dict[str, Any]:
    """Summary for listings: shapes, class count, image counts and bytes."""
    x_train, y_train, x_test, y_test = arrays
    return {
        "image_shape": [int(d) for d in x_train.shape[1:]],
        "dtype": str(x_train.dtype),
        "classes": int(max(np.max(y_train), np.max(y_test))) + 1,
        "train_images": len(x_train),
        "test_images": len(x_test),
        "bytes": int(sum(a.nbytes for a in arrays)),
    }


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _list(values: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
