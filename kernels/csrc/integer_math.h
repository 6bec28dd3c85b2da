// The integer softmax and GELU of compress/kernels/integer.py, one element at a time: int32 only, every
// shifted or divided value non-negative (so C shifts and truncating division give the reference's bits).
// Shared by the CUDA kernels (integer.cu) and the host build the tests run (integer_host.cpp).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define VF_HD __host__ __device__ __forceinline__
#else
#define VF_HD inline
#endif

namespace vitforge {
namespace intk {

constexpr int32_t kL14 = 23637, kB1 = 21951, kB2 = 5567;  // log2(e) in Q14; 2^-f ~ 1 - b1 f + b2 f^2 in Q15
constexpr int32_t kR14 = 11585, kBQ = 28983, kA14 = 4732;  // 1/sqrt(2), -b, -a of I-BERT's erf, in Q14

// 2^-(n 2^-k log2 e) in Q15, for n = max - code >= 0
VF_HD int32_t exp_term(int32_t n, int k) {
  const int32_t t = (n * kL14) >> (k - 1);
  const int32_t q = t >> 15, f = t & 0x7fff;
  const int32_t e = 32768 - ((f * (kB1 - ((f * kB2) >> 15))) >> 15);
  return e >> (q < 31 ? q : 31);
}

// the probability code (scale 2^-15) of one term of a row whose terms sum to s
VF_HD int32_t prob_code(int32_t e, int32_t s) { return ((e << 15) + (s >> 1)) / s; }

// GELU of one code of scale 2^-k, same scale out
VF_HD int32_t gelu_code(int32_t i, int k) {
  const int32_t a = i < 0 ? -i : i;
  const int32_t u = (a * kR14) >> k;
  const int32_t d = kBQ - (u < kBQ ? u : kBQ);
  const int32_t h = 16384 - ((((d * d) >> 14) * kA14) >> 14);
  const int32_t w = i < 0 ? 16384 - h : 16384 + h;
  const int32_t mag = (a * w + 16384) >> 15;
  return i < 0 ? -mag : mag;
}

}  // namespace intk
}  // namespace vitforge
