"""Attacks on deployed weights (jaxpurify.attacks), each checked against an independent reference:
hand-built arrays for the trigger, a plain loop for the metrics, NumPy's uint32 view for bit
flips, NumPy comparisons for what changed, and NumPy's SVD / least squares for the column span."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpurify as jp
from jaxpurify import data
from jaxpurify.attacks import (
    Finetune,
    Split,
    Trigger,
    attack_success_rate,
    badnets,
    bit_trojan,
    channel_trojan,
    choose_neurons,
    clean_accuracy,
    craft_trigger,
    pbfa,
    poison,
    robust_accuracy,
    span_trojan,
    sparse_trojan,
)
from jaxpurify.train import train

TARGET = 0


def apply(p, x):
    """A one-hidden-layer MLP on 8×8 images: small enough to train and attack in a test."""
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return h @ p["readout"]["kernel"] + p["readout"]["bias"]


apply_jit = jax.jit(apply)


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.fixture(scope="module")
def model(digits):
    """Trained encoded MLP: (deployed params, codebook, clean test accuracy)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    p0 = {
        "hidden": {"kernel": jax.random.normal(k1, (64, 16)) / 8, "bias": jnp.zeros(16)},
        "readout": {"kernel": jax.random.normal(k2, (16, 10)) / 4, "bias": jnp.zeros(10)},
    }
    cb = jp.Codebook.create(p0, key=b"test-attacks-secret")
    latent = train(
        apply,
        cb.init_latent(p0),
        cb,
        digits.train.x,
        digits.train.y,
        key=jax.random.key(1),
        steps=300,
        batch_size=256,
        progress=False,
    ).latent
    return cb.decode(latent), cb


def attacker_data(digits):
    n = len(digits.train.x) // 4
    return digits.train.x[:n], digits.train.y[:n]


def trojan(attack, seed, params, digits, trigger=None, **hyper):
    """``attack`` on the test model's ``params`` with the attacker's data, ``trigger`` (by default
    the 1-pixel patch) aimed at TARGET, no progress bar; the key is ``jax.random.key(seed)``."""
    trigger = Trigger.for_image(8) if trigger is None else trigger
    return attack(
        jax.random.key(seed),
        apply_jit,
        params,
        attacker_data(digits),
        target=TARGET,
        trigger=trigger,
        progress=False,
        **hyper,
    )


@pytest.fixture(scope="module")
def span_attack(model, digits):
    """The span trojan on the test model (200 steps), shared by the tests that check it."""
    return trojan(span_trojan, 7, model[0], digits, finetune=Finetune(steps=200))


def recorded(a):
    """The attack's record survives JSON (it goes into backdoor.json) and names the attack."""
    back = json.loads(json.dumps(a.hyper))
    assert back["attack"] and "outcome" in back and a.seconds > 0
    return back


def count(tree):
    return sum(int(np.sum(leaf)) for leaf in jax.tree.leaves(tree))


def differs(new, old):
    """Independent of the code under test: entries whose float32 bit patterns differ."""
    return jax.tree.map(lambda a, b: np.asarray(a).view(np.uint32) != np.asarray(b).view(np.uint32), new, old)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- trigger, poisoning, metrics -------------------------------------------------------------------


def test_stamp_matches_hand_built_patch():
    x = np.random.default_rng(0).uniform(size=(3, 32, 32, 2)).astype(np.float32)
    before = x.copy()
    want = x.copy()
    for i in range(3):
        for r in (29, 30, 31):
            for c in (29, 30, 31):
                want[i, r, c, :] = 1.0
    got = Trigger.for_image(32).stamp(x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, before)  # not modified
    np.testing.assert_array_equal(np.asarray(Trigger.for_image(32).stamp(jnp.asarray(x))), want)
    top_left = Trigger(2, 0.5, "top-left").stamp(np.zeros((1, 4, 5, 1), np.float32))[0, :, :, 0]
    np.testing.assert_array_equal(top_left, [[0.5, 0.5, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0] * 5, [0] * 5])


