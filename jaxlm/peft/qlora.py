"""QLoRA: the frozen base of a LoRA run held in 4-bit NormalFloat, dequantized inside the step.

The codec and the quantized leaf are compress's (:mod:`jaxlm.compress.quantize`: QLoRA's 16-value
NF4 code, block-wise absmax scales, optional double quantization, two codes a byte). Here the
frozen tree of the run's trainable / frozen split is stored that way as the step's constant
(every floating weight with two or more axes; biases and norm scales stay float), and
``assemble`` dequantizes it before the model is applied, so LoRA's update adds to the dequantized
kernel (and merging folds it into the dequantized kernel).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxlm.compress.quantize import dequantize_params, is_quantized, quantize_params, quantized_bytes

log = logging.getLogger("jaxlm")


def quantize_frozen(frozen, config):
    """The frozen params as the step holds them: NF4 (blocks of ``peft.quant_block_size``)."""
    p = config.peft
    return quantize_params(frozen, "nf4", block_size=p.quant_block_size, double_quant=p.double_quant)


def dequantize_frozen(frozen):
    """The float params a quantized frozen tree stands for (unchanged if it holds no quantized leaf)."""
    return dequantize_params(frozen) if is_quantized(frozen) else frozen


def base_bytes(frozen, quantized) -> dict[str, int]:
    """Bytes of the frozen base: as stored (NF4 and the float leaves), and all in float32 / bfloat16."""
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(frozen))
    return {"stored": quantized_bytes(quantized), "float32": 4 * n, "bfloat16": 2 * n}


def log_bytes(frozen, quantized) -> None:
    b = base_bytes(frozen, quantized)
    mib = {k: v / 2**20 for k, v in b.items()}
    log.info("QLoRA: the frozen base holds %.2f MiB in NF4 (float32: %.2f MiB, %.1fx; bfloat16: %.2f MiB, %.1fx)",
             mib["stored"], mib["float32"], b["float32"] / b["stored"], mib["bfloat16"], b["bfloat16"] / b["stored"])
