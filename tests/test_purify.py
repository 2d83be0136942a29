"""purify against a plain loop of ``recover`` per group, HiGHS, and NumPy counts; its plan, its
choices for uncertified columns, its report, and its refusals."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pooled import PooledCodebook, clean_params, columns_of
from reference import lad_highs

import jaxpurify as jp
from jaxpurify import _purify, models
from jaxpurify import contamination as C
from jaxpurify._plan import plan


def _tree():
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    # four leaves of K = 32, n = 8: one solver shape for the whole tree, one for the reference
    # (row buckets are checked on the pooled layout)
    return {"w1": f(24, 32), "w2": f(24, 32), "b": f(32), "c": f(10, 32), "step": jnp.asarray(3, jnp.int32)}


@pytest.fixture(scope="module")
def case():
    params = _tree()
    # pinned: one group per leaf along its last axis, whatever the default layout becomes
    cb = jp.Codebook.create(params, jax.random.key(2), select=lambda p, leaf: leaf.ndim - 1 if p != "step" else False)
    clean = cb.decode(cb.encode(params))

    def mixed(key, w, axis, rate):
        k1, k2 = jax.random.split(key)
        return C.erasures(k2, C.gross_errors(k1, w, rate, axis=axis, low=1e-2, high=1e6), 0.02)

    bad = C.contaminate(jax.random.key(4), clean, cb, mixed, rate=0.1)
    worse = C.contaminate(jax.random.key(5), clean, cb, C.gross_errors, rate=0.45)
    return cb, clean, bad, worse


def _loop(cb, tree):
    """The reference: ``recover`` on one column at a time, group by group."""
    cols = cb.pack(tree)
    out = {}
    for name in cb.groups:
        A = cb.matrix(name, jnp.float32)
        y = cols[name]
        rs = [jp.recover(A, y[:, j]) for j in range(y.shape[1])]
        fit = np.stack([np.asarray(A, np.float64) @ np.asarray(r.x, np.float64) for r in rs], axis=1)
        cert = np.array([bool(r.certified) for r in rs])
        outl = np.stack([np.asarray(r.outliers) for r in rs], axis=1)
        out[name] = (fit, cert, outl, np.asarray(y))
    return out


def test_matches_a_plain_loop_of_recover_and_the_clean_params(case):
    cb, clean, bad, _ = case
    pur, rep = jp.purify(bad, cb)
    ref = _loop(cb, bad)
    assert rep.ok, str(rep)
    assert rep.solver_shapes == 1 and rep.calls == 1
    got = cb.pack(pur)
    for name, (fit, cert, _, _) in ref.items():
        assert cert.all()
        scale = float(np.max(np.abs(fit)))
        np.testing.assert_allclose(got[name], fit, rtol=0, atol=1e-6 * scale)
    flags = cb.unpack({name: r[2] for name, r in ref.items()})
    for leaf in rep.leaves:
        x = np.asarray(bad[leaf.path])
        assert leaf.erasures == np.count_nonzero(~np.isfinite(x))
        assert leaf.flagged == int(flags[leaf.path].sum()) >= leaf.erasures
        assert leaf.columns == leaf.certified == cb.groups[leaf.path].columns
        np.testing.assert_allclose(
            pur[leaf.path], clean[leaf.path], rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(clean[leaf.path])))
        )
    assert sum(r.erasures for r in rep.leaves) > 0
    assert pur["step"] is bad["step"] and pur["w1"].dtype == jnp.float32


def test_certified_columns_agree_with_highs(case):
    cb, _, bad, _ = case
    pur, _ = jp.purify(bad, cb)
    A = np.asarray(cb.matrix("w1"), np.float64)
    y_bad, y_pur = cb.pack(bad)["w1"], cb.pack(pur)["w1"]
    for j in (0, 7, 23):
        fin = np.isfinite(y_bad[:, j])
        x = lad_highs(A[fin], y_bad[fin, j].astype(np.float64))
        np.testing.assert_allclose(y_pur[:, j], A @ x, rtol=0, atol=1e-5 * np.abs(A @ x).max())


def test_call_size_changes_nothing(case):
    """Fewer items per call (a smaller max_entries): bit-identical.  (Narrower items change the
    rounding only; the per-column reference above is the fully split case, to 1e-6.)"""
    cb, _, bad, _ = case
    one, rep1 = jp.purify(bad, cb)
    (call,) = plan(cb.groups.values(), 1 << 21)
    single, rep2 = jp.purify(bad, cb, max_entries=call.K * call.width)  # one item per call
    assert rep2.calls == call.slots > 1
    for path in cb.protected:
        np.testing.assert_array_equal(single[path], one[path])
    assert rep1.certified == rep2.certified == rep1.columns


def test_uncertified_columns_keep_the_input_so_nothing_is_laundered(case):
    cb, _, _, worse = case
    first, rep1 = jp.purify(worse, cb)
    second, rep2 = jp.purify(first, cb)
    assert not rep1.ok and not rep2.ok
    assert rep2.certified <= rep1.certified < rep1.columns
    assert "NOT OK" in str(rep1) and rep1.on_uncertified == "input"
    ref = _loop(cb, worse)
    got = cb.pack(first)
    for name, (_, cert, _, y) in ref.items():
        assert (~cert).any()
        np.testing.assert_array_equal(got[name][:, ~cert], y[:, ~cert])  # untouched, bit for bit


def test_estimate_warns_and_raise_returns_nothing(case):
    cb, _, _, worse = case
    with pytest.warns(jp.UncertifiedWarning, match="not certified"):
        est, rep = jp.purify(worse, cb, on_uncertified="estimate")
    assert rep.on_uncertified == "estimate" and not rep.ok
    # what "estimate" risks: its columns lie in range(A), so a second purify certifies them
    A = np.asarray(cb.matrix("w1"), np.float64)
    y = cb.pack(est)["w1"].astype(np.float64)
    resid = y - A @ np.linalg.lstsq(A, y, rcond=None)[0]
    assert np.abs(resid).max() < 1e-4 * np.abs(y).max()
    with pytest.raises(jp.UncertifiedError) as e:
        jp.purify(worse, cb, on_uncertified="raise")
    assert isinstance(e.value, RuntimeError) and e.value.report.certified == rep.certified < rep.columns


def test_pooled_layout_report_counts_columns_per_leaf(monkeypatch):
    """Any layout: a leaf split over groups, two leaves in one column, padding, row buckets.  The
    report's per-leaf counts are checked against the segments, the bound against a fake one."""
    cb = PooledCodebook()
    clean = clean_params(cb)
    clean["free"] = clean["free"].at[1].set(jnp.nan)
    cols = {k: np.array(v) for k, v in cb.pack(clean).items()}
    cols["g0"][:6, 0] += 1e3  # 6 of 8 rows: column 0 of g0 cannot be certified
    cols["g0"][2, 3] += 1e3  # one gross error: fine
    bad = cb.replace(clean, cb.unpack(cols))

    real = _purify.recover_padded

    def with_bound(A, Y, n, options):  # a recognizable fake bound, to check its aggregation
        r = real(A, Y, n, options)
        bound = jnp.arange(r.certified.size, dtype=jnp.float32).reshape(r.certified.shape) + 1
        return r._replace(bound=bound)

    monkeypatch.setattr(_purify, "recover_padded", with_bound)
    pur, rep = jp.purify(bad, cb)

    assert rep.solver_shapes == 1  # K = 8 and K = 10 share the 10-row shape
    assert [g.certified for g in rep.groups] == [7, 3] and rep.columns == 8 + 3
    for path in cb.protected:
        held = columns_of(cb, path)
        r = rep[path]
        assert r.columns == len(held)
        assert r.certified == len([c for c in held if c != ("g0", 0)])
        assert r.groups == tuple(sorted({g for g, _ in held}))
    assert rep["b"].columns == 5  # b's 5 entries fill one row of g0: columns 0..4
    # the fake bound of a call is 1 + slot-major column index; g0 is slot 0, g1 slot 1 (width 8)
    assert rep["b"].max_bound == 5.0 and rep["c"].max_bound == 8 + 3
    np.testing.assert_array_equal(np.asarray(pur["a"])[0, 0], np.asarray(bad["a"])[0, 0])  # uncertified: input
    np.testing.assert_allclose(pur["c"], clean["c"], rtol=1e-5, atol=1e-5)

    (free,) = [u for u in rep.unprotected if u.path == "free"]
    assert free.floating and free.nonfinite and free.size == 4
    assert not [u for u in rep.unprotected if u.path == "step"][0].floating
    assert (
        not rep.ok
        and rep.all_certified is False
        and "1 floating parameter leaves (4 values) unprotected" in rep.status()
    )
    d = json.loads(json.dumps(rep.as_dict(), allow_nan=False))
    assert d["ok"] is False and d["certified"] == 10 and d["on_uncertified"] == "input"
    assert {x["path"] for x in d["leaves"]} == {"a", "b", "c"} and d["unprotected"][0]["nonfinite"] is True
    assert "free" in str(rep) and "NOT OK" in str(rep)


