"""scikit-learn style parameters for torch modules.

:class:`ModuleParamsMixin` gives an ``nn.Module`` the ``get_params``/``set_params`` pair that
:func:`sklearn.base.clone` and nested keys such as ``backbone__base_channels`` rely on. The
parameters are the constructor's arguments, read back from attributes of the same name (the
scikit-learn convention).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["ModuleParamsMixin"]


class ModuleParamsMixin:
    """``get_params``/``set_params`` for an ``nn.Module`` whose constructor stores its arguments.

    ``set_params`` rebuilds the module from the merged arguments, so it gets fresh weights: an
    architecture argument cannot change under trained weights.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor arguments by name (``deep`` is accepted for scikit-learn compatibility)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any):
        """Rebuild the module with some constructor arguments changed; returns ``self``."""
        valid = self.get_params()
        for key in params:
            if key not in valid:
                raise ValueError(
                    f"invalid parameter {key!r} for {type(self).__name__}; "
                    f"valid parameters: {sorted(valid)}"
                )
        valid.update(params)
        type(self).__init__(self, **valid)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
