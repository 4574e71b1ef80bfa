"""Structured linear layers: Butterfly and Monarch replacements for nn.Linear."""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from fastspec import butterfly as transforms
from fastspec.ops.butterfly import butterfly_multiply, monarch_multiply

BUTTERFLY_INITS = ("randn", "ortho", "identity", "fft", "hadamard", "dct")


class Butterfly(torch.nn.Module):
    """y = crop(M · pad(x)) + bias, M a product of butterfly factors (torch_butterfly's layer).

    The input (..., in_features) is zero-padded to n = the next power of two; ``nstacks =
    ceil(out_features / n)`` butterflies of size n each map it to n outputs, the stacked
    outputs are cropped to out_features. Parameters: ``twiddle`` (nstacks, nblocks, log2 n,
    n/2, 2, 2), real (the default dtype) or complex (``complex=True``: complex input and
    output; real input is taken as complex); ``bias`` (out_features,).
    init: 'randn' (entries N(0, 1/2)), 'ortho' (random rotations/reflections, unitary for
    complex), 'identity', or an exact transform on every stack (the first block; further
    blocks start as the identity): 'hadamard' (H_n/√n), 'fft' (the unitary DFT; complex
    only) or 'dct' (orthonormal DCT-II; complex only, the layer then outputs the real part).
    'fft' and 'dct' read the input through a fixed permutation (a buffer).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, complex: bool = False,
                 init: str = "randn", nblocks: int = 1, increasing_stride: bool = True, backend: str = "auto"):
        super().__init__()
        if init not in BUTTERFLY_INITS:
            raise ValueError(f"Butterfly: init must be one of {BUTTERFLY_INITS}, got {init!r}")
        if init in ("fft", "dct") and not complex:
            raise ValueError(f"Butterfly: init={init!r} needs complex=True (its twiddles are complex)")
        if min(in_features, out_features) < 1 or nblocks < 1:
            raise ValueError(f"Butterfly: in_features, out_features and nblocks must be >= 1, got "
                             f"{in_features}, {out_features}, {nblocks}")
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        self.log_n = max(1, math.ceil(math.log2(in_features)))
        self.n = 1 << self.log_n
        self.nstacks = math.ceil(out_features / self.n)
        self.complex, self.init, self.increasing_stride, self.backend = complex, init, increasing_stride, backend
        real = torch.get_default_dtype()
        dtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}[real] if complex else real
        self.twiddle = torch.nn.Parameter(self._initial_twiddle(dtype))
        self.real_output = init == "dct"
        self.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=real if self.real_output else dtype)) \
            if bias else None
        if self.bias is not None:
            bound = 1 / math.sqrt(in_features)
            torch.nn.init.uniform_(self.bias.real if self.bias.is_complex() else self.bias, -bound, bound)

    def _initial_twiddle(self, dtype: torch.dtype) -> torch.Tensor:
        shape = (self.nstacks, self.nblocks, self.log_n, self.n // 2)
        self.register_buffer("permutation", None)
        if self.init == "randn":
            return torch.randn(*shape, 2, 2, dtype=dtype) / math.sqrt(2)
        eye = torch.eye(2).expand(*shape, 2, 2)
        if self.init == "identity":
            return eye.to(dtype).clone()
        if self.init == "ortho":
            return transforms.random_orthogonal_twiddle(self.nstacks, self.nblocks, self.n, dtype)
        exact = {"fft": transforms.fft, "hadamard": transforms.hadamard, "dct": transforms.dct}[self.init](
            self.n, normalized=True)
        if not exact.increasing_stride == self.increasing_stride:
            raise ValueError(f"Butterfly: init={self.init!r} needs increasing_stride=True")
        tw = eye.to(torch.complex128 if exact.twiddle.is_complex() else torch.float64).clone()
        tw[:, 0] = exact.twiddle[0, 0]
        if exact.permutation is not None:
            self.register_buffer("permutation", exact.permutation)
        return tw.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features); real x with a complex layer is taken as complex."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Butterfly({self.in_features}, {self.out_features}): last dim of x must be "
                             f"{self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if rows.dtype != self.twiddle.dtype:
            rows = rows.to(self.twiddle.dtype)
        rows = F.pad(rows, (0, self.n - self.in_features))
        if self.permutation is not None:
            rows = rows[:, self.permutation]
        rows = rows[:, None, :].expand(-1, self.nstacks, self.n)
        y = butterfly_multiply(self.twiddle, rows, increasing_stride=self.increasing_stride, backend=self.backend)
        y = y.reshape(-1, self.nstacks * self.n)[:, :self.out_features]
        if self.real_output:
            y = y.real
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"complex={self.complex}, init={self.init!r}, nblocks={self.nblocks}, "
                f"increasing_stride={self.increasing_stride}")


class MonarchLinear(torch.nn.Module):
    """y = crop(monarch_multiply(pad(x), w1, w2)) + bias: fly's MonarchLinear.

    With b_in = ceil(in_features / nblocks) and b_out = ceil(out_features / nblocks), the
    input is zero-padded to nblocks·b_in and the output (nblocks·b_out) cropped to
    out_features. w1 (nblocks, q, b_in) and w2 (nblocks, b_out, q) with q = min(b_in, b_out):
    2·nblocks·q·(b_in + b_out)/2 parameters instead of in·out. Init: uniform per block
    (nn.Linear's rule with each block's fan-in); bias as nn.Linear.
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int = 4, bias: bool = True,
                 backend: str = "auto", device=None, dtype=None):
        super().__init__()
        if min(in_features, out_features, nblocks) < 1:
            raise ValueError(f"MonarchLinear: in_features, out_features and nblocks must be >= 1, got "
                             f"{in_features}, {out_features}, {nblocks}")
        self.in_features, self.out_features, self.nblocks, self.backend = in_features, out_features, nblocks, backend
        b_in, b_out = math.ceil(in_features / nblocks), math.ceil(out_features / nblocks)
        self.in_padded, self.out_padded = nblocks * b_in, nblocks * b_out
        q = min(b_in, b_out)
        kw = dict(device=device, dtype=dtype)
        self.w1 = torch.nn.Parameter(torch.empty(nblocks, q, b_in, **kw))
        self.w2 = torch.nn.Parameter(torch.empty(nblocks, b_out, q, **kw))
        self.bias = torch.nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in (self.w1, self.w2):
            bound = 1 / math.sqrt(w.shape[-1])  # nn.Linear's kaiming_uniform(a=√5) bound
            torch.nn.init.uniform_(w, -bound, bound)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features), x's dtype must be the weights'."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"MonarchLinear({self.in_features}, {self.out_features}): last dim of x must be "
                             f"{self.in_features}, got shape {tuple(x.shape)}")
        y = monarch_multiply(F.pad(x, (0, self.in_padded - self.in_features)), self.w1, self.w2,
                             backend=self.backend)[..., :self.out_features]
        return y + self.bias if self.bias is not None else y

    def dense_weight(self) -> torch.Tensor:
        """The (out_features, in_features) matrix this layer multiplies by."""
        eye = torch.eye(self.in_features, dtype=self.w1.dtype, device=self.w1.device)
        y = monarch_multiply(F.pad(eye, (0, self.in_padded - self.in_features)), self.w1, self.w2,
                             backend=self.backend)
        return y[:, :self.out_features].T

    @classmethod
    def from_dense(cls, linear: torch.nn.Linear, nblocks: int = 4, backend: str = "auto") -> "MonarchLinear":
        """The Monarch layer nearest to ``linear``'s weight (Dao et al. 2022, section 3.3).

        Output block l and input block k of M = P₂B₂P₁B₁ meet through the intermediate
        entries e with e mod l_count = l and e div q = k: the (l, k) block of M, rows
        (s·nblocks + l) and columns (k·b_in + p), is a sum of one outer product
        w2[l, :, e div nblocks] ⊗ w1[k, e mod q, :] per such e, and the blocks share no
        parameters. So the nearest Monarch matrix in Frobenius norm takes each block's
        truncated SVD to that rank (rank 1 for square √n blocks: the paper's blockwise
        rank-1 projection). Exact for the zero-padded weight; with padding (sizes not
        multiples of nblocks) the padded entries are fitted as zeros. The relative error
        ‖W − M‖_F / ‖W‖_F is in ``.projection_error``; the bias is copied."""
        out_f, in_f = linear.weight.shape
        layer = cls(in_f, out_f, nblocks, bias=linear.bias is not None, backend=backend,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        k, q, b_in = layer.w1.shape
        l, b_out, r = layer.w2.shape
        w = torch.zeros(layer.out_padded, layer.in_padded, dtype=torch.float64, device=linear.weight.device)
        w[:out_f, :in_f] = linear.weight.detach().double()
        w1 = torch.zeros(layer.w1.shape, dtype=torch.float64, device=w.device)
        w2 = torch.zeros(layer.w2.shape, dtype=torch.float64, device=w.device)
        blocks = w.reshape(b_out, l, k, b_in).permute(1, 2, 0, 3)  # blocks[l, k] = W[s·l_count + l, k·b_in + p]
        for li in range(l):
            for ki in range(k):
                entries = [e for e in range(ki * q, (ki + 1) * q) if e % l == li]
                if not entries:
                    continue
                u, sv, vh = torch.linalg.svd(blocks[li, ki], full_matrices=False)
                for j, e in enumerate(entries[:sv.shape[0]]):
                    root = sv[j].sqrt()
                    w2[li, :, e // l] = u[:, j] * root
                    w1[ki, e % q, :] = vh[j] * root
        with torch.no_grad():
            layer.w1.copy_(w1)
            layer.w2.copy_(w2)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
            dense = layer.dense_weight().double()
        target = linear.weight.detach().double()
        layer.projection_error = float((dense - target).norm() / target.norm().clamp_min(1e-300))
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}, "
                f"bias={self.bias is not None}")


