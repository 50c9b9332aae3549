// Fused L1 distances of every query against every tail, forward and backward, for CPU float32.
//
// Never forms the (B, M, d) difference tensor: each kernel walks register tiles of queries x tails
// and keeps memory at O(B x M + (B + M) x d). Three forms (all distances summed over k):
//   l1:          D[b, m] = sum_k |q[b, k] - t[m, k]|                           (TransE L1)
//   shifted l1:  D[b, m] = sum_k |q[b, k] - t[m, k] + c[b, m] w[b, k]|         (TransH L1, c = w.t)
//   complex l1:  D[b, m] = sum_j |z_j|, z_j = (qr - tr) + i (qi - ti), j < d/2 (RotatE L1, [re | im])
//   scaled l1:   D[b, m] = sum_k |q[b, k] - s[b, k] t[m, k]|                  (PairRE L1, s = r_T)
// Subgradients as torch's abs and the reference score_triples: sign(0) = 0 for |x|, and a zero
// gradient for |z| at z = 0.
//
// Vectors are GCC/Clang vector extensions (8 floats: one AVX register; two SSE/NEON registers
// elsewhere), so the same source builds on any CPU; the module is compiled with -march=native.
// ATen and torch's pybind11 casters, not <torch/extension.h> (which brings the whole C++ frontend):
// the build takes about half as long.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t V = 8;
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x}; }
inline vf vabs(vf x) {
#if defined(__AVX__)
  // A float-domain AND: the integer form (vpand) costs a bypass delay between the vector units.
  return (vf)_mm256_and_ps((__m256)x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
#else
  return (vf)((vi)x & 0x7fffffff);
#endif
}
inline float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < V; ++l) s += v[l];
  return s;
}
// g * sign(x) with sign(0) = 0: flip g's sign bit where x is negative, zero it where x == 0.
inline vf signed_by(vf g, vf x) {
  vi flipped = (vi)g ^ ((vi)x & (int32_t)0x80000000);
  return (vf)(flipped & (x != 0.f));
}
inline float signed_by(float g, float x) { return x > 0.f ? g : (x < 0.f ? -g : 0.f); }
inline vf vsqrt(vf x) {
#if defined(__AVX__)
  return (vf)_mm256_sqrt_ps((__m256)x);
#else
  vf r;
  for (int l = 0; l < V; ++l) r[l] = std::sqrt(x[l]);
  return r;
#endif
}
// 1 / sqrt(x) to about 1 ulp: the hardware estimate (12 bits) and one Newton step, several times
// cheaper than a sqrt and a division. inf at x = 0 (callers mask it).
inline vf vrsqrt(vf x) {
#if defined(__AVX__)
  const vf y = (vf)_mm256_rsqrt_ps((__m256)x);
  return y * (splat(1.5f) - splat(0.5f) * x * y * y);
#else
  return 1.f / vsqrt(x);
#endif
}
// 1 / |z| where |z| > 0, else 0 (the modulus' gradient is zero at z = 0).
inline vf inv_or_zero(vf sq) { return (vf)((vi)vrsqrt(sq) & (sq > 0.f)); }
inline float inv_or_zero(float sq) { return sq > 0.f ? 1.f / std::sqrt(sq) : 0.f; }

// Rows of tails per cache block: a block of t (and of its gradient) stays in L2 while every
// query tile passes over it.
constexpr int64_t TAIL_BLOCK = 128;
constexpr int64_t QUERY_BLOCK = 64;  // queries per cache block of the forward
constexpr int64_t QUERY_TILE = 4;   // queries per register tile (backward)
constexpr int64_t FORWARD_QUERY_TILE = 2;  // queries x tails per register tile of the forward: each query
constexpr int64_t TAIL_TILE = 4;           // vector stays in a register while four tails stream past it

struct Args {
  const float* q; const float* t; const float* w; const float* c;  // w: the shifted form's w, the scaled form's s
  int64_t B, M, d;
  int64_t ldo;  // row stride of the forward's output (M, or a wider reused buffer's)
};

