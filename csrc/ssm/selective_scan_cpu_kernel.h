// selective_scan_cpu's row kernels on vectors of W lanes over the state index n.
//
// Included once by each source that compiles it for an instruction set
// (selective_scan_cpu.cpp: generic, selective_scan_cpu_avx2.cpp, selective_scan_cpu_avx512.cpp),
// after it sets the target. Everything is in an unnamed namespace (each translation unit keeps its
// own copy); the source exports make_kernels<vector bytes>() as its Kernels table.
//
// A unit of rows (channels reading the same group of B and C) is scanned chunk by chunk
// (kSelectiveCpuChunk steps), the chunk's input-dependent B and C made time-major once for all its
// rows. Within a chunk and row, for each block of W states the W recurrences run together over
// the chunk's steps, the block's state in one register; what the steps share across n (Σ_n C·x,
// and in the backward the sums for du and Δ) is accumulated per step as a W-lane vector and summed
// over the lanes once per chunk, in lane order.
#pragma once

#include "ssm/selective_scan_cpu_detail.h"

namespace fastspec {
namespace selective_cpu_detail {
namespace {

#define FS_INLINE inline __attribute__((always_inline))

template <class T, int W>
struct Vec {
  typedef T type __attribute__((vector_size(W * sizeof(T))));
};
template <int W>
struct IntVec {
  typedef int32_t type __attribute__((vector_size(W * sizeof(int32_t))));
};

template <class V, class T>
FS_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T>
FS_INLINE void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
template <class V, class T>
FS_INLINE V splat(T s) {
  return V{} + s;
}

// exp of each lane, float32: Cephes' expf (x = n·ln2 + r, |r| ≤ ln2/2, e^r by a degree-7
// polynomial, ln2 split in two for an exact n·ln2_hi), about 1 ulp (tests/test_selective_scan_cpu.py
// measures it over the float32 range). The arguments are clamped to [−104, 89] (beyond them the
// result is 0 or +inf anyway) and 2^n is applied as 2^(n/2)·2^(n−n/2), so results near the
// overflow bound and the subnormal ones come out right; NaN stays NaN.
template <int W>
FS_INLINE typename Vec<float, W>::type vexp(typename Vec<float, W>::type x) {
  using V = typename Vec<float, W>::type;
  using VI = typename IntVec<W>::type;
  const V lo = splat<V>(-104.0f), hi = splat<V>(89.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = splat<V>(12582912.0f);  // 1.5·2^23: adding it rounds to an integer
  const V fn = (x * 1.44269504088896341f + magic) - magic;
  V r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI n = __builtin_convertvector(fn, VI);
  const VI n1 = n >> 1, n2 = n - n1;
  return p * (V)((n1 + 127) << 23) * (V)((n2 + 127) << 23);
}

// float64: libm's exp lane by lane (float64 is the accurate path, not the fast one).
template <int W>
FS_INLINE typename Vec<double, W>::type vexp(typename Vec<double, W>::type x) {
  for (int i = 0; i < W; ++i) x[i] = std::exp(x[i]);
  return x;
}

// log1p(exp(v)) of each lane (softplus below its threshold), float32: y = exp(v), log(1 + y) by
// Cephes' logf (frexp by bits, a degree-8 polynomial on [√½ − 1, √2 − 1]) for the rounded sum u =
// 1 + y, corrected by the sum's rounding error, log1p(y) ≈ log(u) − ((u − 1) − y)/u; y where u = 1.
// Softplus within 2 ulp (1.75 measured; tests/test_selective_scan_cpu.py); NaN stays NaN.
template <int W>
FS_INLINE typename Vec<float, W>::type vlog1p_exp(typename Vec<float, W>::type v) {
  using V = typename Vec<float, W>::type;
  using VI = typename IntVec<W>::type;
  const V y = vexp<W>(v), u = y + 1.0f;
  const VI bits = (VI)u;
  VI e = ((bits >> 23) & 0xff) - 126;
  V m = (V)((bits & 0x807fffff) | 0x3f000000);  // u = m·2^e, m in [½, 1)
  const auto low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const V z = m * m;
  V p = splat<V>(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const V fe = __builtin_convertvector(e, V);
  V log_u = p * m * z + fe * -2.12194440e-4f - 0.5f * z + m + fe * 0.693359375f;
  log_u = log_u - ((u - 1.0f) - y) / u;
  const V r = u == 1.0f ? y : log_u;
  return v != v ? v : r;
}

template <int W>
FS_INLINE typename Vec<double, W>::type vlog1p_exp(typename Vec<double, W>::type v) {
  for (int i = 0; i < W; ++i) v[i] = std::log1p(std::exp(v[i]));
  return v;
}

// 1 / (1 + exp(−v)) of each lane.
template <class T, int W>
FS_INLINE typename Vec<T, W>::type vsigmoid(typename Vec<T, W>::type v) {
  return T(1) / (T(1) + vexp<W>(-v));
}

// F.softplus (threshold 20: the identity above) of each lane.
template <class T, int W>
FS_INLINE typename Vec<T, W>::type vsoftplus(typename Vec<T, W>::type v) {
  return v > T(20) ? v : vlog1p_exp<W>(v);
}

template <class T, class V, int W>
FS_INLINE T lane_sum(V v) {
  T s = v[0];
  for (int i = 1; i < W; ++i) s += v[i];
  return s;
}

// Steps [t0, t0 + n) of a row (z when given) into the scratch, padded with zeros to whole vectors:
// raw = delta + bias, Δ, Δ·u. Returns the padded step count.
template <class T, int W>
FS_INLINE int chunk_delta(const Row<T>& row, const Scratch<T>& s, int64_t t0, int n) {
  using V = typename Vec<T, W>::type;
  const int np = (n + W - 1) / W * W;
  for (int t = 0; t < np; ++t) {
    const bool in = t < n;
    s.raw[t] = in ? row.delta[t0 + t] + row.bias : T(0);
    s.us[t] = in ? row.u[t0 + t] : T(0);
    s.zs[t] = in && row.z != nullptr ? row.z[t0 + t] : T(0);
  }
  for (int t = 0; t < np; t += W) {
    const V raw = load<V>(s.raw + t);
    const V dt = row.softplus ? vsoftplus<T, W>(raw) : raw;
    store(s.dt + t, dt);
    store(s.dtu + t, dt * load<V>(s.us + t));
  }
  return np;
}

// Input-dependent B, C of steps [t0, t0 + n) time-major (pads stay zero): once per chunk for all
// the rows of a unit (they read the same group).
template <class T>
FS_INLINE void chunk_bc(const Row<T>& row, const Scratch<T>& s, int64_t t0, int n) {
  for (int which = 0; which < 2; ++which) {
    if (!(which ? row.c_var : row.b_var)) continue;
    const T* src = (which ? row.C : row.B) + t0;
    T* dst = which ? s.Ct : s.Bt;
    for (int64_t k = 0; k < row.N; ++k) {
      for (int t = 0; t < n; ++t) dst[t * row.Np + k] = src[k * row.L + t];
    }
  }
}

// The rows of one unit (channels of one group of each input-dependent B/C), chunk by chunk: each
// row's state in row.x between chunks.
template <class T, int W>
void forward_unit(const Row<T>* rows, int count, const Scratch<T>& s) {
  using V = typename Vec<T, W>::type;
  constexpr int c = kSelectiveCpuChunk;
  const int64_t Np = rows[0].Np, N = rows[0].N, L = rows[0].L, chunks = (L + c - 1) / c;
  const int64_t b_step = rows[0].b_var ? Np : 0, c_step = rows[0].c_var ? Np : 0;
  for (int i = 0; i < count; ++i) {
    for (int64_t k = 0; k < Np; ++k) rows[i].x[k] = rows[i].x0 != nullptr && k < N ? rows[i].x0[k] : T(0);
  }
  for (int64_t j = 0; j < chunks; ++j) {
    const int64_t t0 = j * c;
    const int n = static_cast<int>(std::min<int64_t>(c, L - t0));
    chunk_bc(rows[0], s, t0, n);
    for (int i = 0; i < count; ++i) {
      const Row<T>& row = rows[i];
      const T* const Bt = row.b_var ? s.Bt : row.Bf;
      const T* const Ct = row.c_var ? s.Ct : row.Cf;
      for (int64_t k = 0; k < N; ++k) row.starts[k * chunks + j] = row.x[k];
      const int np = chunk_delta<T, W>(row, s, t0, n);
      std::memset(s.acc0, 0, sizeof(T) * 16 * n);
      for (int64_t k = 0; k < Np; k += W) {
        const V a = load<V>(row.a + k);
        V x = load<V>(row.x + k);
        for (int t = 0; t < n; ++t) {
          x = vexp<W>(s.dt[t] * a) * x + s.dtu[t] * load<V>(Bt + t * b_step + k);
          store(s.acc0 + 16 * t, load<V>(s.acc0 + 16 * t) + load<V>(Ct + t * c_step + k) * x);
        }
        store(row.x + k, x);
      }
      for (int t = 0; t < n; ++t) s.ys[t] = lane_sum<T, V, W>(load<V>(s.acc0 + 16 * t));
      for (int t = 0; t < np; t += W) {
        V y = load<V>(s.ys + t);
        if (row.has_D) y += row.D * load<V>(s.us + t);
        if (row.z != nullptr) {
          const V z = load<V>(s.zs + t);
          y *= z * vsigmoid<T, W>(z);
        }
        store(s.ys + t, y);
      }
      std::memcpy(row.out + t0, s.ys, sizeof(T) * n);
    }
  }
  for (int i = 0; i < count; ++i) std::memcpy(rows[i].last, rows[i].x, sizeof(T) * N);
}

// The gradients of one unit's rows, chunks last first (the contract is in selective_scan_cpu.h).
// λ_t = ∂loss/∂x_t = gy_t·C_t + exp(Δ_{t+1}A)·λ_{t+1}, gy = ∂loss/∂y; with x̃_t = exp(Δ_t A)·x_{t−1}:
// dA += λ·x̃·Δ, dΔ_t = Σ_n λ·(B_t·u_t + x̃·A), du_t = Δ_t·Σ_n λ·B_t + gy·D, dB_t = λ·Δ_t·u_t,
// dC_t = gy_t·x_t, dx0 = exp(Δ_0 A)·λ_0. Each row's λ is carried between chunks in row.x;
// input-dependent dB, dC are summed over the unit's rows (in order) time-major, then added to the
// unit's (N, L) buffer once per chunk.
template <class T, int W>
void backward_unit(const Row<T>* rows, int count, const Scratch<T>& s) {
  using V = typename Vec<T, W>::type;
  constexpr int c = kSelectiveCpuChunk;
  const int64_t Np = rows[0].Np, N = rows[0].N, L = rows[0].L, chunks = (L + c - 1) / c;
  const int64_t b_step = rows[0].b_var ? Np : 0, c_step = rows[0].c_var ? Np : 0;
  const bool b_var = rows[0].b_var, c_var = rows[0].c_var;
  for (int i = 0; i < count; ++i) {
    for (int64_t k = 0; k < Np; ++k) rows[i].x[k] = rows[i].g_last != nullptr && k < N ? rows[i].g_last[k] : T(0);
  }
  for (int64_t j = chunks - 1; j >= 0; --j) {
    const int64_t t0 = j * c;
    const int n = static_cast<int>(std::min<int64_t>(c, L - t0));
    chunk_bc(rows[0], s, t0, n);
    if (b_var) std::memset(s.dBt, 0, sizeof(T) * n * Np);
    if (c_var) std::memset(s.dCt, 0, sizeof(T) * n * Np);
    for (int i = 0; i < count; ++i) {
      const Row<T>& row = rows[i];
      const T* const Bt = b_var ? s.Bt : row.Bf;
      const T* const Ct = c_var ? s.Ct : row.Cf;
      const int np = chunk_delta<T, W>(row, s, t0, n);
      // the chunk's states again, from the saved start
      for (int64_t k = 0; k < Np; ++k) s.X[k] = k < N ? row.starts[k * chunks + j] : T(0);
      std::memset(s.acc0, 0, sizeof(T) * 16 * n);
      for (int64_t k = 0; k < Np; k += W) {
        const V a = load<V>(row.a + k);
        V x = load<V>(s.X + k);
        for (int t = 0; t < n; ++t) {
          const V e = vexp<W>(s.dt[t] * a);
          store(s.E + t * Np + k, e);
          x = e * x + s.dtu[t] * load<V>(Bt + t * b_step + k);
          store(s.X + (t + 1) * Np + k, x);
          store(s.acc0 + 16 * t, load<V>(s.acc0 + 16 * t) + load<V>(Ct + t * c_step + k) * x);
        }
      }
      // gy = ∂loss/∂y through the gate out = y·silu(z); dz = g·y·silu'(z)
      for (int t = 0; t < np; ++t) {
        s.gy[t] = t < n ? row.g[t0 + t] : T(0);
        s.ys[t] = t < n ? lane_sum<T, V, W>(load<V>(s.acc0 + 16 * t)) : T(0);
      }
      if (row.z != nullptr) {
        for (int t = 0; t < np; t += W) {
          const V z = load<V>(s.zs + t), sz = vsigmoid<T, W>(z), g = load<V>(s.gy + t);
          V pre = load<V>(s.ys + t);
          if (row.has_D) pre += row.D * load<V>(s.us + t);
          store(s.ys + t, g * pre * sz * (T(1) + z * (T(1) - sz)));
          store(s.gy + t, g * z * sz);
        }
        std::memcpy(row.dz + t0, s.ys, sizeof(T) * n);
      }
      T dD = 0;
      for (int t = 0; t < n; ++t) dD += s.gy[t] * s.us[t];
      *row.dD += dD;
      // λ from the chunk's last step back to its first
      std::memset(s.acc0, 0, sizeof(T) * 16 * n);
      std::memset(s.acc1, 0, sizeof(T) * 16 * n);
      for (int64_t k = 0; k < Np; k += W) {
        const V a = load<V>(row.a + k);
        V lam_next = load<V>(row.x + k);  // exp(Δ A)·λ of the step after (the carry)
        V dA = V{}, dB = V{}, dC = V{};
        for (int t = n - 1; t >= 0; --t) {
          const V Bv = load<V>(Bt + t * b_step + k), Cv = load<V>(Ct + t * c_step + k);
          const V e = load<V>(s.E + t * Np + k);
          const V lam = s.gy[t] * Cv + lam_next;
          const V before = e * load<V>(s.X + t * Np + k);
          dA += lam * before * s.dt[t];
          store(s.acc0 + 16 * t, load<V>(s.acc0 + 16 * t) + lam * (Bv * s.us[t] + before * a));
          store(s.acc1 + 16 * t, load<V>(s.acc1 + 16 * t) + lam * Bv);
          const V db = lam * s.dtu[t], dc = s.gy[t] * load<V>(s.X + (t + 1) * Np + k);
          if (b_var) {
            store(s.dBt + t * Np + k, load<V>(s.dBt + t * Np + k) + db);
          } else {
            dB += db;
          }
          if (c_var) {
            store(s.dCt + t * Np + k, load<V>(s.dCt + t * Np + k) + dc);
          } else {
            dC += dc;
          }
          lam_next = e * lam;
        }
        store(row.x + k, lam_next);
        for (int l = 0; l < W && k + l < N; ++l) {
          row.dA[k + l] += dA[l];
          if (!b_var) row.dB_fixed[k + l] += dB[l];
          if (!c_var) row.dC_fixed[k + l] += dC[l];
        }
      }
      for (int t = 0; t < np; ++t) {
        s.ys[t] = t < n ? lane_sum<T, V, W>(load<V>(s.acc0 + 16 * t)) : T(0);  // ∂loss/∂Δ
        const T du = t < n ? s.dt[t] * lane_sum<T, V, W>(load<V>(s.acc1 + 16 * t)) : T(0);
        s.us[t] = row.has_D ? du + s.gy[t] * row.D : du;
      }
      std::memcpy(row.du + t0, s.us, sizeof(T) * n);
      if (row.softplus) {  // d softplus / d raw as F.softplus computes it: 1 above the threshold 20
        for (int t = 0; t < np; t += W) {
          const V raw = load<V>(s.raw + t), ddt = load<V>(s.ys + t);
          store(s.ys + t, raw > T(20) ? ddt : ddt * vsigmoid<T, W>(raw));
        }
      }
      std::memcpy(row.ddelta + t0, s.ys, sizeof(T) * n);
      T dbias = 0;
      for (int t = 0; t < n; ++t) dbias += s.ys[t];
      *row.dbias += dbias;
    }
    for (int which = 0; which < 2; ++which) {
      if (!(which ? c_var : b_var)) continue;
      const T* src = which ? s.dCt : s.dBt;
      T* dst = (which ? rows[0].dC_var : rows[0].dB_var) + t0;
      for (int64_t k = 0; k < N; ++k) {
        for (int t = 0; t < n; ++t) dst[k * L + t] += src[t * Np + k];
      }
    }
  }
  for (int i = 0; i < count; ++i) {
    if (rows[i].dx0 != nullptr) std::memcpy(rows[i].dx0, rows[i].x, sizeof(T) * N);
  }
}

// Decoding steps of rows [r0, r1), at most kStateUpdateRows (selective_state_update, contract in
// selective_scan_cpu.h): Δ and the gates vectorised over the rows, then each row's states
// vectorised over n (a last partial vector through a zero-padded copy).
template <class T, int W>
void state_update_rows(const StateUpdateCpuArgs& a, int64_t r0, int64_t r1) {
  using V = typename Vec<T, W>::type;
  const int64_t N = a.N, hd = a.heads * a.dim, per_group = a.heads / a.groups;
  const T *x = static_cast<const T*>(a.x), *dtp = static_cast<const T*>(a.dt), *zp = static_cast<const T*>(a.z);
  const T *A = static_cast<const T*>(a.A), *B = static_cast<const T*>(a.B), *C = static_cast<const T*>(a.C);
  const T *Dp = static_cast<const T*>(a.D), *bias = static_cast<const T*>(a.bias);
  T* const state = static_cast<T*>(a.state);
  T* const yp = static_cast<T*>(a.y);
  const int rows = static_cast<int>(r1 - r0), padded = (rows + W - 1) / W * W;
  alignas(64) T dt[kStateUpdateRows], gate[kStateUpdateRows];
  for (int i = 0; i < padded; ++i) {
    const int64_t r = r0 + i;
    dt[i] = i < rows ? dtp[r] + (bias != nullptr ? bias[r % hd] : T(0)) : T(0);
    gate[i] = i < rows && zp != nullptr ? zp[r] : T(0);
  }
  for (int i = 0; i < padded; i += W) {
    const V raw = load<V>(dt + i);
    store(dt + i, a.softplus ? vsoftplus<T, W>(raw) : raw);
    const V z = load<V>(gate + i);
    store(gate + i, z * vsigmoid<T, W>(z));  // silu(z)
  }
  int64_t hdi = r0 % hd, b = r0 / hd;
  for (int i = 0; i < rows; ++i, ++hdi) {
    if (hdi == hd) {
      hdi = 0;
      ++b;
    }
    const int64_t r = r0 + i, group = b * a.groups + hdi / a.dim / per_group;
    const T* const Ar = A + hdi * N;
    const T* const Br = B + group * N;
    const T* const Cr = C + group * N;
    T* const st = state + r * N;
    const T dtx = dt[i] * x[r];
    V acc = V{};
    for (int64_t k = 0; k < N; k += W) {
      V av, bv, cv, sv;
      const int64_t m = std::min<int64_t>(W, N - k);
      if (m == W) {
        av = load<V>(Ar + k);
        bv = load<V>(Br + k);
        cv = load<V>(Cr + k);
        sv = load<V>(st + k);
      } else {
        av = bv = cv = sv = V{};
        for (int64_t l = 0; l < m; ++l) {
          av[l] = Ar[k + l];
          bv[l] = Br[k + l];
          cv[l] = Cr[k + l];
          sv[l] = st[k + l];
        }
      }
      sv = vexp<W>(dt[i] * av) * sv + dtx * bv;
      acc += cv * sv;
      if (m == W) {
        store(st + k, sv);
      } else {
        for (int64_t l = 0; l < m; ++l) st[k + l] = sv[l];
      }
    }
    T y = lane_sum<T, V, W>(acc);
    if (Dp != nullptr) y += Dp[hdi] * x[r];
    yp[r] = zp != nullptr ? y * gate[i] : y;
  }
}

// Vectors of `Bytes` bytes: W = Bytes / sizeof(T) lanes.
template <int Bytes>
constexpr Kernels make_kernels() {
  return Kernels{Bytes,
                 &forward_unit<float, Bytes / 4>,
                 &backward_unit<float, Bytes / 4>,
                 &forward_unit<double, Bytes / 8>,
                 &backward_unit<double, Bytes / 8>,
                 &state_update_rows<float, Bytes / 4>,
                 &state_update_rows<double, Bytes / 8>};
}

#undef FS_INLINE

}  // namespace
}  // namespace selective_cpu_detail
}  // namespace fastspec
