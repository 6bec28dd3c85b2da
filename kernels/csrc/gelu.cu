// GELU, elementwise: exact (erf), tanh approximation, or ReLU minus an interpolated correction table (Edge-MoE);
// with a bias the grid is [column blocks, row blocks], so each thread loads its bias once and no index is divided.
#include <cmath>

#include "common.cuh"
#include "vitforge_kernels.h"

namespace vitforge {
namespace {

template <int METHOD>
__device__ __forceinline__ float act(float x, const float* __restrict__ table, int entries, float inv_step) {
  if (METHOD == 0) return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
  if (METHOD == 1) return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  const float t = fminf(fabsf(x) * inv_step, static_cast<float>(entries));
  const float i = fminf(floorf(t), static_cast<float>(entries - 1)), f = t - i;
  const int ii = static_cast<int>(i);
  const float d0 = __ldg(table + ii), d1 = __ldg(table + ii + 1);
  return fmaxf(x, 0.f) - (d0 + f * (d1 - d0));
}

template <typename T, int METHOD, bool BIAS>
__global__ void gelu_kernel(const T* __restrict__ x, const float* __restrict__ bias, T* __restrict__ out,
                            int64_t rows, int64_t cols, const float* __restrict__ table, int entries, float inv_step) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const float b = BIAS ? bias[c] : 0.f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t i = r * cols + c;
    out[i] = from_f32<T>(act<METHOD>(to_f32(x[i]) + b, table, entries, inv_step));
  }
}

template <typename T, int METHOD>
cudaError_t launch(const void* x, const void* bias, void* out, int64_t n, int64_t cols, const float* table,
                   int entries, float inv_step, cudaStream_t stream) {
  constexpr int threads = 256;
  const int64_t c = bias ? cols : n, rows = bias ? n / cols : 1;
  const dim3 grid(blocks_for(c, threads, 0x7fffffffLL), static_cast<unsigned int>(rows < 65535 ? rows : 65535));
  if (bias)
    gelu_kernel<T, METHOD, true><<<grid, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<const float*>(bias),
                                                               static_cast<T*>(out), rows, c, table, entries, inv_step);
  else
    gelu_kernel<T, METHOD, false><<<grid, threads, 0, stream>>>(static_cast<const T*>(x), nullptr,
                                                                static_cast<T*>(out), rows, c, table, entries, inv_step);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const void* x, const void* bias, void* out, int64_t n, int64_t cols, int method,
                     const float* table, int entries, float inv_step, cudaStream_t st) {
  switch (method) {
    case 0: return launch<T, 0>(x, bias, out, n, cols, table, entries, inv_step, st);
    case 1: return launch<T, 1>(x, bias, out, n, cols, table, entries, inv_step, st);
    case 2: return table ? launch<T, 2>(x, bias, out, n, cols, table, entries, inv_step, st) : cudaErrorInvalidValue;
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t gelu_forward(const void* x, const void* bias, void* out, int64_t n, int64_t cols, DType dtype,
                         int method, const float* table, int entries, float inv_step, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case kFloat32: return dispatch<float>(x, bias, out, n, cols, method, table, entries, inv_step, stream);
    case kFloat16: return dispatch<__half>(x, bias, out, n, cols, method, table, entries, inv_step, stream);
    case kBFloat16: return dispatch<__nv_bfloat16>(x, bias, out, n, cols, method, table, entries, inv_step, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vitforge
