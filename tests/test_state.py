"""Parameters vs state, on trees written as their projects write them: Flax's own ``TrainState``
(optax.adam) around a linen CNN with BatchNorm as Flax's batch-norm guide writes it, and an NNX
CNN with BatchNorm and Dropout saved with Orbax's ``StandardCheckpointer`` as the NNX docs show.

References: jax's own flattening and the TrainState's fields (kinds), ``nnx.to_flat_state``'s
variable types, Orbax restoring the purified checkpoint the NNX docs' way, the model's own
``apply`` on the deployed tree, the deployed bytes (bit for bit), and the codebook file read with
``json`` / ``base64`` / NumPy.
"""

import base64
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import jaxpurify as jp
from jaxpurify import _seal, cli
from jaxpurify import contamination as C
from jaxpurify import tree as T


class CNN(nn.Module):  # Flax's batch-norm guide, smaller
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(features=8, kernel_size=(3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(features=16)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        return nn.Dense(features=10)(x)


class TrainState(train_state.TrainState):  # as the guide extends it
    batch_stats: Any


def _key_name(k) -> str:
    return str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a)))


def _paths(tree, prefix: str) -> list[str]:
    """'/'-joined paths of a subtree by jax's own flattening (the reference for tree's names)."""
    head = [prefix] if prefix else []
    return ["/".join(head + [_key_name(k) for k in path]) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _with_mean(stats: dict, module: str, mean) -> dict:
    """Batch statistics with one module's running mean replaced (a new dict; nothing mutated)."""
    return {**stats, module: {**stats[module], "mean": mean}}


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


@pytest.fixture(scope="module")
def linen():
    """A deployed linen model: params = decode(latent) of a codebook made from the TrainState,
    batch statistics moved by one training step, Adam's moments after one step."""
    model = CNN()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 8, 1)), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))  # one compilation, not one per op
    state = TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=optax.adam(1e-3), batch_stats=variables["batch_stats"]
    )
    cb = jp.Codebook.create(state, bytes(range(32)))
    params = cb.decode(cb.init_latent(state))["params"]

    def loss(p):
        logits, upd = model.apply(
            {"params": p, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(logits**2), upd

    grads, upd = jax.jit(jax.grad(loss, has_aux=True))(params)
    state = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)
    return model, x, cb, state.replace(params=params, batch_stats=upd["batch_stats"])


def test_kinds_of_flax_trees_against_their_fields(linen):
    model, x, cb, state = linen
    fields = {"step": "training", "params": "param", "opt_state": "training", "batch_stats": "inference"}
    want = {p: kind for f, kind in fields.items() for p in _paths(getattr(state, f), f)}
    assert {leaf.path: leaf.kind for leaf in T.flatten(state)[0]} == want
    assert len(want) == 1 + 10 + (1 + 2 * 10) + 4  # step; params; Adam's count, mu, nu; batch statistics
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    got = {leaf.path: leaf.kind for leaf in T.flatten(variables)[0]}
    assert got == {p: k for p, k in want.items() if p.split("/")[0] in variables}
    plain = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    assert {leaf.path: leaf.kind for leaf in T.flatten(plain)[0]} == {
        p: k for p, k in want.items() if p.split("/")[0] in plain
    }
    # a TrainState holding the whole variables dict: the root is params/params/
    nested = TrainState.create(apply_fn=model.apply, params=variables, tx=optax.sgd(0.1), batch_stats={})
    got = {leaf.path: leaf.kind for leaf in T.flatten(nested)[0]}
    assert {p for p, k in got.items() if k == "param"} == set(_paths(state.params, "params/params"))
    assert {p for p, k in got.items() if k == "inference"} == set(_paths(state.batch_stats, "params/batch_stats"))


def test_one_codebook_reads_params_variables_and_train_state(linen):
    model, x, _, state = linen
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    plain = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    trees = (state.params, variables, state, plain)
    seen = []
    made = [jp.Codebook.create(t, bytes(range(32)), select=lambda p, v: seen.append(p)) for t in trees]
    # select is asked about parameters only: never about moments, counters or statistics
    assert sorted(seen) == sorted(_paths(state.params, "") + _paths(state.params, "params") * 3)
    for i, cb in enumerate(made):
        cap = cb.capacity()
        assert cap.fraction == 1.0 and cap.skipped == []
        ref = cb.pack(trees[i])
        for t in trees:
            for name, y in cb.pack(t).items():
                np.testing.assert_array_equal(y, ref[name])
    # the train state's codebook lists its state apart, leaf by leaf (a plain loop over the fields)
    by_kind = made[2].capacity().as_dict()["state"]
    assert sorted(by_kind["training"]["leaves"]) == sorted(["step"] + _paths(state.opt_state, "opt_state"))
    assert by_kind["training"]["values"] == 1 + sum(np.size(v) for v in jax.tree.leaves(state.opt_state))
    assert sorted(by_kind["inference"]["leaves"]) == sorted(_paths(state.batch_stats, "batch_stats"))
    assert "training state (not encoded): 22 leaves" in str(made[2].capacity())
    # the params' codebook: a train state's extra leaves are state, not unprotected parameters
    reasons = {p: r for p, _, r in made[0].unprotected(state)}
    assert set(reasons) == {p for p in _paths(state.opt_state, "opt_state")} | {"step"} | set(
        _paths(state.batch_stats, "batch_stats")
    )
    assert reasons["opt_state/0/mu/Dense_0/kernel"] == "training state (optimizer state)"
    assert reasons["batch_stats/BatchNorm_0/mean"] == "inference state (linen collection 'batch_stats')"
    # but a parameter the model did not have is another model
    extra = state.replace(params=dict(state.params, Extra={"kernel": jnp.zeros((2, 2))}))
    for cb in made:
        with pytest.raises(ValueError, match="params has leaf 'params/Extra/kernel'"):
            cb.check(extra)
    with pytest.raises(ValueError, match="leaf 'params/Dense_1/bias' of the codebook's model is missing"):
        made[0].check(state.replace(params={k: v for k, v in state.params.items() if k != "Dense_1"}))


def test_train_state_purified_in_place_batch_stats_restored_bit_for_bit(linen, tmp_path):
    model, x, cb, state = linen
    cb = jp.Codebook.create(state, bytes(range(32))).seal(state)
    cb.save(tmp_path / "cb.json")
    cb = jp.Codebook.load(tmp_path / "cb.json")  # the copy survives the file
    bad = C.contaminate(jax.random.key(1), state, cb, C.gross_errors, rate=0.05)
    rng = np.random.default_rng(2)
    burst = rng.integers(0, 2**32, 16, dtype=np.uint32).view(np.float32)  # 64 random bytes over one leaf
    mean = burst
    bad = bad.replace(batch_stats=_with_mean(bad.batch_stats, "BatchNorm_1", jnp.asarray(mean)))
    changed = int(np.count_nonzero(_bits(mean) != _bits(state.batch_stats["BatchNorm_1"]["mean"])))
    assert changed > 12

    pur, rep = jp.purify(bad, cb)
    assert isinstance(pur, TrainState) and pur.apply_fn is state.apply_fn and pur.tx is state.tx
    assert rep.ok, str(rep)
    for path, w in zip(_paths(state.params, "params"), jax.tree.leaves(state.params)):
        got = dict(T.leaves_with_paths(pur)[0])[path]
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5 * float(jnp.abs(w).max()))
    for got, want in zip(jax.tree.leaves(pur.batch_stats), jax.tree.leaves(state.batch_stats)):
        np.testing.assert_array_equal(_bits(got), _bits(want))  # exact
    # training state comes back as it came: the same objects
    assert pur.step is bad.step
    assert all(a is b for a, b in zip(jax.tree.leaves(pur.opt_state), jax.tree.leaves(bad.opt_state)))
    # the model's own apply: the purified tree predicts what the deployed one did
    deployed = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    np.testing.assert_allclose(
        model.apply({"params": pur.params, "batch_stats": pur.batch_stats}, x, train=False),
        deployed,
        rtol=1e-4,
        atol=1e-4 * float(jnp.abs(deployed).max()),
    )
    # the report against a plain loop over the fields
    by_kind = {}
    for s in rep.state:
        by_kind.setdefault(s.kind, []).append(s)
    assert sorted(s.path for s in by_kind["training"]) == sorted(["step"] + _paths(state.opt_state, "opt_state"))
    assert sorted(s.path for s in by_kind["inference"]) == sorted(_paths(state.batch_stats, "batch_stats"))
    assert {s.path: s.status for s in by_kind["inference"]} == {
        p: "restored" if p == "batch_stats/BatchNorm_1/mean" else "unchanged"
        for p in _paths(state.batch_stats, "batch_stats")
    }
    assert rep.restored == changed and rep.unprotected == () and {s.status for s in by_kind["training"]} == {"kept"}
    assert f"inference state restored from the codebook's sealed copy ({changed} entries in 1 leaf)" in rep.status()
    assert f"restored {changed} entries from the codebook's sealed copy" in str(rep)
    assert "(22 leaves)" in str(rep) and "changed beyond" not in str(rep)
    d = json.loads(json.dumps(rep.as_dict(), allow_nan=False))
    assert d["restored"] == changed and len(d["state"]) == len(rep.state)


