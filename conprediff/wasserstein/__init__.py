r"""Batched Wasserstein-2 metrics between small weighted point sets.

Every metric of this package is a small object (a scikit-learn ``BaseEstimator``: the constructor
only stores its arguments, ``get_params`` and ``repr`` work) with one common call signature::

    metric(x, y, x_weights=None, y_weights=None) -> torch.Tensor of shape (P,)

which returns the **squared** Wasserstein-2 distance (or the metric's approximation of it)

.. math::
    W_2^2(\mu_p, \nu_p) = \min_{T \in U(a_p, b_p)} \sum_{i,j} T_{ij}\, \lVert x_{p,i} - y_{p,j}
    \rVert_2^2, \qquad \mu_p = \sum_i a_{p,i} \delta_{x_{p,i}},\quad
    \nu_p = \sum_j b_{p,j} \delta_{y_{p,j}}

for ``P`` independent problems at once:

* ``x``: ``(P, Q, C)`` — ``P`` problems of ``Q`` points in ``C`` dimensions (in the context loss:
  the decoder's predicted samples, one problem per image point);
* ``y``: ``(P, K, C)`` — the second point sets (in the context loss: the true neighbours);
* ``x_weights``: ``(P, Q)`` and ``y_weights``: ``(P, K)`` — non-negative masses with a positive
  sum per problem (they are normalised to sum to 1); ``None`` means uniform. Zero weights are
  allowed and have no influence on the value nor any gradient: they mark neighbours dropped at
  image borders.

The result has the dtype and device of ``x`` (float32 or float64, CPU or CUDA) and is differentiable
in ``x`` (and in ``y``). Input shapes are validated at the call (``ValueError``/``TypeError`` naming
the argument); the value checks on the weights (non-negative, positive sum) cost a device
synchronisation on CUDA and can be switched off with ``validate=False``.

Metrics
-------
:class:`ExactW2`
    POT's network-simplex solver per problem (float64, CPU loop): the reference; slow.
:class:`SortedW2`
    Exact in one dimension with arbitrary weights, via quantile functions; batched and fast.
:class:`SinkhornW2`
    Batched log-domain entropic OT with :math:`\varepsilon`-scaling; optionally debiased.
:class:`SlicedW2`
    Sliced Wasserstein: random directions, then the exact 1-D solver.
:class:`GaussianW2`
    Bures–Wasserstein closed form between moment-matched Gaussians (diagonal or full covariance);
    :meth:`GaussianW2.from_moments` takes Gaussians directly.
:class:`AutoW2` and :func:`resolve_metric`
    The default of the context loss: :class:`SortedW2` for ``C == 1`` and :class:`SlicedW2` for
    ``C > 1`` (see :class:`AutoW2` for why).

Modules
-------
``base`` (the call signature, its checks, the base class), ``sorting`` and ``one_d`` (the exact
1-D solver and :class:`SortedW2`), ``sinkhorn``, ``gaussian``, ``sliced``, ``exact`` (POT) and
``auto`` (:class:`AutoW2`, :func:`resolve_metric`). Import the public names from
``conprediff.wasserstein``; the modules are an implementation detail.

References
----------
* Peyré, G., & Cuturi, M. (2019). Computational optimal transport: With applications to data
  science. Foundations and Trends in Machine Learning, 11(5-6), 355-607.
* Bonneel, N., Rabin, J., Peyré, G., & Pfister, H. (2015). Sliced and Radon Wasserstein
  barycenters of measures. Journal of Mathematical Imaging and Vision, 51(1), 22-45.
* Dowson, D. C., & Landau, B. V. (1982). The Fréchet distance between multivariate normal
  distributions. Journal of Multivariate Analysis, 12(3), 450-455.
* Givens, C. R., & Shortt, R. M. (1984). A class of Wasserstein metrics for probability
  distributions. Michigan Mathematical Journal, 31(2), 231-240.
* Feydy, J., Séjourné, T., Vialard, F.-X., Amari, S., Trouvé, A., & Peyré, G. (2019).
  Interpolating between optimal transport and MMD using Sinkhorn divergences. AISTATS.
"""

from .auto import AutoW2, resolve_metric
from .exact import ExactW2
from .gaussian import GaussianW2, weighted_moments
from .one_d import SortedW2
from .sinkhorn import SinkhornW2
from .sliced import SlicedW2

__all__ = [
    "AutoW2",
    "ExactW2",
    "GaussianW2",
    "SinkhornW2",
    "SlicedW2",
    "SortedW2",
    "resolve_metric",
    "weighted_moments",
]
