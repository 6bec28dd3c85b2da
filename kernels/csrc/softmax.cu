// Row softmax, one thread block per row. A row that fits in shared memory is read from global memory once:
// logits cached with the row max, exponentials in place with their sum, then a scaled write (one exp per
// element). Longer rows take the single-pass form of Edge-MoE: each thread keeps a running max and sum
// (rescaling the sum only when its max grows), the block merges the (max, sum) pairs, and a second sweep
// re-reads x and writes probabilities or log-domain codes.
#include <cfloat>
#include <cmath>

#include "common.cuh"
#include "vitforge_kernels.h"

namespace vitforge {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int64_t kCacheMax = 12288;  // floats of a row cached in shared memory (48 KB)

// e^d (POLY 0) or 2^d = P(frac d) * 2^floor(d) built in the exponent bits (POLY 1..3); 0 below 2^-126.
template <int POLY>
__device__ __forceinline__ float exp_(float d) {
  if (POLY == 0) return expf(d);
  d = fmaxf(d, -127.f);
  const float k = floorf(d), f = d - k;
  float p;
  if (POLY == 1) p = 1.f + f;
  else if (POLY == 2) p = 1.f + f * (0.6602339f + f * 0.3397661f);
  else p = 1.f + f * (0.6954244f + f * (0.2263077f + f * 0.0782679f));
  const int ki = static_cast<int>(k);
  return ki < -126 ? 0.f : p * __int_as_float((ki + 127) << 23);
}

__device__ __forceinline__ float safe(float m) { return m == -INFINITY ? 0.f : m; }

// add one logit to a running (max, sum); with POLY the max is an integer, so rescales are exact shifts
template <int POLY>
__device__ __forceinline__ void update(float& m, float& s, float z) {
  const float zm = POLY ? ceilf(z) : z;
  if (zm > m) {
    s = (m == -INFINITY ? 0.f : s * exp_<POLY>(m - zm)) + exp_<POLY>(z - zm);
    m = zm;
  } else {
    s += exp_<POLY>(z - safe(m));
  }
}

template <int POLY>
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2), ms = safe(mn);
  s = (m == -INFINITY ? 0.f : s * exp_<POLY>(m - ms)) + (m2 == -INFINITY ? 0.f : s2 * exp_<POLY>(m2 - ms));
  m = mn;
}

template <int POLY>
__device__ void block_merge(float& m, float& s) {
  __shared__ float wm[32], ws[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) merge<POLY>(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  if (lane == 0) { wm[warp] = m; ws[warp] = s; }
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? wm[lane] : -INFINITY;
    s = lane < warps ? ws[lane] : 0.f;
    for (int o = 16; o > 0; o >>= 1) merge<POLY>(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) { wm[0] = m; ws[0] = s; }
  }
  __syncthreads();
  m = wm[0];
  s = ws[0];
}

template <typename T, int POLY>
__device__ __forceinline__ float logit(const T* xr, const float* mr, int j, float scale, int64_t sn) {
  float z = to_f32(xr[j]) * scale;
  if (mr) z += mr[j * sn];
  return POLY ? z * kLog2e : z;
}

// the K logits j0, j0 + blockDim.x, ... (-inf past the row), all loads issued before any is used
template <typename T, int POLY, int K>
__device__ __forceinline__ void load_logits(float (&z)[K], const T* xr, const float* mr, int j0, int cols,
                                            float scale, int64_t sn) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = j0 + k * blockDim.x;
    z[k] = j < cols ? logit<T, POLY>(xr, mr, j, scale, sn) : -INFINITY;
  }
}

// max (OP 0) or sum (OP 1) over the block, the result in every thread
template <int OP>
__device__ float block_reduce(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = OP ? v + w : fmaxf(v, w);
  }
  __syncthreads();  // partial[] may still be read by a previous reduction
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < warps ? partial[lane] : (OP ? 0.f : -INFINITY);
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = OP ? v + w : fmaxf(v, w);
  }
  return v;
}

template <typename T, bool CODES>
__device__ __forceinline__ void store(void* out_row, int j, float p, const LogCodes& codes) {
  if (CODES) {
    float q = floorf((log2f(p + codes.eta) - codes.lo) / codes.step + 0.5f);
    q = fminf(fmaxf(q, 0.f), codes.qmax);
    static_cast<uint8_t*>(out_row)[j] = static_cast<uint8_t>(q);
  } else {
    static_cast<T*>(out_row)[j] = from_f32<T>(p);
  }
}