def test_all_certified_and_all_protected_is_ok():
    cb = PooledCodebook()
    clean = {k: v for k, v in clean_params(cb).items() if k != "free"}
    clean["opt_state"] = {"mu": jnp.full(3, jnp.nan)}  # training state, not a parameter: listed only
    cols = {k: np.array(v) for k, v in cb.pack(clean).items()}
    cols["g0"][2, 3] += 1e3  # an entry of a
    cols["g1"][0, 1] = np.inf  # an entry of c; g1 also has a NaN padding entry, not c's
    pur, rep = jp.purify(cb.replace(clean, cb.unpack(cols)), cb)
    assert rep.ok and rep.status().startswith("ok") and rep.certified == rep.columns == 8 + 3
    (mu,) = [s for s in rep.state if s.path == "opt_state/mu"]
    assert (mu.kind, mu.status, mu.nonfinite, mu.counts) == ("training", "kept", True, False)
    assert pur["opt_state"]["mu"] is clean["opt_state"]["mu"]
    assert (rep["a"].flagged, rep["b"].flagged, rep["c"].flagged) == (1, 0, 1)
    assert (rep["a"].erasures, rep["c"].erasures) == (0, 1)
    for path in cb.protected:
        np.testing.assert_allclose(pur[path], clean[path], rtol=1e-5, atol=1e-5)


