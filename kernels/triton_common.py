"""Helpers shared by the Triton kernels."""
import os

import triton
import triton.language as tl

# the interpreter truncates fp32 -> bfloat16; GPUs round to nearest-even in one conversion instruction
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def cast_out(v, out_ptr):
    """fp32 -> the output dtype, rounded to nearest-even (explicitly for bfloat16 under the interpreter)."""
    if _INTERPRET and out_ptr.dtype.element_ty == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        v = b.to(tl.float32, bitcast=True)
    return v.to(out_ptr.dtype.element_ty)
