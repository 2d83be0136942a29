"""Derivatives of recover() (jaxpurify._grad) against central finite differences in float64 and
against the pseudo-inverse of A on the inlier rows (NumPy), on held-in instances.

One instance, K = 32, n = 8: columns 0–2 have 3 gross errors each (certified), column 3 has 14
(more than a certificate allows: 2k ≥ K − n + 1), plus dense noise of 1e-5 on every entry.  The
certificate's ``atol`` (1e-4) covers the finite-difference steps (1e-6), so the perturbed instances
keep their masks: inside that piece ``recover`` *is* least squares on the inlier rows, which is
what the derivative differentiates.
Every test but the last reuses one compilation of the solver (shape (32, 4), float64, eager).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import instance

import jaxpurify as jp

K, N, ATOL, EPS = 32, 8, 1e-4, 1e-6


def _instance():
    rng = np.random.default_rng(12)
    A, X, Y, E = instance(rng, K, N, 4, 3)
    rows = rng.choice(K, 14, replace=False)  # column 3: 14 gross errors
    E[:, 3] = False
    E[rows, 3] = True
    Y[:, 3] = A @ X[:, 3]
    Y[rows, 3] += rng.choice([-1.0, 1.0], 14) * rng.uniform(5.0, 50.0, 14)
    Y += 1e-5 * rng.standard_normal(Y.shape)  # dense noise: the inlier residuals are not 0
    return A, X, Y, E


def _solve(A, Y):
    return jp.recover(A, Y, atol=ATOL)


def _pinv_jacobian(A, inlier):
    """d x / d y for least squares on the inlier rows: pinv(A_I), zero on the outlier rows."""
    J = np.zeros((A.shape[1], A.shape[0]))
    J[:, inlier] = np.linalg.pinv(A[inlier])
    return J


def test_matches_finite_differences_in_Y_and_A():
    """jvp and vjp of (x, residual) of the certified columns, w.r.t. Y and w.r.t. A."""
    A, X, Y, _ = _instance()
    with jax.enable_x64(True):
        out = _solve(A, Y)
        assert np.asarray(out.certified).tolist() == [True, True, True, False]
        np.testing.assert_allclose(out.x[:, :3], X[:, :3], rtol=1e-4)
        cert = lambda o: (o.x[:, :3], o.residual[:, :3])
        check_grads(lambda y: cert(_solve(A, y)), (Y,), 1, modes=("fwd", "rev"), eps=EPS, rtol=1e-6, atol=1e-6)
        check_grads(lambda a: cert(_solve(a, Y)), (A,), 1, modes=("fwd", "rev"), eps=EPS, rtol=1e-6, atol=1e-6)


def test_jacobian_is_pinv_on_inliers_and_zero_on_outliers():
    """Every column, the uncertified one included (the derivative of the estimate it returns, on
    the rows that estimate explains), against NumPy's pseudo-inverse; the outlier entries of a
    contaminated column have derivative 0 and so do their central differences."""
    A, _, Y, E = _instance()
    with jax.enable_x64(True):
        out = _solve(A, Y)
        outl = np.asarray(out.outliers)
        np.testing.assert_array_equal(outl[:, :3], E[:, :3])
        J = np.asarray(jax.jacobian(lambda y: _solve(A, y).x)(Y))  # (n, m, K, m)
        for j in range(4):
            np.testing.assert_allclose(J[:, j, :, j], _pinv_jacobian(A, ~outl[:, j]), atol=1e-10)
            others = np.delete(J[:, j], j, axis=-1)
            assert not others.any()  # columns are independent
        assert np.all(J[:, 0, E[:, 0], 0] == 0.0)
        # central differences at the outlier entries of column 0 (a step of 1% of the entry) and
        # at three of its inlier entries
        c = np.random.default_rng(0).standard_normal(N)
        loss = lambda y: float(c @ np.asarray(_solve(A, y).x[:, 0]))
        grad = np.asarray(jax.grad(lambda y: c @ _solve(A, y).x[:, 0])(Y))
        rows = list(np.flatnonzero(E[:, 0])) + list(np.flatnonzero(~E[:, 0])[:3])
        for i in rows:
            h = 1e-2 * abs(Y[i, 0]) if E[i, 0] else EPS
            up, down = Y.copy(), Y.copy()
            up[i, 0] += h
            down[i, 0] -= h
            fd = (loss(up) - loss(down)) / (2 * h)
            assert abs(fd - grad[i, 0]) <= 1e-6 * max(1.0, abs(grad[i, 0])), (i, fd, grad[i, 0])
        assert np.all(grad[E[:, 0], 0] == 0.0)


def test_bound_and_integer_outputs_carry_no_derivative():
    A, _, Y, _ = _instance()
    with jax.enable_x64(True):
        g = jax.grad(lambda y: jnp.sum(jnp.where(jnp.isfinite(_solve(A, y).bound), _solve(A, y).bound, 0.0)))(Y)
        assert not np.asarray(g).any()
        _, tangent = jax.jvp(lambda y: _solve(A, y), (Y,), (np.ones_like(Y),))
        assert tangent.outliers.dtype == jax.dtypes.float0 and tangent.result.dtype == jax.dtypes.float0


@pytest.mark.slow  # a second and third compilation of the solver (under jit and vmap): ~12 s
def test_vector_Y_under_jit_and_vmap_matches_a_plain_loop():
    """jit(vmap(grad)) over the columns as vector Y: equal to a loop of eager gradients on the
    matrix form, and jvp under jit equal to central differences."""
    A, _, Y, _ = _instance()
    c = np.random.default_rng(1).standard_normal(N)
    with jax.enable_x64(True):
        g = jax.jit(jax.vmap(jax.grad(lambda y: c @ _solve(A, y).x)))(Y.T)
        loop = np.stack([np.asarray(jax.grad(lambda Yf, j=j: c @ _solve(A, Yf).x[:, j])(Y))[:, j] for j in range(4)])
        np.testing.assert_allclose(g, loop, rtol=1e-9, atol=1e-12)
        check_grads(jax.jit(lambda y: _solve(A, y).x), (Y[:, 0],), 1, modes=("fwd",), eps=EPS, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # purify's device path compiled under jit(grad): ~10 s of CPU
def test_grad_through_jitted_purify_is_the_projection_on_the_inliers():
    """d purified / d damaged, column by column, is A·pinv(A_I) on the inlier rows and 0 on the
    outlier rows (NumPy reference), through purify's device path under jax.jit."""
    from jaxpurify import contamination

    rng = np.random.default_rng(5)
    params = {"w": jnp.asarray(rng.standard_normal((16, 12)), jnp.float32)}
    # the single-axis layout (K = 16, 12 columns), as this reference is written per column of w
    cb = jp.Codebook.create(params, b"0123456789abcdef", select=lambda path, leaf: 0)
    bad = contamination.contaminate(
        jax.random.key(2), cb.decode(cb.init_latent(params)), cb, contamination.gross_errors, rate=0.1
    )
    c = {"w": jnp.asarray(rng.standard_normal((16, 12)), jnp.float32)}
    loss = lambda p: jnp.sum(jp.purify(p, cb, device=True)[0]["w"] * c["w"])
    g = jax.jit(jax.grad(loss))(bad)
    (name,) = cb.groups
    A = np.asarray(cb.matrix(name), np.float64)
    Y, C, G = (np.asarray(cb.pack(t)[name], np.float64) for t in (bad, c, g))
    out = jp.recover(cb.matrix(name), cb.pack(bad)[name])
    assert np.asarray(out.certified).all() and np.asarray(out.outliers).any()
    ref = np.zeros_like(G)
    for j in range(Y.shape[1]):
        inl = ~np.asarray(out.outliers[:, j])
        ref[inl, j] = (A @ np.linalg.pinv(A[inl])).T @ C[:, j]
    np.testing.assert_allclose(G, ref, atol=1e-5 * np.abs(ref).max())


