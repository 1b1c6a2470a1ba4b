"""Validation of .npz datasets (app/core/dataset_files.py): each malformed file gets its own
clear message.

These run without TensorFlow: the API imports dataset_files to check uploads, and the
trainer checks its settings before TensorFlow loads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.dataset_files import DatasetError, describe, load_npz


def good_arrays(
    train: int = 40, test: int = 10, side: int = 16, channels: int = 1
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (train, side, side, channels), dtype=np.uint8),
        "y_train": np.arange(train) % 4,
        "x_test": rng.integers(0, 256, (test, side, side, channels), dtype=np.uint8),
        "y_test": np.arange(test) % 4,
    }


def write(tmp_path: Path, arrays: dict[str, Any], name: str = "data.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_good_file_loads_and_describes(tmp_path: Path) -> None:
    arrays = good_arrays()
    arrays["y_train"] = arrays["y_train"].reshape(-1, 1)  # (N, 1) labels are accepted
    x_train, y_train, x_test, y_test = load_npz(write(tmp_path, arrays))
    assert y_train.shape == (40,)
    assert y_train.dtype == np.int64
    summary = describe((x_train, y_train, x_test, y_test))
    assert summary["image_shape"] == [16, 16, 1]
    assert summary["classes"] == 4
    assert (summary["train_images"], summary["test_images"]) == (40, 10)
    assert summary["dtype"] == "uint8"


def test_float_images_are_accepted(tmp_path: Path) -> None:
    arrays = good_arrays(channels=3)
    arrays["x_train"] = arrays["x_train"].astype(np.float32) / 255.0
    arrays["x_test"] = arrays["x_test"].astype(np.float32) / 255.0
    x_train, *_ = load_npz(write(tmp_path, arrays))
    assert x_train.dtype == np.float32


def _without(key: str) -> dict[str, Any]:
    arrays = good_arrays()
    del arrays[key]
    return arrays


def _with(**changes: Any) -> dict[str, Any]:
    return {**good_arrays(), **changes}


rng = np.random.default_rng(1)
BAD_CASES = {
    "missing_key": (_without("y_test"), "missing key y_test"),
    "images_3d": (_with(x_train=rng.integers(0, 256, (40, 16, 16), dtype=np.uint8)), "4-D"),
    "two_channels": (
        _with(x_train=rng.integers(0, 256, (40, 16, 16, 2), dtype=np.uint8)),
        "x_train must have 1 or 3 channels",
    ),
    "too_small": (
        _with(
            x_train=rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8),
            x_test=rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8),
        ),
        "x_train images are 4x4; height and width must be at least 8",
    ),
    "int_images": (
        _with(x_train=rng.integers(0, 256, (40, 16, 16, 1)).astype(np.int32)),
        "x_train must be uint8, float16, float32 or float64, got dtype int32",
    ),
    "float128_images": (
        _with(x_train=np.zeros((40, 16, 16, 1), dtype=np.longdouble)),
        "x_train must be uint8, float16, float32 or float64, got dtype float128",
    ),
    "uint64_labels": (
        _with(y_train=(np.arange(40) % 4).astype(np.uint64)),
        "y_train must not be uint64",
    ),
    "nan_images": (
        _with(x_test=np.full((10, 16, 16, 1), np.nan, dtype=np.float32)),
        "x_test contains NaN",
    ),
    "split_shapes_differ": (
        _with(x_test=rng.integers(0, 256, (10, 20, 20, 1), dtype=np.uint8)),
        "x_test images are (20, 20, 1) but x_train images are (16, 16, 1)",
    ),
    "float_labels": (_with(y_train=np.arange(40) % 4 * 1.0), "y_train must hold integer"),
    "one_hot_labels": (_with(y_train=np.eye(4)[np.arange(40) % 4].astype(int)), "one-hot"),
    "count_mismatch": (
        _with(y_train=np.arange(39) % 4),
        "y_train has 39 labels but x_train has 40",
    ),
    "negative_label": (_with(y_test=np.arange(10) % 4 - 1), "y_test has negative label -1"),
    "single_class": (_with(y_train=np.zeros(40, dtype=int)), "single class"),
    "class_gap": (_with(y_train=np.arange(40) % 4 * 2), "class(es) 1, 3, 5 never occur"),
    "test_label_unknown": (
        _with(y_test=np.arange(10) % 5),
        "y_test has label 4 but y_train only has classes 0..3",
    ),
    "object_array": (
        _with(x_train=np.array([None] * 40, dtype=object)),
        "x_train cannot be loaded",
    ),
    "empty_split": (
        _with(x_test=np.zeros((0, 16, 16, 1), dtype=np.uint8), y_test=np.zeros(0, dtype=int)),
        "x_test holds no images",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_arrays_each_get_their_own_message(tmp_path: Path, case: str) -> None:
    arrays, expected = BAD_CASES[case]
    with pytest.raises(DatasetError) as caught:
        load_npz(write(tmp_path, arrays))
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_messages_are_distinct(tmp_path: Path) -> None:
    messages = set()
    for index, (arrays, _) in enumerate(BAD_CASES.values()):
        with pytest.raises(DatasetError) as caught:
            load_npz(write(tmp_path, arrays, name=f"case{index}.npz"))
        messages.add(str(caught.value))
    assert len(messages) == len(BAD_CASES)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(b"this is not an npz file at all")
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        load_npz(path)


def test_plain_npy_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((4, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        load_npz(path)


def test_truncated_zip(tmp_path: Path) -> None:
    path = write(tmp_path, good_arrays())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-200:])  # keep the directory, lose data
    with pytest.raises(DatasetError):
        load_npz(path)


def test_over_max_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, good_arrays())
    size = path.stat().st_size
    with pytest.raises(DatasetError, match=f"is {size} bytes, more than the limit of 100"):
        load_npz(path, max_bytes=100)
    assert load_npz(path, max_bytes=size)[0].shape == (40, 16, 16, 1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_dataset_files_and_the_trainers_settings_do_not_import_tensorflow() -> None:
    code = (
        "import sys, app.core.dataset_files, worker.training.config, worker.training.__main__; "
        "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_an_entry_that_lies_about_its_size_is_refused_from_its_headers(tmp_path: Path) -> None:
    """A bomb whose headers declare a small unpacked size passes the size check; it holds
    far more compressed bytes than it declares, which no true entry does."""
    import struct
    import zipfile

    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x_train.npy", np.random.default_rng(0).bytes(20_000))
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")  # the central directory entry; its size at +24
    data[central + 24 : central + 28] = struct.pack("<I", 100)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="declares 100 bytes unpacked but holds 20000"):
        load_npz(path, max_bytes=10**9)
