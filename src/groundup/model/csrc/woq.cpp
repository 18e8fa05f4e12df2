// Quantized matrix products for CPU decoding: y = x W^T with W in int8 (a scale per row) or int4 (a scale and a
// zero per group of inputs), x in float32 with few rows.
//
// Decoding multiplies a handful of rows by every weight of the model. The rows of x are quantized to int8 in
// blocks of 32 inputs (a scale per block, as llama.cpp's q8_0 dot products do), so each block of the product
// is an integer dot product: 32 weight bytes and 32 activation bytes multiplied and summed in a few AVX2
// instructions (maddubs, madd), then scaled once. Each weight byte is read once for every row of x.
// Each output element is accumulated in the same order whatever the number of rows and wherever its row
// sits, so a row's result does not depend on the batch (the engine's batch invariance).
//
// int4 layout: in each block of 32 inputs, 16 bytes hold inputs 0..15 in their low nibbles and 16..31 in
// their high nibbles (values 0..15, the weight being (q - 8) * scale + zero).
// Built on first use by torch.utils.cpp_extension (groundup/model/kernels.py); PyTorch's own weight-only
// kernels are the fallback where this cannot be built.
#include <torch/extension.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t QB = 32;  // inputs per activation block

inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

// Sums of products of 32 signed bytes x and y, as 8 int32 lanes (|x|, |y| <= 127: no int16 saturation).
inline __m256i dot_i8(__m256i x, __m256i y) {
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// 32 int4 weights of one block (16 bytes), as signed bytes q - 8.
inline __m256i load_i4(const uint8_t* p) {
    __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    __m128i mask = _mm_set1_epi8(0x0F);
    __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), _mm_and_si128(bytes, mask));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
}

// Rows of x in pairs (each weight block loaded once for both), then a last single row; a row's arithmetic
// is the same either way, so its result does not depend on how many rows there are.
template <typename Pair, typename Single>
inline void over_rows(int64_t M, Pair pair, Single single) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) pair(m);
    if (m < M) single(m);
}

// x (M, K) float32 -> qx (M, K) int8 and sx (M, K / 32) float32, a scale per block of 32 inputs.
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* qx, float* sx) {
    const int64_t blocks = K / QB;
    for (int64_t i = 0; i < M * blocks; ++i) {
        const float* b = x + i * QB;
        float amax = 0.f;
        for (int64_t t = 0; t < QB; ++t) amax = std::max(amax, std::fabs(b[t]));
        const float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
        sx[i] = scale;
        for (int64_t t = 0; t < QB; ++t) qx[i * QB + t] = static_cast<int8_t>(std::nearbyint(b[t] * inv));
    }
}

// One output row n of the int8 product for R rows of x.
template <int R>
inline void int8_row(const int8_t* qx, const float* sx, int64_t K, const int8_t* w, float scale, float* y,
                     int64_t ystride) {
    const int64_t blocks = K / QB;
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * QB));
        for (int r = 0; r < R; ++r) {
            __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + r * K + b * QB));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(xv, wv)), _mm256_set1_ps(sx[r * blocks + b]), acc[r]);
        }
    }
    for (int r = 0; r < R; ++r) y[r * ystride] = hsum(acc[r]) * scale;
}

// One output row n of the int4 product for R rows of x. sum_x: (R, groups) sums of x over each group.
// sum over inputs of x w = sum_g scale_g sum(x (q - 8)) + zero_g sum(x), since w = (q - 8) * scale + zero.
template <int R>
inline void int4_row(const int8_t* qx, const float* sx, int64_t K, const uint8_t* w, const float* scale,
                     const float* zero, int64_t G, const float* sum_x, int64_t groups, float* y, int64_t ystride) {
    const int64_t blocks = K / QB, per_group = G / QB;
    __m256 acc[R];
    float offset[R];
    for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_setzero_ps();
        offset[r] = 0.f;
    }
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t g = b / per_group;
        __m256i wv = load_i4(w + b * (QB / 2));
        for (int r = 0; r < R; ++r) {
            __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + r * K + b * QB));
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(xv, wv)),
                                     _mm256_set1_ps(sx[r * blocks + b] * scale[g]), acc[r]);
        }
    }
    for (int r = 0; r < R; ++r) {
        for (int64_t g = 0; g < groups; ++g) offset[r] += zero[g] * sum_x[r * groups + g];
        y[r * ystride] = hsum(acc[r]) + offset[r];
    }
}

}  // namespace

