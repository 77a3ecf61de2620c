"""C: the controller of *World Models*, with flat parameter vectors for CMA-ES.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 2.3: a single linear layer
from the concatenated latent ``z_t`` (V) and LSTM hidden state ``h_t`` (M) to the action::

    a_t = W_c [z_t h_t] + b_c          (3 x 288 + 3 = 867 parameters for z in R^32, h in R^256)

mapped into CarRacing's action box as in the original code (``get_action`` of the authors'
``model.py``): ``x = tanh(W_c [z h] + b_c)``, then

    steer = x_0 in [-1, 1],   gas = (x_1 + 1) / 2 in [0, 1],   brake = clip(x_2, 0, 1)

(so the brake is ``max(tanh(.), 0)``: zero on half of the pre-activation space). The paper's
ablations (table 1) are options here: ``use_hidden_state=False`` gives "Z only" (99 parameters
at D=32), ``hidden_layer=N`` one tanh hidden layer (the original's "Z with hidden layer" used
N=40 on z only). C is trained by CMA-ES (Hansen, 2016, arXiv:1604.00772), which sees it as one
flat vector: :meth:`Controller.get_flat` / :meth:`Controller.set_flat`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Controller", "ACTION_DIM", "map_action"]

#: CarRacing's action: (steer, gas, brake).
ACTION_DIM = 3


def map_action(x: torch.Tensor) -> torch.Tensor:
    """The original's mapping of C's raw output (..., 3) into the CarRacing action box.

    ``t = tanh(x)``; ``(steer, gas, brake) = (t_0, (t_1 + 1) / 2, clip(t_2, 0, 1))``.
    """
    t = torch.tanh(x)
    return torch.stack([t[..., 0], (t[..., 1] + 1.0) * 0.5, t[..., 2].clamp(0.0, 1.0)], dim=-1)


class Controller(nn.Module):
    """C: ``a = map_action(W [z, h] + b)`` (or through one tanh hidden layer).

    Parameter count, with ``I = latent_dim + hidden_dim * use_hidden_state``:
    ``3 (I + 1)`` when ``hidden_layer = 0`` (867 at the defaults, 99 for z only), else
    ``N (I + 1) + 3 (N + 1)``.

    Flat layout (:meth:`get_flat`): for each linear layer in order, its weight (out, in)
    row-major, then its bias; i.e. the order of ``parameters()``.

    :param latent_dim: D, size of z (32 in the paper).
    :param hidden_dim: H, size of M's hidden state h (256 in the paper).
    :param hidden_layer: N > 0 adds a tanh hidden layer of N units; 0 is the paper's linear C.
    :param use_hidden_state: read ``[z, h]`` (the paper's full model) or ``z`` only.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        hidden_dim: int = 256,
        hidden_layer: int = 0,
        use_hidden_state: bool = True,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or hidden_layer < 0 or (use_hidden_state and hidden_dim < 1):
            raise ValueError(
                "need latent_dim >= 1, hidden_layer >= 0 and (with use_hidden_state) "
                f"hidden_dim >= 1, got {latent_dim}, {hidden_layer} and {hidden_dim}"
            )
        self.latent_dim, self.hidden_dim = latent_dim, hidden_dim
        self.hidden_layer, self.use_hidden_state = hidden_layer, use_hidden_state
        #: constructor arguments (plain types), enough to rebuild the module from a checkpoint
        self.hparams: dict[str, Any] = {
            "latent_dim": latent_dim, "hidden_dim": hidden_dim,
            "hidden_layer": hidden_layer, "use_hidden_state": use_hidden_state,
        }  # fmt: skip
        self.input_dim = latent_dim + (hidden_dim if use_hidden_state else 0)
        if hidden_layer:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(self.input_dim, hidden_layer), nn.Tanh(),
                nn.Linear(hidden_layer, ACTION_DIM),
            )  # fmt: skip
        else:
            self.net = nn.Linear(self.input_dim, ACTION_DIM)

    @property
    def num_parameters(self) -> int:
        """Length of the flat parameter vector CMA-ES searches."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, z: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, D), h (B, H) -> action (B, 3) in the box ``[-1, 1] x [0, 1] x [0, 1]``.

        Any leading shape works (e.g. (D,) -> (3,)). ``h`` is M's hidden state *before* this
        action (the state after reading ``z_{t-1}, a_{t-1}``); ignored when
        ``use_hidden_state=False``. Inputs are cast to the parameters' dtype (numpy gives fp64).
        """
        dtype = next(self.parameters()).dtype
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {tuple(z.shape)}")
        x = z.to(dtype)
        if self.use_hidden_state:
            if h is None or h.shape[-1] != self.hidden_dim or h.shape[:-1] != z.shape[:-1]:
                got = None if h is None else tuple(h.shape)
                raise ValueError(
                    f"h must have shape {(*z.shape[:-1], self.hidden_dim)} (the controller "
                    f"reads [z, h]), got {got}"
                )
            x = torch.cat([x, h.to(dtype)], dim=-1)
        return map_action(self.net(x))

    def get_flat(self) -> np.ndarray:
        """All parameters as one float64 vector (length :attr:`num_parameters`), a copy."""
        return np.concatenate(
            [p.detach().to("cpu", torch.float64).reshape(-1).numpy() for p in self.parameters()]
        )

    @torch.no_grad()
    def set_flat(self, vec: np.ndarray | torch.Tensor | Sequence[float]) -> Controller:
        """Load a flat vector (layout of :meth:`get_flat`) into the parameters; returns self.

        Values are rounded to the parameters' dtype (fp32), so ``set_flat(get_flat())`` is exact.

        :raises ValueError: if ``vec`` is not 1-D of length :attr:`num_parameters`, or is not
            finite.
        """
        flat = torch.as_tensor(
            np.asarray(vec, dtype=np.float64) if not torch.is_tensor(vec) else vec
        ).detach()
        if flat.dim() != 1 or flat.numel() != self.num_parameters:
            raise ValueError(
                f"expected a flat parameter vector of length {self.num_parameters} for "
                f"Controller({self._describe()}), got shape {tuple(flat.shape)}"
            )
        if not torch.isfinite(flat).all():
            raise ValueError("the controller's parameter vector contains NaN or inf")
        offset = 0
        for p in self.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
        return self

    @classmethod
    def from_flat(
        cls, vec: np.ndarray | torch.Tensor | Sequence[float], **kwargs: Any
    ) -> Controller:
        """``Controller(**kwargs)`` with its parameters set from ``vec``."""
        return cls(**kwargs).set_flat(vec)

    def _describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())

    def extra_repr(self) -> str:
        return f"{self._describe()}, num_parameters={self.num_parameters}"
