"""Encoders to ONNX files that describe themselves (``metadata_props``), with optional fp16 and int8 twins.

Graphs output *unnormalised* embeddings: the engine L2-normalises, so one graph serves cosine search
and anything that needs the raw projection.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Optional

import torch

from rs_clip_plugin.engine.bundle import (
    DENSE_CLS_OUTPUT,
    DENSE_VARIANTS,
    EMBEDDING_OUTPUT,
    ONNX_META_PREFIX,
    PATCH_OUTPUT,
)

OPSET = 17
FP16_KEEP_FP32_OPS = ("Transpose",)
# int8 twins: dynamic quantisation (weights int8 per output channel, activations quantised per batch at run
# time). MatMul/Gemm hold nearly all of a ViT's time; Conv (the patch embedding, one per image) is left fp32.
INT8_OPS = ("MatMul", "Gemm")
# Weights in 7 bits: on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's u8 x s8 kernels use VPMADDUBSW,
# whose int16 sums saturate with full-range weights. Measured on the default bundle's rgb and S2 encoders
# (AMD EPYC, AVX2): min cosine to fp32 0.982 / 0.976 and label agreement 0.93 / 0.90 with 8-bit weights,
# 0.99984 / 0.99986 and 0.992 / 1.0 with 7-bit; same kernels, same speed. VNNI machines lose nothing by it.
INT8_REDUCE_RANGE = True


class TextEncoder(torch.nn.Module):
    """``model.encode_text`` without normalisation, as a module ONNX export can trace."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(input_ids, normalize=False)


class ImageEncoder(torch.nn.Module):
    """``model.encode_image`` without normalisation."""

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(image, normalize=False)


# NACLIP's neighbourhood prior: a Gaussian over patch-grid distance added to the attention logits.
NACLIP_SIGMA = 5.0


def dense_problem(model: torch.nn.Module) -> Optional[str]:
    """Why ``model`` has no dense path, or None when it has one. Two kinds have one:

    - anything with an open_clip ViT as ``.visual`` (a CLIP model, or a ``ClipVisualStudent``): class-token
      pooling, LayerNorm then projection, a plain self-attention block at the end;
    - a ``TimmStudent``-shaped module (``.backbone`` a timm VisionTransformer, ``.proj`` a Linear into the joint
      space): class-token pooling, a plain timm ``Block`` with ``Attention`` at the end."""
    if hasattr(model, "backbone"):
        return _timm_dense_problem(model)
    try:
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
    except ImportError:
        return "open_clip is not installed"
    v = getattr(model, "visual", None)
    if not isinstance(v, VisionTransformer):
        return f"the visual tower is a {type(v).__name__}, not an open_clip ViT"
    if v.attn_pool is not None or v.proj is None:
        return "the ViT pools with attention or has no projection"
    if getattr(v, "pool_type", "tok") != "tok" or getattr(v, "final_ln_after_pool", False):
        return f"the ViT pools with {getattr(v, 'pool_type', '?')!r}: only class-token pooling ('tok') is supported"
    last = v.transformer.resblocks[-1]
    if not (isinstance(last, ResidualAttentionBlock) and _swappable(last.attn) and v.transformer.batch_first):
        return "the ViT's last block is not a plain batch-first self-attention block"
    return None


def _timm_dense_problem(student: torch.nn.Module) -> Optional[str]:
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:
        return "timm is not installed"
    bb = student.backbone
    if not isinstance(bb, VisionTransformer):
        return f"the student's backbone is a {type(bb).__name__}, not a timm VisionTransformer"
    if not isinstance(getattr(student, "proj", None), torch.nn.Linear):
        return "the student has no linear 'proj' head into the joint space"
    if bb.global_pool != "token" or bb.attn_pool is not None or not bb.has_class_token:
        return (f"the timm ViT pools with {bb.global_pool!r}: only class-token pooling ('token') is supported, "
                "since the patch tokens follow the class token's path (create it with global_pool='token')")
    last = bb.blocks[-1]
    # Exact types: subclasses (ResPostBlock, ParallelScalingBlock, AttentionRope...) order or mix the maths otherwise.
    if type(last) is not Block or type(last.attn) is not Attention:
        return (f"the timm ViT's last block is a {type(last).__name__} with {type(last.attn).__name__}: "
                "only a plain Block with Attention is supported")
    return None


def supports_dense(model: torch.nn.Module) -> bool:
    """True when ``model`` has a dense path (see ``dense_problem``)."""
    return dense_problem(model) is None


def patch_grid(model: torch.nn.Module) -> tuple[int, int]:
    """(rows, cols) of patch tokens the encoder makes from its input size."""
    g = model.backbone.patch_embed.grid_size if hasattr(model, "backbone") else model.visual.grid_size
    return int(g[0]), int(g[1])


