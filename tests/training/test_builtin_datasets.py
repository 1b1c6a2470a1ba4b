"""The built-in datasets as every run sees them. MiniGoogLeNet learning digits through the
whole service is tests/e2e/test_embedded.py's README job."""

from __future__ import annotations

import numpy as np

from worker.training.data import load_digits, load_synthetic


def test_digits_is_32x32_rgb_with_a_fixed_stratified_split() -> None:
    digits = load_digits()
    assert (digits.x_train.shape, digits.x_test.shape) == ((1347, 32, 32, 3), (450, 32, 32, 3))
    assert digits.x_train.dtype == np.uint8 and digits.input_shape == (32, 32, 3)
    assert digits.classes == 10
    # Stratified: every class in both splits in about its share (the bundle has 174-183 each).
    for labels, size in ((digits.y_train, 1347), (digits.y_test, 450)):
        counts = np.bincount(labels, minlength=10)
        assert counts.min() >= 0.09 * size and counts.max() <= 0.11 * size, counts
    # Scaled from 0..16 to the 0..255 range the other datasets use.
    assert digits.x_train.max() == 255 and digits.x_train.min() == 0
    again = load_digits()  # the same test set for every run
    assert np.array_equal(again.x_test, digits.x_test)
    assert np.array_equal(again.y_test, digits.y_test)


def test_synthetic_is_the_same_small_set_every_time() -> None:
    synthetic = load_synthetic()
    assert (synthetic.x_train.shape, synthetic.x_test.shape) == ((256, 32, 32, 3), (64, 32, 32, 3))
    assert np.array_equal(load_synthetic().x_train, synthetic.x_train)