torch::Tensor int8_mm(torch::Tensor x, torch::Tensor w, torch::Tensor scale) {
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "int8_mm: shapes (M, K) and (N, K)");
    TORCH_CHECK(x.size(1) % QB == 0, "int8_mm: K must be a multiple of 32");
    TORCH_CHECK(x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kChar &&
                scale.scalar_type() == torch::kFloat, "int8_mm: float32 x, int8 w, float32 scale");
    x = x.contiguous();
    w = w.contiguous();
    scale = scale.contiguous();
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    auto qx = torch::empty({M, K}, x.options().dtype(torch::kChar));
    auto sx = torch::empty({M, K / QB}, x.options());
    quantize_rows(x.data_ptr<float>(), M, K, qx.data_ptr<int8_t>(), sx.data_ptr<float>());
    auto y = torch::empty({M, N}, x.options());
    const int8_t* qp = qx.data_ptr<int8_t>();
    const float* sxp = sx.data_ptr<float>();
    const int8_t* wp = w.data_ptr<int8_t>();
    const float* sp = scale.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t blocks = K / QB;
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n)
            over_rows(M, [&](int64_t m) { int8_row<2>(qp + m * K, sxp + m * blocks, K, wp + n * K, sp[n], yp + m * N + n, N); },
                      [&](int64_t m) { int8_row<1>(qp + m * K, sxp + m * blocks, K, wp + n * K, sp[n], yp + m * N + n, N); });
    });
    return y;
}

torch::Tensor int4_mm(torch::Tensor x, torch::Tensor w, torch::Tensor scale, torch::Tensor zero, int64_t G) {
    TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == 2 * w.size(1), "int4_mm: shapes (M, K) and (N, K/2)");
    TORCH_CHECK(G % QB == 0 && x.size(1) % G == 0, "int4_mm: the group size must be a multiple of 32 dividing K");
    TORCH_CHECK(x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kByte, "int4_mm: float32 x, uint8 w");
    x = x.contiguous();
    w = w.contiguous();
    scale = scale.contiguous();
    zero = zero.contiguous();
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0), groups = K / G, blocks = K / QB;
    auto qx = torch::empty({M, K}, x.options().dtype(torch::kChar));
    auto sx = torch::empty({M, blocks}, x.options());
    quantize_rows(x.data_ptr<float>(), M, K, qx.data_ptr<int8_t>(), sx.data_ptr<float>());
    auto sum_x = x.view({M, groups, G}).sum(-1).contiguous();  // (M, groups)
    auto y = torch::empty({M, N}, x.options());
    const int8_t* qp = qx.data_ptr<int8_t>();
    const float* sxp = sx.data_ptr<float>();
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* sp = scale.data_ptr<float>();
    const float* zp = zero.data_ptr<float>();
    const float* gx = sum_x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
            const uint8_t* wr = wp + n * (K / 2);
            const float *sn = sp + n * groups, *zn = zp + n * groups;
            over_rows(M,
                      [&](int64_t m) { int4_row<2>(qp + m * K, sxp + m * blocks, K, wr, sn, zn, G, gx + m * groups, groups, yp + m * N + n, N); },
                      [&](int64_t m) { int4_row<1>(qp + m * K, sxp + m * blocks, K, wr, sn, zn, G, gx + m * groups, groups, yp + m * N + n, N); });
        }
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("int8_mm", &int8_mm, "x (M, K) float32 times int8 W (N, K) with a scale per row: (M, N)");
    m.def("int4_mm", &int4_mm, "x (M, K) float32 times int4 W (N, K/2 bytes) with a scale and zero per group");
}