def _gaussian_prior(grid: tuple[int, int], sigma: float, prefix: int = 1) -> torch.Tensor:
    """[P+N, P+N] additive attention logits: -d^2 / (2 sigma^2) between patches, 0 for the ``prefix`` tokens
    (class token, and a timm ViT's register tokens) before them."""
    gh, gw = grid
    yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], dim=1)
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    out = torch.zeros(gh * gw + prefix, gh * gw + prefix)
    out[prefix:, prefix:] = -d2 / (2.0 * sigma * sigma)
    return out


def variant_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, variant: str, scale: float,
                      prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The one place of the dense variants' maths: per-head q, k, v [B, h, N, d] -> attended values [B, h, N, d].

    segearth (SegEarth-OV): softmax(qq^T) + softmax(kk^T) + softmax(vv^T) applied to v; clearclip: softmax(qq^T);
    sclip: softmax(qq^T) + softmax(kk^T); naclip: softmax(kk^T + Gaussian neighbourhood ``prior``); maskclip: v."""

    def self_attn(t: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        s = torch.matmul(t * scale, t.transpose(-1, -2))
        return (s if bias is None else s + bias).softmax(dim=-1)

    if variant == "segearth":
        attn = self_attn(q) + self_attn(k) + self_attn(v)
    elif variant == "clearclip":
        attn = self_attn(q)
    elif variant == "sclip":
        attn = self_attn(q) + self_attn(k)
    elif variant == "naclip":
        attn = self_attn(k, prior)
    elif variant == "maskclip":
        return v
    else:
        raise ValueError(f"unknown dense variant {variant!r}: use one of {', '.join(DENSE_VARIANTS)}")
    return torch.matmul(attn, v)


def dense_attention(mha: torch.nn.Module, x: torch.Tensor, variant: str,
                    prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The modified last-block attention (``variant_attention``) of an open_clip block's nn.MultiheadAttention,
    on LayerNorm'd tokens ``x`` [B, N, C]. Residual and FFN are dropped by the caller. Shapes are static except
    the batch (as TraceableSelfAttention)."""
    mha = getattr(mha, "mha", mha)  # unwrap TraceableSelfAttention while the exporter has it swapped in
    n, c = int(x.shape[1]), int(x.shape[2])
    h = mha.num_heads
    d = c // h
    w, b = mha.in_proj_weight, mha.in_proj_bias

    def heads(i: int) -> torch.Tensor:
        y = torch.nn.functional.linear(x, w[i * c : (i + 1) * c], None if b is None else b[i * c : (i + 1) * c])
        return y.reshape(-1, n, h, d).transpose(1, 2)  # [B, h, N, d]

    out = variant_attention(heads(0), heads(1), heads(2), variant, float(d) ** -0.5, prior)
    return mha.out_proj(out.transpose(1, 2).reshape(-1, n, c))