// ---- forward: D (B, M) ------------------------------------------------------------------------
// One register tile: queries [b0, b0 + BT) x tails [m0, m0 + MT).
template <int BT, int MT, int FORM>  // FORM 0: l1, 1: shifted l1, 2: complex l1, 3: scaled l1
inline void forward_tile(const Args& a, float* out, int64_t b0, int64_t m0) {
  const int64_t d = a.d;
  const int64_t width = FORM == 2 ? d / 2 : d;  // components summed: d reals, or d/2 complex
  const int64_t vec_end = width - width % V;
  vf acc[BT][MT], shift_v[BT][MT];
  float shift[BT][MT];
  for (int i = 0; i < BT; ++i)
    for (int j = 0; j < MT; ++j) {
      acc[i][j] = splat(0.f);
      shift[i][j] = FORM == 1 ? a.c[(b0 + i) * a.M + m0 + j] : 0.f;
      shift_v[i][j] = splat(shift[i][j]);
    }
  for (int64_t k = 0; k < vec_end; k += V) {
    if (FORM == 2) {
      vf tr[MT], ti[MT];
      for (int j = 0; j < MT; ++j) {
        tr[j] = load(a.t + (m0 + j) * d + k);
        ti[j] = load(a.t + (m0 + j) * d + width + k);
      }
      for (int i = 0; i < BT; ++i) {
        const vf qr = load(a.q + (b0 + i) * d + k), qi = load(a.q + (b0 + i) * d + width + k);
        for (int j = 0; j < MT; ++j) {
          const vf zr = qr - tr[j], zi = qi - ti[j];
          acc[i][j] += vsqrt(zr * zr + zi * zi);
        }
      }
    } else {
      vf tv[MT];
      for (int j = 0; j < MT; ++j) tv[j] = load(a.t + (m0 + j) * d + k);
      for (int i = 0; i < BT; ++i) {
        const vf qv = load(a.q + (b0 + i) * d + k);
        if (FORM == 1) {
          const vf wv = load(a.w + (b0 + i) * d + k);
          for (int j = 0; j < MT; ++j) acc[i][j] += vabs(qv - tv[j] + shift_v[i][j] * wv);
        } else if (FORM == 3) {
          const vf sv = load(a.w + (b0 + i) * d + k);
          for (int j = 0; j < MT; ++j) acc[i][j] += vabs(qv - sv * tv[j]);
        } else {
          for (int j = 0; j < MT; ++j) acc[i][j] += vabs(qv - tv[j]);
        }
      }
    }
  }
  for (int i = 0; i < BT; ++i)
    for (int j = 0; j < MT; ++j) {
      float s = hsum(acc[i][j]);
      const float* q = a.q + (b0 + i) * d;
      const float* t = a.t + (m0 + j) * d;
      for (int64_t k = vec_end; k < width; ++k) {
        if (FORM == 2) {
          const float zr = q[k] - t[k], zi = q[width + k] - t[width + k];
          s += std::sqrt(zr * zr + zi * zi);
        } else if (FORM == 1) {
          s += std::fabs(q[k] - t[k] + shift[i][j] * a.w[(b0 + i) * d + k]);
        } else if (FORM == 3) {
          s += std::fabs(q[k] - a.w[(b0 + i) * d + k] * t[k]);
        } else {
          s += std::fabs(q[k] - t[k]);
        }
      }
      out[(b0 + i) * a.ldo + m0 + j] = s;
    }
}

template <int FORM>
void forward_rows(const Args& a, float* out, int64_t b_begin, int64_t b_end) {
  // The shifted form also holds w and one shift per pair in registers: a 2 x 2 tile fits.
  constexpr int BT = FORWARD_QUERY_TILE;
  constexpr int MT = FORM == 1 ? 2 : TAIL_TILE;
  // Blocks of queries x tails that fit in L2 together; prediction's thousand queries would
  // otherwise stream through L2 once per block of tails and evict it.
  for (int64_t qb = b_begin; qb < b_end; qb += QUERY_BLOCK) {
    const int64_t q_end = std::min(b_end, qb + QUERY_BLOCK);
    for (int64_t mb = 0; mb < a.M; mb += TAIL_BLOCK) {
      const int64_t m_end = std::min(a.M, mb + TAIL_BLOCK);
      int64_t b = qb;
      for (; b + BT <= q_end; b += BT) {
        int64_t m = mb;
        for (; m + MT <= m_end; m += MT) forward_tile<BT, MT, FORM>(a, out, b, m);
        for (; m < m_end; ++m) forward_tile<BT, 1, FORM>(a, out, b, m);
      }
      for (; b < q_end; ++b)
        for (int64_t m = mb; m < m_end; ++m) forward_tile<1, 1, FORM>(a, out, b, m);
    }
  }
}

