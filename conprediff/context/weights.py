r"""Schedules for the context-term weight :math:`\lambda_t`.

The training objective is

.. math::

    L = L_{point}(t) + \lambda_t \cdot \frac{1}{N} \sum_i \frac{1}{|S|} \sum_{s \in S}
    W_2^2\big(\psi_n(h_i, t), P_{N_i^s}\big),

and each object here maps a batch of integer timesteps to :math:`\lambda_t`. All are called as
``weight(t, schedule) -> (B,)`` float32 on ``t``'s device; the schedule is the
:class:`~conprediff.schedules.NoiseSchedule` of the process (only the weights that say so need it).
"""

from __future__ import annotations

import torch
from sklearn.base import BaseEstimator

from conprediff._validation import check_int, check_real
from conprediff.context._checks import check_tensor

__all__ = ["ConstantWeight", "DecayingWeight", "SNRWeight", "TruncatedWeight", "resolve_weight"]


def _check_value(value, name: str = "value") -> float:
    return check_real(value, name, 0.0)


def _check_t(t: torch.Tensor) -> torch.Tensor:
    return check_tensor(t, "t", "(B,)")


def _need_schedule(owner: object, schedule) -> None:
    if schedule is None:
        raise ValueError(
            f"{type(owner).__name__} depends on the noise schedule: "
            "pass schedule=NoiseSchedule(...)"
        )


class ConstantWeight(BaseEstimator):
    r""":math:`\lambda_t = \mathrm{value}` for every ``t``.

    Parameters
    ----------
    value : float, default=1.0
        The weight, ``>= 0``.
    """

    def __init__(self, value: float = 1.0):
        self.value = value

    def __call__(self, t: torch.Tensor, schedule=None) -> torch.Tensor:
        """``(B,)`` float32 ``value`` on ``t``'s device; ``schedule`` is not needed."""
        value = _check_value(self.value)
        return torch.full(_check_t(t).shape, value, dtype=torch.float32, device=t.device)


class DecayingWeight(BaseEstimator):
    r"""Polynomial decay in ``t``, largest at low noise:

    .. math::

        \lambda_t = \mathrm{value} \cdot (1 - t / T)^{\mathrm{power}},

    with :math:`T` = ``schedule.timesteps``, so :math:`\lambda_0 = \mathrm{value}` and
    :math:`\lambda_{T-1} = \mathrm{value} / T^{\mathrm{power}}`.

    Parameters
    ----------
    value : float, default=1.0
        The weight at ``t = 0``, ``>= 0``.
    power : float, default=1.0
        Exponent, ``>= 0`` (0 gives a constant).
    """

    def __init__(self, value: float = 1.0, power: float = 1.0):
        self.value = value
        self.power = power

    def __call__(self, t: torch.Tensor, schedule=None) -> torch.Tensor:
        """``(B,)`` float32 :math:`\\lambda_t` on ``t``'s device; needs ``schedule``."""
        value = _check_value(self.value)
        power = _check_value(self.power, "power")
        _check_t(t)
        _need_schedule(self, schedule)
        frac = 1.0 - t.to(torch.float64) / schedule.timesteps
        return (value * frac.clamp(min=0.0) ** power).to(torch.float32)