def test_the_state_copy_in_the_file_is_the_deployed_bytes_and_authenticated(linen, tmp_path):
    _, _, _, state = linen
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    cb = jp.Codebook.create(variables, bytes(range(32)))
    cb = cb.seal(variables)
    cb.save(tmp_path / "cb.json")
    doc = json.loads((tmp_path / "cb.json").read_text())
    copies = doc["seal"]["state"]
    assert sorted(copies) == sorted(_paths(state.batch_stats, "batch_stats"))
    for path, want in zip(_paths(state.batch_stats, "batch_stats"), jax.tree.leaves(state.batch_stats)):
        raw = np.frombuffer(base64.b64decode(copies[path]["data"]), "<f4").reshape(copies[path]["shape"])
        np.testing.assert_array_equal(raw.view(np.uint32), _bits(want))
    # cost: 4/3 of the statistics' bytes, plus the JSON around them
    nbytes = sum(np.asarray(v).nbytes for v in jax.tree.leaves(state.batch_stats))
    assert 4 * nbytes / 3 <= len(json.dumps(copies)) <= 4 * nbytes / 3 + 100 * len(copies)
    # an edited copy is a tampered file
    d = copies["batch_stats/BatchNorm_0/mean"]
    a = np.frombuffer(base64.b64decode(d["data"]), "<f4").copy()
    a[0] += 1.0
    d["data"] = base64.b64encode(a.tobytes()).decode()
    (tmp_path / "cb.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="tampered"):
        jp.Codebook.load(tmp_path / "cb.json")


def test_a_codebook_of_the_params_alone_seals_and_restores_the_statistics(linen):
    """Made from the params at init, sealed with the full variables at deployment (no re-encoding)."""
    _, _, _, state = linen
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    cb = jp.Codebook.create(state.params, bytes(range(32)))
    cb = cb.seal(variables)
    assert sorted(cb.seal_record.state) == sorted("../" + p for p in _paths(state.batch_stats, "batch_stats"))
    mean = state.batch_stats["BatchNorm_0"]["mean"].at[1:3].set(-7.0)
    for tree in (
        {"params": state.params, "batch_stats": _with_mean(state.batch_stats, "BatchNorm_0", mean)},
        state.replace(batch_stats=_with_mean(state.batch_stats, "BatchNorm_0", mean)),
    ):
        back, counts = cb.restore_state(tree)
        want = {p: 0 for p in _paths(state.batch_stats, "batch_stats")}
        assert counts == want | {"batch_stats/BatchNorm_0/mean": 2}
        got = back["batch_stats"] if isinstance(back, dict) else back.batch_stats
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state.batch_stats)):
            np.testing.assert_array_equal(_bits(a), _bits(b))
    assert cb.restore_state(state.params) == (state.params, {})  # nothing to restore in the params alone


