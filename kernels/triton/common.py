"""Helpers shared by the Triton kernels."""
import triton
import triton.language as tl


@triton.jit
def cast_out(v, out_ptr):
    """fp32 -> the output dtype, bfloat16 rounded to nearest-even explicitly (the interpreter truncates)."""
    if out_ptr.dtype.element_ty == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        v = b.to(tl.float32, bitcast=True)
    return v.to(out_ptr.dtype.element_ty)