@pytest.mark.slow  # two more solver shapes: ~12 s of CPU
def test_batched_and_broadcast_shapes_match_a_plain_loop():
    """One A for a batch of Y (the gradient w.r.t. A sums over the batch), and a batch of A with
    vector Y: equal to a loop over the batch of the matrix case."""
    A, _, Y, _ = _instance()
    f = lambda a, y: jnp.sum(jnp.sin(_solve(a, y).x[..., :3]))
    with jax.enable_x64(True):
        Yb = np.stack([Y, 2.0 * Y])
        gA, gY = jax.grad(f, argnums=(0, 1))(A, Yb)
        loop = [jax.grad(f, argnums=(0, 1))(A, Yb[b]) for b in range(2)]
        np.testing.assert_allclose(gA, loop[0][0] + loop[1][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gY, np.stack([g[1] for g in loop]), rtol=1e-10, atol=1e-12)
        Ab, yv = np.stack([A, 2.0 * A]), np.stack([Y[:, 0], Y[:, 1]])
        g = lambda a, y: jnp.sum(jnp.sin(_solve(a, y).x))
        gA, gy = jax.grad(g, argnums=(0, 1))(Ab, yv)
        loop = [jax.grad(g, argnums=(0, 1))(Ab[b], yv[b][:, None]) for b in range(2)]
        np.testing.assert_allclose(gA, np.stack([h[0] for h in loop]), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gy, np.stack([h[1][:, 0] for h in loop]), rtol=1e-10, atol=1e-12)