def test_bfloat16_leaves_are_judged_at_their_precision():
    cb = PooledCodebook("bfloat16")
    clean = {k: v for k, v in clean_params(cb).items() if k != "free"}
    assert clean["a"].dtype == jnp.bfloat16
    cols = {k: np.array(v, np.float32) for k, v in cb.pack(clean).items()}
    cols["g0"][2, 3] += 1e3
    pur, rep = jp.purify(cb.replace(clean, cb.unpack(cols)), cb)
    assert rep.ok, str(rep)
    for path in cb.protected:
        assert pur[path].dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(pur[path], np.float32), np.asarray(clean[path], np.float32), rtol=2**-7, atol=1e-2
        )


def test_unchecked_inference_state_keeps_the_report_from_being_ok():
    """Batch statistics no seal vouches for are not silently fine: listed as not checked, not ok."""
    rng = np.random.default_rng(0)
    variables = {"params": {"w": jnp.asarray(rng.standard_normal((32, 8)), jnp.float32)}, "batch_stats": {}}
    variables["batch_stats"]["mean"] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    cb = jp.Codebook.create(variables, bytes(range(32)))
    deployed = cb.decode(cb.init_latent(variables))
    tree = dict(deployed, batch_stats={"mean": deployed["batch_stats"]["mean"].at[3].set(jnp.nan)})
    for seal in (None, deployed["params"]):  # no seal; a seal of the params alone
        if seal is not None:
            cb = cb.seal(seal)
        pur, rep = jp.purify(tree, cb)
        assert rep.all_certified and not rep.unprotected_parameters and rep.verified
        (stats,) = rep.state
        assert (stats.path, stats.kind, stats.status, stats.nonfinite, stats.counts) == (
            "batch_stats/mean",
            "inference",
            "unchecked",
            True,
            True,
        )
        assert not rep.ok and "1 leaf of inference state (8 values: batch_stats/mean) not checked" in rep.status()
        assert pur["batch_stats"]["mean"] is tree["batch_stats"]["mean"]