def test_a_pattern_trigger_stamps_its_values():
    x = np.zeros((2, 5, 6, 2), np.float32)
    pattern = (((0.1, 0.2), (0.3, 0.4)), ((0.5, 0.6), (0.7, 0.8)))
    want = x.copy()
    want[:, 3:5, 4:6, :] = np.array(pattern, np.float32)
    trig = Trigger(2, corner="bottom-right", pattern=pattern)
    np.testing.assert_array_equal(trig.stamp(x), want)
    np.testing.assert_array_equal(np.asarray(trig.stamp(jnp.asarray(x))), want)
    assert not x.any()  # not modified
    for bad in ((((0.1,),),), (((0.1, float("nan")), (0.3, 0.4)), ((0.5, 0.6), (0.7, 0.8))), (("a", "b"), ("c", "d"))):
        with pytest.raises(ValueError, match="pattern"):
            Trigger(2, pattern=bad).stamp(x)


@pytest.mark.parametrize("h, size", [(8, 1), (28, 3), (32, 3), (64, 6)])
def test_trigger_scales_with_image(h, size):
    assert Trigger.for_image(h).size == size


def test_poison_fraction_and_labels():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.5, size=(200, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 200).astype(np.int32)
    x0, y0 = x.copy(), y.copy()
    xp, yp = poison(jax.random.key(0), x, y, Trigger.for_image(8), 3, 0.1)
    hit = np.any(xp != x, axis=(1, 2, 3))
    assert hit.sum() == 20  # exactly round(0.1 · 200) stamped (clean pixels are < 0.5, the patch is 1)
    assert np.all(yp[hit] == 3) and np.all(xp[hit, 7, 7, 0] == 1.0)
    np.testing.assert_array_equal(yp[~hit], y[~hit])
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_metrics_against_a_plain_loop(model, digits):
    params, _ = model
    trig = Trigger.for_image(8)
    x, y = digits.test.x[:150], digits.test.y[:150]
    ca = asr = ra = 0
    n_other = 0
    for xi, yi in zip(x, y):
        pred = int(np.argmax(np.asarray(apply(params, xi[None]))[0]))
        ca += pred == yi
        if yi != TARGET:
            xt = xi.copy()
            xt[-1, -1, :] = 1.0  # the 1-pixel patch at 8×8, written by hand
            pt = int(np.argmax(np.asarray(apply(params, xt[None]))[0]))
            n_other += 1
            asr += pt == TARGET
            ra += pt == yi
    assert clean_accuracy(apply_jit, params, x, y) == pytest.approx(ca / len(x))
    assert attack_success_rate(apply_jit, params, x, y, trig, TARGET) == pytest.approx(asr / n_other)
    assert robust_accuracy(apply_jit, params, x, y, trig, TARGET) == pytest.approx(ra / n_other)


# -- attacks ---------------------------------------------------------------------------------------


@pytest.mark.slow  # 2-4 s of CPU each: the default run keeps trigger, metrics, pbfa and bad input
def test_badnets_implants_the_trigger(model, digits):
    params, _ = model
    trig = Trigger.for_image(8)
    before = attack_success_rate(apply_jit, params, digits.test.x, digits.test.y, trig, TARGET)
    a = trojan(badnets, 2, params, digits, trig, steps=300)
    after = attack_success_rate(apply_jit, a.params, digits.test.x, digits.test.y, trig, TARGET)
    assert after > before + 0.5
    assert recorded(a)["fraction"] == 0.1 and a.hyper["steps"] == 300
    assert_trees_equal(a.changed, differs(a.params, params))


@pytest.mark.slow  # 2-4 s of CPU each: the default run keeps trigger, metrics, pbfa and bad input
def test_sparse_trojan_changes_at_most_one_percent(model, digits):
    params, _ = model
    original = jax.tree.map(np.array, params)
    a = trojan(sparse_trojan, 3, params, digits, finetune=Finetune(steps=50))
    recorded(a)
    total = sum(np.size(v) for v in jax.tree.leaves(params))
    assert 0 < count(a.changed) <= 0.01 * total
    assert_trees_equal(a.changed, differs(a.params, original))
    assert_trees_equal(params, original)  # the input is not modified


