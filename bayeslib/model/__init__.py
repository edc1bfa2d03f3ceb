"""Models: parameters declared with their priors, data, and everything that follows from them.

A model is a joint density p(theta, y) = p(theta) p(y | theta), written once:

```python
class Best(bl.Model):
    mu = bl.Param(Normal(0.0, 1.0), shape=(2,))
    sigma = bl.Param(Uniform(0.0, 100.0), shape=(2,))

    def __init__(self, y1, y2):
        super().__init__(y1=y1, y2=y2)

    def observe(self, p):
        return {"y1": Normal(p.mu[0], p.sigma[0]), "y2": Normal(p.mu[1], p.sigma[1])}
```

Model code sees one draw of the parameters (`p.mu` has shape `(2,)`); the library evaluates it
for a batch of chains with `torch.func.vmap`. A model that sets `batched = True` is written for a
leading chain dimension instead (`p.mu[..., 0:1]`) and skips `vmap`.

A prior with a support is the prior restricted to that support, up to a constant (as Stan's
`real<lower=0> s; s ~ normal(0, 1);`): the parameter is sampled through the support's
bijection, and `sample_prior` draws it by rejection. The support may depend on parameters
declared above, and must lie inside the prior's support (`bayeslib.model.supports`):

```python
class Garch(bl.Model):
    alpha = bl.Param(Uniform(0.0, 1.0))
    beta = bl.Param(Uniform(0.0, 1.0), support=lambda p: constraints.interval(0.0, 1.0 - p.alpha))
    scale = bl.Param(Normal(0.0, 1.0), support=constraints.positive)   # a half-normal
    mu = bl.Param(Normal(0.0, 2.0), shape=(2,), support=bl.constraints.ordered_vector)
```

Terms that are neither a prior nor a likelihood (PyMC's `Potential`, NumPyro's `factor`) come
from `factors`, each summed into the log density (and named 'factor <name>' by
`logdensity_terms`); e.g. a soft sum-to-zero constraint on group effects:

```python
    def factors(self, p):
        return {"sum to zero": Normal(0.0, 0.001 * len(p.effects)).log_prob(p.effects.sum())}
```

Everything here is checked once, when the model is built: the first evaluation runs with
torch's argument validation on and with shape checks, so mistakes surface as a `ModelError`
that names the model and the field, not deep inside a sampler.

Modules: `declarations` (Param, the class-body checks), `data` (data checks, `replace`),
`density` (slots, transforms, the log density), `supports` (a support inside a prior's),
`simulate` (prior draws, simulated data), `starts` (where chains start).
"""

from .base import Model
from .declarations import Draw, ModelError, Param

__all__ = ["Draw", "Model", "ModelError", "Param"]
