// The fused HM-LSTM sequence on the CPU: the forward and the hand-derived backward of
// stochrnn/hmrnn/fused.py, with each layer-step's elementwise work in one loop over its
// rows instead of tens of tensor operations. The matrix products and the gates'
// nonlinearities are ATen's, but in float32 on CPUs with AVX-512 (see below).
// Built at first use by torch.utils.cpp_extension (stochrnn/hmrnn/native.py); the
// equations and their derivation are in fused.py, which this file must match.
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define STOCHRNN_AVX512_PRODUCT 1
#include <immintrin.h>
#endif

namespace {

enum Rule : int64_t {
  kGumbelHard = 0,
  kGumbelSoft = 1,
  kStraightThrough = 2,
  kStraightThroughStochastic = 3,
  kReinforce = 4,
  kMode = 5,
};

template <typename T>
inline T sigm(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// The boundary drawn from logit a with noise n (rule.value in boundary.py).
template <typename T>
inline T boundary_value(int64_t rule, double param, T a, float n) {
  switch (rule) {
    case kMode:
      return a > T(0) ? T(1) : T(0);
    case kGumbelHard:
    case kReinforce:
      return (a + static_cast<T>(n)) > T(0) ? T(1) : T(0);
    case kGumbelSoft:
      return sigm((a + static_cast<T>(n)) / static_cast<T>(param));
    case kStraightThrough:
    case kStraightThroughStochastic: {
      T p = (static_cast<T>(param) * a + T(1)) * T(0.5);
      p = p < T(0) ? T(0) : (p > T(1) ? T(1) : p);
      if (rule == kStraightThrough) return p > T(0.5) ? T(1) : T(0);
      return static_cast<T>(n) < p ? T(1) : T(0);
    }
  }
  TORCH_CHECK(false, "unknown boundary rule ", rule);
}

struct Layout {
  int64_t T, B, L;
  std::vector<int64_t> H, col, K;  // hidden sizes, column offsets in hidden, input widths
  int64_t total;
};

Layout layout(const at::Tensor& projected, const std::vector<int64_t>& sizes) {
  Layout s;
  s.T = projected.size(0);
  s.B = projected.size(1);
  s.L = static_cast<int64_t>(sizes.size());
  s.H = sizes;
  s.col.push_back(0);
  for (auto h : sizes) s.col.push_back(s.col.back() + h);
  s.total = s.col.back();
  for (int64_t l = 0; l < s.L; ++l) {
    int64_t k = s.H[l] + (l > 0 ? s.H[l - 1] : 0) + (l + 1 < s.L ? s.H[l + 1] : 0);
    s.K.push_back(k);
  }
  return s;
}

// Optional inputs come from Python as empty tensors.
inline bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return present(t) ? t.data_ptr<T>() : nullptr;
}

// The matrix products of a step: out = a b, or out = base + a b, where a holds the step's
// rows (tens of them) and b is a weight (depth, n) read row by row. With few rows, MKL's
// sgemm runs close to one matrix-vector product per row on some CPUs (on a Zen 4, 5 rows
// against a 1537 x 1537 weight took 1.0 ms, one row 0.2 ms): inference skipping COPY rows
// multiplies such row groups. In float32 on a CPU with AVX-512, the product below reads b
// once per product, by panels of 64 columns kept in cache across the rows, 6 rows at a
// time in registers: those 5 rows in 0.3 ms. It runs where b has unit column stride: the
// packed weights (over many rows, below), the backward's weights, the weight gradients
// (a^T b over a block of steps) and layer 1's input product over all steps (fused.py's
// InputProduct); over few rows the forward and inference read the weights through
// transposed views, by ATen's product. Packed (each panel contiguous, `PackedWeight`), b
// streams in order: at 64 rows a quarter to a third faster than MKL on a Zen 4. On a Zen 5
// (full-width AVX-512 units; MKL's sgemm ran at about 90 GFLOP/s a core, under half the
// peak of 231) it ran at 200-227 GFLOP/s at the shapes of the steps, the weight gradients
// and the input product (hidden 512). On a Xeon with AVX-512 and AMX (a Sapphire Rapids
// class, 2 MiB L2 a core, its L3 slow to reach from one core) it ran a third of that
// speed until unpacked b was copied by panels and the next packed block fetched ahead
// (product_rows); then about MKL's, 60-100 GFLOP/s a core as the host's load varied.
// Other dtypes and CPUs use ATen's product, as does ATEN_CPU_CAPABILITY set to anything
// but avx512.
constexpr int64_t kPanel = 64;  // columns per panel

inline int64_t panels_of(int64_t n) { return (n + kPanel - 1) / kPanel; }

// `rows` rows of `cols` <= kPanel floats, `ld` apart from `from` on, as rows of a panel at
// `to` (kPanel floats each, zeros past cols)
inline void copy_to_panel(const float* from, int64_t ld, int64_t rows, int64_t cols, float* to) {
  for (int64_t k = 0; k < rows; ++k, from += ld, to += kPanel) {
    std::copy_n(from, cols, to);
    std::fill(to + cols, to + kPanel, 0.0f);
  }
}

// Packs the row-major (depth, n) matrix src (rows ld apart) into dst (panels * depth rows
// of kPanel floats), by panels: panel p holds columns [p kPanel, (p + 1) kPanel) of every
// row, row after row (zeros past column n).
void pack_panels(float* dst, const float* src, int64_t ld, int64_t depth, int64_t n) {
  at::parallel_for(0, panels_of(n), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      copy_to_panel(src + p * kPanel, ld, depth, std::min(kPanel, n - p * kPanel),
                    dst + p * depth * kPanel);
    }
  });
}

// A weight packed by panels of kPanel columns for the AVX-512 product: panel p holds
// columns [p kPanel, (p + 1) kPanel) of all `depth` rows, row after row (zeros past the
// last column). Undefined where that product does not run.
struct PackedWeight {
  at::Tensor storage;  // (panels * depth, kPanel), float32
  int64_t depth = 0;
};

#ifdef STOCHRNN_AVX512_PRODUCT
constexpr int kTileRows = 6, kTileVectors = kPanel / 16;
constexpr int64_t kDepthBlock = 512;

// the depth split into blocks of at most kDepthBlock, as even as can be (1537: 385, 385,
// 385 and 382, not 512, 512, 512 and 1, which cost a pass over the output for one row of b)
inline int64_t depth_block(int64_t depth) {
  const int64_t blocks = (depth + kDepthBlock - 1) / kDepthBlock;
  return blocks <= 1 ? depth : (depth + blocks - 1) / blocks;
}

// What a tile fetches into L2 as it runs, for the tiles after it: lines 64 bytes from
// `start` on, `per_step` of them at each step of its depth, `lines` in all (none: 0).
struct Prefetch {
  const char* start = nullptr;
  int64_t lines = 0, per_step = 0;
};

// Where a product's output starts from, row r's columns at p + r ld (ld 0: one row for
// every row, a bias), when not from 0 or from itself (accumulating)
struct Start {
  const float* p = nullptr;
  int64_t ld = 0;
};

// R rows (R <= kTileRows) by one panel of `cols` <= kPanel columns; b the panel's first
// column of row 0, ldb the step from one row to the next; c starts from `start` where
// given (its rows of this panel), else from itself (accumulate) or 0. Masked loads of b
// ran a Zen 5 at a third of the speed: they are left out where the panel is full
// (cols = kPanel; c then without masks too) or padded with zeros to kPanel columns
// (kPaddedB: packed weights).
template <int R, bool kFull, bool kPaddedB>
__attribute__((target("avx512f"))) void product_tile(
    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
    int64_t depth, int64_t cols, bool accumulate, Start start, Prefetch ahead) {
  __mmask16 mask[kTileVectors];
  for (int v = 0; v < kTileVectors; ++v) {
    const int64_t left = cols - 16 * v;
    mask[v] = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
  }
  __m512 acc[R][kTileVectors];
  const float* init = start.p != nullptr ? start.p : c;
  const int64_t ldi = start.p != nullptr ? start.ld : ldc;
  const bool load = accumulate || start.p != nullptr;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kTileVectors; ++v) {
      acc[r][v] = !load   ? _mm512_setzero_ps()
                  : kFull ? _mm512_loadu_ps(init + r * ldi + 16 * v)
                          : _mm512_maskz_loadu_ps(mask[v], init + r * ldi + 16 * v);
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    const int64_t line = k * ahead.per_step, last = std::min(line + ahead.per_step, ahead.lines);
    for (int64_t i = line; i < last; ++i) _mm_prefetch(ahead.start + 64 * i, _MM_HINT_T1);
    __m512 w[kTileVectors];
#pragma GCC unroll 4
    for (int v = 0; v < kTileVectors; ++v) {
      w[v] = kFull || kPaddedB ? _mm512_loadu_ps(b + k * ldb + 16 * v)
                               : _mm512_maskz_loadu_ps(mask[v], b + k * ldb + 16 * v);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < kTileVectors; ++v) acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kTileVectors; ++v) {
      if (kFull) {
        _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
      } else {
        _mm512_mask_storeu_ps(c + r * ldc + 16 * v, mask[v], acc[r][v]);
      }
    }
  }
}

// R rows of a panel, with the masks it needs
template <int R>
void product_block(const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                   int64_t ldc, int64_t depth, int64_t cols, bool accumulate, Start start,
                   bool padded_b, Prefetch ahead) {
  if (cols == kPanel) {
    return product_tile<R, true, true>(a, lda, b, ldb, c, ldc, depth, cols, accumulate, start,
                                       ahead);
  }
  if (padded_b) {
    return product_tile<R, false, true>(a, lda, b, ldb, c, ldc, depth, cols, accumulate, start,
                                        ahead);
  }
  product_tile<R, false, false>(a, lda, b, ldb, c, ldc, depth, cols, accumulate, start, ahead);
}