// ---- backward: gradients of q, t (and w, c) from G = dL/dD (B, M) -------------------------------
// Queries [b0, b0 + BT) against tails [m_begin, m_end) (at most TAIL_BLOCK): per vector of
// components, the query gradients accumulate in registers over the tails and each tail's gradient
// is updated once. The shifted form's dL/dc[b, m] = sum_k s_bmk w_bk (s = G sign(diff)) is a
// reduction over k, the outer loop here: its partial vectors live in a small block that stays in L1.
template <int BT, int FORM>
inline void backward_tile(const Args& a, const float* g, float* gq, float* gt, float* gw, float* gc,
                          int64_t b0, int64_t m_begin, int64_t m_end) {
  const int64_t d = a.d, M = a.M;
  const int64_t width = FORM == 2 ? d / 2 : d;
  const int64_t vec_end = width - width % V;
  vf acc_c[FORM == 1 ? BT : 1][FORM == 1 ? TAIL_BLOCK : 1];
  if (FORM == 1)
    for (int i = 0; i < BT; ++i)
      for (int64_t m = m_begin; m < m_end; ++m) acc_c[i][m - m_begin] = splat(0.f);
  for (int64_t k = 0; k < vec_end; k += V) {
    if (FORM == 2) {
      vf qr[BT], qi[BT], ar[BT], ai[BT];
      for (int i = 0; i < BT; ++i) {
        qr[i] = load(a.q + (b0 + i) * d + k);
        qi[i] = load(a.q + (b0 + i) * d + width + k);
        ar[i] = splat(0.f); ai[i] = splat(0.f);
      }
      for (int64_t m = m_begin; m < m_end; ++m) {
        const vf tr = load(a.t + m * d + k), ti = load(a.t + m * d + width + k);
        vf sr = splat(0.f), si = splat(0.f);
        for (int i = 0; i < BT; ++i) {
          const vf zr = qr[i] - tr, zi = qi[i] - ti;
          const vf scale = splat(g[(b0 + i) * M + m]) * inv_or_zero(zr * zr + zi * zi);
          const vf ur = zr * scale, ui = zi * scale;
          ar[i] += ur; ai[i] += ui; sr += ur; si += ui;
        }
        store(gt + m * d + k, load(gt + m * d + k) - sr);
        store(gt + m * d + width + k, load(gt + m * d + width + k) - si);
      }
      for (int i = 0; i < BT; ++i) {
        store(gq + (b0 + i) * d + k, load(gq + (b0 + i) * d + k) + ar[i]);
        store(gq + (b0 + i) * d + width + k, load(gq + (b0 + i) * d + width + k) + ai[i]);
      }
    } else {
      vf qv[BT], wv[BT], aq[BT], aw[BT];
      for (int i = 0; i < BT; ++i) {
        qv[i] = load(a.q + (b0 + i) * d + k);
        aq[i] = splat(0.f);
        if (FORM == 1 || FORM == 3) { wv[i] = load(a.w + (b0 + i) * d + k); aw[i] = splat(0.f); }
      }
      for (int64_t m = m_begin; m < m_end; ++m) {
        const vf tv = load(a.t + m * d + k);
        vf st = splat(0.f);
        for (int i = 0; i < BT; ++i) {
          const float gbm = g[(b0 + i) * M + m];
          if (FORM == 3) {  // d/dq = u, d/ds = -u t, d/dt = -u s with u = G sign(q - s t)
            const vf u = signed_by(splat(gbm), qv[i] - wv[i] * tv);
            aq[i] += u; aw[i] -= u * tv; st += u * wv[i];
            continue;
          }
          vf diff = qv[i] - tv;
          vf cs;
          if (FORM == 1) { cs = splat(a.c[(b0 + i) * M + m]); diff += cs * wv[i]; }
          const vf s = signed_by(splat(gbm), diff);
          aq[i] += s; st += s;
          if (FORM == 1) { aw[i] += s * cs; acc_c[i][m - m_begin] += s * wv[i]; }
        }
        store(gt + m * d + k, load(gt + m * d + k) - st);
      }
      for (int i = 0; i < BT; ++i) {
        store(gq + (b0 + i) * d + k, load(gq + (b0 + i) * d + k) + aq[i]);
        if (FORM == 1 || FORM == 3) store(gw + (b0 + i) * d + k, load(gw + (b0 + i) * d + k) + aw[i]);
      }
    }
  }
  if (FORM == 1)  // every (b, m) pair belongs to exactly one tile: set here, leftovers added below
    for (int i = 0; i < BT; ++i)
      for (int64_t m = m_begin; m < m_end; ++m) gc[(b0 + i) * M + m] = hsum(acc_c[i][m - m_begin]);
  // Leftover components (width not a multiple of V), one at a time.
  for (int64_t k = vec_end; k < width; ++k)
    for (int i = 0; i < BT; ++i) {
      const int64_t b = b0 + i;
      for (int64_t m = m_begin; m < m_end; ++m) {
        const float gbm = g[b * M + m];
        if (FORM == 2) {
          const float zr = a.q[b * d + k] - a.t[m * d + k], zi = a.q[b * d + width + k] - a.t[m * d + width + k];
          const float scale = gbm * inv_or_zero(zr * zr + zi * zi);
          gq[b * d + k] += zr * scale; gq[b * d + width + k] += zi * scale;
          gt[m * d + k] -= zr * scale; gt[m * d + width + k] -= zi * scale;
        } else if (FORM == 3) {
          const float sk = a.w[b * d + k], tk = a.t[m * d + k];
          const float u = signed_by(gbm, a.q[b * d + k] - sk * tk);
          gq[b * d + k] += u; gw[b * d + k] -= u * tk; gt[m * d + k] -= u * sk;
        } else {
          const float cbm = FORM == 1 ? a.c[b * M + m] : 0.f;
          const float diff = a.q[b * d + k] - a.t[m * d + k] + (FORM == 1 ? cbm * a.w[b * d + k] : 0.f);
          const float s = signed_by(gbm, diff);
          gq[b * d + k] += s; gt[m * d + k] -= s;
          if (FORM == 1) { gw[b * d + k] += s * cbm; gc[b * M + m] += s * a.w[b * d + k]; }
        }
      }
    }
}