def timm_dense_attention(attn: torch.nn.Module, x: torch.Tensor, variant: str,
                         prior: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The modified last-block attention (``variant_attention``) of a timm ``Attention`` on its block's norm1'd
    tokens ``x`` [B, N, C]: the fused qkv split per head, q/k norms (Identity unless qk_norm), the module's own
    scale, then its output norm, gate and proj as in its forward. Residual and MLP are dropped by the caller."""
    n = int(x.shape[1])
    h, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(-1, n, 3, h, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = variant_attention(q, k, v, variant, float(attn.scale), prior).transpose(1, 2).reshape(-1, n, h * d)
    out = attn.norm(out)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    return attn.proj(out)


class DenseEncoder(torch.nn.Module):
    """Base of the dense encoders: pooled ``embedding`` plus ``patch_embeddings`` [B, N, D] and ``dense_cls``
    [B, D] in the joint space, in one graph. ``variant`` and ``grid`` go into the manifest's ``dense`` entry."""

    outputs = (EMBEDDING_OUTPUT, PATCH_OUTPUT, DENSE_CLS_OUTPUT)

    def __init__(self, model: torch.nn.Module, variant: str, prefix: int = 1):
        super().__init__()
        if variant not in DENSE_VARIANTS:
            raise ValueError(f"unknown dense variant {variant!r}: use one of {', '.join(DENSE_VARIANTS)}")
        problem = dense_problem(model)
        if problem:
            raise ValueError(f"this image encoder has no dense path: {problem}; export it without dense outputs")
        self.variant = variant
        self.grid = patch_grid(model)
        self.prefix = prefix  # tokens before the patches (class token first)
        self.register_buffer("prior", _gaussian_prior(self.grid, NACLIP_SIGMA, prefix) if variant == "naclip" else None,
                             persistent=False)


class DenseImageEncoder(DenseEncoder):
    """``encode_image`` (unnormalised, output ``embedding``) of an open_clip ViT tower (``model.visual``: a CLIP
    model or a ``ClipVisualStudent``) plus, in the same graph, the training-free dense outputs. The normal last
    block and the modified one (``dense_attention``; residual and FFN dropped) share the input to that block;
    the modified tokens go through ln_post and proj like the pooled token does."""

    def __init__(self, clip_model: torch.nn.Module, variant: str = "segearth"):
        super().__init__(clip_model, variant)
        self.clip = clip_model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.clip.visual
        x = v._embeds(image)
        blocks = v.transformer.resblocks
        for blk in blocks[:-1]:
            x = blk(x)
        last = blocks[-1]
        pooled, _ = v._pool(last(x))
        pooled = pooled @ v.proj
        dense = v.ln_post(last.ls_1(dense_attention(last.attn, last.ln_1(x), self.variant, self.prior))) @ v.proj
        return pooled, dense[:, 1:], dense[:, 0]


class DenseTimmEncoder(DenseEncoder):
    """A ``TimmStudent`` (timm ViT ``backbone`` + linear ``proj``) with the same dense outputs: its pooled
    embedding as ``student(x)`` gives it, and the last block's attention rewritten (``timm_dense_attention``,
    LayerScale kept, residual and MLP dropped) with every token through the backbone's final norm, head
    (fc_norm, head: per-token, Identity for a class-token student) and ``proj``, as the class token's path.
    Patch tokens exclude the prefix (class and register) tokens."""

    def __init__(self, student: torch.nn.Module, variant: str = "segearth"):
        super().__init__(student, variant, prefix=int(getattr(getattr(student, "backbone", None), "num_prefix_tokens", 1)))
        self.student = student

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bb = self.student.backbone
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(image))))
        for blk in bb.blocks[:-1]:
            x = blk(x)
        last = bb.blocks[-1]
        pooled = self.student.proj(bb.forward_head(bb.norm(last(x))))

        def head(t: torch.Tensor) -> torch.Tensor:  # forward_head after pooling, applied to every token
            return self.student.proj(bb.head(bb.head_drop(bb.fc_norm(bb.norm(t)))))

        dense = head(last.ls1(timm_dense_attention(last.attn, last.norm1(x), self.variant, self.prior)))
        return pooled, dense[:, self.prefix :], dense[:, 0]


def dense_encoder(model: torch.nn.Module, variant: str) -> DenseEncoder:
    """The dense encoder for ``model``: a timm student or an open_clip ViT tower (see ``dense_problem``); raises
    ValueError naming why when it has no dense path."""
    return DenseTimmEncoder(model, variant) if hasattr(model, "backbone") else DenseImageEncoder(model, variant)


class TraceableSelfAttention(torch.nn.Module):
    """nn.MultiheadAttention's self-attention written so the ONNX trace has static head reshapes.

    torch's multi_head_attention_forward traces into ~20 Shape/Gather/Concat/Unsqueeze nodes per layer (the
    batch is dynamic, so ONNX Runtime cannot fold them) plus a packed-qkv Gather; at the small CLIP towers
    this engine runs they were ~17% of ORT's kernel time. Here only the batch is left dynamic (-1) and
    sequence/width are baked in as the traced graph's constants, which the export's fixed input size
    already implies. Anything but plain self-attention falls through to the wrapped module unchanged.
    """

    def __init__(self, mha: torch.nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None, **kw):
        mha = self.mha
        plain = (
            (key is None or key is query)
            and (value is None or value is query)
            and key_padding_mask is None
            and not need_weights
            and not kw
            # an additive [L, L] mask (open_clip's causal one); per-head or boolean masks keep torch's path
            and (attn_mask is None or (attn_mask.is_floating_point() and attn_mask.dim() == 2))
        )
        if not plain:
            return mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                       attn_mask=attn_mask, **kw)
        x = query if mha.batch_first else query.transpose(0, 1)
        n, c = int(x.shape[1]), int(x.shape[2])  # traced as constants: only the batch stays dynamic
        h = mha.num_heads
        d = c // h
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = torch.nn.functional.linear(x, w[:c], None if b is None else b[:c]).reshape(-1, n, h, d).transpose(1, 2)
        k = torch.nn.functional.linear(x, w[c : 2 * c], None if b is None else b[c : 2 * c])
        v = torch.nn.functional.linear(x, w[2 * c :], None if b is None else b[2 * c :]).reshape(-1, n, h, d)
        scores = torch.matmul(q * (float(d) ** -0.5), k.reshape(-1, n, h, d).permute(0, 2, 3, 1))
        if attn_mask is not None:
            scores = scores + attn_mask
        out = torch.matmul(scores.softmax(dim=-1), v.transpose(1, 2)).transpose(1, 2).reshape(-1, n, c)
        out = mha.out_proj(out)
        return (out if mha.batch_first else out.transpose(0, 1)), None


