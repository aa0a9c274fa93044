"""The ops every model gathers and attends through. Model code calls these, never a raw kernel.

Today each op is its plain-PyTorch path (SDPA for attention, index_select for the gather); the Triton kernels of issue 9
plug in behind the same functions.
"""
from kernels.attention import attention, attention_reference
from kernels.masked_gather import masked_gather, masked_gather_reference

__all__ = ["attention", "attention_reference", "masked_gather", "masked_gather_reference"]