template <int FORM>
void backward_rows(const Args& a, const float* g, float* gq, float* gt, float* gw, float* gc, int64_t b_begin, int64_t b_end) {
  for (int64_t mb = 0; mb < a.M; mb += TAIL_BLOCK) {
    const int64_t m_end = std::min(a.M, mb + TAIL_BLOCK);
    // The shifted form carries w and its gradients per query too: a smaller tile keeps them in registers.
    constexpr int BT = FORM == 1 || FORM == 3 ? 2 : QUERY_TILE;
    int64_t b = b_begin;
    for (; b + BT <= b_end; b += BT) backward_tile<BT, FORM>(a, g, gq, gt, gw, gc, b, mb, m_end);
    for (; b < b_end; ++b) backward_tile<1, FORM>(a, g, gq, gt, gw, gc, b, mb, m_end);
  }
}

void check(const at::Tensor& x, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              name, ": expected a contiguous float32 CPU tensor");
  TORCH_CHECK(x.dim() == 2 && (rows < 0 || x.size(0) == rows) && (cols < 0 || x.size(1) == cols),
              name, ": unexpected shape ", x.sizes());
}

Args make_args(int form, const at::Tensor& q, const at::Tensor& t, const at::Tensor& w, const at::Tensor& c) {
  check(q, "q", -1, -1);
  check(t, "t", -1, q.size(1));
  Args a{q.data_ptr<float>(), t.data_ptr<float>(), nullptr, nullptr, q.size(0), t.size(0), q.size(1), t.size(0)};
  TORCH_CHECK(form >= 0 && form <= 3, "form: expected 0..3, got ", form);
  TORCH_CHECK(form != 2 || a.d % 2 == 0, "complex l1: d must be even, got ", a.d);
  if (form == 1 || form == 3) {
    check(w, "w", a.B, a.d);
    a.w = w.data_ptr<float>();
  }
  if (form == 1) {
    check(c, "c", a.B, a.M);
    a.c = c.data_ptr<float>();
  }
  return a;
}

