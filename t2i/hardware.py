"""What the machine can do fast, for choices that depend on it (not on the user's wishes)."""

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX or AVX-512 BF16).

    Without either, PyTorch emulates bf16 matrix products on the CPU, and bf16 autocast is slower than fp32 by an
    order of magnitude or more (measured here on an AVX2-only AMD EPYC: a GAN-CLS step at ngf = 32 took ~30 s
    instead of ~1.2 s).
    """
    try:  # private helpers, present since torch 2.1; if they go away, assume no fast bf16 rather than fail
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False
