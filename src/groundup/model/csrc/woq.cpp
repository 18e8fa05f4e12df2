// Quantized matrix products for CPU decoding: y = x W^T with W in int8 (a scale per row) or int4 (a scale and a
// zero per group of inputs), x in float32 with few rows.
//
// Decoding multiplies a handful of rows by every weight of the model. The rows of x are quantized to int8 (as
// llama.cpp's q8_0 dot products do), so the product is made of integer dot products: 32 weight bytes and 32
// activation bytes multiplied and summed in one or two instructions (AVX512-VNNI's dpbusd where the CPU has
// it, AVX2's maddubs and madd elsewhere; both exact), then scaled. Each weight byte is read once for every row
// of x.
// - int8: x in blocks of 32 inputs, a scale per block; each block's sum is scaled and added in float.
// - int4: x in blocks of the weight's group size, so a group's products add up in int32 and are scaled once.
//   The nibbles enter the dot product unsigned (0..15), as stored; the -8 and the zero are applied once per
//   group through the exact float sum of x over the group.
// Each output element is accumulated in the same order whatever the number of rows and wherever its row
// sits, so a row's result does not depend on the batch (the engine's batch invariance).
//
// int4 layout: in each block of 32 inputs, 16 bytes hold inputs 0..15 in their low nibbles and 16..31 in
// their high nibbles (values 0..15, the weight being (q - 8) * scale + zero): llama.cpp's q4 block layout.
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

// acc + the sums of products of 32 unsigned bytes u and signed bytes y, by groups of 4 bytes (8 int32 lanes):
// one VNNI instruction where the CPU has it, else maddubs and madd (exact too: the operands used here keep
// each pair of products within int16, |u|, |y| <= 127 or u <= 15).
inline __m256i dot_add(__m256i acc, __m256i u, __m256i y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, y);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1)));
#endif
}

// Sums of products of 32 signed bytes x and y (|x|, |y| <= 127), as 8 int32 lanes.
inline __m256i dot_i8(__m256i x, __m256i y) {
    return dot_add(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// 32 int4 weights of one block (16 bytes) as unsigned bytes 0..15: the 16 bytes in both halves of a register,
// the high half shifted down a nibble, then masked.
inline __m256i load_u4(const uint8_t* p) {
    __m256i bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    __m256i both = _mm256_blend_epi32(bytes, _mm256_srli_epi16(bytes, 4), 0xF0);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// Rows of x in pairs (each weight block loaded once for both), then a last single row; a row's arithmetic
// is the same either way, so its result does not depend on how many rows there are.
template <typename Pair, typename Single>
inline void over_rows(int64_t M, Pair pair, Single single) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) pair(m);
    if (m < M) single(m);
}

// x (M, K) float32 -> qx (M, K) int8 and sx (M, K / block) float32, a scale per block of inputs.
// pairs: in each 64 inputs, store 0..15, 32..47, 16..31, 48..63 (the order of the low nibbles, then the high
// nibbles, of two int4 weight blocks read as one 32-byte register).
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t block, bool pairs, int8_t* qx, float* sx) {
    for (int64_t i = 0; i < M * K / block; ++i) {
        const float* b = x + i * block;
        float amax = 0.f;
        for (int64_t t = 0; t < block; ++t) amax = std::max(amax, std::fabs(b[t]));
        const float scale = amax / 127.f, inv = scale > 0.f ? 1.f / scale : 0.f;
        sx[i] = scale;
        for (int64_t t = 0; t < block; ++t) {
            const int64_t u = t % 64, to = pairs ? t - u + (u / 32) * 16 + (u % 32 / 16) * 32 + u % 16 : t;
            qx[i * block + to] = static_cast<int8_t>(std::nearbyint(b[t] * inv));
        }
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

// One output row n of the int4 product for R rows of x, quantized in blocks of G inputs (one scale per weight
// group, sx: (R, groups)), in pairs order where G is a multiple of 64. sum_x: (R, groups) sums of x over each
// group. With w = (q - 8) * scale + zero = q * scale + (zero - 8 scale), the product is
// sum_g scale_g sx_g sum(qx q) + (zero_g - 8 scale_g) sum(x): the nibbles q (0..15) enter the integer dot
// product unsigned, as they are stored, a group's products add up in int32, and the offset comes from the
// exact sums of x.
template <int R>
inline void int4_row(const int8_t* qx, const float* sx, int64_t K, const uint8_t* w, const float* scale,
                     const float* zero, int64_t G, const float* sum_x, int64_t groups, float* y, int64_t ystride) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const bool pairs = G % 64 == 0;
    __m256 acc[R];
    float offset[R];
    for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_setzero_ps();
        offset[r] = 0.f;
    }
    for (int64_t g = 0; g < groups; ++g) {
        __m256i dot[R];
        for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_si256();
        const uint8_t* wg = w + g * (G / 2);
        const int8_t* xg = qx + g * G;
        if (pairs) {
            for (int64_t i = 0; i < G; i += 64) {  // two blocks: 32 bytes, low nibbles then high nibbles
                __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + i / 2));
                __m256i lo = _mm256_and_si256(bytes, mask), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
                for (int r = 0; r < R; ++r) {
                    const int8_t* xr = xg + r * K + i;
                    dot[r] = dot_add(dot[r], lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr)));
                    dot[r] = dot_add(dot[r], hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32)));
                }
            }
        } else {
            for (int64_t i = 0; i < G; i += QB) {
                __m256i wv = load_u4(wg + i / 2);
                for (int r = 0; r < R; ++r)
                    dot[r] = dot_add(dot[r], wv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + r * K + i)));
            }
        }
        const float shift = zero[g] - 8.f * scale[g];
        for (int r = 0; r < R; ++r) {
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_set1_ps(sx[r * groups + g] * scale[g]), acc[r]);
            offset[r] += shift * sum_x[r * groups + g];
        }
    }
    for (int r = 0; r < R; ++r) y[r * ystride] = hsum(acc[r]) + offset[r];
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
    quantize_rows(x.data_ptr<float>(), M, K, QB, false, qx.data_ptr<int8_t>(), sx.data_ptr<float>());
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
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0), groups = K / G;
    auto qx = torch::empty({M, K}, x.options().dtype(torch::kChar));
    auto sx = torch::empty({M, groups}, x.options());
    quantize_rows(x.data_ptr<float>(), M, K, G, G % 64 == 0, qx.data_ptr<int8_t>(), sx.data_ptr<float>());
    auto sum_x = torch::empty({M, groups}, x.options());
    const float* xp = x.data_ptr<float>();
    for (int64_t i = 0; i < M * groups; ++i) {
        float s = 0.f;
        for (int64_t t = 0; t < G; ++t) s += xp[i * G + t];
        sum_x.data_ptr<float>()[i] = s;
    }
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
                      [&](int64_t m) { int4_row<2>(qp + m * K, sxp + m * groups, K, wr, sn, zn, G, gx + m * groups, groups, yp + m * N + n, N); },
                      [&](int64_t m) { int4_row<1>(qp + m * K, sxp + m * groups, K, wr, sn, zn, G, gx + m * groups, groups, yp + m * N + n, N); });
        }
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("int8_mm", &int8_mm, "x (M, K) float32 times int8 W (N, K) with a scale per row: (M, N)");
    m.def("int4_mm", &int4_mm, "x (M, K) float32 times int4 W (N, K/2 bytes) with a scale and zero per group");
}