template <typename T, int POLY, bool CODES>
__global__ void softmax_kernel(const T* __restrict__ x, void* __restrict__ out, int cols, int64_t x_stride,
                               float scale, MaskView mask, LogCodes codes, bool cached) {
  extern __shared__ float cache[];
  constexpr int K = 16 / sizeof(T);  // loads in flight per thread (16 bytes) before they are used
  const int64_t row = blockIdx.x;
  const T* xr = x + row * x_stride;
  void* out_row = static_cast<char*>(out) + row * cols * (CODES ? 1 : sizeof(T));
  const float* mr = nullptr;
  if (mask.ptr) {
    const int64_t a = row / (mask.B * mask.C), b = (row / mask.C) % mask.B, c = row % mask.C;
    mr = mask.ptr + a * mask.sa + b * mask.sb + c * mask.sc;
  }
  const int step = blockDim.x * K;
  if (cached) {  // the row in shared memory: max, then exponentials and their sum, then scale (one exp each)
    float m = -INFINITY;
    for (int j0 = threadIdx.x; j0 < cols; j0 += step) {
      float z[K];
      load_logits<T, POLY, K>(z, xr, mr, j0, cols, scale, mask.sn);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int j = j0 + k * blockDim.x;
        if (j < cols) cache[j] = z[k];
        m = fmaxf(m, POLY ? ceilf(z[k]) : z[k]);  // with POLY an integer max: rescaling by it is a shift
      }
    }
    const float ms = safe(block_reduce<0>(m));
    float s = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float e = exp_<POLY>(cache[j] - ms);
      cache[j] = e;
      s += e;
    }
    s = block_reduce<1>(s);
    const float inv = s > 0.f ? 1.f / s : 0.f;  // fully masked rows write zeros
    for (int j = threadIdx.x; j < cols; j += blockDim.x) store<T, CODES>(out_row, j, cache[j] * inv, codes);
    return;
  }
  // the single pass of Edge-MoE: a running (max, sum) per thread, merged over the block; then a write sweep
  float m = -INFINITY, s = 0.f;
  for (int j0 = threadIdx.x; j0 < cols; j0 += step) {
    float z[K];
    load_logits<T, POLY, K>(z, xr, mr, j0, cols, scale, mask.sn);
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (j0 + k * blockDim.x < cols) update<POLY>(m, s, z[k]);
  }
  block_merge<POLY>(m, s);
  const float ms = safe(m);
  const bool ok = s > 0.f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float p = ok ? exp_<POLY>(logit<T, POLY>(xr, mr, j, scale, mask.sn) - ms) / s : 0.f;
    store<T, CODES>(out_row, j, p, codes);
  }
}

template <typename T, int POLY, bool CODES>
cudaError_t launch(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, float scale,
                   MaskView mask, LogCodes codes, cudaStream_t stream) {
  int threads = 64;  // up to 16 elements a thread (two rounds of 16-byte loads for 16-bit types)
  while (threads < 1024 && threads * 16 < cols) threads *= 2;
  const bool cached = cols <= kCacheMax;
  const size_t smem = cached ? static_cast<size_t>(cols) * sizeof(float) : 0;
  softmax_kernel<T, POLY, CODES><<<static_cast<unsigned int>(rows), threads, smem, stream>>>(
      static_cast<const T*>(x), out, static_cast<int>(cols), x_stride, scale, mask, codes, cached);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, float scale,
                     MaskView mask, int poly, LogCodes codes, cudaStream_t st) {
#define VITFORGE_SOFTMAX(P)                                                              \
  return codes.enabled ? launch<T, P, true>(x, out, rows, cols, x_stride, scale, mask, codes, st) \
                       : launch<T, P, false>(x, out, rows, cols, x_stride, scale, mask, codes, st)
  switch (poly) {
    case 0: VITFORGE_SOFTMAX(0);
    case 1: VITFORGE_SOFTMAX(1);
    case 2: VITFORGE_SOFTMAX(2);
    case 3: VITFORGE_SOFTMAX(3);
    default: return cudaErrorInvalidValue;
  }
#undef VITFORGE_SOFTMAX
}

}  // namespace

cudaError_t softmax_forward(const void* x, void* out, int64_t rows, int64_t cols, int64_t x_stride, DType dtype,
                            float scale, MaskView mask, int poly, LogCodes codes, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  if (rows > 0x7fffffffLL || cols > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  switch (dtype) {
    case kFloat32: return dispatch<float>(x, out, rows, cols, x_stride, scale, mask, poly, codes, stream);
    case kFloat16: return dispatch<__half>(x, out, rows, cols, x_stride, scale, mask, poly, codes, stream);
    case kBFloat16: return dispatch<__nv_bfloat16>(x, out, rows, cols, x_stride, scale, mask, poly, codes, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vitforge