def test_decode_gives_back_every_collection_the_model_applies(linen):
    model, x, _, state = linen
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    cb = jp.Codebook.create(variables, bytes(range(32)))
    latent = cb.init_latent(variables)
    out = cb.decode(latent)
    assert set(out) == {"params", "batch_stats"}
    for got, want in zip(jax.tree.leaves(out["batch_stats"]), jax.tree.leaves(state.batch_stats)):
        np.testing.assert_array_equal(_bits(got), _bits(want))
    ref = model.apply({"params": out["params"], "batch_stats": state.batch_stats}, x, train=False)
    np.testing.assert_array_equal(model.apply(out, x, train=False), ref)
    # state is not trained through decode; the params are
    g = jax.jit(jax.grad(lambda t: jnp.sum(model.apply(cb.decode(t), x, train=False))))(latent)
    assert all(float(jnp.abs(g[p]).max()) == 0.0 for p in _paths(state.batch_stats, "batch_stats"))
    assert all(float(jnp.abs(v).max()) > 0 for n, v in g.items() if not n.startswith("batch_stats/"))
    # the latent without its state: the params alone
    only = {n: v for n, v in latent.items() if not n.startswith("batch_stats/")}
    assert set(cb.decode(only)) == {"params"}


def test_an_older_file_without_kinds_or_copies_behaves_as_before(linen, tmp_path):
    """A version-2 file from before kinds were recorded: its seal sketches the batch statistics
    (detected, not repaired), and the tree classifies the state."""
    _, _, _, state = linen
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    cb = jp.Codebook.create(variables, bytes(range(32)))
    cb.kinds, cb._tree = None, [k for k in cb._tree if k[0] == "params"]  # what create wrote before
    cb.seal_record = _seal.Seal.create(cb.secret, variables)  # every floating leaf sketched, no copy
    cb.save(tmp_path / "old.json")
    doc = json.loads((tmp_path / "old.json").read_text())
    assert "kinds" not in doc and "root" not in doc and "state" not in doc["seal"]
    old = jp.Codebook.load(tmp_path / "old.json")
    assert old.kinds is None and old.root == "params/"
    pur, rep = jp.purify(variables, old)
    assert rep.ok and {s.status for s in rep.state} == {"verified"}
    mean = state.batch_stats["BatchNorm_0"]["mean"].at[0].set(1e30)
    bad = {"params": state.params, "batch_stats": _with_mean(state.batch_stats, "BatchNorm_0", mean)}
    pur, rep = jp.purify(bad, old)
    assert not rep.ok and rep.all_certified
    assert {s.path: s.status for s in rep.state}["batch_stats/BatchNorm_0/mean"] == "changed"
    assert "1 leaf of state changed since sealed and not restored (batch_stats/BatchNorm_0/mean)" in rep.status()
    assert "changed beyond the purification's error bound" not in rep.status()
    assert pur["batch_stats"]["BatchNorm_0"]["mean"] is mean
    # the params alone still purify with it (the sealed statistics are then simply not there)
    assert jp.purify(state.params, old)[1].ok