class SNRWeight(BaseEstimator):
    r"""A bounded signal-to-noise weight:

    .. math::

        \lambda_t = \mathrm{value} \cdot \frac{\mathrm{SNR}(t)}{1 + \mathrm{SNR}(t)}
        = \mathrm{value} \cdot \bar\alpha_t .

    The raw SNR spans many orders of magnitude (about :math:`10^4` at ``t = 0`` and
    :math:`10^{-5}` at ``t = T - 1`` for the usual schedules), so weighting the context term by it
    would make it swamp the point loss at low noise. :math:`\mathrm{SNR}/(1+\mathrm{SNR})`, the
    signal fraction of the variance of :math:`x_t`, has the same ordering but stays in
    :math:`[0, 1]`: the context term counts fully where the features can still see the image and
    fades where :math:`x_t` is almost pure noise.

    Parameters
    ----------
    value : float, default=1.0
        The weight as :math:`\bar\alpha_t \to 1`, ``>= 0``.
    """

    def __init__(self, value: float = 1.0):
        self.value = value

    def __call__(self, t: torch.Tensor, schedule=None) -> torch.Tensor:
        """``(B,)`` float32 :math:`\\lambda_t` on ``t``'s device; needs ``schedule``."""
        value = _check_value(self.value)
        _check_t(t)
        _need_schedule(self, schedule)
        alpha_bar = schedule.alpha_bar.to(t.device)[t.long()]
        return (value * alpha_bar).to(torch.float32)


class TruncatedWeight(BaseEstimator):
    r"""Another weight, switched off outside ``t_min <= t <= t_max``:

    .. math::

        \lambda_t = \mathrm{base}(t) \cdot [t_{min} \le t \le t_{max}] .

    Parameters
    ----------
    base : float or weight object, default=1.0
        The weight inside the window; a float means :class:`ConstantWeight` of that value.
    t_max : int, optional
        The last timestep with a non-zero weight; ``None`` (the default) means ``T - 1``, the
        last timestep of the schedule.
    t_min : int, default=0
        The first timestep with a non-zero weight. ``t_min = T // 2`` (with the default
        ``t_max``) keeps the term at high noise only.

    Raises
    ------
    TypeError
        At call time: a bound that is not an integer.
    ValueError
        At call time: ``t_min > t_max``, or (given the schedule) a window with no timestep of
        ``[0, T)`` in it, which would train with :math:`\lambda_t = 0` throughout.

    Notes
    -----
    The context term skips the points of images whose weight is 0, so a window over a fraction
    of the timesteps also cuts the decoder's and the metric's work to about that fraction.
    """

    def __init__(self, base=1.0, t_max: int | None = None, t_min: int = 0):
        self.base = base
        self.t_max = t_max
        self.t_min = t_min

    def __call__(self, t: torch.Tensor, schedule=None) -> torch.Tensor:
        """``(B,)`` float32 :math:`\\lambda_t` on ``t``'s device; needs ``schedule`` if ``base``
        does or ``t_max`` is None."""
        if self.t_max is None:
            _need_schedule(self, schedule)
        t_min = check_int(self.t_min, "t_min")
        t_max = check_int(schedule.timesteps - 1 if self.t_max is None else self.t_max, "t_max")
        if t_min > t_max:
            raise ValueError(f"t_min must be <= t_max, got t_min={t_min}, t_max={t_max}")
        if schedule is not None and (t_min >= schedule.timesteps or t_max < 0):
            raise ValueError(
                f"the window [t_min, t_max] = [{t_min}, {t_max}] holds none of the "
                f"schedule's timesteps [0, {schedule.timesteps - 1}]: the context term would be 0"
            )
        base = resolve_weight(self.base, name="base")
        values = base(_check_t(t), schedule)
        inside = (t >= t_min) & (t <= t_max)
        return torch.where(inside, values, torch.zeros_like(values))


def resolve_weight(weight, name: str = "weight"):
    r"""Turn a ``float`` into :class:`ConstantWeight`; pass a weight object through.

    Parameters
    ----------
    weight : float or callable
        A number ``>= 0``, or an object called as ``weight(t, schedule) -> (B,)``.
    name : str, default='weight'
        The parameter name used in error messages.

    Returns
    -------
    callable
        The weight object.

    Raises
    ------
    TypeError
        If ``weight`` is neither a number nor callable.
    ValueError
        If ``weight`` is a negative or non-finite number.
    """
    if callable(weight):
        return weight
    try:
        value = _check_value(weight, name)
    except TypeError:
        message = f"{name} must be a number >= 0 or a weight object, got {weight!r}"
        raise TypeError(message) from None
    return ConstantWeight(value)