def test_nnx_module_in_state_out_batch_stats_restored_keys_listed_not_counted():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(32, 16, rngs=rngs)
            self.bn = nnx.BatchNorm(16, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

    model = Net(nnx.Rngs(0))
    cb = jp.Codebook.create(model, jax.random.key(1))
    clean = cb.replace(
        model,
        cb.unpack(
            {
                n: np.asarray(cb.matrix(n)) @ np.random.default_rng(0).standard_normal((g.n, g.columns))
                for n, g in cb.groups.items()
            }
        ),
    )
    nnx.update(model, clean)
    cb = cb.seal(model)  # keeps a copy of the batch statistics
    bad = C.contaminate(jax.random.key(2), model, cb, C.gross_errors, rate=0.1)
    nnx.update(model, bad)
    pur, rep = jp.purify(model, cb)
    assert isinstance(pur, nnx.State) and rep.ok, str(rep)
    assert rep.unprotected == ()
    kinds = {s.path: (s.kind, s.status, s.counts) for s in rep.state}
    assert kinds["bn/mean"] == ("inference", "unchanged", False)
    assert kinds["drop/rngs/key"] == ("rng", "kept", False)
    nnx.update(model, pur)
    np.testing.assert_allclose(model.lin.kernel[...], clean["lin"]["kernel"][...], rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_argument_or_leaf(case):
    cb, clean, _, _ = case
    with pytest.raises(ValueError, match="on_uncertified"):
        jp.purify(clean, cb, on_uncertified="drop")
    with pytest.raises(ValueError, match="max_entries"):
        jp.purify(clean, cb, max_entries=0)
    with pytest.raises(TypeError, match="rtoll"):
        jp.purify(clean, cb, rtoll=1e-3)
    with pytest.raises(ValueError, match="atol"):
        jp.purify(clean, cb, atol=-1.0)
    with pytest.raises(ValueError, match="'w1'.*int32"):
        jp.purify(dict(clean, w1=clean["w1"].astype(jnp.int32)), cb)
    with pytest.raises(ValueError, match="'w2'"):
        jp.purify(dict(clean, w2=clean["w2"][:3]), cb)
    with pytest.raises(ValueError, match="'b'"):
        jp.purify({k: v for k, v in clean.items() if k != "b"}, cb)
    forged = PooledCodebook()
    g = forged._groups["g1"]
    forged._groups["g1"] = type(g)(g.name, g.K, g.n, g.columns, "int32", g.segments)
    with pytest.raises(ValueError, match="'g1'.*int32"):
        jp.purify(clean_params(PooledCodebook()), forged)


def test_input_is_never_modified(case):
    cb, _, bad, _ = case
    host = jax.tree.map(np.array, bad)
    before = jax.tree.map(np.copy, host)
    pur, _ = jp.purify(host, cb)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(host)):
        np.testing.assert_array_equal(a, b)
    assert all(np.asarray(p).dtype == np.asarray(h).dtype for p, h in zip(jax.tree.leaves(pur), jax.tree.leaves(host)))


def test_working_copy_is_aligned_and_handed_to_jax_without_a_copy(case):
    # issue 10, item 8: the purified leaf shares the working copy's memory instead of copying it;
    # that needs a 64-byte aligned buffer (NumPy aligns to 16, and device_put copies such a buffer)
    for src in [
        np.arange(15.0, dtype=np.float32).reshape(3, 5)[:, ::-1],
        np.arange(7.0)[1:],
        np.arange(33.0).astype(jnp.bfloat16).reshape(1, 33),
    ]:
        work = _purify._aligned_copy(src)
        assert work.ctypes.data % 64 == 0 and work.flags.writeable and work.flags.c_contiguous
        assert work.dtype == src.dtype and not np.shares_memory(work, src)
        np.testing.assert_array_equal(work, src)
    cb, _, bad, _ = case
    work = _purify._aligned_copy(np.ones(bad["w1"].shape, np.float32))
    out = _purify._hand_over({**bad, "h": np.zeros(3)}, {"w1": work, "h": np.ones(3)})
    assert out["w1"].unsafe_buffer_pointer() == work.ctypes.data  # aliased, not copied
    assert isinstance(out["h"], np.ndarray)  # a host leaf is not handed over
    assert cb.replace(bad, {"w1": out["w1"]})["w1"] is out["w1"]  # and replace keeps it as it is
    with pytest.raises(ValueError, match="'w1'.*shape"):
        cb.replace(bad, {"w1": jnp.ones((3, 3), jnp.float32)})


@pytest.mark.parametrize("select", [None, "interleave"])
def test_a_leaf_split_over_groups_comes_back_as_one_view_of_the_working_copy(select):
    # issue 25, item 6: a leaf split in row blocks was concatenated from its groups' working copies
    # (one more copy of the leaf: 3.31× in all); now the groups are views of one aligned buffer per
    # leaf and the purified leaf is that buffer, handed to JAX without a copy
    from jaxpurify import _layout, _working

    rng = np.random.default_rng(21)
    params = {
        "tall": jnp.asarray(rng.standard_normal((1300, 12)), jnp.float32),  # row blocks of ≤ 512 (interleave: padded)
        "b1": rng.standard_normal(5).astype(np.float32),  # pooled together
        "b2": rng.standard_normal(9).astype(np.float32),
    }
    cb = jp.Codebook.create(params, bytes(range(32)), select=lambda p, leaf: select if p == "tall" else None)
    groups = [g for g in cb.groups.values() if "tall" in g.members]
    assert len(groups) >= 2 and all(g.members == ("tall",) for g in groups)
    cols = cb.pack(params)
    work = _working.working_copies(cb.groups.values(), cols)
    for name, a in cols.items():
        assert work[name].flags.writeable and not np.shares_memory(work[name], a)
        np.testing.assert_array_equal(work[name], a)  # NaN padding included
    leaves = cb.unpack(work)
    tall = leaves["tall"]
    assert all(np.shares_memory(tall, work[g.name]) for g in groups)  # a view, not a concatenation
    assert tall.ctypes.data % _working.ALIGN == 0 and tall.flags.c_contiguous
    np.testing.assert_array_equal(tall, np.asarray(params["tall"]))
    np.testing.assert_array_equal(leaves["b2"], params["b2"])
    handed = _purify._hand_over(params, leaves)
    assert handed["tall"].unsafe_buffer_pointer() == tall.ctypes.data  # aliased by JAX, not copied
    # pieces that are not consecutive runs of one buffer are still concatenated
    a, b = np.arange(6.0), np.arange(6.0, 12.0)
    assert _working.join([a, b]) is None and _working.join([a[:3], a[4:]]) is None
    np.testing.assert_array_equal(_layout._concatenate(np, [a, b]), np.arange(12.0))
    assert np.shares_memory(_working.join([a[:2], a[2:5]]), a)


@pytest.mark.slow  # two more solver shapes to compile; the views themselves are checked above
@pytest.mark.parametrize("select", [None, "interleave"])
def test_a_leaf_split_over_groups_is_purified_through_the_shared_buffer(select):
    rng = np.random.default_rng(22)
    raw = {"tall": rng.standard_normal((4400, 4)).astype(np.float32)}
    cb = jp.Codebook.create(raw, bytes(range(32)), select=lambda p, leaf: select)
    assert len(cb.groups) >= 2
    clean = {"tall": jnp.asarray(cb.decode(cb.init_latent(raw))["tall"])}
    bad = {"tall": clean["tall"].at[::5, 1].set(1e4)}
    purified, report = jp.purify(bad, cb)
    assert report.all_certified
    np.testing.assert_allclose(
        purified["tall"], clean["tall"], rtol=1e-5, atol=1e-5 * float(jnp.abs(clean["tall"]).max())
    )


def test_plan_packs_narrow_groups_into_narrow_items():
    G = lambda name, K, n, m: types.SimpleNamespace(name=name, K=K, n=n, columns=m, dtype="float32")
    wide = G("wide", 256, 64, 10_000)
    narrow = [G(f"s{i}", 256, 64, 1) for i in range(40)]
    other = [G("k240", 240, 64, 300), G("k200", 200, 48, 5), G("f64", 256, 64, 3), G("k64", 64, 16, 20_000)]
    other[2].dtype = "float64"
    groups = [wide] + narrow + other
    budget = 1 << 21
    calls = plan(groups, budget)
    seen = {}
    for c in calls:
        assert c.slots * c.K * c.width <= budget and 0 < len(c.items) <= c.slots
        for it in c.items:
            assert 0 < it.stop - it.start <= c.width
            for j in range(it.start, it.stop):
                assert (it.group, j) not in seen
                seen[(it.group, j)] = c
    assert set(seen) == {(g.name, j) for g in groups for j in range(g.columns)}
    assert all(seen[(g.name, 0)].width <= 128 for g in narrow)  # not a 1024-wide block each
    # a few columns ride in a bigger shape (padding costs less than a compilation); many do not
    assert seen[("k240", 0)].shape[1:3] == (256, 64) and seen[("k200", 0)].shape[1:3] == (256, 64)
    assert seen[("k64", 0)].shape[1:3] == (64, 16)
    assert seen[("f64", 0)].dtype == "float64" and seen[("wide", 0)].dtype == "float32"
    solved = sum(c.slots * c.width for c in calls)
    assert solved < 1.05 * sum(g.columns for g in groups) + 40 * 128 + 4 * 1024
    assert len({c.shape for c in calls}) <= 6
    assert plan(groups, budget) == calls  # pure
    tiny = plan([G("t", 64, 16, 3)], 10)  # a budget below one column: one column per call
    assert [(c.slots, c.width, c.items[0].start) for c in tiny] == [(1, 1, 0), (1, 1, 1), (1, 1, 2)]


def test_one_hidden_cnn_structure():
    m = models.OneHiddenCNN(filters=12, patch=4, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    p = m.init(jax.random.key(1), x)["params"]
    assert p["hidden"]["kernel"].shape == (4, 4, 1, 12) and p["readout"]["kernel"].shape == (12, 3)
    # f(x) = V · mean_p relu(W x_p + b) + c over the four non-overlapping 4×4 patches
    W = np.asarray(p["hidden"]["kernel"]).reshape(16, 12)
    patches = [np.asarray(x)[:, i : i + 4, j : j + 4, 0].reshape(2, 16) for i in (0, 4) for j in (0, 4)]
    h = np.mean([np.maximum(q @ W + np.asarray(p["hidden"]["bias"]), 0) for q in patches], axis=0)
    ref = h @ np.asarray(p["readout"]["kernel"]) + np.asarray(p["readout"]["bias"])
    np.testing.assert_allclose(m.apply({"params": p}, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("redundancy", [1.5, 2.0])
def test_entries_stuck_near_the_largest_float_are_not_reported_ok(redundancy):
    """Issue 25: at redundancy 1.5 or 2 (no seal), small weights with K − n entries per column stuck
    near FLT_MAX came back zeroed with ``report.ok``.  Past the count bound: not certified, and the
    columns keep their input values (on_uncertified="input")."""
    rng = np.random.default_rng(25)
    params = {"w": jnp.asarray(rng.standard_normal((8, 32)) * 1e-3, jnp.float32)}
    cb = jp.Codebook.create(params, bytes(range(32)), redundancy=redundancy, select=lambda p, leaf: 1)
    clean = cb.decode(cb.encode(params))
    g = cb.groups["w"]
    W = np.array(clean["w"], copy=True)  # column j of the code is row j of W
    for j in range(g.columns):
        W[j, rng.choice(g.K, g.K - g.n, replace=False)] = np.finfo(np.float32).max
    out, report = jp.purify({"w": W}, cb)
    assert not report.ok and report.certified == 0
    np.testing.assert_array_equal(np.asarray(out["w"]), W)


@pytest.mark.parametrize("scale", [1e-40, 1e-38, 5e-38, 1e-36, 1e-33, 1e-30, 1e36, 2e37])
def test_write_back_keeps_what_was_certified_at_extreme_scales(scale):
    """Issue 25: below ~1e-30 purify's A x̂ lost its subnormal products and results (XLA on the CPU
    flushes them to zero): certified clean columns came back 18% off.  Every column recover
    certifies is written back within its own bound of the float64 reference A θ: ‖A‖₂·bound·‖x̂‖
    plus the rounding of the stored float32 result (eps relative, half the smallest subnormal)."""
    rng = np.random.default_rng(int(-np.log10(scale)) % 97)
    cb = jp.Codebook.create({"w": jnp.zeros((32, 64), jnp.float32)}, bytes(range(32)), select=lambda p, leaf: 1)
    g = cb.groups["w"]
    A32 = np.asarray(cb.matrix("w", "float32"))
    A = A32.astype(np.float64)
    theta = rng.standard_normal((g.columns, g.n)) * scale
    ref = theta @ A.T  # column j of the code is row j of W
    W = ref.astype(np.float32)
    out, _ = jp.purify({"w": W}, cb)
    got = np.asarray(out["w"], np.float64)
    rec = jp.recover(A32, W.T)
    cert, bound = np.asarray(rec.certified), np.asarray(rec.bound, np.float64)
    assert cert.sum() >= (2 if scale < 1e-37 else g.columns - 2), cert.sum()
    xn = np.linalg.norm(np.asarray(rec.x, np.float64), axis=0)
    eps, sub = np.finfo(np.float32).eps, np.finfo(np.float32).smallest_subnormal
    allowed = np.linalg.norm(A, 2) * bound * xn + eps * np.linalg.norm(ref, axis=1) + np.sqrt(g.K) * sub
    err = np.linalg.norm(got - ref, axis=1)
    assert (err[cert] <= allowed[cert]).all(), (err / allowed)[cert].max()
    np.testing.assert_array_equal(got[~cert], W[~cert].astype(np.float64))  # the others kept as they came


@pytest.mark.parametrize("device", [False, True])
def test_a_write_back_that_overflows_is_not_reported_certified(device):
    """Issue 25: a certified x̂ whose A x̂ overflows float32 was written back as inf and counted as
    certified.  Rows of W (code columns) at three scales, float64 reference A θ, 2–3 negated
    entries each: max|Aθ| = 0.5·FLT_MAX (in range), = FLT_MAX (A x̂ within rounding of the top:
    either side), = 1.01·FLT_MAX (the stored top entry is inf, an erasure; float64 says the
    clean value is not a float32).  recover certifies most of the last; purify must neither write
    them nor count them, and nothing it writes is non-finite or outside its bound."""
    rng = np.random.default_rng(38)
    cb = jp.Codebook.create({"w": jnp.zeros((192, 64), jnp.float32)}, bytes(range(32)), select=lambda p, leaf: 1)
    g = cb.groups["w"]
    A32 = np.asarray(cb.matrix("w", "float32"))
    A = A32.astype(np.float64)
    big = float(np.finfo(np.float32).max)
    top = np.repeat([0.5 * big, big, 1.01 * big], 64)[:, None]
    ref = rng.standard_normal((g.columns, g.n)) @ A.T
    ref *= top / np.abs(ref).max(axis=1, keepdims=True)
    with np.errstate(over="ignore"):
        W = ref.astype(np.float32)
    for j in range(g.columns):
        rows = rng.choice(np.flatnonzero(np.isfinite(W[j])), 3, replace=False)
        W[j, rows] = -W[j, rows]
    over = np.abs(ref).max(axis=1) >= 2.0**128 * (1 - 2.0**-25)  # rounds to inf in float32 (float64 arithmetic)
    assert over.sum() == 64 and not over[:128].any()
    rec = jp.recover(A32, W.T)
    cert, bound = np.asarray(rec.certified), np.asarray(rec.bound, np.float64)
    assert cert[over].sum() >= 48  # recover alone certifies them: x̂ is right, A x̂ is not a float32

    out, report = jp.purify({"w": W}, cb, device=device)
    got = np.asarray(out["w"])
    kept = np.all((got == W) | (np.isnan(got) & np.isnan(W)), axis=1)
    written = ~kept
    assert report.certified == written.sum()
    assert not written[over].any()
    assert np.isfinite(got[written]).all()
    assert written[:64].sum() >= 60  # in range: repaired
    xn = np.linalg.norm(np.asarray(rec.x, np.float64), axis=0)
    allowed = np.linalg.norm(A, 2) * bound * xn + np.finfo(np.float32).eps * np.linalg.norm(ref, axis=1)
    err = np.linalg.norm(got.astype(np.float64) - ref, axis=1)
    assert (err[written] <= allowed[written]).all(), (err / allowed)[written].max()
