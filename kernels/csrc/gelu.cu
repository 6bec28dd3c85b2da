// GELU, elementwise: exact (erf), tanh approximation, or ReLU minus an interpolated correction table (Edge-MoE);
// each thread keeps 16 bytes of loads in flight (H100/H200 need that many to stream at full bandwidth).
#include <cmath>
#include <cstdint>

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

// ILP elements per thread: 16 bytes of loads in flight (4 fp32, 8 fp16/bf16), issued before any math.
template <typename T>
struct Ilp { static constexpr int value = 16 / static_cast<int>(sizeof(T)); };

// Flat: block b covers [b * threads * ILP, ...), thread t its elements t, t + threads, ... (coalesced).
template <typename T, int METHOD>
__global__ void gelu_flat_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n,
                                 const float* __restrict__ table, int entries, float inv_step) {
  constexpr int K = Ilp<T>::value;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * K;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * K + threadIdx.x; base < n; base += step) {
    float v[K];
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = base + static_cast<int64_t>(k) * blockDim.x;
      v[k] = i < n ? to_f32(x[i]) : 0.f;
    }
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = base + static_cast<int64_t>(k) * blockDim.x;
      if (i < n) out[i] = from_f32<T>(act<METHOD>(v[k], table, entries, inv_step));
    }
  }
}

// With a bias: grid [column blocks, row blocks]; each thread loads its bias once and handles ILP rows at a time.
template <typename T, int METHOD>
__global__ void gelu_bias_kernel(const T* __restrict__ x, const float* __restrict__ bias, T* __restrict__ out,
                                 int64_t rows, int64_t cols, const float* __restrict__ table, int entries,
                                 float inv_step) {
  constexpr int K = Ilp<T>::value;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const float b = bias[c];
  for (int64_t r0 = static_cast<int64_t>(blockIdx.y) * K; r0 < rows; r0 += static_cast<int64_t>(gridDim.y) * K) {
    float v[K];
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = r0 + k < rows ? to_f32(x[(r0 + k) * cols + c]) : 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (r0 + k < rows) out[(r0 + k) * cols + c] = from_f32<T>(act<METHOD>(v[k] + b, table, entries, inv_step));
  }
}

// 16-byte vectors of x's dtype: one load and one store instruction per thread and vector.
template <typename T>
struct alignas(16) Vec {
  T v[Ilp<T>::value];
};

template <typename T, int METHOD>
__global__ void gelu_vec_kernel(const T* __restrict__ x, const float* __restrict__ bias, T* __restrict__ out,
                                int64_t rows, int64_t cols, const float* __restrict__ table, int entries,
                                float inv_step) {
  // x is [rows, cols] (a bias along cols) or flat (rows 1, no bias); cols % K == 0, both pointers 16-byte aligned
  constexpr int K = Ilp<T>::value;
  const int64_t vc = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, vcols = cols / K;
  if (vc >= vcols) return;
  float b[K];
#pragma unroll
  for (int k = 0; k < K; ++k) b[k] = bias ? bias[vc * K + k] : 0.f;
  const Vec<T>* xv = reinterpret_cast<const Vec<T>*>(x);
  Vec<T>* ov = reinterpret_cast<Vec<T>*>(out);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Vec<T> a = xv[r * vcols + vc];
    Vec<T> y;
#pragma unroll
    for (int k = 0; k < K; ++k) y.v[k] = from_f32<T>(act<METHOD>(to_f32(a.v[k]) + b[k], table, entries, inv_step));
    ov[r * vcols + vc] = y;
  }
}

template <typename T, int METHOD>
cudaError_t launch(const void* x, const void* bias, void* out, int64_t n, int64_t cols, const float* table,
                   int entries, float inv_step, cudaStream_t stream) {
  constexpr int threads = 256, K = Ilp<T>::value;
  const bool aligned = (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(out)) % 16 == 0;
  if (aligned && (bias ? cols % K == 0 : n % K == 0)) {
    const int64_t rows = bias ? n / cols : 1, vcols = (bias ? cols : n) / K;
    const dim3 grid(blocks_for(vcols, threads, 0x7fffffffLL), static_cast<unsigned int>(rows < 65535 ? rows : 65535));
    gelu_vec_kernel<T, METHOD><<<grid, threads, 0, stream>>>(static_cast<const T*>(x),
        static_cast<const float*>(bias), static_cast<T*>(out), rows, bias ? cols : n, table, entries, inv_step);
    return cudaGetLastError();
  }
  if (bias) {  // unaligned or ragged: the scalar kernels
    const int64_t rows = n / cols, row_blocks = (rows + K - 1) / K;
    const dim3 grid(blocks_for(cols, threads, 0x7fffffffLL),
                    static_cast<unsigned int>(row_blocks < 65535 ? row_blocks : 65535));
    gelu_bias_kernel<T, METHOD><<<grid, threads, 0, stream>>>(static_cast<const T*>(x),
        static_cast<const float*>(bias), static_cast<T*>(out), rows, cols, table, entries, inv_step);
  } else {
    gelu_flat_kernel<T, METHOD><<<blocks_for(n, threads * K, 0x7fffffffLL), threads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), n, table, entries, inv_step);
  }
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
