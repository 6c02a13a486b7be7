"""SeMask mask-classification segmentors (MaskFormer, Mask2Former, FaPN / MSFaPN Mask2Former).

Layout and names follow the original detectron2 models, so their checkpoints load by copy: `backbone.*` (SeMask
Swin), `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*`; the D2 `SemanticHead` has no parameters.

Padding and semantic inference, as the original meta-architecture (`SeMaskMaskFormer`):
1. the normalised image batch is zero-padded right/bottom to a multiple of `size_divisibility` (32);
2. the backbone, pixel decoder and transformer decoder run on the padded batch; `pred_masks` are at padded/4;
3. masks are upsampled (bilinear, align_corners=False) to the padded size, `semantic = softmax(class)[..., :-1] ·
   sigmoid(masks)` summed over queries, then CROPPED to the input size (detectron2 `sem_seg_postprocess` crops
   before it resizes; here the output size is the input size, so the resize is the identity).
For a batch of images of different sizes, pad each image to the common size yourself, run, then crop each
output to its image size and resize it to the size you want (what detectron2 does per image).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import ModelConfig
from ...layers import check_image_batch, crop_hw, is_tracing, round_up
from ...segmentor import Segmentor
from .common import semantic_head
from .pixel_decoder import FPNPixelDecoder, MSDeformAttnPixelDecoder
from .transformer import MultiScaleMaskedTransformerDecoder, TransformerPredictor

MASK_DECODERS = ("maskformer", "mask2former", "fapn_mask2former", "msfapn_mask2former")


def semantic_inference(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """[B, Q, K+1] class logits and [B, Q, H, W] mask logits -> [B, K, H, W] semantic scores (the original's
    `einsum(softmax(cls)[..., :-1], sigmoid(mask))`; not log-probabilities: argmax them, do not softmax)."""
    return torch.einsum("bqc,bqhw->bchw", F.softmax(pred_logits, dim=-1)[..., :-1], pred_masks.sigmoid())


class MaskFormerHead(nn.Module):
    """`sem_seg_head`: a pixel decoder and a transformer predictor."""

    def __init__(self, in_channels: list[int], c: ModelConfig) -> None:
        super().__init__()
        self.kind = c.decoder
        common = dict(num_classes=c.num_classes, hidden_dim=c.hidden_dim, num_queries=c.num_queries,
                      nheads=c.nheads, dim_feedforward=c.dim_feedforward, dec_layers=c.dec_layers,
                      mask_dim=c.mask_dim)
        if c.decoder == "maskformer":
            self.pixel_decoder = FPNPixelDecoder(in_channels, conv_dim=c.conv_dim, mask_dim=c.mask_dim)
            self.predictor = TransformerPredictor(in_channels[-1], dropout=c.decoder_dropout, **common)
            return
        if c.decoder == "fapn_mask2former":
            self.pixel_decoder = FPNPixelDecoder(in_channels, conv_dim=c.conv_dim, mask_dim=c.mask_dim, fapn=True)
        else:
            self.pixel_decoder = MSDeformAttnPixelDecoder(
                in_channels, conv_dim=c.conv_dim, mask_dim=c.mask_dim, nheads=c.nheads, enc_layers=c.enc_layers,
                dim_feedforward=c.enc_dim_feedforward, dropout=c.decoder_dropout, n_points=c.enc_points,
                fapn=c.decoder == "msfapn_mask2former")
        self.predictor = MultiScaleMaskedTransformerDecoder(c.conv_dim, **common)

    def forward(self, feats: list[torch.Tensor]) -> dict:
        mask_features, multi_scale = self.pixel_decoder(feats)
        if self.kind == "maskformer":
            return self.predictor(feats[-1], mask_features)
        return self.predictor(multi_scale, mask_features)


class MaskFormerSegmentor(Segmentor):
    """forward(images [B, 3, H, W], normalised) -> {"logits" [B, K, H, W] semantic scores, "pred_logits"
    [B, Q, K+1], "pred_masks" [B, Q, Hp/4, Wp/4] (Hp, Wp: H, W padded to a multiple of 32), "prior_logits"
    [B, K', H, W] (D2 SemanticHead, align_corners=True), and in training "aux_outputs" (earlier layers)}."""

    def __init__(self, backbone: nn.Module, sem_seg_head: MaskFormerHead, config: ModelConfig) -> None:
        nn.Module.__init__(self)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.config = config

    def forward(self, images: torch.Tensor, *, upsample: bool = True, priors: bool = True) -> dict:
        """`upsample=False` gives "logits"/"prior_logits" at the mask resolution (padded/4), uncropped;
        `priors=False` skips "prior_logits"."""
        check_image_batch(images, self.config.in_chans)  # before the padding, so that errors show the caller's shape
        h, w = images.shape[-2:]
        d = self.config.size_divisibility
        pad_b, pad_r = round_up(h, d) - h, round_up(w, d) - w
        # Traced: always pad (a zero pad is a no-op), so the program has no branch on its input size.
        x = F.pad(images, (0, pad_r, 0, pad_b)) if (is_tracing() or pad_b or pad_r) else images
        feats, stage_priors = self.backbone(x)
        out = self.sem_seg_head(feats)
        if not self.training:
            out.pop("aux_outputs")
        masks = out["pred_masks"]
        if upsample:
            masks = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out["logits"] = semantic_inference(out["pred_logits"], masks)
        if priors and stage_priors:
            prior = semantic_head(stage_priors)  # at the padded input size
            out["prior_logits"] = prior if upsample else F.interpolate(
                prior, size=out["pred_masks"].shape[-2:], mode="bilinear", align_corners=False)
        if upsample:
            out.update({k: crop_hw(out[k], h, w, dim=2) for k in ("logits", "prior_logits") if k in out})
        return out