// the last rows < kTileRows of a panel: the tile of that height
template <int R>
void product_tail(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb,
                  float* c, int64_t ldc, int64_t depth, int64_t cols, bool accumulate,
                  Start start, bool padded_b, Prefetch ahead) {
  if constexpr (R > 0) {
    if (rows == R) {
      return product_block<R>(a, lda, b, ldb, c, ldc, depth, cols, accumulate, start, padded_b,
                              ahead);
    }
    product_tail<R - 1>(rows, a, lda, b, ldb, c, ldc, depth, cols, accumulate, start, padded_b,
                        ahead);
  }
}

bool avx512_product_available() {
  static const bool available = [] {
    const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
    if (capability != nullptr && *capability != '\0' && std::strcmp(capability, "avx512") != 0) {
      return false;
    }
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return available;
}

// The (depth, n) matrix b of a product, panel p starting at b + p * panel_stride, its rows
// ld apart: a row-major matrix (panel_stride = kPanel) or a packed one (padded: every
// panel kPanel columns wide, zeros past n, so ld = kPanel).
struct Panels {
  const float* b;
  int64_t ld, panel_stride;
  bool padded = false;
};

// The a of a product: row-major (element (r, k) at a[r ld + k]) or a transposed view (at
// a[k ld + r]: the weight gradients' gs^T, whose rows lie a row of gs apart)
struct Rows {
  const float* a;
  int64_t ld;
  bool transposed = false;
};

// to[r ldt + k] = from[k ldf + r] for r, k < 16: 16 rows of 16 floats transposed in registers
__attribute__((target("avx512f"))) void transpose16(const float* from, int64_t ldf, float* to, int64_t ldt) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(from + i * ldf);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
  }
  for (int h = 0; h < 16; h += 8) {
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(to + i * ldt, r[i]);
}

// rows [r0, r1) and depth [k0, k0 + block) of a transposed a, row-major into `to` (its rows
// `block` apart), 16 x 16 floats at a time: read in place by the tiles, such rows ran at
// about half speed (each step of the depth a page further on)
void copy_transposed(const Rows& a, int64_t r0, int64_t r1, int64_t k0, int64_t block, float* to) {
  for (int64_t g = r0; g < r1; g += 16) {
    const int64_t g1 = std::min(r1, g + 16);
    int64_t k = 0;
    if (g1 - g == 16) {
      for (; k + 16 <= block; k += 16) {
        transpose16(a.a + (k0 + k) * a.ld + g, a.ld, to + (g - r0) * block + k, block);
      }
    }
    for (; k < block; ++k) {
      const float* from = a.a + (k0 + k) * a.ld;
      for (int64_t r = g; r < g1; ++r) to[(r - r0) * block + k] = from[r];
    }
  }
}

// n floats of v from a 64-byte boundary, so that a row of a panel is one cache line (a
// vector's storage is aligned to 16 bytes only)
inline float* aligned_floats(std::vector<float>& v, int64_t n) {
  v.resize(n + 16);
  const auto offset = reinterpret_cast<std::uintptr_t>(v.data()) % 64;
  return v.data() + (offset == 0 ? 0 : (64 - offset) / sizeof(float));
}

// out (M, n) = a (M, depth) b, or += (accumulate), or start + a b (start given: the tiles
// load it where they would load out, so it is not copied first). The panels are split
// among the threads; each thread takes the rows in blocks of kRowBlock and the depth in
// blocks (at most kDepthBlock), so that a's block stays in L2 across its panels and a
// panel's block of b (128 KiB at most) across the tiles. A transposed a is copied
// row-major a block at a time by each thread that reads it. Unpacked b (rows ld apart) is
// copied by panels (padded to kPanel columns) where more than one tile reads it: a block
// at a time into memory of each worker's own over one row block, all of it once by the
// calling thread over several. At a row of 2048 floats (the gate weights' 4 x 512) its
// rows fall into few cache sets, and the tiles ran at a third of their speed on a Xeon
// reading them in place.
constexpr int64_t kRowBlock = 32 * kTileRows;

void product_rows(at::Tensor& out, Rows a, int64_t M, Panels w, int64_t depth, int64_t n,
                  bool accumulate, Start start = {}) {
  TORCH_INTERNAL_ASSERT(!(accumulate && start.p != nullptr), "product_rows: a start or +=");
  float* pc = out.data_ptr<float>();
  const int64_t ldc = out.stride(0);
  const int64_t panels = panels_of(n);
  const int64_t step = depth_block(depth);
  bool pack = w.ld != kPanel && M > kTileRows;
  if (pack && M > kRowBlock) {
    // several row blocks would copy every block of b again: copy all of b once, by panels,
    // into memory this thread keeps (at the size of the largest b it has held), which the
    // workers below reach through the pointer
    thread_local std::vector<float> whole;
    float* to = aligned_floats(whole, panels * depth * kPanel);
    pack_panels(to, w.b, w.ld, depth, n);
    w = Panels{to, kPanel, depth * kPanel, true};
    pack = false;
  }
  // panels per thread: at least about 2^18 multiply-adds each, or threads cost more
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, M * depth * kPanel));
  at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
    thread_local std::vector<float> packed_storage, rows_storage;  // this worker's own
    float* packed = pack ? aligned_floats(packed_storage, step * kPanel) : nullptr;
    float* rows = a.transposed ? aligned_floats(rows_storage, std::min(M, kRowBlock) * step) : nullptr;
    for (int64_t r0 = 0; r0 < M; r0 += kRowBlock) {
      const int64_t r_end = std::min(M, r0 + kRowBlock);
      const int64_t tiles = (r_end - r0 + kTileRows - 1) / kTileRows;
      for (int64_t k0 = 0; k0 < depth; k0 += step) {
        const int64_t block = std::min(step, depth - k0);
        const float* pa = rows;  // row r0's block
        int64_t lda = block;
        if (a.transposed) {
          copy_transposed(a, r0, r_end, k0, block, rows);
        } else {
          pa = a.a + r0 * a.ld + k0;
          lda = a.ld;
        }
        const bool add = accumulate || k0 > 0;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t j = p * kPanel, cols = std::min(kPanel, n - j);
          auto from = [&](int64_t row) {  // where the tile of `row` starts (depth block 0 only)
            return k0 == 0 && start.p != nullptr ? Start{start.p + row * start.ld + j, start.ld}
                                                 : Start{};
          };
          Panels part{w.b + p * w.panel_stride + k0 * w.ld, w.ld, 0, w.padded};
          if (pack) {
            copy_to_panel(part.b, part.ld, block, cols, packed);
            part = Panels{packed, kPanel, 0, true};
          }
          // Rows of b contiguous (packed), the tiles share fetching the block of b they run
          // next into L2 while they run, so that it is not waited for from L3 (a Xeon's
          // tiles ran at 80 GFLOP/s instead of 100 without): the next panel's, or after
          // the last, the first panel's block of the next depth block or row block.
          const float* next_block = nullptr;
          int64_t next_depth = 0;
          if (w.padded && p + 1 < p1) {
            next_block = part.b + w.panel_stride;
            next_depth = block;
          } else if (w.padded && (k0 + step < depth || r_end < M)) {
            const int64_t k_next = k0 + step < depth ? k0 + step : 0;
            next_block = w.b + p0 * w.panel_stride + k_next * w.ld;
            next_depth = std::min(step, depth - k_next);
          }
          const int64_t lines = next_depth * kPanel * int64_t(sizeof(float)) / 64;
          const char* next = reinterpret_cast<const char*>(next_block);
          const int64_t share = (lines + tiles - 1) / tiles;
          auto ahead = [&](int64_t tile) {
            const int64_t first = std::min(lines, share * tile);
            return Prefetch{next + 64 * first, std::min(share, lines - first), (share + block - 1) / block};
          };
          int64_t r = r0;
          for (; r + kTileRows <= r_end; r += kTileRows) {
            product_block<kTileRows>(pa + (r - r0) * lda, lda, part.b, part.ld, pc + r * ldc + j,
                                     ldc, block, cols, add, from(r), part.padded,
                                     ahead((r - r0) / kTileRows));
          }
          product_tail<kTileRows - 1>(r_end - r, pa + (r - r0) * lda, lda, part.b, part.ld,
                                      pc + r * ldc + j, ldc, block, cols, add, from(r),
                                      part.padded, ahead((r - r0) / kTileRows));
        }
      }
    }
  });
}

// the same with a row-major (unit column stride) or a transposed view (unit row stride);
// out = base + a b where base (broadcast to out) is given. The tiles start from base's
// rows where they are float32 on the CPU with a unit column stride (a bias broadcast over
// the rows included) and do not overlap out; else base is copied into out first, as all
// of them were before (ATen's copy_, about 3.5 us a step's (16, 257) block, several
// percent of a training step at (16, 150, 3, 64)).
void avx512_product(at::Tensor& out, const at::Tensor& a, Panels w, int64_t depth, int64_t n,
                    bool accumulate, const at::Tensor& base = {}) {
  Start start;
  if (base.defined()) {
    const at::Tensor from = base.expand_as(out);
    if (depth > 0 && from.device().is_cpu() && from.scalar_type() == at::kFloat &&
        from.stride(1) == 1 && at::get_overlap_status(out, from) == at::MemOverlapStatus::No) {
      start = Start{from.data_ptr<float>(), from.stride(0)};
    } else {
      out.copy_(base);
      accumulate = true;
    }
  }
  if (depth == 0) {  // no blocks to run: the product is 0
    if (!accumulate) out.zero_();
    return;
  }
  const bool transposed = a.stride(1) != 1;
  TORCH_CHECK(!transposed || a.stride(0) == 1, "avx512_product: a row-major or a transposed view");
  const Rows rows{a.data_ptr<float>(), transposed ? a.stride(1) : a.stride(0), transposed};
  product_rows(out, rows, a.size(0), w, depth, n, accumulate, start);
}
#endif