@dataclasses.dataclass
class ReplaceReport:
    """What replace_linear did: the replaced modules' names, their parameter counts before
    and after, and (monarch with projection) each projection's relative error."""

    replaced: list[str]
    dense_params: int
    structured_params: int
    projection_errors: dict[str, float]

    @property
    def saving(self) -> float:
        """Fraction of the replaced layers' parameters saved."""
        return 1 - self.structured_params / self.dense_params if self.dense_params else 0.0

    def __str__(self) -> str:
        return (f"replaced {len(self.replaced)} linear layers: {self.dense_params} -> {self.structured_params} "
                f"parameters ({100 * self.saving:.1f}% saved)")


def replace_linear(model: torch.nn.Module, kind: str = "monarch", min_features: int = 256, filter=None,
                   nblocks: int = 4, project: bool = True, **kwargs) -> ReplaceReport:
    """Swap the nn.Linear layers of ``model`` (in place) for structured ones; returns a ReplaceReport.

    A layer is replaced when min(in_features, out_features) >= min_features and
    ``filter(name, module)`` (if given) is true. kind 'monarch': MonarchLinear with
    ``nblocks``, projected from the dense weight (``project=True``, MonarchLinear.from_dense)
    or freshly initialised; kind 'butterfly': Butterfly (``kwargs`` go to it, e.g. init,
    nblocks), freshly initialised. Bias kept; device and dtype follow the old layer.
    """
    if kind not in ("monarch", "butterfly"):
        raise ValueError(f"replace_linear: kind must be 'monarch' or 'butterfly', got {kind!r}")
    report = ReplaceReport([], 0, 0, {})
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and min(module.in_features, module.out_features) >= min_features
               and (filter is None or filter(name, module))]
    for name, linear in targets:
        if kind == "monarch" and project:
            new = MonarchLinear.from_dense(linear, nblocks, **kwargs)
            report.projection_errors[name] = new.projection_error
        elif kind == "monarch":
            new = MonarchLinear(linear.in_features, linear.out_features, nblocks, linear.bias is not None, **kwargs)
        else:
            new = Butterfly(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        if kind == "butterfly":
            new = new.to(device=linear.weight.device, dtype=None if new.complex else linear.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        report.replaced.append(name)
        report.dense_params += sum(p.numel() for p in linear.parameters())
        report.structured_params += sum(p.numel() * (2 if p.is_complex() else 1) for p in new.parameters())
    return report