// Query rows per parallel task: a multiple of the register tile.
constexpr int64_t GRAIN = 4 * QUERY_TILE;

}  // namespace

// out: (B, M) float32 with unit column stride (a view of a reused, wider buffer is fine), or an
// empty tensor to allocate one.
at::Tensor distance_forward(int64_t form, at::Tensor q, at::Tensor t, at::Tensor w, at::Tensor c,
                               at::Tensor out) {
  Args a = make_args(form, q, t, w, c);
  if (out.numel() == 0 && !(a.B == 0 || a.M == 0)) out = at::empty({a.B, a.M}, q.options());
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == a.B &&
              out.size(1) == a.M && (a.M <= 1 || out.stride(1) == 1), "out: expected a (B, M) float32 CPU tensor with unit column stride");
  a.ldo = out.stride(0);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, a.B, GRAIN, [&](int64_t begin, int64_t end) {
    if (form == 0) forward_rows<0>(a, o, begin, end);
    else if (form == 1) forward_rows<1>(a, o, begin, end);
    else if (form == 2) forward_rows<2>(a, o, begin, end);
    else forward_rows<3>(a, o, begin, end);
  });
  return out;
}

// Returns [grad_q (B, d), grad_t (M, d)], then for the shifted form [grad_w (B, d), grad_c (B, M)],
// for the scaled form [grad_s (B, d)].
std::vector<at::Tensor> distance_backward(int64_t form, at::Tensor grad, at::Tensor q, at::Tensor t,
                                             at::Tensor w, at::Tensor c) {
  const Args a = make_args(form, q, t, w, c);
  check(grad, "grad", a.B, a.M);
  const float* g = grad.data_ptr<float>();
  auto gq = at::zeros_like(q);
  auto gw = form == 1 || form == 3 ? at::zeros_like(q) : at::Tensor();
  auto gc = form == 1 ? at::empty({a.B, a.M}, q.options()) : at::Tensor();
  // Each parallel task sums into its own tail gradient (tasks split the queries, which every
  // tail meets); the partial sums are added at the end.
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (a.B + GRAIN - 1) / GRAIN));
  auto partial = at::zeros({tasks, a.M, a.d}, q.options());
  const int64_t per_task = (((a.B + tasks - 1) / tasks + QUERY_TILE - 1) / QUERY_TILE) * QUERY_TILE;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b0 = task * per_task, b1 = std::min(a.B, b0 + per_task);
      if (b0 >= b1) continue;
      float* gt = partial.data_ptr<float>() + task * a.M * a.d;
      float* gwp = form == 1 || form == 3 ? gw.data_ptr<float>() : nullptr;
      float* gcp = form == 1 ? gc.data_ptr<float>() : nullptr;
      if (form == 0) backward_rows<0>(a, g, gq.data_ptr<float>(), gt, gwp, gcp, b0, b1);
      else if (form == 1) backward_rows<1>(a, g, gq.data_ptr<float>(), gt, gwp, gcp, b0, b1);
      else if (form == 2) backward_rows<2>(a, g, gq.data_ptr<float>(), gt, gwp, gcp, b0, b1);
      else backward_rows<3>(a, g, gq.data_ptr<float>(), gt, gwp, gcp, b0, b1);
    }
  });
  auto gt = tasks == 1 ? partial[0] : partial.sum(0);
  if (form == 1) return {gq, gt, gw, gc};
  if (form == 3) return {gq, gt, gw};
  return {gq, gt};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &distance_forward, "L1 distances (B, M): form 0 l1, 1 shifted l1, 2 complex l1, 3 scaled l1");
  m.def("backward", &distance_backward, "gradients of the L1 distances");
}
