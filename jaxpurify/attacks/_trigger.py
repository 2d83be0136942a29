"""The patch trigger, data poisoning, and the backdoor metrics (as in BackdoorBench).

A trigger is a ``size`` × ``size`` square of constant ``value`` stamped into one corner of every
channel of an image batch (N, H, W, C), or of a given ``pattern`` (size, size, C) of values (a
trigger crafted for the model, as TBT does: :func:`jaxpurify.attacks.bit_trojan` with ``craft``).
BadNets' patch is 3 × 3 at 32 × 32; :meth:`Trigger.for_image` scales it with the image,
size = max(1, round(3 h / 32)) (1 px at 8 × 8, 3 px at 28 × 28).

Metrics on a labelled test set (x, y), all fractions in [0, 1]:

    CA  = mean[ f(x) = y ]                                    clean accuracy
    ASR = mean over y ≠ t of [ f(stamp(x)) = t ]             attack success rate (target t)
    RA  = mean over y ≠ t of [ f(stamp(x)) = y ]             robust accuracy

A prediction with a non-finite logit counts as wrong (and as not the target).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
# the attacker's (x, y): images (N, H, W, C) and N integer labels
Data = tuple[ArrayLike, ArrayLike]

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


class Trigger(NamedTuple):
    """A white (``value``) square patch of ``size`` pixels in ``corner``, on every channel; or,
    with ``pattern`` (nested tuples of floats, shape (size, size, C)), those values instead."""

    size: int
    value: float = 1.0
    corner: str = "bottom-right"
    pattern: tuple[Any, ...] | None = None

    @classmethod
    def for_image(cls, h: int, value: float = 1.0, corner: str = "bottom-right") -> Trigger:
        """BadNets' 3 × 3 patch at 32 × 32, scaled to images of height ``h``."""
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
            raise ValueError(f"h must be a positive image height, got {h!r}")
        return cls(max(1, round(3 * int(h) / 32)), value, corner)

    def _check(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise ValueError(f"x must be images (N, H, W, C), got shape {tuple(shape)}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise ValueError(f"trigger size must be a positive int, got {self.size!r}")
        if self.size > min(shape[1], shape[2]):
            raise ValueError(f"trigger size {self.size} exceeds the image ({shape[1]} × {shape[2]})")
        if self.corner not in CORNERS:
            raise ValueError(f"trigger corner must be one of {CORNERS}, got {self.corner!r}")
        if self.pattern is not None:
            if not isinstance(self.pattern, (tuple, list)):  # an array would not survive JSON or ==
                raise TypeError(f"trigger pattern must be nested tuples of numbers, got {type(self.pattern).__name__}")
            want = (self.size, self.size, shape[3])
            try:
                pattern = np.asarray(self.pattern, np.float64)
            except (TypeError, ValueError):
                pattern = None
            if pattern is None or pattern.shape != want or not np.all(np.isfinite(pattern)):
                raise ValueError(
                    f"trigger pattern must be finite numbers of shape {want} for images of {shape[3]} "
                    f"channels, got {self.pattern!r:.80}"
                )

    def _patch(self, dtype: Any) -> float | np.ndarray:
        return self.value if self.pattern is None else np.asarray(self.pattern, dtype)

    def _window(self, h: int, w: int) -> tuple[slice, slice]:
        s = self.size
        rows = slice(h - s, h) if self.corner.startswith("bottom") else slice(0, s)
        cols = slice(w - s, w) if self.corner.endswith("right") else slice(0, s)
        return rows, cols

    @overload
    def stamp(self, x: np.ndarray) -> np.ndarray: ...
    @overload
    def stamp(self, x: jax.Array) -> jax.Array: ...
    def stamp(self, x: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
        """``x`` with the patch written in (a new array: NumPy in, NumPy out; else a jax.Array)."""
        self._check(x.shape if hasattr(x, "shape") else np.shape(x))
        rows, cols = self._window(x.shape[1], x.shape[2])
        if isinstance(x, np.ndarray):
            out = x.copy()
            out[:, rows, cols, :] = self._patch(out.dtype)
            return out
        x = jnp.asarray(x)
        return x.at[:, rows, cols, :].set(self._patch(x.dtype))

    def mask(self, h: int, w: int) -> np.ndarray:
        """Bool (h, w): where the patch is."""
        m = np.zeros((h, w), bool)
        rows, cols = self._window(h, w)
        m[rows, cols] = True
        return m


def check_target(target: Any, what: str = "target") -> int:
    """``target`` as an int, or ValueError naming ``what`` unless it is a non-negative integer."""
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or target < 0:
        raise ValueError(f"{what} must be a non-negative class index, got {target!r}")
    return int(target)


def check_data(x: ArrayLike, y: ArrayLike, what: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as host arrays: images (N, H, W, C) and N integer labels."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what} must be images (N, H, W, C) and N labels with N > 0, got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{what}: labels must be integers, got {y.dtype}")
    return x, y


def poison(
    key: jax.Array, x: ArrayLike, y: ArrayLike, trigger: Trigger, target: int, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """BadNets poisoning, all-to-one: round(fraction · N) examples drawn at random (``key``)
    without replacement are stamped with ``trigger`` and relabelled ``target``; the rest are kept.
    Returns new arrays (the inputs are not modified)."""
    x, y = check_data(x, y)
    target = check_target(target)
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    count = int(round(float(fraction) * len(x)))
    idx = np.asarray(jax.random.choice(key, len(x), (count,), replace=False))
    x2, y2 = x.copy(), y.copy()
    x2[idx] = trigger.stamp(x[idx])
    y2[idx] = target
    return x2, y2


def predictions(apply_fn: ApplyFn, params: PyTree, x: np.ndarray | jax.Array, batch: int = 2048) -> np.ndarray:
    """argmax of the logits per example, −1 where a logit is not finite."""
    out = []
    for i in range(0, len(x), batch):
        logits = apply_fn(params, jnp.asarray(x[i : i + batch]))
        pred = jnp.where(jnp.all(jnp.isfinite(logits), axis=-1), jnp.argmax(logits, axis=-1), -1)
        out.append(np.asarray(pred))
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def clean_accuracy(apply_fn: ApplyFn, params: PyTree, x: ArrayLike, y: ArrayLike) -> float:
    """CA: fraction of ``x`` classified as ``y``."""
    x, y = check_data(x, y)
    return float(np.mean(predictions(apply_fn, params, x) == y))


def _triggered(x: ArrayLike, y: ArrayLike, trigger: Trigger, target: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = check_data(x, y)
    keep = y != check_target(target)
    if not keep.any():
        raise ValueError(f"every label is the target {target}: no input to trigger")
    return trigger.stamp(x[keep]), y[keep]


def attack_success_rate(
    apply_fn: ApplyFn, params: PyTree, x: ArrayLike, y: ArrayLike, trigger: Trigger, target: int
) -> float:
    """ASR: fraction of the triggered inputs of non-target classes classified as ``target``."""
    xt, _ = _triggered(x, y, trigger, target)
    return float(np.mean(predictions(apply_fn, params, xt) == target))


def robust_accuracy(
    apply_fn: ApplyFn, params: PyTree, x: ArrayLike, y: ArrayLike, trigger: Trigger, target: int
) -> float:
    """RA: fraction of the triggered inputs of non-target classes still classified correctly."""
    xt, yt = _triggered(x, y, trigger, target)
    return float(np.mean(predictions(apply_fn, params, xt) == yt))
