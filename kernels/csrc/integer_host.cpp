// Host build of integer_math.h (the functions the CUDA kernels call), for the tests: the same per-element
// integer code on CPU, rows reduced in order (integer max and sum do not depend on the order).
#include <cstdint>

#include "integer_math.h"

extern "C" {

void vf_int_softmax(const int32_t* x, int32_t* out, int64_t rows, int64_t cols, int k) {
  using namespace vitforge::intk;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = x + r * cols;
    int32_t m = INT32_MIN, s = 0;
    for (int64_t c = 0; c < cols; ++c) m = row[c] > m ? row[c] : m;
    for (int64_t c = 0; c < cols; ++c) s += exp_term(exp_arg(m - row[c], k));
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = prob_code(exp_term(exp_arg(m - row[c], k)), s);
  }
}

void vf_int_gelu(const int32_t* x, int32_t* out, int64_t n, int k) {
  for (int64_t i = 0; i < n; ++i) out[i] = vitforge::intk::gelu_code(x[i], k);
}
}
