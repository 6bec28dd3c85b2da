// Launchers of the vitforge CUDA kernels: plain CUDA (no torch headers), called from ops.cpp.
// The math is the one of compress/kernels/reference.py; see softmax.cu and gelu.cu.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace vitforge {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Additive float32 mask read in place: score row r = (a, b, c) in an [A, B, C] grid of rows.
struct MaskView {
  const float* ptr;  // nullptr: no mask
  int64_t B, C, sa, sb, sc, sn;
};

// Log-domain output codes: q = clamp(floor((log2(p + eta) - lo) / step + 0.5), 0, qmax), stored as uint8.
struct LogCodes {
  bool enabled;
  float eta, lo, step, qmax;
};

// Row softmax of x [rows, cols] (row stride x_stride) into out [rows, cols] (x's dtype, or uint8 codes).
// poly = 0: exact exponential; 1..3: base-2 polynomial exponential with an integer running max.
cudaError_t softmax_forward(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, DType dtype,
                            float scale, MaskView mask, int poly, LogCodes codes, cudaStream_t stream);

// out = act(x + bias[i % cols]) over n elements; method 0 erf, 1 tanh, 2 ReLU minus the interpolated table
// (entries + 1 float32 samples of delta on [0, entries / inv_step]).
cudaError_t gelu_forward(const void* x, const void* bias, void* out, int64_t n, int64_t cols, DType dtype,
                         int method, const float* table, int entries, float inv_step, cudaStream_t stream);

// Integer softmax / GELU (compress/kernels/integer.py) on int32 codes: softmax rows of scale 2^-k into codes of
// scale 2^-15 (cols <= 65535); GELU codes of scale 2^-k into codes of the same scale.
cudaError_t int_softmax_forward(const int32_t* x, int32_t* out, int64_t rows, int64_t cols, int k,
                                cudaStream_t stream);
cudaError_t int_gelu_forward(const int32_t* x, int32_t* out, int64_t n, int k, cudaStream_t stream);

}  // namespace vitforge