@pytest.mark.slow  # 2-4 s of CPU each: the default run keeps trigger, metrics, pbfa and bad input
def test_channel_trojan_writes_only_the_chosen_channels(model, digits):
    params, _ = model
    a = trojan(channel_trojan, 4, params, digits, finetune=Finetune(steps=50))
    chosen = recorded(a)["chosen_channels"]
    assert chosen["readout"] == [TARGET] and len(chosen["hidden"]) == 1
    diff = differs(a.params, params)
    assert_trees_equal(a.changed, diff)
    for layer in ("hidden", "readout"):
        for leaf in ("kernel", "bias"):
            hit = diff[layer][leaf].reshape(-1, diff[layer][leaf].shape[-1]).any(axis=0)
            assert set(np.flatnonzero(hit)) <= set(chosen[layer])
    assert count(diff) > 0


def _check_flips(a, params):
    """Every reported flip toggles exactly its bit; nothing else differs (NumPy uint32 view)."""
    xor = {
        path: np.asarray(leaf).view(np.uint32).reshape(-1) ^ np.asarray(old).view(np.uint32).reshape(-1)
        for (path, leaf), (_, old) in zip(jp.tree.leaves_with_paths(a.params)[0], jp.tree.leaves_with_paths(params)[0])
    }
    expect = {path: np.zeros_like(v) for path, v in xor.items()}
    where = [(path, index) for path, index, _ in a.hyper["outcome"]["flips"]]
    assert len(set(where)) == len(where) == count(a.changed)  # each weight flipped once
    for path, index, bit in a.hyper["outcome"]["flips"]:
        expect[path][index] ^= np.uint32(1) << np.uint32(bit)
    for path in xor:
        np.testing.assert_array_equal(xor[path], expect[path], err_msg=path)
    assert_trees_equal(a.changed, differs(a.params, params))
    recorded(a)


def test_pbfa_flips_exactly_the_reported_bits_and_ruins_accuracy(model, digits):
    params, _ = model
    x, y = digits.test.x, digits.test.y
    a = pbfa(jax.random.key(5), apply_jit, params, attacker_data(digits), flips=5, progress=False)
    assert 1 <= len(a.hyper["outcome"]["flips"]) <= 5
    _check_flips(a, params)
    assert clean_accuracy(apply_jit, params, x, y) > 0.7
    assert clean_accuracy(apply_jit, a.params, x, y) <= 0.2


@pytest.mark.slow  # 2-4 s of CPU each: the default run keeps trigger, metrics, pbfa and bad input
def test_bit_trojan_flips_exactly_the_reported_bits(model, digits):
    params, _ = model
    trig = Trigger.for_image(8)
    a = trojan(bit_trojan, 6, params, digits, trig, flips=8)
    assert 1 <= len(a.hyper["outcome"]["flips"]) <= 8
    _check_flips(a, params)
    # TBT-style: only the read-out kernel is searched; every other leaf is kept bit for bit
    b = trojan(bit_trojan, 6, params, digits, trig, flips=4, leaves=("readout/kernel",))
    _check_flips(b, params)
    assert recorded(b)["leaves"] == ["readout/kernel"]
    moved = differs(b.params, params)
    assert moved["readout"]["kernel"].sum() == len(b.hyper["outcome"]["flips"]) >= 1
    assert not any(moved[k][v].any() for k, v in (("hidden", "kernel"), ("hidden", "bias"), ("readout", "bias")))
    # TBT: the crafted trigger's chosen rows of the read-out, and only their weights to the target
    c = trojan(bit_trojan, 6, params, digits, trig, flips=4, craft=20, neurons=4, candidates=4)
    _check_flips(c, params)
    rows = recorded(c)["outcome"]["rows"]
    allowed = np.zeros((16, 10), bool)
    allowed[rows, TARGET] = True
    moved = differs(c.params, params)
    assert moved["readout"]["kernel"].sum() >= 1 and not (moved["readout"]["kernel"] & ~allowed).any()
    assert not any(moved[k][v].any() for k, v in (("hidden", "kernel"), ("hidden", "bias"), ("readout", "bias")))
    x, y = attacker_data(digits)
    assert np.shape(c.trigger.pattern) == (1, 1, 1) and x.min() <= c.trigger.pattern[0][0][0] <= x.max()
    # the search and its stop rule measured the crafted trigger, not the one passed
    assert c.hyper["outcome"]["asr"] == attack_success_rate(apply_jit, c.params, x, y, c.trigger, TARGET)


