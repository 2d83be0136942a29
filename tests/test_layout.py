"""Layout: pack / unpack / replace against plain NumPy loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import smallest_coprime

import jaxpurify as jp
from jaxpurify import _layout
from jaxpurify._layout import Group, LeafLayout, Segment


def _tree():
    rng = np.random.default_rng(0)
    return {
        "conv": {
            "kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 16)), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(16), jnp.float32),
        },
        "dense": {
            "kernel": jnp.asarray(rng.standard_normal((12, 10)), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(10), jnp.float32),
        },
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
        cb = jp.Codebook.create(params, 0, select=lambda p, l, axis=axis: axis if p == "dense/kernel" else False)
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
    groups = [
        Group("g0", 4, 1, 4, "float32", (Segment("b", 0, 3), Segment("a", 0, 10))),
        Group("g1", 2, 1, 3, "float32", (Segment("b", 3, 7),)),
    ]
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
    params = {
        "dense": rng.standard_normal((40, 24)).astype(np.float32),
        "bias": rng.standard_normal(30).astype(np.float32),
        "scale": rng.standard_normal(900).astype(np.float32),
    }
    cb = jp.Codebook.create(params, 0)
    clean = cb.pack(params)
    for path in params:
        for start in (0, 5, params[path].size - 16):
            bad = {k: v.copy() for k, v in params.items()}
            bad[path].reshape(-1)[start : start + 16] += 1e3  # the burst, in C order
            changed = {
                n: (np.asarray(y) != np.asarray(clean[n])) & ~np.isnan(clean[n]) for n, y in cb.pack(bad).items()
            }
            per_column = np.concatenate([c.sum(0) for c in changed.values()])
            assert per_column.sum() == 16
            widest = max(g.columns for g in cb.groups.values() if path in g.members)
            assert per_column.max() <= -(-16 // min(widest, 16)), (path, start)


def test_leaf_columns_match_unpacked_column_ids():
    """The report finds a leaf's columns from the segments alone; the reference numbers every
    column, unpacks the numbers into the leaves and reads them back."""
    from jaxpurify._report import leaf_columns

    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.standard_normal((3, 3, 8, 24)).astype(np.float32), "bias": np.zeros(24, np.float32)},
        "big": {"kernel": rng.standard_normal((700, 40)).astype(np.float32)},
        "head": {"kernel": rng.standard_normal((24, 10)).astype(np.float32), "bias": np.zeros(10, np.float32)},
        "norm": {"scale": np.ones(7, np.float32)},
    }
    cb = jp.Codebook.create(params, jax.random.key(0))
    offsets = np.cumsum([0] + [g.columns for g in cb.groups.values()])
    ids = cb.unpack(
        {
            name: np.broadcast_to(np.arange(o, o + g.columns), (g.K, g.columns))
            for o, (name, g) in zip(offsets, cb.groups.items())
        }
    )
    got = leaf_columns(cb)
    assert set(got) == set(cb.protected)
    assert any(len(g.members) > 1 for g in cb.groups.values())  # pooled groups are exercised
    for path in cb.protected:
        np.testing.assert_array_equal(got[path], np.unique(ids[path]))


# -- the "interleave" choice ---------------------------------------------------------------------
def _interleave(path, leaf):
    return "interleave"


@pytest.mark.parametrize("C,F", [(10, 256), (10, 1280), (6, 21), (16, 15), (32, 72), (1, 7), (30, 77), (1000, 512)])
def test_coprime_width_is_the_smallest_width_above_C_coprime_to_C_fan_in_and_small_strides(C, F):
    m = _layout.coprime_width(C, F)
    assert m == smallest_coprime(C, F)
    assert m > C and np.gcd(m, C) == 1 and np.gcd(m, F) == 1


@pytest.mark.parametrize("shape,max_rows", [((7, 3, 6), 512), ((256, 10), 512), ((300, 10), 64), ((5, 4, 9), 4)])
def test_interleave_places_entry_i_c_at_row_and_column_of_i_C_plus_c(shape, max_rows):
    """Entry (i, c) (i the C-order index over the fan-in axes) sits at flat index i·C + c of the
    leaf's rows of m columns: row (i·C + c) // m, column (i·C + c) mod m; rows split at max_rows."""
    rng = np.random.default_rng(3)
    leaf = rng.standard_normal(shape).astype(np.float32)
    C, F = shape[-1], leaf.size // shape[-1]
    leaves, groups, _ = _layout.plan([("w", shape, "float32", _layout.INTERLEAVE)], 4.0, max_rows)
    packed = _layout.pack(groups, {lay.path: lay for lay in leaves}, {"w": leaf})
    m = smallest_coprime(C, F)
    starts = [g.segments[0].start // m for g in groups]  # first row of each group
    assert all(g.columns == m and g.n == -(-g.K // 4) and g.K <= max_rows for g in groups)
    assert sum(g.K for g in groups) == -(-leaf.size // m)
    for idx in itertools.product(*map(range, shape)):
        i, c = np.ravel_multi_index(idx[:-1], shape[:-1]) if len(shape) > 1 else 0, idx[-1]
        row, col = divmod(int(i) * C + c, m)
        gi = max(k for k, s in enumerate(starts) if s <= row)
        assert packed[groups[gi].name][row - starts[gi], col] == leaf[idx]
    last = packed[groups[-1].name].reshape(-1)
    assert np.isnan(last).sum() == sum(g.K for g in groups) * m - leaf.size
    assert np.isnan(last[last.size - (np.isnan(last).sum()) :]).all()  # padding only at the end
    back = _layout.unpack(groups, {lay.path: lay for lay in leaves}, packed)
    np.testing.assert_array_equal(back["w"], leaf)


def test_interleave_spreads_a_rewritten_output_channel_over_every_column():
    """A (256, 10) read-out: rewriting output channel c touches ≤ ⌈256/m⌉ entries of any
    column (counted by a plain loop over the placement rule, and by pack); one input row's 10
    entries lie in 10 distinct columns.  The default layout is the same interleave."""
    shape = (256, 10)
    cb = jp.Codebook.create({"w": np.zeros(shape, np.float32)}, b"\x05" * 32, select=_interleave)
    (g,) = cb.groups.values()
    m = g.columns
    assert m == 17 and g.K == -(-2560 // 17)
    for c in range(10):
        loop = np.zeros(m, int)
        for i in range(256):
            loop[(i * 10 + c) % m] += 1
        mask = np.zeros(shape, np.float32)
        mask[:, c] = 1
        packed = cb.pack({"w": mask})[g.name]
        np.testing.assert_array_equal(np.nansum(packed, 0), loop)
        assert loop.max() <= -(-256 // m) and loop.sum() == 256
    for i in range(256):
        assert len({(i * 10 + c) % m for c in range(10)}) == 10
    default = jp.Codebook.create({"w": np.zeros(shape, np.float32)}, b"\x05" * 32)
    assert default.groups == cb.groups


def test_interleave_round_trips_through_encode_decode_and_the_codebook_file(tmp_path):
    rng = np.random.default_rng(4)
    params = {
        "head": {
            "kernel": rng.standard_normal((40, 10)).astype(np.float32),
            "bias": rng.standard_normal(10).astype(np.float32),
        },
        "conv": {"kernel": rng.standard_normal((3, 3, 2, 16)).astype(np.float32)},
    }
    select = lambda path, leaf: "interleave" if path == "head/kernel" else None
    cb = jp.Codebook.create(params, b"\x06" * 32, select=select)
    g = cb.groups["head/kernel"]
    assert (g.K, g.columns) == (-(-400 // 17), 17)
    latent = cb.init_latent(params)
    W = cb.decode(latent)
    # W is in range(A) column by column: decode(encode(W)) = W, and the code of W is A·Θ
    W2 = cb.decode(cb.encode(W))
    for a, b in zip(jax.tree.leaves(W), jax.tree.leaves(W2)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    Y = cb.pack(W)["head/kernel"]
    A = np.asarray(cb.matrix("head/kernel"), np.float64)
    Theta = np.asarray(latent["head/kernel"], np.float64)
    full = A @ Theta
    np.testing.assert_allclose(Y[np.isfinite(Y)], full[np.isfinite(Y)], rtol=1e-5, atol=1e-5)
    cb.save(tmp_path / "cb.json", tmp_path / "cb.key")
    back = jp.Codebook.load(tmp_path / "cb.json", tmp_path / "cb.key")
    assert back.groups == cb.groups
    for a, b in zip(jax.tree.leaves(W), jax.tree.leaves(back.decode(latent))):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_interleave_refuses_a_leaf_too_small_for_redundancy():
    with pytest.raises(ValueError, match="leaf 'b'.*interleave"):
        jp.Codebook.create({"b": np.zeros(10, np.float32)}, b"\x07" * 32, select=_interleave)
    with pytest.raises(TypeError, match="'interleave'"):
        jp.Codebook.create({"b": np.zeros((40, 10), np.float32)}, b"\x07" * 32, select=lambda p, l: "interleaved")


@pytest.mark.slow  # compiles the solver for its shape: 13.5 s at load 5 on 2 cores (the default suite is at its budget)
def test_interleave_purify_restores_a_rewritten_read_out_channel_exactly():
    """The channel trojan's read-out change: one of 10 output channels of a (256, 10) kernel
    rewritten whole.  Interleaved, every column is certified and the clean weights come back."""
    rng = np.random.default_rng(5)
    params = {"readout": {"kernel": rng.standard_normal((256, 10)).astype(np.float32)}}
    cb = jp.Codebook.create(params, b"\x08" * 32, select=_interleave)
    clean = cb.decode(cb.init_latent(params))
    bad = jax.tree.map(np.array, clean)
    bad["readout"]["kernel"][:, 0] = 3.0 * rng.standard_normal(256)
    purified, report = jp.purify(bad, cb)
    m = smallest_coprime(10, 256)  # the width by its definition
    assert report.certified == report.columns == m
    ref = np.asarray(clean["readout"]["kernel"])
    np.testing.assert_allclose(np.asarray(purified["readout"]["kernel"]), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
