"""SeMask-FPN losses: CE on the main logits + 0.4 × CE on the summed semantic priors (mmseg semantics).

mmseg's CE is `reduction='none'` then the mean over ALL pixels, ignored ones counting 0 in the numerator and 1 in
the denominator (quirk Q8); `reduction="valid"` gives the usual mean over labelled pixels (detectron2's choice).
OHEM (`ohem_min_kept`, as the released SeMask-L ADE20K and COCO-Stuff configs) applies to the main loss only.

Memory: by default (`memory_efficient=True`) the resize + CE run in chunks (per image, and in bands of rows when the
label size is a power-of-two multiple of the logits' size, e.g. stride-4 logits of a 512² crop) and the gradient
w.r.t. the (stride-4) logits is computed chunk by chunk during the forward. The full-resolution logits, their
log-softmax and their gradients never exist at once: at batch 2, 512², 150 classes that is ~1.2 GiB less peak
memory per output. Per pixel the same ops run on the same values (a band is resized with a one-row halo, which
gives the same source rows and weights as the full resize for power-of-two factors; the resize kernel may round a
band's values ≤ 1 ulp differently), and the sums are taken in another order: losses and gradients agree with the
plain path to < 1e-6 (tested). `memory_efficient=False` keeps the plain autograd path (the tests' reference).
The gradient is first-order only (no double backward through the chunked path).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255


def _resize(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise TypeError(f"labels must be an integer tensor [B, H, W], got {labels.dtype}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = torch.unique(labels[bad]).tolist()[:10]
        raise ValueError(f"labels contain values {values} outside [0, {num_classes}) that are not the ignore index "
                         f"{ignore_index}; remap them (e.g. reduce_zero_label for ADE20K) or set them to "
                         f"{ignore_index}")


@torch.no_grad()
def ohem_weights(logits: torch.Tensor, labels: torch.Tensor, *, min_kept: int,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg `OHEMPixelSampler(thresh=None)`: weight 1 for the `min_kept × B` valid pixels with the largest CE."""
    losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    return _ohem_from_losses(losses, labels, min_kept=min_kept, ignore_index=ignore_index)


def _ohem_from_losses(losses: torch.Tensor, labels: torch.Tensor, *, min_kept: int,
                      ignore_index: int) -> torch.Tensor:
    valid = labels != ignore_index
    weight = torch.zeros_like(losses)
    order = losses[valid].sort(descending=True).indices
    kept = torch.zeros(int(valid.sum()), device=losses.device, dtype=losses.dtype)
    kept[order[: min_kept * labels.shape[0]]] = 1.0
    weight[valid] = kept
    return weight