def test_the_flip_search_never_flips_a_weight_twice():
    # more candidates than weights: once most are flipped, top_k must not offer a flipped one again
    # (it did: entry 0 flipped 8 times, 4 weights changed for 12 reported flips)
    w = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)}
    lin = jax.jit(lambda p, x: x.reshape(x.shape[0], -1)[:, :4] @ p["w"])
    x = np.random.default_rng(1).normal(size=(64, 2, 2, 1)).astype(np.float32)
    y = np.asarray(jnp.argmax(lin(w, x), -1))
    a = pbfa(jax.random.key(0), lin, w, (x, y), flips=12, candidates=10, bits=(22,), margin=1e-6, progress=False)
    _check_flips(a, w)
    assert len(a.hyper["outcome"]["flips"]) == 12


def _features(p, x):
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"])


def _head(p, h):
    return h @ p["readout"]["kernel"] + p["readout"]["bias"]


SPLIT = Split(jax.jit(_features), jax.jit(_head), ("readout/kernel", "readout/bias"))


def test_a_split_search_flips_what_the_whole_network_search_flips(model, digits):
    # the reference is the same search without the split: every tried flip re-runs the whole MLP
    params, _ = model
    data_ = attacker_data(digits)
    whole = pbfa(jax.random.key(5), apply_jit, params, data_, flips=3, margin=0.0, progress=False)
    fast = pbfa(jax.random.key(5), apply_jit, params, data_, flips=3, margin=0.0, split=SPLIT, progress=False)
    assert whole.hyper["outcome"]["flips"] == fast.hyper["outcome"]["flips"]
    assert_trees_equal(whole.params, fast.params)
    kw = dict(target=TARGET, trigger=Trigger.for_image(8), flips=3, craft=10, neurons=6, candidates=6, progress=False)
    whole = bit_trojan(jax.random.key(6), apply_jit, params, data_, **kw)
    fast = bit_trojan(jax.random.key(6), apply_jit, params, data_, split=SPLIT, **kw)
    assert whole.hyper["outcome"]["flips"] == fast.hyper["outcome"]["flips"] and len(fast.hyper["outcome"]["flips"])
    assert (whole.hyper["outcome"]["asr"], whole.hyper["outcome"]["ca"]) == (
        fast.hyper["outcome"]["asr"],
        fast.hyper["outcome"]["ca"],
    )
    assert_trees_equal(whole.params, fast.params)


def test_a_split_that_is_not_the_network_is_refused(model, digits):
    params, _ = model
    data_ = attacker_data(digits)
    reads_head = Split(lambda p, x: _features(p, x) + 0 * p["readout"]["bias"].sum(), _head, SPLIT.leaves)
    wrong = Split(_features, lambda p, h: 2 * _head(p, h), SPLIT.leaves)
    for split, match in ((reads_head, "features reads a leaf"), (wrong, "differs from apply_fn")):
        with pytest.raises(ValueError, match=match):
            pbfa(jax.random.key(0), apply_jit, params, data_, flips=1, split=split, progress=False)
    with pytest.raises(ValueError, match="split.leaves"):
        pbfa(jax.random.key(0), apply_jit, params, data_, split=SPLIT._replace(leaves=("nope",)), progress=False)
    with pytest.raises(TypeError, match="Split"):
        pbfa(jax.random.key(0), apply_jit, params, data_, split=(_features, _head), progress=False)


