"""Layout: pack / unpack / replace against plain NumPy loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import _layout
from jaxpurify._layout import Group, LeafLayout, Segment


def _tree():
    rng = np.random.default_rng(0)
    return {
        "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 16)), jnp.float32),
                 "bias": jnp.asarray(rng.standard_normal(16), jnp.float32)},
        "dense": {"kernel": jnp.asarray(rng.standard_normal((12, 10)), jnp.float32),
                  "bias": jnp.asarray(rng.standard_normal(10), jnp.float32)},
        "step": jnp.asarray(3, jnp.int32),
    }


def _axes(path, leaf):
    return {"conv/kernel": 3, "conv/bias": 0, "dense/kernel": 0}.get(path, False)


def _get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


def test_pack_columns_are_vectors_along_the_axis():
    params = _tree()
    cb = jp.Codebook.create(params, jax.random.key(0), select=_axes)
    packed = cb.pack(params)
    assert list(packed) == list(cb.groups)
    for name, g in cb.groups.items():
        (path,) = g.members
        leaf = np.asarray(_get(params, path))
        axis = _axes(path, leaf)
        others = [range(d) for i, d in enumerate(leaf.shape) if i != axis]
        assert packed[name].shape == (g.K, g.columns) == (leaf.shape[axis], leaf.size // leaf.shape[axis])
        for j, idx in enumerate(itertools.product(*others)):  # columns in C order of the other axes
            col = [leaf[tuple(idx[:axis]) + (k,) + tuple(idx[axis:])] for k in range(leaf.shape[axis])]
            np.testing.assert_array_equal(packed[name][:, j], col)


def test_unpack_inverts_pack_for_values_and_masks():
    params = _tree()
    cb = jp.Codebook.create(params, jax.random.key(0), select=_axes)
    packed = cb.pack(params)
    back = cb.unpack(packed)
    assert set(back) == set(cb.protected) == {"conv/kernel", "conv/bias", "dense/kernel"}
    for path in cb.protected:
        np.testing.assert_array_equal(back[path], np.asarray(_get(params, path)))
    masks = cb.unpack({k: v > 0.5 for k, v in packed.items()})
    for path in cb.protected:
        assert masks[path].dtype == np.bool_
        np.testing.assert_array_equal(masks[path], np.asarray(_get(params, path)) > 0.5)
    with pytest.raises(ValueError, match="dense/kernel"):
        cb.unpack({k: v for k, v in packed.items() if k != "dense/kernel"})


def test_pack_never_writes_to_params():
    params = jax.tree.map(np.array, _tree())
    before = jax.tree.map(np.copy, params)
    for axis in (0, 1):  # a view of the leaf, and a transposed copy
        cb = jp.Codebook.create(params, 0, select=lambda p, l: axis if p == "dense/kernel" else False)
        (y,) = cb.pack(params).values()
        with pytest.raises(ValueError, match="read-only"):
            y[0, 0] = 1.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_pooled_segments_fill_rows_in_order_with_nan_padding():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    leaves = {"a": LeafLayout("a", (2, 5), "float32", None), "b": LeafLayout("b", (7,), "float32", None)}
    # b split over two groups, a C-order leaf and an axis-moved leaf in one group
    lay_a1 = LeafLayout("a", (2, 5), "float32", 1)
    groups = [Group("g0", 4, 1, 4, "float32", (Segment("b", 0, 3), Segment("a", 0, 10))),
              Group("g1", 2, 1, 3, "float32", (Segment("b", 3, 7),))]
    for lays in (leaves, dict(leaves, a=lay_a1)):
        flat_a = (a if lays["a"].axis is None else np.moveaxis(a, 1, 0)).ravel()
        packed = _layout.pack(groups, lays, {"a": a, "b": b})
        expect0 = list(b[:3]) + list(flat_a)
        expect1 = list(b[3:])
        for name, expect in (("g0", expect0), ("g1", expect1)):
            y = packed[name]
            K, m = y.shape
            for i in range(K * m):
                if i < len(expect):
                    assert y[i // m, i % m] == expect[i]
                else:
                    assert np.isnan(y[i // m, i % m])
        back = _layout.unpack(groups, lays, packed)
        np.testing.assert_array_equal(back["a"], a)
        np.testing.assert_array_equal(back["b"], b)


def test_replace_casts_and_keeps_other_leaves():
    params = _tree()
    cb = jp.Codebook.create(params, 0, select=_axes)
    new = cb.replace(params, {"dense/bias": np.arange(10, dtype=np.float64)})
    assert new["dense"]["bias"].dtype == jnp.float32
    np.testing.assert_array_equal(new["dense"]["bias"], np.arange(10))
    assert new["conv"]["kernel"] is params["conv"]["kernel"]
    np.testing.assert_array_equal(params["dense"]["bias"], _tree()["dense"]["bias"])
    with pytest.raises(ValueError, match="dense/bias"):
        cb.replace(params, {"dense/bias": np.zeros(3)})
    with pytest.raises(ValueError, match="nope"):
        cb.replace(params, {"nope": np.zeros(3)})


def test_unprotected_lists_the_rest():
    params = _tree()
    cb = jp.Codebook.create(params, 0, select=_axes)
    got = {p: (size, reason) for p, size, reason in cb.unprotected(params)}
    assert set(got) == {"dense/bias", "step"}
    assert got["dense/bias"][0] == 10 and got["step"][0] == 1


def test_a_burst_in_memory_spreads_over_the_columns():
    """64 consecutive bytes (16 float32) of a stored leaf land in 16 different columns."""
    rng = np.random.default_rng(2)
    params = {"dense": rng.standard_normal((40, 24)).astype(np.float32),
              "bias": rng.standard_normal(30).astype(np.float32), "scale": rng.standard_normal(900).astype(np.float32)}
    cb = jp.Codebook.create(params, 0)
    clean = cb.pack(params)
    for path in params:
        for start in (0, 5, params[path].size - 16):
            bad = {k: v.copy() for k, v in params.items()}
            bad[path].reshape(-1)[start : start + 16] += 1e3  # the burst, in C order
            changed = {n: (np.asarray(y) != np.asarray(clean[n])) & ~np.isnan(clean[n]) for n, y in cb.pack(bad).items()}
            per_column = np.concatenate([c.sum(0) for c in changed.values()])
            assert per_column.sum() == 16
            widest = max(g.columns for g in cb.groups.values() if path in g.members)
            assert per_column.max() <= -(-16 // min(widest, 16)), (path, start)


def test_leaf_columns_match_unpacked_column_ids():
    """The report finds a leaf's columns from the segments alone; the reference numbers every
    column, unpacks the numbers into the leaves and reads them back."""
    from jaxpurify._report import leaf_columns

    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": rng.standard_normal((3, 3, 8, 24)).astype(np.float32),
                       "bias": np.zeros(24, np.float32)},
              "big": {"kernel": rng.standard_normal((700, 40)).astype(np.float32)},
              "head": {"kernel": rng.standard_normal((24, 10)).astype(np.float32),
                       "bias": np.zeros(10, np.float32)},
              "norm": {"scale": np.ones(7, np.float32)}}
    cb = jp.Codebook.create(params, jax.random.key(0))
    offsets = np.cumsum([0] + [g.columns for g in cb.groups.values()])
    ids = cb.unpack({name: np.broadcast_to(np.arange(o, o + g.columns), (g.K, g.columns))
                     for o, (name, g) in zip(offsets, cb.groups.items())})
    got = leaf_columns(cb)
    assert set(got) == set(cb.protected)
    assert any(len(g.members) > 1 for g in cb.groups.values())  # pooled groups are exercised
    for path in cb.protected:
        np.testing.assert_array_equal(got[path], np.unique(ids[path]))