def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mmseg `acc_seg`: % of ALL pixels (ignored ones count as wrong) whose arg-max equals the label."""
    return (logits.argmax(1) == labels).float().mean() * 100


CHUNK_ELEMENTS = 2 ** 21  # logits elements (classes × rows × width) per chunk of the memory-efficient path: 8 MiB


def _chunks(in_h: int, out_h: int, row_elements: int, max_elements: int) -> list[tuple[int, int, int, int]]:
    """Row bands for one image: (lo, hi, y0, y1) = logits rows [lo, hi) to resize, label rows [y0, y1) they cover.

    For a power-of-two factor f = out_h / in_h, output rows [f·r0, f·r1) are cut from the resize of logits rows
    [r0 - 1, r1 + 1) (clipped): the source coordinates are exact binary fractions, so the band uses the same source
    rows and weights as the full resize (values equal up to the kernel's rounding, ≤ 1 ulp). Any other ratio: one
    band, the whole image.
    """
    f = out_h // in_h if in_h and out_h % in_h == 0 else 0
    if f == 0 or f & (f - 1):
        return [(0, in_h, 0, out_h)]
    step = max(1, max_elements // max(1, row_elements * f))  # logits rows per band
    bands = []
    for r0 in range(0, in_h, step):
        r1 = min(in_h, r0 + step)
        bands.append((max(0, r0 - 1), min(in_h, r1 + 1), f * r0, f * r1))
    return bands


def _band_logits(rows: torch.Tensor, band: tuple[int, int, int, int], in_h: int,
                 size: tuple[int, int]) -> torch.Tensor:
    """The label rows [y0, y1) of `_resize(logits, size)` from `rows` = logits[..., lo:hi, :] (see `_chunks`)."""
    lo, hi, y0, y1 = band
    if (lo, hi) == (0, in_h):
        return _resize(rows, torch.Size(size))[..., y0:y1, :]
    f = size[0] // in_h
    up = _resize(rows, torch.Size((f * (hi - lo), size[1])))
    return up[..., y0 - f * lo:y1 - f * lo, :]


class _ChunkedResizedCE(torch.autograd.Function):
    """sum(CE(resize(logits), labels) [× weight]) × scale, and the arg-max hits, one chunk at a time; the gradient
    w.r.t. `logits` is accumulated chunk by chunk in the forward (autograd on each chunk) and scaled in backward."""

    @staticmethod
    def forward(ctx, logits, labels, weight, scale, ignore_index, max_elements, count_hits):  # noqa: ANN001
        size = tuple(labels.shape[-2:])
        need_grad = ctx.needs_input_grad[0]
        grad = torch.zeros_like(logits) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        hits = torch.zeros((), dtype=torch.int64, device=logits.device)
        bands = _chunks(logits.shape[-2], size[0], logits.shape[1] * size[1], max_elements)
        for b in range(logits.shape[0]):
            for band in bands:
                lo, hi, y0, y1 = band
                with torch.enable_grad():
                    x = logits[b:b + 1, :, lo:hi].detach().requires_grad_(need_grad)
                    up = _band_logits(x, band, logits.shape[-2], size)
                    lbl = labels[b:b + 1, y0:y1]
                    loss = F.cross_entropy(up, lbl, ignore_index=ignore_index, reduction="none")
                    if weight is not None:
                        loss = loss * weight[b:b + 1, y0:y1]
                    s = loss.sum()
                    if need_grad:
                        (g,) = torch.autograd.grad(s, x, grad_outputs=scale.to(s.dtype))
                        grad[b:b + 1, :, lo:hi] += g
                total += s.detach().double()
                if count_hits:
                    hits += (up.detach().argmax(1) == lbl).sum()
        ctx.save_for_backward(grad if need_grad else None)
        ctx.mark_non_differentiable(hits)
        return (total * scale.double()).to(logits.dtype), hits

    @staticmethod
    def backward(ctx, grad_loss, _grad_hits):  # noqa: ANN001
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None, None, None, None


@torch.no_grad()
def _chunked_pixel_losses(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                          max_elements: int) -> torch.Tensor:
    """Per-pixel CE of the resized logits [B, H, W] (for OHEM), chunk by chunk."""
    size = tuple(labels.shape[-2:])
    out = torch.empty(labels.shape, dtype=logits.dtype, device=logits.device)
    for b in range(logits.shape[0]):
        for band in _chunks(logits.shape[-2], size[0], logits.shape[1] * size[1], max_elements):
            lo, hi, y0, y1 = band
            up = _band_logits(logits[b:b + 1, :, lo:hi], band, logits.shape[-2], size)
            out[b:b + 1, y0:y1] = F.cross_entropy(up,
                                                  labels[b:b + 1, y0:y1], ignore_index=ignore_index,
                                                  reduction="none")
    return out


class SeMaskLoss(nn.Module):
    """`loss = CE(logits) + prior_weight × CE(prior_logits)` with labels [B, H, W] (ignore 255).

    Logits of any resolution are resized (bilinear, align_corners=False) to the label size first, as mmseg; pass
    the stride-4 maps (`model(images, upsample=False)`) so that the memory-efficient path (default; see the module
    docstring) never materialises full-resolution logits. Returns {"loss", "loss_ce", "loss_prior" (SeMask only),
    "acc"}.
    """

    def __init__(self, *, prior_weight: float = 0.4, ignore_index: int = IGNORE_INDEX, reduction: str = "all",
                 ohem_min_kept: int | None = None, memory_efficient: bool = True,
                 chunk_elements: int = CHUNK_ELEMENTS) -> None:
        super().__init__()
        if reduction not in ("all", "valid"):
            raise ValueError(f"reduction must be 'all' (mmseg: mean over all pixels) or 'valid', got {reduction!r}")
        self.prior_weight = prior_weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.ohem_min_kept = ohem_min_kept
        self.memory_efficient = memory_efficient
        self.chunk_elements = chunk_elements

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="none")
        if weight is not None:
            loss = loss * weight
        if self.reduction == "all":
            return loss.mean()
        return loss.sum() / (labels != self.ignore_index).sum().clamp(min=1)

    def _scale(self, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The factor of the per-pixel loss sum: 1/N (mean over all pixels) or 1/#valid, as the plain path."""
        one = torch.ones((), dtype=dtype, device=labels.device)
        if self.reduction == "all":
            return one / labels.numel()
        return one / (labels != self.ignore_index).sum().clamp(min=1)

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3:
            raise ValueError(f"labels must be [B, H, W], got shape {tuple(labels.shape)}")
        if self.memory_efficient:
            return self._forward_chunked(outputs, labels)
        logits = _resize(outputs["logits"], labels.shape[-2:])
        _check_labels(labels, logits.shape[1], self.ignore_index)
        labels = labels.long()
        weight = None
        if self.ohem_min_kept:
            weight = ohem_weights(logits, labels, min_kept=self.ohem_min_kept, ignore_index=self.ignore_index)
        out = {"loss_ce": self._ce(logits, labels, weight)}
        total = out["loss_ce"]
        if "prior_logits" in outputs and self.prior_weight:
            prior = _resize(outputs["prior_logits"], labels.shape[-2:])
            _check_labels(labels, prior.shape[1], self.ignore_index)
            out["loss_prior"] = self.prior_weight * self._ce(prior, labels)
            total = total + out["loss_prior"]
        out["loss"] = total
        out["acc"] = pixel_accuracy(logits.detach(), labels)
        return out

    def _forward_chunked(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]
        _check_labels(labels, logits.shape[1], self.ignore_index)
        labels = labels.long()
        weight = None
        if self.ohem_min_kept:
            losses = _chunked_pixel_losses(logits.detach(), labels, self.ignore_index, self.chunk_elements)
            weight = _ohem_from_losses(losses, labels, min_kept=self.ohem_min_kept, ignore_index=self.ignore_index)
        scale = self._scale(labels, logits.dtype)
        loss_ce, hits = _ChunkedResizedCE.apply(logits, labels, weight, scale, self.ignore_index,
                                                self.chunk_elements, True)
        out = {"loss_ce": loss_ce}
        total = loss_ce
        if "prior_logits" in outputs and self.prior_weight:
            prior = outputs["prior_logits"]
            _check_labels(labels, prior.shape[1], self.ignore_index)
            loss_prior, _ = _ChunkedResizedCE.apply(prior, labels, None, self._scale(labels, prior.dtype),
                                                    self.ignore_index, self.chunk_elements, False)
            out["loss_prior"] = self.prior_weight * loss_prior
            total = total + out["loss_prior"]
        out["loss"] = total
        out["acc"] = hits.to(torch.float32) / labels.numel() * 100
        return out