// on where available, unless switched off (by the tests, to compare it with ATen's)
std::atomic<bool> avx512_product_on{true};

// whether float32 products run on the AVX-512 tiles
bool avx512_product_enabled() {
#ifdef STOCHRNN_AVX512_PRODUCT
  return avx512_product_on.load() && avx512_product_available();
#else
  return false;
#endif
}

// The product of the steps and of the weight gradients: out = a b, or out = base + a b
// with base (broadcast to out) given, or out += a b (Accumulate::kYes). a row-major or a
// transposed view.
enum class Accumulate { kNo, kYes };

template <typename T>
void matmul(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& base = {},
            Accumulate mode = Accumulate::kNo) {
  const bool add = mode == Accumulate::kYes;
  TORCH_CHECK(!(add && base.defined()), "matmul: out += a b takes no base");
#ifdef STOCHRNN_AVX512_PRODUCT
  if constexpr (std::is_same_v<T, float>) {
    if (avx512_product_enabled() && (a.stride(1) == 1 || a.stride(0) == 1) && b.stride(1) == 1 &&
        out.stride(1) == 1) {
      TORCH_CHECK(out.size(0) == a.size(0) && out.size(1) == b.size(1) && a.size(1) == b.size(0),
                  "matmul: out (M, N) = a (M, K) b (K, N)");
      const Panels w{b.data_ptr<float>(), b.stride(0), kPanel};
      return avx512_product(out, a, w, b.size(0), b.size(1), add, base);
    }
  }
#endif
  if (add) {
    out.addmm_(a, b);
  } else if (!base.defined()) {
    at::mm_out(out, a, b);
  } else {
    at::addmm_out(out, base, a, b);
  }
}

// out = a w[:depth, col0 : col0 + n] (n = out's columns), or base + that; col0 a multiple of
// kPanel. Only where the AVX-512 product runs (float32), which packed w.
inline void matmul_packed(at::Tensor& out, const at::Tensor& a, const PackedWeight& w,
                          int64_t col0, const at::Tensor& base = {}) {
#ifdef STOCHRNN_AVX512_PRODUCT
  TORCH_CHECK(w.storage.defined() && col0 % kPanel == 0 && a.size(1) <= w.depth &&
                  out.size(0) == a.size(0) && a.stride(1) == 1 && out.stride(1) == 1 &&
                  (col0 / kPanel + panels_of(out.size(1))) * w.depth * kPanel <= w.storage.numel(),
              "matmul_packed: out (M, n) = a (M, depth) times the packed weight's columns from col0");
  const Panels panels{w.storage.data_ptr<float>() + (col0 / kPanel) * w.depth * kPanel, kPanel,
                      w.depth * kPanel, true};
  avx512_product(out, a, panels, a.size(1), out.size(1), false, base);
#else
  TORCH_CHECK(false, "matmul_packed: no AVX-512 product in this build");
#endif
}

// Packs the transpose of the rows of w (N, K) named by `source` into `storage`, by panels:
// column j is [bias[source[j]]; w[source[j], :]] (depth K + 1), or w[source[j], :] alone
// (depth K) where bias is null, or zeros where source[j] < 0 (and past the last column).
// Rows are read in order and written 64 columns by 64 of depth at a time (a block in L1):
// several times faster than element by element.
void pack_transposed(at::Tensor& storage, const float* w, int64_t K, const float* bias,
                     const std::vector<int64_t>& source) {
  const int64_t n = static_cast<int64_t>(source.size()), first = bias ? 1 : 0, depth = K + first;
  float* dst = storage.data_ptr<float>();
  at::parallel_for(0, panels_of(n), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* panel = dst + p * depth * kPanel;
      for (int64_t k0 = 0; k0 < K; k0 += kPanel) {
        const int64_t k1 = std::min(K, k0 + kPanel);
        for (int64_t jj = 0; jj < kPanel; ++jj) {
          const int64_t j = p * kPanel + jj, row = j < n ? source[j] : -1;
          float* to = panel + (k0 + first) * kPanel + jj;
          if (row < 0) {
            for (int64_t k = k0; k < k1; ++k, to += kPanel) *to = 0.0f;
          } else {
            const float* from = w + row * K;
            for (int64_t k = k0; k < k1; ++k, to += kPanel) *to = from[k];
          }
        }
      }
      if (bias) {
        for (int64_t jj = 0; jj < kPanel; ++jj) {
          const int64_t j = p * kPanel + jj, row = j < n ? source[j] : -1;
          panel[jj] = row < 0 ? 0.0f : bias[row];
        }
      }
    }
  });
}

// w (N, K) packed as the product reads it: transposed, (K, N) (the forward), or as it is,
// (N, K) (the backward's product with the gradient of the gates)
PackedWeight packed_weight(const at::Tensor& w, bool transposed) {
  const at::Tensor m = w.contiguous();
  const int64_t rows = transposed ? m.size(1) : m.size(0), cols = transposed ? m.size(0) : m.size(1);
  PackedWeight out{at::empty({panels_of(cols) * rows, kPanel}, m.options()), rows};
  const float* src = m.data_ptr<float>();
  const int64_t K = m.size(1);
  if (transposed) {
    std::vector<int64_t> source(cols);
    for (int64_t j = 0; j < cols; ++j) source[j] = j;
    pack_transposed(out.storage, src, K, nullptr, source);
  } else {
    pack_panels(out.storage.data_ptr<float>(), src, K, rows, cols);
  }
  return out;
}

// whether the kernels pack their float32 weights for the AVX-512 product: over many rows
// (T B >= kTransposeRows, where a copy of the weights pays for itself)
constexpr int64_t kTransposeRows = 192;

template <typename T>
bool pack_weights(int64_t rows) {
  return std::is_same_v<T, float> && avx512_product_enabled() && rows >= kTransposeRows;
}

// f(b0, b1) over the rows [0, rows) of a layer-step, split among torch's threads (the
// rows of a layer-step are independent). `width`: about the numbers a row reads and
// writes, so that a share is worth a thread (small models run on one).
template <typename F>
void for_rows(int64_t rows, int64_t width, const F& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(1, width)), f);
}

// The gates' nonlinearities. In float32 on a CPU with AVX-512, the kernels' own: ATen's
// tanh goes through MKL's high-accuracy vsTanh (on the Zen 4 above about 3 ns a number,
// as long as the products of a 64-row step at hidden 512 take together), and runs one
// thread below 32768 numbers. These are within 3 ulp of the exact values (measured over
// [-110, 110]: sigmoid 2.6, tanh 1.3; ATen's sigmoid 27), with exp as in Cephes' expf and
// tanh as in its tanhf; NaN in, NaN out; a step's rows split among the threads.
// Elsewhere ATen's.
enum class Activation { kSigmoid, kTanh };

#ifdef STOCHRNN_AVX512_PRODUCT
// e^x for x in [-104, 88.37] (clamped there; subnormal below -87.3, 0 at -104): x = n ln 2
// + r, |r| <= ln 2 / 2
__attribute__((target("avx512f"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.3762626647949f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 q = _mm512_set1_ps(1.9875691500e-4f);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.3981999507e-3f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.3334519073e-3f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.1665795894e-2f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.6666665459e-1f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(5.0000001201e-1f));
  q = _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(q, n);
}

// 1 / d for d in [1, 2^128): a 14-bit estimate and one Newton step (a division ran at a
// third of the rate of the other operations here)
__attribute__((target("avx512f"))) inline __m512 reciprocal_avx512(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

// 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: e^-|x| never overflows
__attribute__((target("avx512f"))) inline __m512 sigmoid_avx512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  const __m512 r = reciprocal_avx512(_mm512_add_ps(one, e));
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(r, negative, e, r);
}

__attribute__((target("avx512f"))) inline __m512 tanh_avx512(__m512 x) {
  const __m512 a = _mm512_abs_ps(x);
  // |x| < 0.625: x + x^3 P(x^2)
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 q = _mm512_set1_ps(-5.70498872745e-3f);
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(2.06390887954e-2f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-5.37397155531e-2f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(1.33314422036e-1f));
  q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(-3.33332819422e-1f));
  const __m512 small_magnitude = _mm512_fmadd_ps(_mm512_mul_ps(q, z), a, a);
  // else: sign(x) (1 - 2 / (e^{2|x|} + 1))
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp_avx512(_mm512_add_ps(a, a));
  const __m512 large = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), reciprocal_avx512(_mm512_add_ps(e, one)), one);
  const __mmask16 is_small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
  const __m512 magnitude = _mm512_mask_blend_ps(is_small, large, small_magnitude);
  // x's sign, -0 included
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), sign));
}

// y[0, n) = f(x[0, n)); NaN stays NaN
__attribute__((target("avx512f"))) void activate_avx512(Activation f, const float* x, float* y,
                                                         int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + j);
    __m512 out = f == Activation::kSigmoid ? sigmoid_avx512(v) : tanh_avx512(v);
    out = _mm512_mask_mov_ps(out, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
    _mm512_mask_storeu_ps(y + j, m, out);
  }
}
#endif

// out = f(x), over (rows, cols) views with unit column strides (out may be x)
template <typename T>
void activate(Activation f, const at::Tensor& x, at::Tensor out) {
  if (x.numel() == 0) return;
#ifdef STOCHRNN_AVX512_PRODUCT
  if constexpr (std::is_same_v<T, float>) {
    if (avx512_product_enabled() && x.stride(1) == 1 && out.stride(1) == 1) {
      const float* px = x.data_ptr<float>();
      float* py = out.data_ptr<float>();
      const int64_t cols = x.size(1), ldx = x.stride(0), ldy = out.stride(0);
      for_rows(x.size(0), 4 * cols, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) activate_avx512(f, px + r * ldx, py + r * ldy, cols);
      });
      return;
    }
  }