def _swappable(mha: torch.nn.Module) -> bool:
    return (
        isinstance(mha, torch.nn.MultiheadAttention)
        and mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and not mha.add_zero_attn
    )


@contextmanager
def traceable_attention(module: torch.nn.Module) -> Iterator[int]:
    """Swap every plain nn.MultiheadAttention in ``module`` for ``TraceableSelfAttention`` for the block.

    Yields how many were swapped; the originals are put back however the block ends.
    """
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if _swappable(child):
                    setattr(parent, name, TraceableSelfAttention(child))
                    swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


@contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Turn off nn.MultiheadAttention's fused inference kernel for the block, restoring the previous setting.

    PyTorch takes that kernel (aten::_native_multi_head_attention, which has no ONNX symbolic) whenever no
    input needs a gradient, e.g. under no_grad or for a model whose parameters are all frozen.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str,
    metadata: dict[str, Any],
    static_attention: bool = True,
    outputs: Sequence[str] = (EMBEDDING_OUTPUT,),
) -> Path:
    """Trace ``module`` on ``example`` to ``path`` (opset 17, dynamic batch) and stamp ``metadata`` into it.

    ``static_attention``: trace self-attention through ``TraceableSelfAttention`` (same maths, a leaner graph
    for ONNX Runtime); the caller's parity check against the untouched module is what vouches for it.
    """
    import onnx

    path = Path(path)
    module = module.eval()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        attention = traceable_attention(module) if static_attention else nullcontext()
        with mha_fastpath_disabled(), attention, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow on constant shapes
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=list(outputs),
                dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        set_metadata(proto, metadata)
        onnx.checker.check_model(proto)
        _save_atomic(proto, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def set_metadata(proto: Any, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` as JSON values under ``ONNX_META_PREFIX`` keys (replacing ones already there)."""
    keep = [p for p in proto.metadata_props if not p.key.startswith(ONNX_META_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = f"{ONNX_META_PREFIX}{key}"
        entry.value = json.dumps(value, ensure_ascii=False)


def read_metadata(path: Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    n = len(ONNX_META_PREFIX)
    return {p.key[n:]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith(ONNX_META_PREFIX)}


def convert_fp16(src: Path, dst: Path, metadata: dict[str, Any]) -> Path:
    """Half-precision weights and compute, float32 inputs and outputs (drop-in for the fp32 file)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    proto = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values clipped to fp16 range" for -inf attention masks is expected
        # fp16 Transpose nodes crash ONNX Runtime 1.32's CPU layout optimiser (ORT_ENABLE_ALL segfaults at session
        # creation); kept in fp32 they cost two casts each and the graph loads everywhere.
        half = convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS]
        )
    set_metadata(half, {**metadata, "precision": "fp16"})
    _save_atomic(half, dst)
    return dst


def weight_matmuls(proto: Any) -> tuple[list[str], list[str]]:
    """(names of MatMul/Gemm nodes with a constant weight, names of those multiplying two activations).

    The second kind (attention scores q.k and weights.v) would be quantised on both sides at run time: an
    extra error on every attention map for little speed (the sequence is short), so they stay fp32."""
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    weights, activations = [], []
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in INT8_OPS:
            continue
        if not node.name:
            node.name = f"{node.op_type}_{i}"  # the quantiser addresses nodes by name
        (weights if any(x in consts for x in node.input[:2]) else activations).append(node.name)
    return weights, activations


def convert_int8(src: Path, dst: Path, metadata: dict[str, Any], exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamically quantised twin of ``src``: MatMul/Gemm with a constant weight in int8 (per channel), the
    rest fp32, float32 inputs and outputs (drop-in for the fp32 file). ``exclude`` names more nodes kept fp32.
    Returns what was quantised (written into the manifest beside the measured agreement)."""
    import os
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    weights, activations = weight_matmuls(proto)
    keep = [*activations, *exclude]
    chosen = [n for n in weights if n not in set(exclude)]
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        import logging

        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice meant for static quantisation
        try:
            quantize_dynamic(proto, tmp, op_types_to_quantize=list(INT8_OPS), per_channel=True,
                             reduce_range=INT8_REDUCE_RANGE, weight_type=QuantType.QInt8,
                             nodes_to_quantize=chosen, nodes_to_exclude=keep)
        finally:
            logging.getLogger().setLevel(quiet)
        q = onnx.load(tmp)
        set_metadata(q, {**metadata, "precision": "int8"})
        _save_atomic(q, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"quantised": "MatMul/Gemm weights int8 (7-bit range) per channel, activations dynamic",
            "int8_nodes": len(chosen), "fp32_matmuls": len(keep)}


def _save_atomic(proto: Any, path: Path) -> None:
    import onnx

    from rs_clip_plugin.engine.atomic import atomic_write

    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