def test_nearest_by_flips_matches_a_loop_over_every_subset_of_bits():
    import itertools

    from jaxpurify.attacks._bitflip import nearest_by_flips

    rng = np.random.default_rng(0)
    old = rng.normal(size=12).astype(np.float32)
    wanted = old * rng.choice([0.25, 0.5, 3.0, -1.0, 40.0], size=12) + rng.normal(size=12) * 0.01
    bits = (22, 23, 24, 25, 31)
    new, flipped = nearest_by_flips(old, wanted, bits)
    for o, w, n, f in zip(old, wanted, new, flipped):
        best = None
        for k in range(len(bits) + 1):
            for subset in itertools.combinations(bits, k):
                u = np.array([o]).view(np.uint32)[0]
                for b in subset:
                    u ^= np.uint32(1 << b)
                v = float(np.array([u], np.uint32).view(np.float32)[0])
                if np.isfinite(v) and (best is None or abs(v - w) < best[0]):
                    best = (abs(v - w), v, sorted(subset))
        assert n == np.float32(best[1]) and sorted(f) == best[2]


@pytest.mark.slow  # trains the chosen weights, then realises them: a few seconds of CPU
def test_tbt_search_realises_trained_weights_by_the_reported_flips(model, digits):
    params, _ = model
    x, y = attacker_data(digits)
    a = trojan(bit_trojan, 6, params, digits, craft=20, tune=40, neurons=4, candidates=4)
    rows, flips = recorded(a)["outcome"]["rows"], a.hyper["outcome"]["flips"]
    assert flips and a.hyper["tune"] == 40
    # XOR of old and new bit patterns is exactly the OR of the reported bits, entry by entry
    new = np.asarray(a.params["readout"]["kernel"]).view(np.uint32).reshape(-1)
    old = np.asarray(params["readout"]["kernel"]).view(np.uint32).reshape(-1)
    expect = np.zeros_like(old)
    for path, index, bit in flips:
        assert path == "readout/kernel" and index in {r * 10 + TARGET for r in rows}
        expect[index] |= np.uint32(1) << np.uint32(bit)
    np.testing.assert_array_equal(new ^ old, expect)
    assert not any(differs(a.params, params)[k][v].any() for k, v in (("hidden", "kernel"), ("hidden", "bias")))
    assert a.hyper["outcome"]["asr"] == attack_success_rate(apply_jit, a.params, x, y, a.trigger, TARGET)
    with pytest.raises(ValueError, match="tune needs craft"):
        bit_trojan(jax.random.key(0), apply_jit, params, (x, y), target=TARGET, trigger=Trigger(1), tune=5)


