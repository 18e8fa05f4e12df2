// Weight-only quantized matrix products for CPU decoding: y = x W^T with W in int8 (a scale per row) or
// int4 (a scale and a zero per group of inputs), x in float32 with few rows.
//
// Decoding multiplies a handful of rows by every weight of the model, so the time goes into reading the
// weights: these kernels read each weight byte once, convert it in registers (AVX2 + FMA), and use it for
// every row of x. Each output element is accumulated in the same order whatever the number of rows and
// wherever its row sits, so a row's result does not depend on the batch (the engine's batch invariance).
// Built on first use by torch.utils.cpp_extension (groundup/model/kernels.py); PyTorch's own weight-only
// kernels are the fallback where this cannot be built.
#include <torch/extension.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

// 8 int8 weights as 8 floats.
inline __m256 load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// One output row n of the int8 product for rows m0..m0+R-1 of x (R = 1 or 2: the same code per row).
template <int R>
inline void int8_row(const float* x, int64_t K, const int8_t* w, float scale, float* y, int64_t ystride) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r)
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m256 w0 = load_i8(w + k), w1 = load_i8(w + k + 8), w2 = load_i8(w + k + 16), w3 = load_i8(w + k + 24);
        for (int r = 0; r < R; ++r) {
            const float* xr = x + r * K + k;
            acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 16), w2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 24), w3, acc[r][3]);
        }
    }
    for (int r = 0; r < R; ++r) {
        const float* xr = x + r * K;
        float tail = 0.f;
        for (int64_t t = k; t < K; ++t) tail += xr[t] * static_cast<float>(w[t]);
        __m256 s = _mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3]));
        y[r * ystride] = (hsum(s) + tail) * scale;
    }
}

// 16 int4 weights (8 bytes, even column in the low nibble) as two vectors of 8 floats, in column order.
inline void load_i4(const uint8_t* p, __m256& a, __m256& b) {
    __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    __m128i mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(bytes, mask), hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    __m128i q = _mm_unpacklo_epi8(lo, hi);  // q0 q1 ... q15
    a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
}

// One output row n of the int4 product for R rows of x. sum_x: (R, groups) sums of x over each group.
// y = sum_g scale_g * sum(x q) + (zero_g - 8 scale_g) * sum(x), since w = (q - 8) * scale + zero.
template <int R>
inline void int4_row(const float* x, int64_t K, const uint8_t* w, const float* scale, const float* zero,
                     int64_t G, const float* sum_x, int64_t groups, float* y, int64_t ystride) {
    __m256 total[R][2];
    float offset[R];
    for (int r = 0; r < R; ++r) {
        total[r][0] = total[r][1] = _mm256_setzero_ps();
        offset[r] = 0.f;
    }
    for (int64_t g = 0; g < groups; ++g) {
        __m256 acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        const int64_t k0 = g * G;
        for (int64_t k = k0; k < k0 + G; k += 16) {
            __m256 a, b;
            load_i4(w + k / 2, a, b);
            for (int r = 0; r < R; ++r) {
                const float* xr = x + r * K + k;
                acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), a, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), b, acc[r][1]);
            }
        }
        __m256 s = _mm256_set1_ps(scale[g]);
        for (int r = 0; r < R; ++r) {
            total[r][0] = _mm256_fmadd_ps(acc[r][0], s, total[r][0]);
            total[r][1] = _mm256_fmadd_ps(acc[r][1], s, total[r][1]);
            offset[r] += (zero[g] - 8.f * scale[g]) * sum_x[r * groups + g];
        }
    }
    for (int r = 0; r < R; ++r) y[r * ystride] = hsum(_mm256_add_ps(total[r][0], total[r][1])) + offset[r];
}

// Rows of x in pairs (each weight converted once for both), then a last single row; a row's arithmetic
// is the same either way, so its result does not depend on how many rows there are.
template <typename Pair, typename Single>
inline void over_rows(int64_t M, Pair pair, Single single) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) pair(m);
    if (m < M) single(m);
}

}  // namespace

torch::Tensor int8_mm(torch::Tensor x, torch::Tensor w, torch::Tensor scale) {
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "int8_mm: shapes (M, K) and (N, K)");
    TORCH_CHECK(x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kChar &&
                scale.scalar_type() == torch::kFloat, "int8_mm: float32 x, int8 w, float32 scale");
    x = x.contiguous();
    w = w.contiguous();
    scale = scale.contiguous();
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    auto y = torch::empty({M, N}, x.options());
    const float* xp = x.data_ptr<float>();
    const int8_t* wp = w.data_ptr<int8_t>();
    const float* sp = scale.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n)
            over_rows(M, [&](int64_t m) { int8_row<2>(xp + m * K, K, wp + n * K, sp[n], yp + m * N + n, N); },
                      [&](int64_t m) { int8_row<1>(xp + m * K, K, wp + n * K, sp[n], yp + m * N + n, N); });
    });
    return y;
}

torch::Tensor int4_mm(torch::Tensor x, torch::Tensor w, torch::Tensor scale, torch::Tensor zero, int64_t G) {
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == 2 * w.size(1), "int4_mm: shapes (M, K) and (N, K/2)");
    TORCH_CHECK(G % 16 == 0 && x.size(1) % G == 0, "int4_mm: the group size must be a multiple of 16 dividing K");
    TORCH_CHECK(x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kByte, "int4_mm: float32 x, uint8 w");
    x = x.contiguous();
    w = w.contiguous();
    scale = scale.contiguous();
    zero = zero.contiguous();
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0), groups = K / G;
    auto y = torch::empty({M, N}, x.options());
    auto sum_x = x.view({M, groups, G}).sum(-1).contiguous();  // (M, groups)
    const float* xp = x.data_ptr<float>();
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* sp = scale.data_ptr<float>();
    const float* zp = zero.data_ptr<float>();
    const float* sx = sum_x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
            const uint8_t* wr = wp + n * (K / 2);
            const float *sn = sp + n * groups, *zn = zp + n * groups;
            over_rows(M,
                      [&](int64_t m) { int4_row<2>(xp + m * K, K, wr, sn, zn, G, sx + m * groups, groups, yp + m * N + n, N); },
                      [&](int64_t m) { int4_row<1>(xp + m * K, K, wr, sn, zn, G, sx + m * groups, groups, yp + m * N + n, N); });
        }
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("int8_mm", &int8_mm, "x (M, K) float32 times int8 W (N, K) with a scale per row: (M, N)");
    m.def("int4_mm", &int4_mm, "x (M, K) float32 times int4 W (N, K/2 bytes) with a scale and zero per group");
}
