"""Transformer decoders: MaskFormer's `TransformerPredictor` (DETR decoder on one feature map) and Mask2Former's
`MultiScaleMaskedTransformerDecoder` (masked cross-attention, round-robin over 3 scales).

Both return {"pred_logits" [B, Q, K+1], "pred_masks" [B, Q, H/4, W/4], "aux_outputs": [{...} per earlier layer]}.
Attention is `nn.MultiheadAttention` in the original (sequence-first) layout so its keys load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import MLP, Conv2dNorm, position_embedding_sine


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class DETRDecoderLayer(nn.Module):
    """Post-norm self-attn -> cross-attn -> FFN (keys `self_attn`, `multihead_attn`, `linear1/2`, `norm1..3`)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
                ) -> torch.Tensor:
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt, need_weights=False)[0]))
        tgt2 = self.multihead_attn(tgt + query_pos, memory + pos, value=memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerPredictor(nn.Module):
    """MaskFormer v1 predictor on the res5 map (`transformer.decoder.layers.i`, `transformer.decoder.norm`,
    `query_embed`, `input_proj`, `class_embed`, `mask_embed`). The original's encoder has 0 layers (ENC_LAYERS 0).
    Every decoder layer's output goes through the shared final LayerNorm before the heads (DETR's intermediate)."""

    def __init__(self, in_channels: int, *, num_classes: int, hidden_dim: int, num_queries: int, nheads: int,
                 dropout: float, dim_feedforward: int, dec_layers: int, mask_dim: int) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList(
            DETRDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout) for _ in range(dec_layers))
        self.transformer.decoder.norm = nn.LayerNorm(hidden_dim)
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.hidden_dim = hidden_dim
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = Conv2dNorm(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Sequential()
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> dict:
        b = x.shape[0]
        pos = position_embedding_sine(x, self.hidden_dim // 2).flatten(2).permute(2, 0, 1)  # [HW, B, C]
        memory = self.input_proj(x).flatten(2).permute(2, 0, 1)
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)  # [Q, B, C]
        tgt = torch.zeros_like(query_pos)
        hs = []
        for layer in self.transformer.decoder.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            hs.append(self.transformer.decoder.norm(tgt))
        hs_t = torch.stack(hs).transpose(1, 2)  # [L, B, Q, C]
        classes = self.class_embed(hs_t)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs_t), mask_features)
        return {"pred_logits": classes[-1], "pred_masks": masks[-1],
                "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1],
                                                                                   strict=True)]}


class _AttnBlock(nn.Module):
    """Post-norm attention sublayer of Mask2Former (`self_attn` or `multihead_attn`, `norm`)."""

    def __init__(self, d_model: int, nhead: int, *, cross: bool) -> None:
        super().__init__()
        self.attn_name = "multihead_attn" if cross else "self_attn"
        self.add_module(self.attn_name, nn.MultiheadAttention(d_model, nhead, dropout=0.0))
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, *, pos: torch.Tensor | None,
                query_pos: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = getattr(self, self.attn_name)(tgt + query_pos, _with_pos(memory, pos), value=memory, attn_mask=attn_mask,
                        need_weights=False)[0]
        return self.norm(tgt + out)


class _FFN(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former decoder: `dec_layers` layers (the original config's DEC_LAYERS minus 1), each masked
    cross-attention (to the previous prediction's sigmoid > 0.5 region; a fully masked query attends everywhere)
    on scale `i % 3`, then self-attention, then FFN. Predictions are made before the first layer and after each."""

    def __init__(self, in_channels: int, *, num_classes: int, hidden_dim: int, num_queries: int, nheads: int,
                 dim_feedforward: int, dec_layers: int, mask_dim: int) -> None:
        super().__init__()
        self.num_heads = nheads
        self.hidden_dim = hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            _AttnBlock(hidden_dim, nheads, cross=False) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            _AttnBlock(hidden_dim, nheads, cross=True) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(_FFN(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            Conv2dNorm(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Sequential()
            for _ in range(self.num_feature_levels))
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def _heads(self, output: torch.Tensor, mask_features: torch.Tensor, size: Sequence[int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.decoder_norm(output).transpose(0, 1)  # [B, Q, C]
        classes = self.class_embed(out)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(out), mask_features)
        attn = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
        # True = may NOT attend; one copy per head: [B * nH, Q, h*w]
        attn = (attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5)
        return classes, masks, attn.detach()

    def forward(self, x: Sequence[torch.Tensor], mask_features: torch.Tensor) -> dict:
        src, pos, sizes = [], [], []
        for i in range(self.num_feature_levels):
            sizes.append(x[i].shape[-2:])
            pos.append(position_embedding_sine(x[i], self.hidden_dim // 2).flatten(2).permute(2, 0, 1))
            s = self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(s.permute(2, 0, 1))  # [HW, B, C]
        b = src[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)
        classes, masks, attn = self._heads(output, mask_features, sizes[0])
        all_classes, all_masks = [classes], [masks]
        for i, (cross, self_attn, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                        self.transformer_self_attention_layers,
                                                        self.transformer_ffn_layers, strict=True)):
            lvl = i % self.num_feature_levels
            attn = attn & ~attn.all(-1, keepdim=True)  # a fully masked query attends everywhere
            output = cross(output, src[lvl], pos=pos[lvl], query_pos=query_pos, attn_mask=attn)
            output = self_attn(output, output, pos=query_pos, query_pos=query_pos)
            output = ffn(output)
            classes, masks, attn = self._heads(output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            all_classes.append(classes)
            all_masks.append(masks)
        return {"pred_logits": all_classes[-1], "pred_masks": all_masks[-1],
                "aux_outputs": [{"pred_logits": c, "pred_masks": m}
                                for c, m in zip(all_classes[:-1], all_masks[:-1], strict=True)]}