#endif
  if (f == Activation::kSigmoid) {
    at::sigmoid_out(out, x);
  } else {
    at::tanh_out(out, x);
  }
}

// What both passes read of the sequence, row by row: a layer's h and z before a step (the
// initial state before the first), the boundary below it at the step (1 for the first
// layer), and the gated inputs u = [z_b x, h, z_p h_above] of its product. Inputs are
// read through const_data_ptr: called from the threads of parallel loops, a mutable
// data_ptr on a lazily cloned (copy-on-write) input would materialise it from several.
template <typename T>
struct States {
  const Layout& s;
  const T* hidden;  // (T, B, sum H)
  const T* z;       // (T, B, L)
  const std::vector<at::Tensor>& h0;
  const std::vector<at::Tensor>& z0;
  const std::vector<at::Tensor>& dropout;

  T prev_z(int64_t l, int64_t t, int64_t b) const {
    return t > 0 ? z[((t - 1) * s.B + b) * s.L + l] : z0[l].const_data_ptr<T>()[b];
  }
  T below_z(int64_t l, int64_t t, int64_t b) const {
    return l > 0 ? z[(t * s.B + b) * s.L + l - 1] : T(1);
  }
  const T* h(int64_t l, int64_t t, int64_t b) const {
    return hidden + (t * s.B + b) * s.total + s.col[l];
  }
  const T* prev_h(int64_t l, int64_t t, int64_t b) const {
    return t > 0 ? h(l, t - 1, b) : h0[l].const_data_ptr<T>() + b * s.H[l];
  }
  // the dropout mask of layer l's input from below at (t, b), or nullptr
  const T* drop(int64_t l, int64_t t, int64_t b) const {
    return present(dropout[l]) ? dropout[l].const_data_ptr<T>() + (t * s.B + b) * s.H[l - 1]
                               : nullptr;
  }
  void inputs(int64_t l, int64_t t, int64_t b, T* u) const {
    const int64_t H = s.H[l], Hb = l > 0 ? s.H[l - 1] : 0;
    if (l > 0) {
      const T zb = below_z(l, t, b);
      const T* x = h(l - 1, t, b);
      const T* d = drop(l, t, b);
      for (int64_t k = 0; k < Hb; ++k) u[k] = zb * (d ? x[k] * d[k] : x[k]);
    }
    const T* hp = prev_h(l, t, b);
    std::copy(hp, hp + H, u + Hb);
    if (l + 1 < s.L) {
      const T zp = prev_z(l, t, b);
      const T* ha = prev_h(l + 1, t, b);
      for (int64_t k = 0; k < s.H[l + 1]; ++k) u[Hb + H + k] = zp * ha[k];
    }
  }
};

template <typename T>
std::vector<at::Tensor> forward_impl(
    const at::Tensor& projected, const std::vector<at::Tensor>& weights_t,
    const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& h0,
    const std::vector<at::Tensor>& c0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& noise, const std::vector<at::Tensor>& dropout,
    const at::Tensor& mask, const std::vector<int64_t>& rules, const std::vector<double>& params,
    const std::vector<int64_t>& sizes) {
  const Layout s = layout(projected, sizes);
  const auto opts = projected.options();
  at::Tensor hidden = at::empty({s.T, s.B, s.total}, opts);
  at::Tensor z = at::empty({s.T, s.B, s.L}, opts);
  at::Tensor logits = at::empty({s.T, s.B, s.L}, opts);
  std::vector<PackedWeight> packed;  // empty: the products read weights_t
  if (pack_weights<T>(s.T * s.B)) {
    for (const auto& w : weights_t) packed.push_back(packed_weight(w.t(), true));
  }
  std::vector<at::Tensor> cells, acts, c_prev, u, tanh_buffer;
  for (int64_t l = 0; l < s.L; ++l) {
    cells.push_back(c0[l].clone());
    acts.push_back(at::empty({s.T, s.B, 4 * s.H[l] + 1}, opts));  // what the backward reads
    c_prev.push_back(at::empty({s.T, s.B, s.H[l]}, opts));
    u.push_back(at::empty({s.B, s.K[l]}, opts));
    tanh_buffer.push_back(at::empty({s.B, 2 * s.H[l]}, opts));
  }
  T* hid = hidden.data_ptr<T>();
  T* zo = z.data_ptr<T>();
  T* lo = logits.data_ptr<T>();
  const States<T> st{s, hid, zo, h0, z0, dropout};
  const bool* m = present(mask) ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = 0; t < s.T; ++t) {
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = s.H[l], K = s.K[l], N = 4 * H + 1;
      T* ub = u[l].data_ptr<T>();
      for_rows(s.B, K, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) st.inputs(l, t, b, ub + b * K);
      });
      at::Tensor act = acts[l][t];
      const at::Tensor& base = l == 0 ? projected[t] : biases[l];
      T* a = act.data_ptr<T>();
      if (packed.empty()) {
        matmul<T>(act, u[l], weights_t[l], base);
      } else {
        matmul_packed(act, u[l], packed[l], 0, base);
      }
      // the nonlinearities; then c_F = i g, c_U = c_F + f c and their tanh
      activate<T>(Activation::kSigmoid, act.narrow(1, 0, 3 * H), act.narrow(1, 0, 3 * H));
      activate<T>(Activation::kTanh, act.narrow(1, 3 * H, H), act.narrow(1, 3 * H, H));
      T* cs = cells[l].data_ptr<T>();
      T* cp = c_prev[l].data_ptr<T>() + t * s.B * H;
      T* tb = tanh_buffer[l].data_ptr<T>();
      for_rows(s.B, 4 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* ar = a + b * N;
          for (int64_t k = 0; k < H; ++k) {
            const T c = cs[b * H + k];
            cp[b * H + k] = c;
            const T cf = ar[k] * ar[3 * H + k];
            tb[b * 2 * H + k] = cf;
            tb[b * 2 * H + H + k] = cf + ar[H + k] * c;
          }
        }
      });
      at::Tensor tanh_c = at::empty_like(tanh_buffer[l]);
      activate<T>(Activation::kTanh, tanh_buffer[l], tanh_c);
      const T* tc = tanh_c.data_ptr<T>();
      const float* nz = present(noise[l]) ? noise[l].data_ptr<float>() + t * s.B : nullptr;
      for_rows(s.B, 6 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T zp = st.prev_z(l, t, b), zb = st.below_z(l, t, b);
        const bool real = m == nullptr || m[t * s.B + b];
        const T flush = zp, update = (T(1) - zp) * zb, copy = (T(1) - zp) * (T(1) - zb);
        const T* ar = a + b * N;
        T* cr = cs + b * H;
        const T* cfu = tb + b * 2 * H;
        const T* tfu = tc + b * 2 * H;
        const T* hp = st.prev_h(l, t, b);
        T* hn = hid + (t * s.B + b) * s.total + s.col[l];
        if (real) {
          for (int64_t k = 0; k < H; ++k) {
            const T o = ar[2 * H + k];
            cr[k] = flush * cfu[k] + update * cfu[H + k] + copy * cr[k];
            hn[k] = o * (flush * tfu[k] + update * tfu[H + k]) + copy * hp[k];
          }
        } else {
          std::copy(hp, hp + H, hn);
        }
        const T logit = ar[4 * H];
        const T v = boundary_value<T>(rules[l], params[l], logit, nz ? nz[b] : 0.0f);
        zo[(t * s.B + b) * s.L + l] = real ? v : zp;
        lo[(t * s.B + b) * s.L + l] = logit;
      }
      });
    }
  }
  std::vector<at::Tensor> out{hidden, z, logits};
  out.insert(out.end(), cells.begin(), cells.end());
  out.insert(out.end(), acts.begin(), acts.end());
  out.insert(out.end(), c_prev.begin(), c_prev.end());
  return out;
}

// The inference kernel's column order [i, o, g, logit | f]: every gate a row that is not
// COPY reads first, the forget gate (read by UPDATE and soft rows only) last. The source
// row of column j, for hidden size H.
inline int64_t gate_source(int64_t j, int64_t H) {
  if (j < H) return j;                // i
  if (j < 3 * H) return j + H;        // o, g
  if (j == 3 * H) return 4 * H;       // the boundary logit
  return j - 2 * H - 1;               // f
}

// Memory reused by every call on this thread for the inference weights below: they are
// rewritten each call (nothing is cached), but not allocated and page-faulted anew, which
// takes about as long as writing them.
template <typename T>
std::vector<at::Tensor> scratch_matrices(const std::vector<std::pair<int64_t, int64_t>>& shapes) {
  thread_local at::Tensor buffer;
  std::vector<int64_t> offsets;
  int64_t bytes = 0;
  for (const auto& [rows, cols] : shapes) {
    offsets.push_back(bytes);
    bytes += (rows * cols * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
  }
  if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, at::kByte);
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto [rows, cols] = shapes[i];
    const int64_t size = rows * cols * static_cast<int64_t>(sizeof(T));
    out.push_back(buffer.narrow(0, offsets[i], size)
                      .view(c10::CppTypeToScalarType<T>::value)
                      .view({rows, cols}));
  }
  return out;
}

// [b; w^T] with the columns in gate_source's order, written into out (K + 1, N): the bias
// as the first row, then w (N, K) transposed tile by tile (several times faster than a
// strided copy at these sizes).
template <typename T>
void inference_weight(const at::Tensor& w, const at::Tensor& bias, at::Tensor& out) {
  // tiles of 64 rows by 128 columns of the output (the fastest measured, memory-bound)
  const int64_t N = w.size(0), K = w.size(1), H = (N - 1) / 4, tile_k = 64, tile_j = 128;
  const T* src = w.data_ptr<T>();
  const T* b = bias.data_ptr<T>();
  for (int64_t j = 0; j < N; ++j) out.data_ptr<T>()[j] = b[gate_source(j, H)];
  T* dst = out.data_ptr<T>() + N;
  std::vector<const T*> column(N);  // the source row of each output column
  for (int64_t j = 0; j < N; ++j) column[j] = src + gate_source(j, H) * K;
  for (int64_t k0 = 0; k0 < K; k0 += tile_k) {
    for (int64_t j0 = 0; j0 < N; j0 += tile_j) {
      const int64_t j1 = std::min(N, j0 + tile_j), k1 = std::min(K, k0 + tile_k);
      for (int64_t k = k0; k < k1; ++k) {
        T* out_row = dst + k * N;
        for (int64_t j = j0; j < j1; ++j) out_row[j] = column[j][k];
      }
    }
  }
}