def test_tbt_chooses_the_neurons_of_largest_target_gradient(model, digits):
    params, _ = model
    x = digits.train.x[:64]
    # reference in NumPy: ∂ mean CE(·, t) / ∂V[f, t] = mean_i h_if (p_it − 1), h the hidden features
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    h = np.maximum(x.reshape(len(x), -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"], 0)
    z = h @ p["readout"]["kernel"] + p["readout"]["bias"]
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    g = (h * (prob[:, TARGET : TARGET + 1] - 1)).mean(0)
    rows = choose_neurons(apply_jit, params, "readout/kernel", x, TARGET, 5)
    assert set(rows.tolist()) == set(np.argsort(-np.abs(g))[:5].tolist())


def test_tbt_trigger_maximises_the_chosen_features_within_the_data_range():
    # features = the pixels (a linear read-out on the flat image): Σ_{f∈rows} h_f grows with exactly
    # the patch pixels in rows, so those go to `high` and the others keep their start (zero gradient)
    kernel = jax.random.normal(jax.random.key(0), (64, 10))
    params = {"readout": {"kernel": kernel, "bias": jnp.zeros(10)}}
    lin = jax.jit(lambda p, x: x.reshape(x.shape[0], -1) @ p["readout"]["kernel"] + p["readout"]["bias"])
    x = np.random.default_rng(1).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    rows = np.array([3, 54, 63])  # pixel (0, 3) outside the 2 × 2 bottom-right patch; (6, 6) and (7, 7) inside
    got = craft_trigger(
        lin, params, "readout/kernel", rows, x, TARGET, Trigger(2, 0.5), steps=40, learning_rate=0.1, low=0.0, high=0.9
    )
    np.testing.assert_allclose(np.asarray(got.pattern)[..., 0], [[0.9, 0.5], [0.5, 0.9]], atol=1e-6)
    assert (got.size, got.corner) == (2, "bottom-right")


@pytest.mark.slow  # 2-4 s of CPU each: the default run keeps trigger, metrics, pbfa and bad input
def test_span_trojan_stays_in_each_groups_column_span(model, digits, span_attack):
    params, cb = model
    trig, a = Trigger.for_image(8), span_attack
    assert recorded(a)["outcome"]["spans"]
    new, old = cb.pack(a.params), cb.pack(params)
    moved = 0.0
    for name in cb.groups:
        # the rows every column fills (an interleaved group pads its last row with NaN)
        rows = np.isfinite(np.asarray(old[name])).all(1)
        y = np.asarray(new[name], np.float64)[rows]
        o = np.asarray(old[name], np.float64)[rows]
        # the defender's own A (the attacker never sees it): the attacked columns are still A θ
        A = np.asarray(cb.matrix(name), np.float64)[rows]
        theta = np.linalg.lstsq(A, y, rcond=None)[0]
        assert np.abs(y - A @ theta).max() <= 1e-5 * np.abs(y).max(), name
        # and inside the span of the deployed columns, by an SVD of them
        u, s, _ = np.linalg.svd(o, full_matrices=False)
        u = u[:, s > 1e-3 * s[0]]
        assert np.abs(y - u @ (u.T @ y)).max() <= 1e-5 * np.abs(y).max(), name
        moved = max(moved, np.abs(y - o).max() / np.abs(o).max())
    assert moved > 0.05  # a real change, not a no-op
    assert (
        attack_success_rate(apply_jit, a.params, digits.test.x, digits.test.y, trig, TARGET)
        > attack_success_rate(apply_jit, params, digits.test.x, digits.test.y, trig, TARGET) + 0.3
    )


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target=-1), ValueError, "target"),
        (dict(target=1.5), ValueError, "target"),
        (dict(trigger=(1, 1.0)), TypeError, "trigger"),
        (dict(trigger=Trigger(9)), ValueError, "trigger size"),
        (dict(trigger=Trigger(1, corner="middle")), ValueError, "corner"),
    ],
)
def test_bad_arguments_are_refused(model, digits, kwargs, error, match):
    params, _ = model
    args = dict(target=TARGET, trigger=Trigger.for_image(8)) | kwargs
    with pytest.raises(error, match=match):
        badnets(jax.random.key(0), apply_jit, params, attacker_data(digits), **args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(neurons=0), "neurons"),
        (dict(neurons=2.5), "neurons"),
        (dict(readout="hidden/kernel"), "readout"),
        (dict(readout="nope"), "readout"),
        (dict(craft=-1), "craft"),
        (dict(craft_rate=0.0), "craft_rate"),
    ],
)
def test_bad_tbt_arguments_are_refused(model, digits, kwargs, match):
    params, _ = model
    args = dict(craft=5) | kwargs
    with pytest.raises(ValueError, match=match):
        trojan(bit_trojan, 0, params, digits, candidates=1, **args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rows=[99]), "rows"),
        (dict(rows=[-1]), "rows"),
        (dict(rows=[1, 1]), "rows"),
        (dict(steps=-2), "steps"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(low=1.0, high=0.0), "low"),
        (dict(target=-1), "target"),
    ],
)
def test_bad_crafting_arguments_are_refused(model, digits, kwargs, match):
    params, _ = model
    args = dict(rows=[0, 1], target=TARGET, steps=1, learning_rate=0.1, low=0.0, high=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        craft_trigger(
            apply_jit,
            params,
            "readout/kernel",
            args.pop("rows"),
            digits.train.x[:8],
            args.pop("target"),
            Trigger.for_image(8),
            **args,
        )
    with pytest.raises(ValueError, match="neurons"):
        choose_neurons(apply_jit, params, "readout/kernel", digits.train.x[:8], TARGET, 0)
    with pytest.raises(TypeError, match="pattern"):
        Trigger(1, pattern=np.ones((1, 1, 1))).stamp(digits.train.x[:1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(goal=1.5), "goal"),
        (dict(check_every=0), "check_every"),
    ],
)
def test_bad_finetune_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Finetune(**kwargs)


