"""Flax NNX: a codebook from a Module, its State or its pure dict; training an encoded NNX CNN
with nnx.Optimizer; purified weights loaded back with nnx.update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxpurify as jp
from jaxpurify import data


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 16, (3, 3), strides=2, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.List([nnx.Linear(4 * 4 * 16, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)])

    def __call__(self, x):
        x = self.drop(nnx.relu(self.bn(self.conv(x))))
        x = nnx.relu(self.head[0](x.reshape(x.shape[0], -1)))
        return self.head[1](x)


def _model(seed=0):
    return CNN(nnx.Rngs(seed, dropout=seed + 1))


def _jax_paths(state):
    """'/'-joined paths of an nnx.State by flax's own flat state (the reference)."""
    return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


def test_module_state_and_pure_dict_name_leaves_alike():
    model = _model()
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)
    params_pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    a = jp.Codebook.create(model, 0)
    b = jp.Codebook.create(state, 0)
    c = jp.Codebook.create(params_pure, 0)
    assert a.groups == b.groups == c.groups
    assert set(a.protected) == _jax_paths(nnx.state(model, nnx.Param))
    # one codebook works on the module, its state and its pure dict
    for tree in (state, pure, params_pure):
        for name, y in a.pack(tree).items():
            np.testing.assert_array_equal(y, a.pack(model)[name])
    # non-Param variables and the dropout key are listed, not protected
    rest = {p: r for p, _, r in a.unprotected(model)}
    assert set(rest) == _jax_paths(nnx.state(model, nnx.Not(nnx.Param)))
    assert rest["bn/mean"] == "inference state (BatchStat)" and rest["drop/rngs/key"] == "RNG state (RngKey)"
    assert a.capacity().fraction == 1.0


def test_select_is_not_called_on_keys_and_nothing_crashes():
    model = _model()
    seen = []
    jp.Codebook.create(nnx.state(model), 0, select=lambda p, leaf: seen.append(p) or None)
    assert set(seen) == _jax_paths(nnx.state(model, nnx.Param))
    # a pure dict has no variable types: the typed key is still recognized and skipped
    pure = nnx.to_pure_dict(nnx.state(model))
    cb = jp.Codebook.create(pure, 0)
    assert "drop/rngs/key" not in cb.protected
    assert ("drop/rngs/key", 1, "RNG state (typed PRNG key)") in cb.unprotected(pure)


def test_replace_on_a_module_returns_a_state_and_leaves_the_module_alone():
    model = _model()
    cb = jp.Codebook.create(model, 0)
    before = np.array(model.head[1].bias[...])
    new = cb.replace(model, {"head/1/bias": np.arange(10.0)})
    assert isinstance(new, nnx.State)
    np.testing.assert_array_equal(model.head[1].bias[...], before)
    nnx.update(model, new)
    np.testing.assert_array_equal(model.head[1].bias[...], np.arange(10.0))


def test_train_an_encoded_cnn_with_nnx_optimizer_and_load_purified_weights():
    ds = data.digits()
    x, y = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
    model = _model()
    cb = jp.Codebook.create(model, jax.random.key(5))
    encoded = jp.EncodedModule(model, cb.init_latent(model))
    opt = nnx.Optimizer(encoded, optax.adam(3e-3), wrt=jp.Latent)

    @nnx.jit(static_argnums=4)
    def step(encoded, opt, xb, yb, decode):
        def loss(encoded):
            return optax.softmax_cross_entropy_with_integer_labels(encoded(xb, decode), yb).mean()

        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, jp.Latent))(encoded)
        opt.update(encoded, grads)
        return value

    rng = np.random.default_rng(0)
    for _ in range(150):
        idx = rng.integers(0, len(x), 64)
        step(encoded, opt, x[idx], y[idx], cb.decode)
    clean = cb.decode(encoded.values())
    encoded.sync(cb.decode)
    # Adam keeps two moments of the latent and nothing of the model's own parameters
    moments = sum(x.size for x in jax.tree.leaves(nnx.state(opt.opt_state)) if x.ndim)
    assert moments == 2 * sum(g.n * g.columns for g in cb.groups.values())
    model.eval()
    logits = model(jnp.asarray(ds.test.x))
    assert float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(ds.test.y))) > 0.85
    # the trained weights are A Θ: 5% gross errors in every column of every group, recovered per
    # group and loaded back into the model with nnx.update
    state = nnx.state(model)
    bad = {}
    for name, Y in cb.pack(state).items():
        Y = np.array(Y)
        K, m = Y.shape
        for j in range(m):
            Y[rng.choice(K - 1, max(1, K // 20), replace=False), j] += 50.0
        bad[name] = Y
    damaged = cb.replace(state, cb.unpack(bad))
    fixed = {}
    for name, Y in cb.pack(damaged).items():
        A = cb.matrix(name)
        out = jp.recover(A, jnp.asarray(Y))
        assert bool(out.certified.all()), name
        fixed[name] = np.asarray(jnp.matmul(A, out.x, precision=jax.lax.Precision.HIGHEST))
    nnx.update(model, cb.replace(damaged, cb.unpack(fixed)))
    now = nnx.to_flat_state(nnx.state(model, nnx.Param))
    now = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in now}
    for path, w in cb.unpack(cb.pack(clean)).items():  # every protected leaf back to the clean one
        np.testing.assert_allclose(now[path], w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    np.testing.assert_allclose(model(jnp.asarray(ds.test.x[:64])), logits[:64], rtol=1e-4, atol=1e-4)