// The inference kernel's packed weights, [b; w^T] by panels: the columns [i, o, g]
// (gate_source's order), zeros to the end of their last panel, then f from a panel of its
// own; the boundary logit's column apart, contiguous (a dot product per row: in a panel of
// its own its one column cost as much as 64, and split the panels unevenly among threads).
struct InferenceWeight {
  PackedWeight gates;
  const float* logit;  // (K + 1): its bias, then its weights
  // where the columns of f start in `gates`
  static int64_t f_start(int64_t H) { return panels_of(3 * H) * kPanel; }
  // the storage of the gates' panels for a weight of depth K + 1, in rows of kPanel; then
  // of the logit's column too
  static int64_t gate_rows(int64_t H, int64_t depth) {
    return (panels_of(3 * H) + panels_of(H)) * depth;
  }
  static int64_t rows(int64_t H, int64_t depth) { return gate_rows(H, depth) + panels_of(depth); }
};

InferenceWeight inference_packed(const at::Tensor& w, const at::Tensor& bias, at::Tensor& storage) {
  const int64_t N = w.size(0), K = w.size(1), H = (N - 1) / 4;
  const int64_t f_start = InferenceWeight::f_start(H);
  std::vector<int64_t> source(f_start + H, -1);  // the row of w of each packed column
  for (int64_t j = 0; j < 3 * H; ++j) source[j] = gate_source(j, H);
  for (int64_t j = 0; j < H; ++j) source[f_start + j] = gate_source(3 * H + 1 + j, H);
  const float* src = w.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  const int64_t panel_rows = InferenceWeight::gate_rows(H, K + 1);
  PackedWeight gates{storage.narrow(0, 0, panel_rows), K + 1};
  pack_transposed(gates.storage, src, K, b, source);
  float* logit = storage.data_ptr<float>() + panel_rows * kPanel;
  logit[0] = b[4 * H];
  std::copy(src + 4 * H * K, src + (4 * H + 1) * K, logit + 1);
  return {gates, logit};
}

#ifdef STOCHRNN_AVX512_PRODUCT
// sum_j x[j] y[j]
__attribute__((target("avx512f"))) float dot_avx512(const float* x, const float* y, int64_t n) {
  __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    even = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(y + j), even);
    odd = _mm512_fmadd_ps(_mm512_loadu_ps(x + j + 16), _mm512_loadu_ps(y + j + 16), odd);
  }
  for (; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    even = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + j), _mm512_maskz_loadu_ps(m, y + j), even);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
}
#endif

// *out = x[:depth] times the logit's column of the packed inference weights (float32 on
// the AVX-512 path only)
template <typename T>
void packed_logit(T* out, const T* x, const InferenceWeight& w, int64_t depth) {
#ifdef STOCHRNN_AVX512_PRODUCT
  if constexpr (std::is_same_v<T, float>) {
    *out = dot_avx512(x, w.logit, depth);
    return;
  }
#endif
  TORCH_CHECK(false, "packed_logit: packed weights only on the float32 AVX-512 path");
}

// Inference (nothing to differentiate): each row computes only what its operation reads.
// COPY rows (z_p = 0, z_b = 0; u = [0, h, 0]) only their boundary logit, a dot product
// with the recurrent part of the boundary's weights; FLUSH rows (z_p = 1; c = i g) every
// gate but the forget gate; UPDATE rows (z_p = 0, z_b = 1; u = [h_below, h, 0]) every
// gate, from the part of the weights that does not multiply the zeros of the layer above;
// the others (soft boundaries) everything. The rows of a step are reordered [UPDATE...,
// soft..., FLUSH...] into a compact buffer, so that each block of gates is one matrix
// product over the rows that need it. Without skip_copy every row is soft ("full"). Only
// the state is kept. Layer 1 reads the input itself (T, B, I) with its whole weight
// (N, I + K): its input product joins the step's, so FLUSH rows skip its forget-gate
// columns too. The top layer has no layer above: its UPDATE rows count as soft.
//
// The weights are read in one of two layouts. Over many rows (T B >= kTransposeRows),
// transposed into (K + 1, N) with the columns [i, o, g, logit | f] and the bias as the
// first row (each row of the products' input then starts with a 1, and UPDATE rows read
// the first rows, up to the layer above's): a few-row product runs about a quarter faster
// on that layout, and FLUSH rows read one block. Over few rows (a step at a time, say),
// as they are: copying them would cost more than it saves (measured: the two break even
// between 64 and 256 rows, at hidden sizes 64 and 512). The training forward copies them
// transposed (not reordered) from as many rows. Where the AVX-512 product runs, both pack
// them instead, by panels, the inference kernel with the forget gate's columns from a
// panel of their own and the logit's column apart (InferenceWeight): [i, o, g, 0... | f].

// Where each gate's columns start in a layer's pre-activation row, for one layout.
struct Gates {
  int64_t i, f, o, g, logit;
  static Gates of(bool transposed, int64_t H) {
    return transposed ? Gates{0, 3 * H + 1, H, 2 * H, 3 * H} : Gates{0, H, 2 * H, 3 * H, 4 * H};
  }
};

