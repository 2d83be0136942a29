"""Protect a model you train: encode, train the latent, seal, deploy; then purify damaged weights."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxpurify as jp
from jaxpurify import contamination, data
from jaxpurify.train import accuracy, train


class CNN(nn.Module):  # written as usual: nothing about jaxpurify inside
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


ds = data.digits(seed=0)
model = CNN()
apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
params = model.init(jax.random.key(0), ds.train.x[:1])["params"]

codebook = jp.Codebook.create(params)          # 256 secret bits from the OS; every parameter protected
print(codebook.capacity())                     # per group K, n, columns, errors each column can take
latent = codebook.init_latent(params)          # train this: the deployed weights are decode(latent) = A·Θ
latent = train(apply, latent, codebook, ds.train.x, ds.train.y, key=jax.random.key(1), steps=300).latent
deployed = codebook.decode(latent)
codebook.seal(deployed)                        # a keyed sketch: catches changes that l1 cannot see
codebook.save("codebook.json")                 # layout + MAC; the secret goes to codebook.json.key (0600)

# ... later: the deployed weights were damaged (5% of every column overwritten by large values)
damaged = contamination.contaminate(jax.random.key(2), deployed, codebook, contamination.gross_errors, rate=0.05)
codebook = jp.Codebook.load("codebook.json")   # authenticated: an edited file is refused
purified, report = jp.purify(damaged, codebook)
print(report.status())
assert report.ok                               # every column certified, nothing unprotected, seal verified
for a, b in zip(jax.tree.leaves(purified), jax.tree.leaves(deployed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
print("accuracy: damaged", accuracy(apply, damaged, ds.test.x, ds.test.y),
      "purified", accuracy(apply, purified, ds.test.x, ds.test.y),
      "deployed", accuracy(apply, deployed, ds.test.x, ds.test.y))
