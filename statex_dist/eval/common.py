"""What every evaluation shares: running any ``model(ids) -> logits`` module without gradients (whole, or in
segments that carry the recurrent state: any length in bounded memory), scoring answer tokens, tokenising
prompt pieces, and splitting work over data-parallel ranks.

Shapes: B batch, T time, V vocab, A answer tokens per sequence.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from statex_dist.data.tokenizer import load_tokenizer
from statex_dist.models.recurrent_state import RecurrentState


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for modules without parameters)."""
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def inference(model: torch.nn.Module):
    """eval() and no_grad() for the duration, then the caller's train/eval mode again (a training loop
    calls the evaluations between steps)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``model(ids)`` as a float tensor [B, T, V]; also accepts outputs with ``.logits`` or a tuple."""
    return _logits(model(ids.to(model_device(model))))


def takes_state(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes ``state=`` (a RecurrentState carried between calls: CausalLM)."""
    try:
        return "state" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def segments(model: torch.nn.Module, ids: torch.Tensor, segment_len: Optional[int] = None,
             labels: Optional[torch.Tensor] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Runs ``model`` over ids [B, T] in consecutive segments of ``segment_len`` tokens (the last one
    shorter), carrying one RecurrentState from each to the next: yields (start, out) per segment, out
    being the segment's float logits [B, S, V], or with ``labels`` [B, T] the model's mean loss over the
    segment's labels. Only one segment's activations and logits exist at a time, so memory does not grow
    with T; the logits equal the whole forward pass's (up to the scans' re-chunking at the boundaries).

    ``segment_len`` None or >= T: one whole forward pass (no state), i.e. exactly ``model(ids)``.
    """
    T = ids.shape[1]
    if segment_len is None or segment_len >= T:
        yield 0, _logits(model(ids.to(model_device(model)))) if labels is None else _loss(model, ids, labels)
        return
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    if not takes_state(model):
        raise TypeError(f"segment_len={segment_len} needs a model whose forward carries a recurrent state "
                        f"(state=, statex_dist's CausalLM); {type(model).__name__} does not: unset segment_len")
    state = RecurrentState(len(model.layers))
    for s in range(0, T, segment_len):
        piece = ids[:, s:s + segment_len]
        if labels is None:
            yield s, _logits(model(piece.to(model_device(model)), state=state))
        else:
            yield s, _loss(model, piece, labels[:, s:s + segment_len], state=state)


def _logits(out) -> torch.Tensor:
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def _loss(model, ids: torch.Tensor, labels: torch.Tensor, **state) -> torch.Tensor:
    dev = model_device(model)
    return model(ids.to(dev), labels=labels.to(dev), **state)


def logits_at(model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor,
              segment_len: Optional[int] = None) -> torch.Tensor:
    """The float logits at ``positions`` [B, A] of ids [B, T]: [B, A, V]. With ``segment_len``, by
    :func:`segments`, keeping only each segment's scoring positions (memory O(B (A + segment_len) V), not
    O(B T V))."""
    out = None
    for start, logits in segments(model, ids, segment_len):
        S, V = logits.shape[1], logits.shape[-1]
        rel = positions.to(logits.device) - start
        inside = (rel >= 0) & (rel < S)                                          # [B, A]
        sel = logits.gather(1, rel.clamp(0, S - 1)[..., None].expand(-1, -1, V))  # [B, A, V]
        out = sel if out is None else torch.where(inside[..., None], sel, out)
    return out


def score_positions(logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor):
    """Greedy correctness and NLL of ``targets`` predicted at ``positions``.

    logits [B, T, V]; positions, targets [B, A] (the logits at ``positions[b, a]`` predict ``targets[b, a]``).
    Returns (correct [B, A] bool, nll [B, A] float32), on the CPU.
    """
    idx = positions.to(logits.device)[..., None].expand(-1, -1, logits.shape[-1])
    return score_selected(logits.gather(1, idx), targets)


def score_selected(sel: torch.Tensor, targets: torch.Tensor):
    """Greedy correctness and NLL of ``targets`` [B, A] under the logits sel [B, A, V]; as
    :func:`score_positions`."""
    tgt = targets.to(sel.device)
    correct = sel.argmax(-1) == tgt
    nll = -F.log_softmax(sel, dim=-1).gather(-1, tgt[..., None])[..., 0]
    return correct.cpu(), nll.cpu()


def my_share(n_items: int, dp_rank: int = 0, dp_size: int = 1) -> range:
    """Indices of the items this data-parallel rank computes (round robin: every rank does about as much)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
    return range(dp_rank, n_items, dp_size)


def sum_over_ranks(t: torch.Tensor, dp_size: int = 1, group=None) -> torch.Tensor:
    """Sum a float64 CPU tensor of counts over the data-parallel group (no-op for one rank).

    The collective runs on the backend's device (CUDA under NCCL), the result comes back to the CPU.
    """
    if dp_size == 1:
        return t
    from statex_dist.parallel.state import collective_device
    x = t.to(collective_device(group))
    dist.all_reduce(x, group=group)
    return x.cpu()


def encoder(tokenizer) -> Callable[[str], list[int]]:
    """A text -> token ids function for ``tokenizer``: ``"bytes"``/None (UTF-8 bytes, the byte tokenizer's
    ids 0-255), an object with ``encode_batch`` (``statex_dist.data.tokenizer``), a Hugging Face tokenizer
    (``encode`` without special tokens) or a plain callable."""
    if tokenizer is None or tokenizer == "bytes" or tokenizer is bytes:
        return lambda s: list(s.encode("utf-8"))
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    if hasattr(tokenizer, "encode_batch"):
        return lambda s: [int(i) for i in tokenizer.encode_batch([s])[0]]
    if hasattr(tokenizer, "encode"):
        return lambda s: list(tokenizer.encode(s, add_special_tokens=False))
    if callable(tokenizer):
        return lambda s: list(tokenizer(s))
    raise TypeError(f"tokenizer {tokenizer!r}: expected 'bytes', a tokenizer object or a callable")


def mix_seed(*parts: int) -> int:
    """A deterministic seed from integers (Python's hash() of strings differs between processes)."""
    h = 0x9E3779B1
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x632BE5AB) % (1 << 61)
    return h