template <typename T>
std::vector<at::Tensor> infer_impl(
    const at::Tensor& input, const std::vector<at::Tensor>& weights,
    const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& h0,
    const std::vector<at::Tensor>& c0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& noise, const std::vector<at::Tensor>& dropout,
    const at::Tensor& mask, const std::vector<int64_t>& rules, const std::vector<double>& params,
    const std::vector<int64_t>& sizes, bool skip_copy) {
  const Layout s = layout(input, sizes);
  const auto opts = input.options();
  at::Tensor hidden = at::empty({s.T, s.B, s.total}, opts);
  at::Tensor z = at::empty({s.T, s.B, s.L}, opts);
  at::Tensor logits = at::empty({s.T, s.B, s.L}, opts);
  const int64_t width_in = input.size(2);
  const bool transposed = s.T * s.B >= kTransposeRows;
  std::vector<at::Tensor> cells, pre, u, cell_new, tanh_new, recurrent_logit;
  for (int64_t l = 0; l < s.L; ++l) {
    const int64_t H = s.H[l], Hb = l > 0 ? s.H[l - 1] : 0;
    cells.push_back(c0[l].clone());
    pre.push_back(at::empty({s.B, 4 * H + 1}, opts));
    u.push_back(at::ones({s.B, 1 + s.K[l] + (l == 0 ? width_in : 0)}, opts));  // [1, ...]
    cell_new.push_back(at::empty({s.B, H}, opts));
    tanh_new.push_back(at::empty({s.B, H}, opts));
    recurrent_logit.push_back(l > 0 ? weights[l].select(0, 4 * H).narrow(0, Hb, H).contiguous()
                                    : at::Tensor());
  }
  T* hid = hidden.data_ptr<T>();
  T* zo = z.data_ptr<T>();
  T* lo = logits.data_ptr<T>();
  const States<T> st{s, hid, zo, h0, z0, dropout};
  const bool* m = present(mask) ? mask.data_ptr<bool>() : nullptr;
  std::vector<at::Tensor> weights_t;
  std::vector<InferenceWeight> packed;
  const bool packing = transposed && pack_weights<T>(s.T * s.B);
  if (packing) {
    std::vector<std::pair<int64_t, int64_t>> shapes;
    for (int64_t l = 0; l < s.L; ++l) {
      shapes.emplace_back(InferenceWeight::rows(s.H[l], weights[l].size(1) + 1), kPanel);
    }
    std::vector<at::Tensor> storage = scratch_matrices<float>(shapes);
    for (int64_t l = 0; l < s.L; ++l) packed.push_back(inference_packed(weights[l], biases[l], storage[l]));
  } else if (transposed) {
    std::vector<std::pair<int64_t, int64_t>> shapes;
    for (const auto& w : weights) shapes.emplace_back(w.size(1) + 1, w.size(0));
    weights_t = scratch_matrices<T>(shapes);
    for (int64_t l = 0; l < s.L; ++l) inference_weight<T>(weights[l], biases[l], weights_t[l]);
  }
  std::vector<int64_t> order;  // compact row r -> batch row
  std::vector<int64_t> update_rows, soft_rows, flush_rows, copy_rows;
  for (auto* rows : {&order, &update_rows, &soft_rows, &flush_rows, &copy_rows}) {
    rows->reserve(s.B);
  }
  for (int64_t t = 0; t < s.T; ++t) {
    for (int64_t l = 0; l < s.L; ++l) {
      const int64_t H = s.H[l], N = 4 * H + 1;
      const int64_t in = l == 0 ? width_in : 0, K = s.K[l] + in + 1;
      // UPDATE rows read the weights' first rows: the bias, the input or the layer below,
      // their own h (without the layer above, whose input is 0 for them)
      const int64_t above = l + 1 < s.L ? s.H[l + 1] : 0, update_depth = K - above;
      // the rows by operation, ordered UPDATE, soft ("full"), FLUSH; COPY apart
      for (auto* rows : {&update_rows, &soft_rows, &flush_rows, &copy_rows}) rows->clear();
      for (int64_t b = 0; b < s.B; ++b) {
        const T zp = st.prev_z(l, t, b), zb = st.below_z(l, t, b);
        if (!skip_copy) {
          soft_rows.push_back(b);
        } else if (zp == T(1)) {
          flush_rows.push_back(b);
        } else if (zp == T(0) && zb == T(0)) {
          copy_rows.push_back(b);
        } else if (zp == T(0) && zb == T(1) && above > 0) {
          update_rows.push_back(b);
        } else {  // soft boundaries; UPDATE rows of the top layer
          soft_rows.push_back(b);
        }
      }
      order.assign(update_rows.begin(), update_rows.end());
      order.insert(order.end(), soft_rows.begin(), soft_rows.end());
      order.insert(order.end(), flush_rows.begin(), flush_rows.end());
      const int64_t n_update = static_cast<int64_t>(update_rows.size());
      const int64_t n_soft = static_cast<int64_t>(soft_rows.size());
      const int64_t n_flush = static_cast<int64_t>(flush_rows.size());
      const int64_t n_full = n_update + n_soft;
      const int64_t n_active = n_full + n_flush;
      T* ub = u[l].data_ptr<T>();
      const T* x_t = l == 0 ? input.data_ptr<T>() + t * s.B * in : nullptr;
      for_rows(n_active, K, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          T* row = ub + r * K + 1;  // after the 1
          if (x_t) std::copy(x_t + order[r] * in, x_t + (order[r] + 1) * in, row);
          st.inputs(l, t, order[r], row + in);
        }
      });
      // gate columns [c0, c0 + n) of the compact rows [r0, r0 + rows), from the first
      // `depth` columns of u (the 1 included), written in place into the compact buffer
      // (out= views)
      at::Tensor& p = pre[l];
      const Gates at_ = Gates::of(transposed, H);
      auto product = [&](int64_t r0, int64_t rows, int64_t c0, int64_t n, int64_t depth) {
        if (rows == 0) return;
        at::Tensor out = p.narrow(0, r0, rows).narrow(1, c0, n);
        const at::Tensor x = u[l].narrow(0, r0, rows);
        if (packing) {  // [i, o, g] (with the logit) and f apart, as c0 and n ask
          const InferenceWeight& w = packed[l];
          const at::Tensor a = x.narrow(1, 0, depth);
          if (c0 == 0) {  // [i, o, g, logit] or everything; the logit row by row below
            at::Tensor iog = out.narrow(1, 0, 3 * H);
            matmul_packed(iog, a, w.gates, 0);
          }
          if (c0 == at_.f || n == N) {
            at::Tensor f = p.narrow(0, r0, rows).narrow(1, at_.f, H);
            matmul_packed(f, a, w.gates, InferenceWeight::f_start(H));
          }
        } else if (transposed) {
          matmul<T>(out, x.narrow(1, 0, depth), weights_t[l].narrow(0, 0, depth).narrow(1, c0, n));
        } else {  // the bias apart, the 1 left out
          const at::Tensor w = weights[l].narrow(0, c0, n).narrow(1, 0, depth - 1);
          at::addmm_out(out, biases[l].narrow(0, c0, n), x.narrow(1, 1, depth - 1), w.t());
        }
      };
      // Two plans for the UPDATE rows, which read the same weights as the others but for
      // the layer above's rows (their input 0) and the forget gate (unread by FLUSH rows).
      // Few FLUSH rows: the UPDATE rows apart, all gates, without the layer above's rows.
      // Many: with the others, all but the forget gate, over every row (the weights that
      // both read read once, the zeros multiplied); then their forget gate apart.
      // Measured at 512: each plan is the faster one on its side of n_update = n_flush.
      const bool apart = n_flush == 0 || n_update > n_flush;
      const int64_t r0 = apart ? n_update : 0, rest = n_active - r0;
      if (apart) product(0, n_update, 0, N, update_depth);
      if (n_flush == 0) {
        product(r0, rest, 0, N, K);
      } else if (transposed) {  // [i, o, g, logit] for every row, then f
        product(r0, rest, 0, 3 * H + 1, K);
      } else {  // i, then [o, g, logit] for every row, then f
        product(r0, rest, at_.i, H, K);
        product(r0, rest, at_.o, 2 * H + 1, K);
      }
      if (n_flush > 0) {
        if (!apart) product(0, n_update, at_.f, H, update_depth);
        product(n_update, n_soft, at_.f, H, K);
      }
      // The rest of the step, row by row, in one parallel region (each region cost about
      // 12 us on a 2-core VM, against 1.4 us for a row of this at hidden 512): the
      // nonlinearities on the columns each group computed; the new cell c_F = i g (FLUSH),
      // c_U = c_F + f c (UPDATE), a blend of them and c for soft boundaries; its tanh; the
      // boundary; h = o tanh(c).
      T* pp = p.data_ptr<T>();
      T* cs = cells[l].data_ptr<T>();
      T* cn = cell_new[l].data_ptr<T>();
      T* tn = tanh_new[l].data_ptr<T>();
      const float* nz = present(noise[l]) ? noise[l].data_ptr<float>() + t * s.B : nullptr;
      auto finish = [&](int64_t b, T logit) {
        const T zp = st.prev_z(l, t, b);
        const bool real = m == nullptr || m[t * s.B + b];
        const T v = boundary_value<T>(rules[l], params[l], logit, nz ? nz[b] : 0.0f);
        zo[(t * s.B + b) * s.L + l] = real ? v : zp;
        lo[(t * s.B + b) * s.L + l] = logit;
        return real;
      };
      auto sigmoid = [](at::Tensor v) { activate<T>(Activation::kSigmoid, v, v); };
      // ATen's operations run on the workers below (ATen's nonlinearities where the
      // kernels' own do not run): with this thread's state (inference mode, grad mode),
      // which at::parallel_for does not hand them
      const at::ThreadLocalState state;
      for_rows(n_active, 12 * H, [&](int64_t r0, int64_t r1) {
        const at::ThreadLocalStateGuard with_state(state);
        if (packing) {  // the logit, a dot product (UPDATE rows: the layer above's input 0)
          for (int64_t r = r0; r < r1; ++r) {
            packed_logit(pp + r * N + at_.logit, ub + r * K, packed[l],
                         r < n_update ? update_depth : K);
          }
        }
        at::Tensor rows = p.narrow(0, r0, r1 - r0);
        if (transposed) {
          sigmoid(rows.narrow(1, at_.i, 2 * H));  // i, o
        } else if (n_flush == 0) {
          sigmoid(rows.narrow(1, at_.i, 3 * H));  // i, f, o
        } else {
          sigmoid(rows.narrow(1, at_.i, H));
          sigmoid(rows.narrow(1, at_.o, H));
        }
        if (r0 < n_full && (transposed || n_flush > 0)) {
          sigmoid(p.narrow(0, r0, std::min(r1, n_full) - r0).narrow(1, at_.f, H));
        }
        activate<T>(Activation::kTanh, rows.narrow(1, at_.g, H), rows.narrow(1, at_.g, H));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = order[r];
          const T* pr = pp + r * N;
          const T* cr = cs + b * H;
          T* cnr = cn + r * H;
          const T *i = pr + at_.i, *f = pr + at_.f, *g = pr + at_.g;
          if (st.prev_z(l, t, b) == T(1)) {
            for (int64_t k = 0; k < H; ++k) cnr[k] = i[k] * g[k];
          } else {
            for (int64_t k = 0; k < H; ++k) cnr[k] = i[k] * g[k] + f[k] * cr[k];
          }
        }
        activate<T>(Activation::kTanh, cell_new[l].narrow(0, r0, r1 - r0),
                    tanh_new[l].narrow(0, r0, r1 - r0));
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = order[r];
          const T* pr = pp + r * N;
          const T* hp = st.prev_h(l, t, b);
          T* hn = hid + (t * s.B + b) * s.total + s.col[l];
          T* cr = cs + b * H;
          const T* cnr = cn + r * H;
          const T* tnr = tn + r * H;
          const T zp = st.prev_z(l, t, b), zb = st.below_z(l, t, b);
          const T *i = pr + at_.i, *o = pr + at_.o, *g = pr + at_.g;
          if (!finish(b, pr[at_.logit])) {
            std::copy(hp, hp + H, hn);
          } else if (zp == T(1) || (zp == T(0) && zb == T(1))) {  // FLUSH: c_F; UPDATE: c_U
            for (int64_t k = 0; k < H; ++k) {
              cr[k] = cnr[k];
              hn[k] = o[k] * tnr[k];
            }
          } else {  // soft boundaries, or a COPY row in full: flush·F + update·U + copy·C
            const T flush = zp, update = (T(1) - zp) * zb, copy = (T(1) - zp) * (T(1) - zb);
            for (int64_t k = 0; k < H; ++k) {
              const T cf = i[k] * g[k];
              const T c = cr[k];
              cr[k] = flush * cf + update * cnr[k] + copy * c;
              hn[k] = o[k] * (flush * std::tanh(cf) + update * tnr[k]) + copy * hp[k];
            }
          }
        }
      });
      // COPY rows (layers above the first only): u = [0, h, 0], the logit a dot product
      const T* wz = copy_rows.empty() ? nullptr : recurrent_logit[l].data_ptr<T>();
      const T bz = copy_rows.empty() ? T(0) : biases[l].data_ptr<T>()[4 * H];
      for_rows(static_cast<int64_t>(copy_rows.size()), 3 * H, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = copy_rows[r];
          const T* hp = st.prev_h(l, t, b);
          T acc = bz;
          for (int64_t k = 0; k < H; ++k) acc += hp[k] * wz[k];
          finish(b, acc);
          std::copy(hp, hp + H, hid + (t * s.B + b) * s.total + s.col[l]);
        }
      });
    }
  }
  std::vector<at::Tensor> out{hidden, z, logits};
  out.insert(out.end(), cells.begin(), cells.end());
  return out;
}