@pytest.mark.slow  # compiles the solver under jit
def test_jit_restores_the_state_as_the_host_path_does(linen):
    _, _, _, state = linen
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    cb = jp.Codebook.create(variables, bytes(range(32)))
    cb = cb.seal(variables)
    bad = C.contaminate(jax.random.key(4), variables, cb, C.gross_errors, rate=0.05)
    mean = bad["batch_stats"]["BatchNorm_0"]["mean"].at[:3].set(jnp.nan)
    bad = {"params": bad["params"], "batch_stats": _with_mean(bad["batch_stats"], "BatchNorm_0", mean)}
    host, rep = jp.purify(bad, cb, device=False)
    jitted, _ = jax.jit(lambda t: jp.purify(t, cb))(bad)
    assert rep.ok and rep.restored == 3
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(host)):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    for a, b in zip(jax.tree.leaves(jitted["batch_stats"]), jax.tree.leaves(state.batch_stats)):
        np.testing.assert_array_equal(_bits(a), _bits(b))


# -- NNX -------------------------------------------------------------------------------------------
class NNXCNN(nnx.Module):
    """The linen CNN above in NNX, with Dropout (same parameter shapes, so the same solver shapes)."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.dense = nnx.Linear(4 * 4 * 8, 16, rngs=rngs)
        self.bn2 = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.avg_pool(nnx.relu(self.bn(self.conv(x))), window_shape=(2, 2), strides=(2, 2))
        x = self.drop(nnx.relu(self.bn2(self.dense(x.reshape(x.shape[0], -1)))))
        return self.head(x)


_NNX_KINDS = {nnx.Param: "param", nnx.BatchStat: "inference", nnx.RngKey: "rng", nnx.RngCount: "rng"}


def _nnx_deployed():
    """An NNX model whose parameters are decode(latent), batch statistics moved by a training call."""
    model = NNXCNN(nnx.Rngs(0, dropout=1))
    cb = jp.Codebook.create(model, bytes(range(32)))
    nnx.update(model, cb.decode(cb.init_latent(model)))
    model.train()
    model(jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 1)), jnp.float32))
    model.eval()
    return model, cb


def test_nnx_kinds_by_variable_type_and_through_the_codebook_record(tmp_path):
    model = NNXCNN(nnx.Rngs(0, dropout=1))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    both = {"model": nnx.state(model), "optimizer": nnx.state(opt)}
    want = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        want["model/" + "/".join(map(str, path))] = _NNX_KINDS[type(var)]
    for path, _ in nnx.to_flat_state(nnx.state(opt)):
        want["optimizer/" + "/".join(map(str, path))] = "training"
    assert {leaf.path: leaf.kind for leaf in T.flatten(both)[0]} == want
    # the pure dict has no variable types; the codebook's record (through its file) still knows them
    cb = jp.Codebook.create(both, bytes(range(32)))
    cb.save(tmp_path / "cb.json")
    cb = jp.Codebook.load(tmp_path / "cb.json")
    pure = {k: nnx.to_pure_dict(v) for k, v in both.items()}
    assert {e.path: e.kind for e in cb.classify(pure)} == want
    assert set(cb.protected) == {p for p, k in want.items() if k == "param"}


def test_nnx_checkpoints_as_the_docs_write_them_purify_through_the_cli(tmp_path, capsys):
    import orbax.checkpoint as ocp

    model, cb = _nnx_deployed()
    deployed = nnx.state(model)
    cb = cb.seal(model)
    cb.save(tmp_path / "cb.json")
    bad = C.contaminate(jax.random.key(3), deployed, cb, C.gross_errors, rate=0.05)
    mean = np.array(bad["bn"]["mean"][...])
    mean[2] = 1e30
    bad["bn"]["mean"][...] = jnp.asarray(mean)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp_path / "state", bad)  # as the NNX checkpointing guide saves nnx.state(model)
    ckptr.save(tmp_path / "pure", nnx.to_pure_dict(bad))  # and its pure dict
    ckptr.wait_until_finished()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 1)), jnp.float32)
    want = model(x)
    for name in ("state", "pure"):
        out = tmp_path / f"{name}-purified"
        code = cli.main(["purify", str(tmp_path / name), "--codebook", str(tmp_path / "cb.json"), "--out", str(out)])
        text = capsys.readouterr().out
        assert code == 0, text
        assert "restored 1 entry from the codebook's sealed copy" in text
        # restored as the NNX docs restore: an abstract model, nnx.split, Orbax's restore, merge
        graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: NNXCNN(nnx.Rngs(0, dropout=1))))
        if name == "state":
            restored = ocp.StandardCheckpointer().restore(out, abstract_state)
        else:
            nnx.replace_by_pure_dict(abstract_state, ocp.StandardCheckpointer().restore(out))
            restored = abstract_state
        back = nnx.merge(graphdef, restored)
        back.eval()
        for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(back)), nnx.to_flat_state(deployed)):
            a, b = a[...], b[...]
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                assert jax.random.key_impl(a) == jax.random.key_impl(b)
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            if type(dict(nnx.to_flat_state(deployed))[path]) is nnx.Param:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
            else:
                np.testing.assert_array_equal(_bits(a), _bits(b))  # state: exact
        np.testing.assert_allclose(back(x), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    # the params alone, with the sealed codebook: the statistics are simply not there
    pur, rep = jp.purify(nnx.state(model, nnx.Param), cb)
    assert rep.ok and rep.state == ()


def test_encoded_module_trains_the_parameters_latent_only():
    model = NNXCNN(nnx.Rngs(0, dropout=1))
    cb = jp.Codebook.create(model, bytes(range(32)))
    latent = cb.init_latent(model)
    stats = {"bn/mean", "bn/var", "bn2/mean", "bn2/var"}
    assert stats <= set(latent)  # init_latent keeps the state, as decode needs it
    encoded = jp.EncodedModule(model, latent)
    assert set(encoded.values()) == set(latent) - stats
    before = np.array(model.bn.mean[...])
    model.train()
    encoded(jnp.ones((2, 8, 8, 1)), cb.decode)  # a training call moves the statistics, not the latent
    assert not np.array_equal(np.asarray(model.bn.mean[...]), before)
    assert set(encoded.values()) == set(latent) - stats


def test_the_kind_record_is_checked_in_the_file(tmp_path):
    cb = jp.Codebook.create(NNXCNN(nnx.Rngs(0, dropout=1)), bytes(range(32)))
    cb.save(tmp_path / "cb.json")
    from jaxpurify import _codebook_file

    doc = json.loads((tmp_path / "cb.json").read_text())
    for edit, match in (
        (lambda d: d["kinds"].update({"bn/mean": "weights"}), "kind 'weights'"),
        (lambda d: d["kinds"].update({"conv/kernel": "inference"}), "'conv/kernel' is not recorded as a parameter"),
        (lambda d: d["kinds"].pop("bn/var"), "every leaf"),
        (lambda d: d.update(root="model/"), "root"),
    ):
        bad = json.loads(json.dumps(doc))
        edit(bad)
        bad["mac"] = _codebook_file._mac(cb.secret, bad)  # a buggy writer, not an attacker
        path = tmp_path / "bad.json"
        _codebook_file.write(path, None, bad, cb.secret)
        with pytest.raises(ValueError, match=match):
            jp.Codebook.load(path)
    assert os.path.exists(tmp_path / "cb.json")
