"""Pretrained conversion: the converted model's outputs approach the teacher's.

The mismatch is measured with a plain-jnp forward pass of the MLP, not the Flax model or any
function of jaxpurify.convert.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify.convert import convert


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(64)(x))
        return nn.Dense(8)(h)


def plain_forward(p, x):
    h = jnp.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0.0)
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def mismatch(student, teacher, x, loss):
    """kl: mean squared difference of the softmax probabilities; mse: of the logits."""
    s, t = plain_forward(student, x), plain_forward(teacher, x)
    if loss == "kl":
        s = jnp.exp(s) / jnp.sum(jnp.exp(s), -1, keepdims=True)
        t = jnp.exp(t) / jnp.sum(jnp.exp(t), -1, keepdims=True)
    return float(jnp.mean(jnp.square(s - t)))


FACTOR = 10  # measured 43-80 (kl) and 34-45 (mse) on these inputs and held-out ones


@pytest.fixture(scope="module")
def setup():
    model = MLP()
    apply = lambda p, x: model.apply({"params": p}, x)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    held_out = rng.normal(size=(256, 4)).astype(np.float32)
    params = model.init(jax.random.key(0), x[:1])["params"]
    params = jax.tree_util.tree_map(
        lambda w: w + 0.3 * jax.random.normal(jax.random.key(5), w.shape), params
    )  # nonzero biases
    # the read-out along its input axis (K = 64): as the paper encodes its read-out, and so that the
    # protected model can come close to the teacher whatever the default layout of small leaves
    codebook = jp.Codebook.create(
        params, jax.random.key(1), select=lambda path, _: 0 if path == "Dense_1/kernel" else None
    )
    return apply, params, codebook, x, held_out


@pytest.mark.parametrize("loss, mixup", [("kl", 0.0), ("mse", 0.0), ("kl", 0.4)])
def test_conversion_reduces_the_output_mismatch(setup, loss, mixup):
    apply, params, codebook, x, held_out = setup
    params_copy = jax.tree_util.tree_map(np.array, params)
    projected = codebook.decode(codebook.encode(params))
    latent, losses = convert(
        apply,
        params,
        codebook,
        x,
        key=jax.random.key(2),
        steps=300,
        batch_size=64,
        loss=loss,
        mixup=mixup,
        progress=False,
    )
    converted = codebook.decode(latent)
    for xs in (x, held_out):  # on the inputs it saw and on fresh ones from the same distribution
        assert mismatch(converted, params, xs, loss) < mismatch(projected, params, xs, loss) / FACTOR
    assert len(losses) == 300 and losses[-20:].mean() < losses[:20].mean() / 2
    # the teacher is not modified
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_copy)


def test_first_loss_is_the_soft_cross_entropy_of_the_projection(setup):
    apply, params, codebook, x, _ = setup
    key, b, T = jax.random.key(7), 32, 3.0
    _, losses = convert(apply, params, codebook, x, key=key, steps=1, batch_size=b, temperature=T, progress=False)
    # step 0's minibatch as documented: b distinct examples drawn with fold_in(key, 0)
    idx = np.asarray(jax.random.choice(jax.random.fold_in(key, 0), len(x), (b,), replace=False))
    s = plain_forward(codebook.decode(codebook.encode(params)), x[idx]) / T
    t = plain_forward(params, x[idx]) / T
    p = np.exp(t - t.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    logq = s - jnp.log(jnp.sum(jnp.exp(s), 1, keepdims=True))
    kl = np.sum(p * (np.log(p) - np.asarray(logq)), 1)
    np.testing.assert_allclose(losses[0], T**2 * kl.mean(), rtol=1e-4)


def test_callback_stops_early(setup):
    apply, params, codebook, x, _ = setup
    calls = []

    def cb(step, loss, latent):
        calls.append((step, loss))
        return step >= 20

    latent, losses = convert(
        apply, params, codebook, x, key=jax.random.key(3), steps=200, log_every=10, callback=cb, progress=False
    )
    assert [s for s, _ in calls] == [10, 20]
    assert len(losses) == 20 and calls[-1][1] == losses[-1]


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(loss="l2"), "loss"),
        (dict(temperature=0.0), "temperature"),
        (dict(steps=-1), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(log_every=0), "log_every"),
        (dict(mixup=-1.0), "mixup"),
    ],
)
def test_bad_arguments_name_themselves(setup, kw, name):
    apply, params, codebook, x, _ = setup
    with pytest.raises(ValueError, match=name):
        convert(apply, params, codebook, x, key=jax.random.key(0), progress=False, **kw)


def test_bad_inputs_name_the_argument_or_leaf(setup):
    apply, params, codebook, x, _ = setup
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="x_unlabelled"):
        convert(apply, params, codebook, x[:0], key=key, progress=False)
    with pytest.raises(ValueError, match="x_unlabelled"):
        convert(apply, params, codebook, np.float32(1.0), key=key, progress=False)
    with pytest.raises(ValueError, match="mixup"):
        convert(apply, params, codebook, (x > 0).astype(np.int32), key=key, mixup=0.4, progress=False)
    with pytest.raises(TypeError, match="apply_fn"):
        convert(None, params, codebook, x, key=key, progress=False)
    nan = jax.tree_util.tree_map(lambda w: w * jnp.nan, params)
    with pytest.raises(ValueError, match="params"):
        convert(apply, nan, codebook, x, key=key, progress=False)
    wrong = {
        "Dense_0": params["Dense_0"],
        "Dense_1": {"kernel": params["Dense_1"]["kernel"][:, :4], "bias": params["Dense_1"]["bias"]},
    }
    with pytest.raises(ValueError, match="Dense_1"):
        convert(apply, wrong, codebook, x, key=key, progress=False)