template <typename T>
std::vector<at::Tensor> backward_impl(
    const at::Tensor& projected, const std::vector<at::Tensor>& weights,
    const std::vector<at::Tensor>& h0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& dropout, const at::Tensor& mask, const at::Tensor& hidden,
    const at::Tensor& z, const std::vector<at::Tensor>& acts, const std::vector<at::Tensor>& c_prev,
    const at::Tensor& grad_hidden, const at::Tensor& grad_z, const at::Tensor& grad_logits,
    const std::vector<at::Tensor>& grad_cells, const at::Tensor& boundary_slope,
    const std::vector<int64_t>& sizes) {
  const Layout s = layout(projected, sizes);
  const auto opts = projected.options();
  std::vector<PackedWeight> packed;  // empty: the products read the weights as they are
  if (pack_weights<T>(s.T * s.B)) {
    for (const auto& w : weights) packed.push_back(packed_weight(w, false));
  }
  std::vector<at::Tensor> gh, gc, gz, grad_s, gh_prev, gc_prev, tanh_buffer, grad_w, grad_b, inputs;
  // steps per weight-gradient product: about 512 rows, so the product runs at full speed
  const int64_t block = std::min<int64_t>(s.T, std::max<int64_t>(1, (512 + s.B - 1) / s.B));
  for (int64_t l = 0; l < s.L; ++l) {
    gh.push_back(at::zeros({s.B, s.H[l]}, opts));
    gc.push_back(present(grad_cells[l]) ? grad_cells[l].clone() : at::zeros({s.B, s.H[l]}, opts));
    gz.push_back(at::zeros({s.B}, opts));
    // layer 1's whole (T, B, N) gradient is returned (it is projected's); the others are
    // kept for one block of steps, whose weight gradient is then one product
    grad_s.push_back(at::empty({l == 0 ? s.T : block, s.B, 4 * s.H[l] + 1}, opts));
    grad_w.push_back(at::zeros({4 * s.H[l] + 1, s.K[l]}, opts));
    grad_b.push_back(at::zeros({4 * s.H[l] + 1}, opts));
    inputs.push_back(at::empty({block * s.B, s.K[l]}, opts));
    gh_prev.push_back(at::empty({s.B, s.H[l]}, opts));
    gc_prev.push_back(at::empty({s.B, s.H[l]}, opts));
    tanh_buffer.push_back(at::empty({s.B, 2 * s.H[l]}, opts));
  }
  std::vector<T> g_zp(s.B), g_zb(s.B), g_v(s.B);
  const States<T> st{s, hidden.data_ptr<T>(), z.data_ptr<T>(), h0, z0, dropout};
  // read through its strides: the gradient of a sum is often an expanded (stride 0) tensor
  const T* ogh = ptr_or_null<T>(grad_hidden);
  const int64_t gs0 = ogh ? grad_hidden.stride(0) : 0, gs1 = ogh ? grad_hidden.stride(1) : 0;
  const int64_t gs2 = ogh ? grad_hidden.stride(2) : 0;
  const T* ogz = ptr_or_null<T>(grad_z);
  const T* oga = ptr_or_null<T>(grad_logits);
  const T* slope = boundary_slope.data_ptr<T>();
  const bool* m = present(mask) ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = s.T - 1; t >= 0; --t) {
    for (int64_t l = s.L - 1; l >= 0; --l) {
      const int64_t H = s.H[l], N = 4 * H + 1;
      const int64_t Hb = l > 0 ? s.H[l - 1] : 0;
      const bool has_above = l + 1 < s.L;
      T* ghl = gh[l].data_ptr<T>();
      T* gcl = gc[l].data_ptr<T>();
      T* gzl = gz[l].data_ptr<T>();
      T* ghp = gh_prev[l].data_ptr<T>();
      T* gcp = gc_prev[l].data_ptr<T>();
      const int64_t slot = l == 0 ? t : t % block;
      T* gs = grad_s[l].data_ptr<T>() + slot * s.B * N;
      const T* act = acts[l].data_ptr<T>() + t * s.B * N;
      const T* cpv = c_prev[l].data_ptr<T>() + t * s.B * H;
      // c_F, c_U of this step and their tanh
      T* tb = tanh_buffer[l].data_ptr<T>();
      for_rows(s.B, 4 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* ar = act + b * N;
          for (int64_t k = 0; k < H; ++k) {
            const T cf = ar[k] * ar[3 * H + k];
            tb[b * 2 * H + k] = cf;
            tb[b * 2 * H + H + k] = cf + ar[H + k] * cpv[b * H + k];
          }
        }
      });
      at::Tensor tanh_c = at::empty_like(tanh_buffer[l]);
      activate<T>(Activation::kTanh, tanh_buffer[l], tanh_c);
      const T* tc = tanh_c.data_ptr<T>();
      for_rows(s.B, 12 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const bool real = m == nullptr || m[t * s.B + b];
        T* ghr = ghl + b * H;
        T* gcr = gcl + b * H;
        const T* outer = ogh ? ogh + t * gs0 + b * gs1 + s.col[l] * gs2 : nullptr;
        T gv = gzl[b] + (ogz ? ogz[(t * s.B + b) * s.L + l] : T(0));
        g_v[b] = gv;
        T* gsr = gs + b * N;
        if (!real) {  // a padded step: every gradient goes to the state before it
          for (int64_t k = 0; k < H; ++k) {
            ghp[b * H + k] = ghr[k] + (outer ? outer[k * gs2] : T(0));
            gcp[b * H + k] = gcr[k];
          }
          std::fill(gsr, gsr + N, T(0));
          g_zp[b] = gv;
          g_zb[b] = T(0);
          continue;
        }
        const T zp = st.prev_z(l, t, b), zb = st.below_z(l, t, b);
        const T flush = zp, update = (T(1) - zp) * zb, copy = (T(1) - zp) * (T(1) - zb);
        const T* ar = act + b * N;
        const T* cr = cpv + b * H;
        const T* hp = st.prev_h(l, t, b);
        T d_flush = 0, d_update = 0, d_copy = 0;
        const T* cfu = tb + b * 2 * H;
        const T* tfu = tc + b * 2 * H;
        for (int64_t k = 0; k < H; ++k) {
          const T i = ar[k], f = ar[H + k], o = ar[2 * H + k], g = ar[3 * H + k], c = cr[k];
          const T gh_k = ghr[k] + (outer ? outer[k * gs2] : T(0)), gc_k = gcr[k];
          const T cf = cfu[k], cu = cfu[H + k];
          const T tf = tfu[k], tu = tfu[H + k];
          const T gho = gh_k * o;
          const T g_o = gh_k * (flush * tf + update * tu);
          const T g_cu = update * (gc_k + gho * (T(1) - tu * tu));
          const T g_cf = flush * (gc_k + gho * (T(1) - tf * tf)) + g_cu;
          d_flush += gho * tf + gc_k * cf;
          d_update += gho * tu + gc_k * cu;
          d_copy += gh_k * hp[k] + gc_k * c;
          gcp[b * H + k] = f * g_cu + copy * gc_k;
          ghp[b * H + k] = copy * gh_k;
          gsr[k] = g_cf * g * i * (T(1) - i);
          gsr[H + k] = g_cu * c * f * (T(1) - f);
          gsr[2 * H + k] = g_o * o * (T(1) - o);
          gsr[3 * H + k] = g_cf * i * (T(1) - g * g);
        }
        T ga = gv * slope[(t * s.B + b) * s.L + l];
        if (oga) ga += oga[(t * s.B + b) * s.L + l];
        gsr[4 * H] = ga;
        if (l == 0) {
          g_zp[b] = d_flush - d_update;
          g_zb[b] = T(0);
        } else {
          g_zp[b] = d_flush - (T(1) - zb) * d_copy - zb * d_update;
          g_zb[b] = (T(1) - zp) * (d_update - d_copy);
        }
      }
      });
      at::Tensor g_u = at::empty({s.B, s.K[l]}, opts);  // (B, K)
      if (packed.empty()) {
        matmul<T>(g_u, grad_s[l][slot], weights[l]);
      } else {
        matmul_packed(g_u, grad_s[l][slot], packed[l], 0);
      }
      const T* gu = g_u.data_ptr<T>();
      const int64_t K = s.K[l];
      for_rows(s.B, 2 * K, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const bool real = m == nullptr || m[t * s.B + b];
        const T* gur = gu + b * K;
        T* ghr = ghl + b * H;
        T* gcr = gcl + b * H;
        if (!real) {
          for (int64_t k = 0; k < H; ++k) {
            ghr[k] = ghp[b * H + k];
            gcr[k] = gcp[b * H + k];
          }
          gzl[b] = g_v[b];
          continue;
        }
        const T zp = st.prev_z(l, t, b);
        T gzp = g_zp[b];
        for (int64_t k = 0; k < H; ++k) {
          ghr[k] = ghp[b * H + k] + gur[Hb + k];
          gcr[k] = gcp[b * H + k];
        }
        if (has_above) {
          const int64_t Ha = s.H[l + 1];
          const T* ha = st.prev_h(l + 1, t, b);
          T* gha = gh[l + 1].data_ptr<T>() + b * Ha;
          const T* g_above = gur + Hb + H;
          for (int64_t k = 0; k < Ha; ++k) {
            gzp += g_above[k] * ha[k];
            gha[k] += zp * g_above[k];
          }
        }
        gzl[b] = gzp;
        if (l > 0) {
          const T zb = st.below_z(l, t, b);
          const T* x = st.h(l - 1, t, b);
          const T* drop = st.drop(l, t, b);
          T* ghb = gh[l - 1].data_ptr<T>() + b * Hb;
          T gzb = g_zb[b];
          for (int64_t k = 0; k < Hb; ++k) {
            const T d = drop ? drop[k] : T(1);
            gzb += gur[k] * x[k] * d;
            ghb[k] += zb * gur[k] * d;
          }
          gz[l - 1].data_ptr<T>()[b] += gzb;
        }
      }
      });
    }
    if (t % block == 0) {  // the block [t, t + n) is done: its weight gradients
      const int64_t n = std::min(block, s.T - t);
      for (int64_t l = 0; l < s.L; ++l) {
        const int64_t K = s.K[l], N = 4 * s.H[l] + 1;
        T* ub = inputs[l].data_ptr<T>();
        for (int64_t tt = t; tt < t + n; ++tt)
          for (int64_t b = 0; b < s.B; ++b) st.inputs(l, tt, b, ub + ((tt - t) * s.B + b) * K);
        at::Tensor gs = grad_s[l].narrow(0, l == 0 ? t : 0, n).reshape({n * s.B, N});
        matmul<T>(grad_w[l], gs.t(), inputs[l].narrow(0, 0, n * s.B), {}, Accumulate::kYes);
        grad_b[l].add_(gs.sum(0));
      }
    }
  }
  std::vector<at::Tensor> out{grad_s[0]};
  out.insert(out.end(), grad_w.begin(), grad_w.end());
  out.insert(out.end(), grad_b.begin(), grad_b.end());
  out.insert(out.end(), gh.begin(), gh.end());
  out.insert(out.end(), gc.begin(), gc.end());
  out.insert(out.end(), gz.begin(), gz.end());
  return out;
}