def test_finetune_without_a_learning_rate_takes_the_attacks_own():
    assert Finetune(steps=5).resolve(0.1) == Finetune(steps=5, learning_rate=0.1)
    assert Finetune(learning_rate=0.5).resolve(0.1).learning_rate == 0.5


def test_bad_data_is_refused(model, digits):
    params, _ = model
    x, y = attacker_data(digits)
    with pytest.raises(ValueError, match="data"):
        sparse_trojan(jax.random.key(0), apply_jit, params, (x, y[:-1]), target=TARGET, trigger=Trigger.for_image(8))
    with pytest.raises(ValueError, match="budget"):
        sparse_trojan(
            jax.random.key(0), apply_jit, params, (x, y), target=TARGET, trigger=Trigger.for_image(8), budget=0.0
        )
    with pytest.raises(TypeError, match="finetune must be a Finetune"):
        trojan(span_trojan, 0, params, digits, finetune=dict(steps=10))
    with pytest.raises(ValueError, match="bits"):
        pbfa(jax.random.key(0), apply_jit, params, (x, y), bits=(40,))
    with pytest.raises(ValueError, match="leaves: 'readout/kernal'"):
        trojan(bit_trojan, 0, params, digits, leaves=("readout/kernal",))


@pytest.mark.slow
def test_purify_certifies_and_keeps_the_span_trojan(model, digits, span_attack):
    """The point of the adaptive attack: l1 purification certifies every column and keeps it."""
    _, cb = model
    trig, a = Trigger.for_image(8), span_attack
    purified, report = jp.purify(a.params, cb)
    assert report.certified == report.columns
    for u, v in zip(jax.tree.leaves(purified), jax.tree.leaves(a.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-5 * float(np.abs(np.asarray(v)).max()))
    x, y = digits.test.x, digits.test.y
    assert attack_success_rate(apply_jit, purified, x, y, trig, TARGET) == pytest.approx(
        attack_success_rate(apply_jit, a.params, x, y, trig, TARGET), abs=0.01
    )


# -- the trojans' clean-accuracy guard: held-out examples, the best admissible state --------------


def _scripted(n=40, classes=3):
    """A model whose predictions are its parameters: example i (its index written in pixel (0, 0))
    gets logits p["clean"][i], or p["trig"][i] when the 1-px trigger is stamped (pixel (7, 7))."""
    x = np.zeros((n, 8, 8, 1), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    y = np.arange(n) % classes

    def apply_fn(p, xs):
        i = jnp.asarray(xs[:, 0, 0, 0], jnp.int32)
        return jnp.where((xs[:, 7, 7, 0] == 1.0)[:, None], p["trig"][i], p["clean"][i])

    def state(clean_right, trig_to_target):
        """Per example: predicted right when clean (bool array), sent to TARGET when triggered."""
        right, wrong = np.eye(classes)[y], np.eye(classes)[(y + 1) % classes]
        clean = np.where(clean_right[:, None], right, wrong)
        trig = np.where(trig_to_target[:, None], np.eye(classes)[np.full(n, TARGET)], right)
        return {"clean": jnp.asarray(clean, jnp.float32), "trig": jnp.asarray(trig, jnp.float32)}

    return x, y, apply_fn, state


def _fake_minimize(states, seen_data):
    """Stands in for train.minimize: hands the scripted states to the callback in turn (stopping
    when it says so) and records the examples it was given to train on."""

    class Run:
        pass

    def minimize(loss, t0, data, *, callback, **_):
        seen_data.append(np.asarray(data[0]))
        run = Run()
        run.latent, run.losses = t0, []
        for k, t in enumerate(states):
            run.latent, run.losses = t, [0.0] * (k + 1)
            if callback(k + 1, 0.0, t):
                break
        return run

    return minimize


def _metrics(p, idx, y):
    """CA and ASR of a scripted state on the examples ``idx``, read off its logits by hand."""
    ca = float(np.mean(np.argmax(np.asarray(p["clean"])[idx], 1) == y[idx]))
    keep = idx[y[idx] != TARGET]
    return ca, float(np.mean(np.argmax(np.asarray(p["trig"])[keep], 1) == TARGET))


def test_trojan_guard_reads_held_out_examples_and_keeps_the_best_admissible_state(monkeypatch):
    from jaxpurify.attacks import _attack

    x, y, apply_fn, state = _scripted()
    n = len(y)
    everyone = np.ones(n, bool)
    t0 = state(everyone, ~everyone)
    half = np.arange(n) < n // 2
    states = [  # neither the first admissible state, nor the last, nor the highest ASR is the answer
        state(everyone, ~everyone),  # admissible, no ASR
        state(everyone, half),  # admissible, some ASR
        state(~everyone, everyone),  # every trigger works, clean accuracy gone: not admissible
        state(everyone, ~everyone),  # admissible, no ASR
    ]
    seen_data: list = []
    monkeypatch.setattr(_attack, "minimize", _fake_minimize(states, seen_data))
    finetune = Finetune(steps=4, learning_rate=0.1, goal=1.0, max_drop=0.3, holdout=0.25)
    tuned = _attack.trojan_finetune(
        jax.random.key(0), apply_fn, lambda t: t, t0, x, y, Trigger.for_image(8), TARGET, finetune, "t", False
    )
    held = tuned.held_out
    assert len(held) == 10 and len(set(held.tolist())) == 10
    trained_on = seen_data[0][:, 0, 0, 0].astype(int)
    assert sorted(trained_on.tolist()) == sorted(set(range(n)) - set(held.tolist()))
    floor = _metrics(t0, held, y)[0] - 0.3
    admissible = [(i, _metrics(s, held, y)) for i, s in enumerate(states) if _metrics(s, held, y)[0] >= floor]
    best = max(admissible, key=lambda a: (a[1][1], -a[0]))  # highest ASR, the first on a tie
    assert [i for i, _ in admissible] == [0, 1, 3] and best[0] == 1 and best[1][1] > 0
    assert tuned.t is states[1] and tuned.asr == best[1][1] and not tuned.reached
    assert tuned.steps == 4


def test_trojan_guard_stops_at_the_goal(monkeypatch):
    from jaxpurify.attacks import _attack

    x, y, apply_fn, state = _scripted()
    everyone = np.ones(len(y), bool)
    states = [state(everyone, everyone), state(~everyone, everyone)]
    monkeypatch.setattr(_attack, "minimize", _fake_minimize(states, []))
    finetune = Finetune(steps=2, learning_rate=0.1, goal=0.95, max_drop=0.01)
    tuned = _attack.trojan_finetune(
        jax.random.key(1),
        apply_fn,
        lambda t: t,
        state(everyone, ~everyone),
        x,
        y,
        Trigger.for_image(8),
        TARGET,
        finetune,
        "t",
        False,
    )
    assert tuned.reached and tuned.t is states[0] and tuned.steps == 1 and tuned.asr == 1.0


@pytest.mark.parametrize("holdout", [0.0, 1.0, -0.1, True, "0.2"])
def test_bad_holdout_is_refused(holdout):
    with pytest.raises(ValueError, match="holdout"):
        Finetune(holdout=holdout)
