"""Drop-in for mamba_ssm's selective-scan functions (state-spaces/mamba) on fastspec's kernels.

Switch by import::

    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn              # before
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    from fastspec.compat.mamba_ssm import selective_scan_fn, selective_state_update    # after

``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False)``: mamba's names, argument order, shapes and semantics (its
``selective_scan_ref``): u, delta, z (batch, dim, L); A (dim, dstate) real float32; B and C
(dim, dstate) float32, (batch, dstate, L) or (batch, groups, dstate, L) in u's dtype;
D and delta_bias (dim,) float32; softplus with threshold 20; the state in float32; out in
u's dtype, last state (batch, dim, dstate) float32.

``selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
dt_softplus=False)``: one decoding step in place on ``state``, returning out; the single-head
(state (batch, dim, dstate)) and the multi-head (state (batch, nheads, dim, dstate), B and C
(batch, ngroups, dstate)) forms.

Where this module does more than the peer: any device (the peer's kernels need CUDA and a
build that matches the installed torch), float64, an ``initial_state`` (batch, dim, dstate)
for ``selective_scan_fn`` (keyword-only), the gradient through the returned last state (the
peer's CUDA backward ignores it), a deterministic backward under
``torch.use_deterministic_algorithms(True)`` (the peer adds dB and dC with atomics),
``backend=`` (keyword-only).

Not reproduced: complex A (and the (batch, dstate, 2L) complex B/C layout that goes with
it), ``selective_state_update``'s ``state_batch_indices`` of newer peer versions, and
``mamba_inner_fn``.
"""
from __future__ import annotations

import torch

from fastspec.ops.ssm import selective_scan, selective_state_update as _state_update

__all__ = ["selective_scan_fn", "selective_state_update"]


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, initial_state: torch.Tensor | None = None, backend: str = "auto"):
    """mamba_ssm's ``selective_scan_fn``: out (batch, dim, L), or (out, last_state) with
    ``return_last_state`` (see the module docstring and :func:`fastspec.selective_scan`)."""
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state,
                          backend=backend)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, *,
                           backend: str = "auto"):
    """mamba_ssm's ``selective_state_update``: updates ``state`` in place, returns out in x's
    dtype (see the module docstring and :func:`fastspec.selective_state_update`)."""
    return _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, backend=backend)