at::Tensor contiguous(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

std::vector<at::Tensor> contiguous(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(contiguous(t));
  return out;
}

}  // namespace

// Whether the kernels can read these tensors: plain CPU tensors with storage (not the
// wrappers of torch.func transforms, which have none).
bool supported(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    if (!t.has_storage() || t.device().type() != at::kCPU || t.is_sparse()) return false;
  }
  return true;
}

std::vector<at::Tensor> forward(
    const at::Tensor& projected, const std::vector<at::Tensor>& weights,
    const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& h0,
    const std::vector<at::Tensor>& c0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& noise, const std::vector<at::Tensor>& dropout,
    const at::Tensor& mask, const std::vector<int64_t>& rules, const std::vector<double>& params,
    const std::vector<int64_t>& sizes) {
  at::NoGradGuard no_grad;
  // (K, N) for the products: over many rows copied contiguous (kTransposeRows: the copy
  // pays for itself), over few a transposed view of the (N, K) weights
  // (packed instead by forward_impl for the AVX-512 product)
  const int64_t rows = projected.size(0) * projected.size(1);
  const bool copy = rows >= kTransposeRows &&
                    !(projected.scalar_type() == at::kFloat && pack_weights<float>(rows));
  std::vector<at::Tensor> weights_t;
  for (const auto& w : weights) weights_t.push_back(copy ? w.t().contiguous() : w.t());
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(projected.scalar_type(), "hmrnn_fused_forward", [&] {
    out = forward_impl<scalar_t>(
        projected.contiguous(), weights_t, contiguous(biases), contiguous(h0),
        contiguous(c0), contiguous(z0), contiguous(noise), contiguous(dropout), contiguous(mask),
        rules, params, sizes);
  });
  return out;
}

// What infer_impl reads, checked: a malformed call raises instead of reading past a tensor.
void check_inference_arguments(
    const at::Tensor& input, const std::vector<at::Tensor>& weights,
    const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& h0,
    const std::vector<at::Tensor>& c0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& noise, const std::vector<at::Tensor>& dropout,
    const at::Tensor& mask, const std::vector<int64_t>& rules, const std::vector<double>& params,
    const std::vector<int64_t>& sizes) {
  const size_t L = sizes.size();
  TORCH_CHECK(L > 0 && input.dim() == 3, "infer: input (T, B, I) and at least one layer");
  for (const auto* group : {&weights, &biases, &h0, &c0, &z0, &noise, &dropout}) {
    TORCH_CHECK(group->size() == L, "infer: one tensor per layer in every group");
  }
  TORCH_CHECK(rules.size() == L && params.size() == L, "infer: one rule per layer");
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const auto dtype = input.scalar_type();
  for (size_t l = 0; l < L; ++l) {
    const int64_t H = sizes[l], N = 4 * H + 1;
    const int64_t K = (l == 0 ? I : sizes[l - 1]) + H + (l + 1 < L ? sizes[l + 1] : 0);
    TORCH_CHECK(weights[l].dim() == 2 && weights[l].size(0) == N && weights[l].size(1) == K &&
                    weights[l].scalar_type() == dtype,
                "infer: layer ", l, "'s weight must be (", N, ", ", K, ") of the input's dtype");
    TORCH_CHECK(biases[l].dim() == 1 && biases[l].size(0) == N && biases[l].scalar_type() == dtype,
                "infer: layer ", l, "'s bias must be (", N, ") of the input's dtype");
    for (const auto* state : {&h0[l], &c0[l]}) {
      TORCH_CHECK(state->dim() == 2 && state->size(0) == B && state->size(1) == H &&
                      state->scalar_type() == dtype,
                  "infer: layer ", l, "'s h0 and c0 must be (", B, ", ", H, ")");
    }
    TORCH_CHECK(z0[l].numel() == B && z0[l].scalar_type() == dtype,
                "infer: layer ", l, "'s z0 must be (", B, ")");
    TORCH_CHECK(!present(noise[l]) || (noise[l].numel() == T * B &&
                                       noise[l].scalar_type() == at::kFloat),
                "infer: layer ", l, "'s noise must be empty or (T, B) float32");
    TORCH_CHECK(!present(dropout[l]) || (l > 0 && dropout[l].numel() == T * B * sizes[l - 1] &&
                                         dropout[l].scalar_type() == dtype),
                "infer: layer ", l, "'s dropout mask must be empty or (T, B, H below)");
  }
  TORCH_CHECK(!present(mask) || (mask.numel() == T * B && mask.scalar_type() == at::kBool),
              "infer: the mask must be empty or (T, B) bool");
}

std::vector<at::Tensor> infer(
    const at::Tensor& input, const std::vector<at::Tensor>& weights,
    const std::vector<at::Tensor>& biases, const std::vector<at::Tensor>& h0,
    const std::vector<at::Tensor>& c0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& noise, const std::vector<at::Tensor>& dropout,
    const at::Tensor& mask, const std::vector<int64_t>& rules, const std::vector<double>& params,
    const std::vector<int64_t>& sizes, bool skip_copy) {
  check_inference_arguments(input, weights, biases, h0, c0, z0, noise, dropout, mask, rules,
                            params, sizes);
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "hmrnn_fused_infer", [&] {
    out = infer_impl<scalar_t>(
        input.contiguous(), contiguous(weights), contiguous(biases), contiguous(h0),
        contiguous(c0), contiguous(z0), contiguous(noise), contiguous(dropout), contiguous(mask),
        rules, params, sizes, skip_copy);
  });
  return out;
}

std::vector<at::Tensor> backward(
    const at::Tensor& projected, const std::vector<at::Tensor>& weights,
    const std::vector<at::Tensor>& h0, const std::vector<at::Tensor>& z0,
    const std::vector<at::Tensor>& dropout, const at::Tensor& mask, const at::Tensor& hidden,
    const at::Tensor& z, const std::vector<at::Tensor>& acts, const std::vector<at::Tensor>& c_prev,
    const at::Tensor& grad_hidden, const at::Tensor& grad_z, const at::Tensor& grad_logits,
    const std::vector<at::Tensor>& grad_cells, const at::Tensor& boundary_slope,
    const std::vector<int64_t>& sizes) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(projected.scalar_type(), "hmrnn_fused_backward", [&] {
    out = backward_impl<scalar_t>(
        projected, contiguous(weights), contiguous(h0), contiguous(z0), contiguous(dropout),
        contiguous(mask), hidden.contiguous(), z.contiguous(), contiguous(acts),
        contiguous(c_prev), grad_hidden, contiguous(grad_z), contiguous(grad_logits),
        contiguous(grad_cells), boundary_slope.contiguous(), sizes);
  });
  return out;
}

// The kernels' matrix product on its own (layer 1's input product over all steps and its
// gradients, in fused.py; the tests): a b, or base + a b (base defined).
at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& base) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0),
              "matrix_product: a (M, K) and b (K, N)");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "matrix_product: a and b of one dtype");
  at::NoGradGuard no_grad;
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "hmrnn_matrix_product", [&] {
    matmul<scalar_t>(out, a, b, present(base) ? base : at::Tensor());
  });
  return out;
}

// The gates' nonlinearities on their own, for the tests: (sigmoid(x), tanh(x)) of a 2-D x.
std::vector<at::Tensor> activations(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "activations: a 2-D tensor");
  at::NoGradGuard no_grad;
  const at::Tensor input = x.contiguous();
  std::vector<at::Tensor> out{at::empty_like(input), at::empty_like(input)};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "hmrnn_activations", [&] {
    activate<scalar_t>(Activation::kSigmoid, input, out[0]);
    activate<scalar_t>(Activation::kTanh, input, out[1]);
  });
  return out;
}

// Turns the AVX-512 product and nonlinearities on (where available) or off; returns
// whether they are now used.
bool use_avx512_product(bool on) {
#ifdef STOCHRNN_AVX512_PRODUCT
  avx512_product_on.store(on);
  return avx512_product_enabled();
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("matrix_product", &matrix_product, "the kernels' matrix product (layer 1's input product; the tests)");
  m.def("activations", &activations, "the gates' sigmoid and tanh (for the tests)");
  m.def("use_avx512_product", &use_avx512_product,
        "turn the float32 AVX-512 product on (where available) or off; whether it is used");
  m.def("supported", &supported, "whether the kernels can read these tensors");
  m.def("forward", &forward, "the fused HM-LSTM sequence, forward (saving what the backward reads)");
  m.def("infer", &infer, "the fused HM-LSTM sequence without autograd (rows skip unread work)");
  m.def("backward", &backward, "the fused HM-LSTM sequence, hand-derived backward");
}
