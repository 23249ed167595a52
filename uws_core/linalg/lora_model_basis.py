"""LoRA factor pairs in float64 GEMM layout, the Gram of their products in factored form, and the model-axis
basis kept as loadings over models (:class:`FactoredModelBasis`).

Factors follow PEFT: ``B: (N, d_out, r)``, ``A: (N, r, d_in)``, scaling ``s_i = alpha/r`` (1 by default), update
``P_i = s_i B_i A_i``. The model Gram ``K_ij = <P_i, P_j>_F = s_i s_j * sum over the r x r block of
(B_i^T B_j) * (A_i A_j^T)`` (:func:`lora_gram_block`) needs no ``d_out x d_in`` matrix; neither do projections
onto, and reconstructions from, a model-axis basis ``basis_j = sum_i coef_ij P_i``. The spectra that produce
such bases are in :mod:`uws_core.linalg.lora`.
"""

from __future__ import annotations

import numpy as np
import torch

from uws_core.linalg.device import ACCUM_DTYPE, as_tensor
from uws_core.linalg.spectral import ShapeMismatchError

__all__ = ["FactoredModelBasis", "LoraChunkLayout", "check_lora_pairs", "lora_scaling_vector", "lora_gram_block",
           "concat_chunks"]


def check_lora_pairs(b, a) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B (N, d_out, r), A (N, r, d_in))`` as tensors in their own dtype (one pair of 2-D factors: N = 1);
    other shapes raise :class:`ShapeMismatchError` naming both."""
    b, a = as_tensor(b, dtype=None), as_tensor(a, dtype=None)
    if b.ndim == 2:
        b, a = b.unsqueeze(0), a.unsqueeze(0)
    if b.ndim != 3 or a.ndim != 3 or b.shape[0] != a.shape[0] or b.shape[2] != a.shape[1]:
        raise ShapeMismatchError(f"LoRA factors must be B (N, d_out, r) and A (N, r, d_in); got "
                                 f"{tuple(b.shape)} and {tuple(a.shape)}")
    return b, a


def lora_scaling_vector(scaling, n: int) -> torch.Tensor:
    """Per-adapter scalings ``s`` (n,) float64 from None (all 1), a scalar or a sequence."""
    if scaling is None:
        return torch.ones(n, dtype=ACCUM_DTYPE)
    s = torch.as_tensor(np.broadcast_to(np.asarray(scaling, dtype=np.float64), (n,)).copy())
    return s


class LoraChunkLayout:
    """Upcast a stored chunk ``(B (c,d_out,r), A (c,r,d_in), s (c,))`` to float64 GEMM layout
    ``(Bcat (d_out, c r), Acat (c r, d_in), r, s)``, reusing one buffer per ``slot`` (no allocation per block,
    which keeps the heap from fragmenting); ``slot=None`` returns fresh tensors."""

    def __init__(self):
        self._buffers: dict = {}

    def __call__(self, chunk, device, slot=None):
        b, a, s = chunk
        c, d_out, r = b.shape
        d_in = a.shape[2]
        key = (c, d_out, r, d_in, str(device))
        bufs = self._buffers.get(slot)
        if slot is None or bufs is None or bufs[0] != key:
            bufs = (key, torch.empty(d_out, c, r, dtype=ACCUM_DTYPE, device=device),
                    torch.empty(c, r, d_in, dtype=ACCUM_DTYPE, device=device))
            if slot is not None:
                self._buffers[slot] = bufs
        _, bb, ab = bufs
        bb.copy_(b.permute(1, 0, 2))  # (d_out, c, r): Bcat with adapters side by side
        ab.copy_(a)
        return bb.view(d_out, c * r), ab.view(c * r, d_in), r, s.to(device, ACCUM_DTYPE)


def _prepare(chunk, device, slot=None):
    return LoraChunkLayout()(chunk, device, slot)


def lora_gram_block(pa, pb) -> torch.Tensor:
    """Block of <P_i, P_j>_F = s_i s_j sum over the r x r block of (B_i^T B_j) * (A_i A_j^T)."""
    (ba, aa, ra, sa), (bb, ab, rb, sb) = pa, pb
    gb = ba.T @ bb  # (c_a r_a, c_b r_b): B_i^T B_j blocks
    ga = aa @ ab.T  # (c_a r_a, c_b r_b): A_i A_j^T blocks
    k = gb.mul_(ga).reshape(ba.shape[1] // ra, ra, bb.shape[1] // rb, rb).sum(dim=(1, 3))
    return k * sa[:, None] * sb[None, :]


def concat_chunks(items):
    """Prepared chunks joined along the adapter axis (each part concatenated on dim 0)."""
    return tuple(torch.cat(parts, dim=0) for parts in zip(*items))


class FactoredModelBasis:
    """Model-axis basis in R^{d_out*d_in} kept in factored form: ``basis_j = sum_i coef_ij P_i``.

    ``coef`` (N, k) float64 with columns summing to zero when centred, so ``basis_j = sum_i coef_ij (P_i - M)``
    with ``M = mean_i P_i``; orthonormality is ``coef^T K coef = I`` with the model Gram K. Inputs stay in
    their own dtype (chunks of the stack); nothing of size d_out*d_in is formed unless asked for.
    """

    def __init__(self, chunks, gram: torch.Tensor, coef: torch.Tensor, center: str, shape, device):
        self.chunks, self.gram, self.coef, self.center = chunks, gram, coef, center
        self.shape, self.device = (int(shape[0]), int(shape[1])), device
        self.n_models = gram.shape[0]
        self._mean_inner = gram.mean(dim=1)  # <P_i, M> (N,)
        self._mean_sq = float(gram.mean())  # ||M||^2

    @property
    def k(self) -> int:
        return int(self.coef.shape[1])

    def _new_pairs(self, b, a, scaling):
        b, a = check_lora_pairs(b, a)
        s = lora_scaling_vector(scaling, b.shape[0])
        return _prepare((b, a, s), self.device)

    def inner_with(self, b, a, scaling=None) -> torch.Tensor:
        """``<P_i, P_new_l>_F`` for every stored model i and new adapter l -> (N, m) float64."""
        pn = self._new_pairs(b, a, scaling)
        prep = LoraChunkLayout()
        return torch.cat([lora_gram_block(prep(ch, self.device, slot=1), pn) for ch in self.chunks], dim=0)

    def project(self, b, a, scaling=None, center: bool = True, k: int | None = None) -> torch.Tensor:
        """Coordinates of new adapters ``(B (m,d_out,r'), A (m,r',d_in))`` -> (m, k) float64.

        ``center=True`` gives ``<basis_j, P - M>``, ``False`` gives ``<basis_j, P>`` (the authors' convention
        of reconstructing without the mean)."""
        coef = self.coef[:, :k] if k is not None else self.coef
        coords = self.inner_with(b, a, scaling).T @ coef  # (m, k)
        if center:
            coords = coords - self._mean_inner @ coef
        return coords

    def model_weights(self, coords: torch.Tensor, add_mean: bool = True) -> torch.Tensor:
        """Weights over the stored models, (m, N): ``P_hat = sum_i w_i P_i`` (plus M when ``add_mean``)."""
        coords = as_tensor(coords, device=self.device)
        w = coords @ self.coef[:, :coords.shape[-1]].T
        return w + 1.0 / self.n_models if add_mean else w

    def reconstruct(self, coords: torch.Tensor, add_mean: bool = True, dense: bool = False):
        """Adapters from coordinates (m, k).

        Returns factors ``(B_hat (m, d_out, N r), A_hat (N r, d_in))`` with ``P_hat_l = B_hat[l] @ A_hat``,
        or with ``dense=True`` the (m, d_out, d_in) float64 matrices (small sizes only)."""
        w = self.model_weights(coords, add_mean)  # (m, N)
        d_out, d_in = self.shape
        out = torch.zeros(w.shape[0], d_out, d_in, dtype=ACCUM_DTYPE, device=self.device) if dense else None
        bs, as_, i0 = [], [], 0
        for ch in self.chunks:
            b64, a64, r, s = _prepare(ch, self.device)
            c = ch[0].shape[0]
            wr = (w[:, i0:i0 + c] * s).repeat_interleave(r, dim=1)  # (m, c r): weight and scaling per column
            if dense:
                out += torch.einsum("dk,mk,kn->mdn", b64, wr, a64)
            else:
                bs.append(b64.unsqueeze(0) * wr.unsqueeze(1))
                as_.append(a64)
            i0 += c
        if dense:
            return out
        return torch.cat(bs, dim=2), torch.cat(as_, dim=0)

    def reconstruction_error(self, b, a, scaling=None, k: int | None = None, add_mean: bool = True) -> np.ndarray:
        """Relative error ``||P - P_hat||_F / ||P||_F`` of new adapters at k components, by inner products.

        With ``add_mean``: ``P_hat = M + proj(P - M)``, else ``P_hat = proj(P)`` (the mean is not added)."""
        pn = self._new_pairs(b, a, scaling)
        norm_sq = torch.diagonal(lora_gram_block(pn, pn))  # ||P_l||^2 (m,)
        coords = self.project(b, a, scaling, center=add_mean, k=k)
        if add_mean:
            g = self.inner_with(b, a, scaling)  # (N, m)
            resid = norm_sq - 2 * g.mean(dim=0) + self._mean_sq - (coords ** 2).sum(dim=1)
        else:
            resid = norm_sq - (coords ** 2).sum(dim=1)
        return (torch.sqrt(resid.clamp(min=0)) / torch.sqrt(norm_sq)).cpu().numpy()

    def materialize(self, k: int | None = None, max_bytes: float = 2e9) -> torch.Tensor:
        """Dense basis (d_out*d_in, k) float64 (refuses above ``max_bytes``)."""
        kk = self.k if k is None else min(k, self.k)
        d_out, d_in = self.shape
        if d_out * d_in * kk * 8 > max_bytes:
            raise MemoryError(f"dense model-axis basis would need {d_out * d_in * kk * 8 / 1e9:.1f} GB")
        eye = torch.eye(kk, dtype=ACCUM_DTYPE, device=self.device)
        cols = []
        for j in range(kk):  # basis_j = reconstruct(e_j) without the mean
            cols.append(self.reconstruct(eye[j:j + 1], add_mean=False, dense=True).reshape(-1))
        return torch.stack(cols, dim=1).cpu()
