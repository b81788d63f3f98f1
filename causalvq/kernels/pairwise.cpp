// Fused CPU kernel for causalvq.kernels.pairwise.pairwise_score (the same function; see that module for the maths).
//
//   out[b, i, j, h] = sum_g a[b, h, g] * leaky_relu(X[b, i, h, g] + Y[b, j, h, g] + w[b, i, j] * e[b, h, g])
//
// One pass over (i, j, h) with the g loop innermost and vectorised: the pairwise block never leaves registers.
// The backward pass recomputes the pre-activation and skips (i, j, h) whose incoming gradient is zero (masked
// attention logits, rows of an unused discoverer), so sparse graphs are cheaper to train on.
// Inputs are contiguous; a, e are expanded to (b, h, g) by the caller; w, e may be empty tensors. An optional
// bool mask (b, i, j) skips the pairs it marks false in the forward pass (their output is 0; the caller fills
// them): attention logits off the sampled graph are never computed. Scores and their gradients are laid out
// (b, h, i, j), so that the attention softmax over sources j runs on contiguous rows.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
inline T leaky(T p, T slope) { return p > T(0) ? p : slope * p; }

// sum_g a[g] * leaky(x[g] + y[g] + w * e[g]) for one source y (kWeighted: with the edge term).
template <typename T, bool kWeighted>
inline T score_one(const T* __restrict__ x, const T* __restrict__ y, T w, const T* __restrict__ av,
                   const T* __restrict__ ev, int64_t G, T slope) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t g = 0; g < G; ++g) acc += av[g] * leaky(x[g] + y[g] + (kWeighted ? w * ev[g] : T(0)), slope);
  return acc;
}

// The same for four sources at once: x, a and e are loaded once for the four, and the four sums are
// independent (about 1.5x the throughput of four score_one calls).
template <typename T, bool kWeighted>
inline void score_four(const T* __restrict__ x, const T* __restrict__ y0, const T* __restrict__ y1,
                       const T* __restrict__ y2, const T* __restrict__ y3, const T* w, const T* __restrict__ av,
                       const T* __restrict__ ev, T* out, int64_t G, T slope) {
  const T w0 = kWeighted ? w[0] : T(0), w1 = kWeighted ? w[1] : T(0);
  const T w2 = kWeighted ? w[2] : T(0), w3 = kWeighted ? w[3] : T(0);
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t g = 0; g < G; ++g) {
    const T base = x[g], eg = kWeighted ? ev[g] : T(0), ag = av[g];
    s0 += ag * leaky(base + y0[g] + w0 * eg, slope);
    s1 += ag * leaky(base + y1[g] + w1 * eg, slope);
    s2 += ag * leaky(base + y2[g] + w2 * eg, slope);
    s3 += ag * leaky(base + y3[g] + w3 * eg, slope);
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

// Scores of row x against the sources listed in `source` (count of them), into score[0..count).
template <typename T, bool kWeighted>
inline void score_sources(const T* x, const T* Y, const int64_t* source, int64_t count, const T* w_row,
                          const T* av, const T* ev, T* score, int64_t stride, int64_t G, T slope) {
  int64_t k = 0;
  T w4[4] = {0, 0, 0, 0};
  for (; k + 4 <= count; k += 4) {
    if (kWeighted)
      for (int q = 0; q < 4; ++q) w4[q] = w_row[source[k + q]];
    score_four<T, kWeighted>(x, Y + source[k] * stride, Y + source[k + 1] * stride, Y + source[k + 2] * stride,
                             Y + source[k + 3] * stride, w4, av, ev, score + k, G, slope);
  }
  for (; k < count; ++k)
    score[k] = score_one<T, kWeighted>(x, Y + source[k] * stride, kWeighted ? w_row[source[k]] : T(0), av, ev, G,
                                       slope);
}

// The loops take every size and pointer by value (not captured by reference in a lambda): otherwise the
// compiler must assume a store through dx/dy may change `slope` or a size and reloads them, and the g loop
// runs ~30x slower.
template <typename T>
void forward_rows(const T* X, const T* Y, const T* a, const T* w, const T* e, const bool* mask, T* out,
                  int64_t begin, int64_t end, int64_t N, int64_t M, int64_t H, int64_t G, T slope) {
  std::vector<int64_t> source(M);
  std::vector<T> score(M);
  for (int64_t bi_i = begin; bi_i < end; ++bi_i) {
    const int64_t bi = bi_i / N, i = bi_i % N;
    int64_t count = 0;
    for (int64_t j = 0; j < M; ++j) {
      if (!mask || mask[bi_i * M + j]) {
        source[count++] = j;
      } else {
        for (int64_t h = 0; h < H; ++h) out[((bi * H + h) * N + i) * M + j] = T(0);
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      const T* x = X + (bi_i * H + h) * G;
      const T* y = Y + (bi * M * H + h) * G;  // source j's terms at y + j * H * G
      const T* av = a + (bi * H + h) * G;
      if (w) {
        score_sources<T, true>(x, y, source.data(), count, w + bi_i * M, av, e + (bi * H + h) * G, score.data(),
                               H * G, G, slope);
      } else {
        score_sources<T, false>(x, y, source.data(), count, nullptr, av, nullptr, score.data(), H * G, G, slope);
      }
      T* o = out + ((bi * H + h) * N + i) * M;
      for (int64_t k = 0; k < count; ++k) o[source[k]] = score[k];
    }
  }
}

template <typename T>
void backward_samples(const T* grad, const T* X, const T* Y, const T* a, const T* w, const T* e, T* dX, T* dY,
                      T* da, T* dw, T* de, int64_t begin, int64_t end, int64_t N, int64_t M, int64_t H, int64_t G,
                      T slope) {
  for (int64_t bi = begin; bi < end; ++bi) {
    for (int64_t i = 0; i < N; ++i) {
      const int64_t bi_i = bi * N + i;
      for (int64_t j = 0; j < M; ++j) {
        const T wij = w ? w[bi_i * M + j] : T(0);
        T dwij = 0;
        for (int64_t h = 0; h < H; ++h) {
          const T gv = grad[((bi * H + h) * N + i) * M + j];
          if (gv == T(0)) continue;  // masked logits and unused rows carry no gradient
          const T* __restrict__ x = X + (bi_i * H + h) * G;
          const T* __restrict__ y = Y + ((bi * M + j) * H + h) * G;
          const T* __restrict__ av = a + (bi * H + h) * G;
          T* __restrict__ dx = dX + (bi_i * H + h) * G;
          T* __restrict__ dy = dY + ((bi * M + j) * H + h) * G;
          T* __restrict__ dav = da + (bi * H + h) * G;
          if (w) {
            const T* __restrict__ ev = e + (bi * H + h) * G;
            T* __restrict__ dev = de + (bi * H + h) * G;
            T acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t g = 0; g < G; ++g) {
              const T p = x[g] + y[g] + wij * ev[g];
              const T s = p > T(0) ? T(1) : slope;
              const T gp = gv * av[g] * s;
              dx[g] += gp;
              dy[g] += gp;
              dav[g] += gv * p * s;
              dev[g] += gp * wij;
              acc += gp * ev[g];
            }
            dwij += acc;
          } else {
#pragma omp simd
            for (int64_t g = 0; g < G; ++g) {
              const T p = x[g] + y[g];
              const T s = p > T(0) ? T(1) : slope;
              const T gp = gv * av[g] * s;
              dx[g] += gp;
              dy[g] += gp;
              dav[g] += gv * p * s;
            }
          }
        }
        if (w) dw[bi_i * M + j] = dwij;
      }
    }
  }
}

template <typename T>
void forward_impl(const T* X, const T* Y, const T* a, const T* w, const T* e, const bool* mask, T* out, int64_t B,
                  int64_t N, int64_t M, int64_t H, int64_t G, T slope) {
  at::parallel_for(0, B * N, 1, [=](int64_t begin, int64_t end) {
    forward_rows<T>(X, Y, a, w, e, mask, out, begin, end, N, M, H, G, slope);
  });
}

template <typename T>
void backward_impl(const T* grad, const T* X, const T* Y, const T* a, const T* w, const T* e, T* dX, T* dY, T* da,
                   T* dw, T* de, int64_t B, int64_t N, int64_t M, int64_t H, int64_t G, T slope) {
  // Parallel over the batch: every output slice belongs to one sample, so no two threads share memory.
  at::parallel_for(0, B, 1, [=](int64_t begin, int64_t end) {
    backward_samples<T>(grad, X, Y, a, w, e, dX, dY, da, dw, de, begin, end, N, M, H, G, slope);
  });
}

torch::Tensor pairwise_forward(torch::Tensor X, torch::Tensor Y, torch::Tensor a, torch::Tensor w, torch::Tensor e,
                               torch::Tensor mask, double slope) {
  const int64_t B = X.size(0), N = X.size(1), H = X.size(2), G = X.size(3), M = Y.size(1);
  auto out = torch::empty({B, H, N, M}, X.options());  // heads outermost: softmax over j reads contiguous rows
  const bool has_w = w.numel() > 0;
  TORCH_CHECK(mask.numel() == 0 || (mask.scalar_type() == torch::kBool && mask.numel() == B * N * M),
              "pairwise_forward: mask must be an empty tensor or a bool (b, n, m) tensor");
  const bool* mask_ptr = mask.numel() > 0 ? mask.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "pairwise_forward", [&] {
    forward_impl<scalar_t>(X.data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                           has_w ? w.data_ptr<scalar_t>() : nullptr, has_w ? e.data_ptr<scalar_t>() : nullptr,
                           mask_ptr, out.data_ptr<scalar_t>(), B, N, M, H, G, static_cast<scalar_t>(slope));
  });
  return out;
}

std::vector<torch::Tensor> pairwise_backward(torch::Tensor grad, torch::Tensor X, torch::Tensor Y, torch::Tensor a,
                                             torch::Tensor w, torch::Tensor e, double slope) {
  const int64_t B = X.size(0), N = X.size(1), H = X.size(2), G = X.size(3), M = Y.size(1);
  const bool has_w = w.numel() > 0;
  auto dX = torch::zeros_like(X), dY = torch::zeros_like(Y), da = torch::zeros({B, H, G}, X.options());
  auto dw = has_w ? torch::zeros({B, N, M}, X.options()) : torch::empty({0}, X.options());
  auto de = has_w ? torch::zeros({B, H, G}, X.options()) : torch::empty({0}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "pairwise_backward", [&] {
    backward_impl<scalar_t>(grad.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(),
                            a.data_ptr<scalar_t>(), has_w ? w.data_ptr<scalar_t>() : nullptr,
                            has_w ? e.data_ptr<scalar_t>() : nullptr, dX.data_ptr<scalar_t>(), dY.data_ptr<scalar_t>(),
                            da.data_ptr<scalar_t>(), has_w ? dw.data_ptr<scalar_t>() : nullptr,
                            has_w ? de.data_ptr<scalar_t>() : nullptr, B, N, M, H, G, static_cast<scalar_t>(slope));
  });
  return {dX, dY, da, dw, de};
}


// Attention without gradients (evaluation), fused: for every target i and head h, the GATv2 logits over the
// sources j on the graph, their softmax and the weighted sum of the source terms, in one pass per row; the
// (b, h, n, m) logits and attention never exist. Node terms may be shared by r consecutive graphs (retrieval
// scores all A actions of one pair over the same nodes): graph b reads the terms of grid b / r.
//
//   out[b, i, h, :] = bias[b, h, :] + sum_{j : edges[b, i, j]} softmax_j(s[b, i, j, h]) * xs[b / r, j, h, :]
//   s[b, i, j, h]   = sum_g att[b, h, g] * leaky_relu(xt[b / r, i, h, g] + xs[b / r, j, h, g] + w[b, i, j] * e[b, h, g])
template <typename T>
void attend_rows(const T* xt, const T* xs, const T* att, const T* w, const T* e, const bool* edges, const T* bias,
                 T* out, int64_t begin, int64_t end, int64_t R, int64_t N, int64_t M, int64_t H, int64_t G, T slope) {
  std::vector<T> score(M);
  std::vector<int64_t> source(M);
  for (int64_t bi_i = begin; bi_i < end; ++bi_i) {
    const int64_t bi = bi_i / N, i = bi_i % N, grid = bi / R;
    int64_t count = 0;
    for (int64_t j = 0; j < M; ++j)
      if (edges[bi_i * M + j]) source[count++] = j;
    for (int64_t h = 0; h < H; ++h) {
      const T* x = xt + ((grid * N + i) * H + h) * G;
      const T* y = xs + (grid * M * H + h) * G;  // source j's terms at y + j * H * G
      const T* av = att + (bi * H + h) * G;
      const T* ev = e + (bi * H + h) * G;
      const int64_t stride = H * G;
      score_sources<T, true>(x, y, source.data(), count, w + bi_i * M, av, ev, score.data(), stride, G, slope);
      T top = std::numeric_limits<T>::lowest();  // not -inf: -ffast-math assumes finite values
      int64_t k;
      for (k = 0; k < count; ++k) top = score[k] > top ? score[k] : top;
      T total = 0;
      for (k = 0; k < count; ++k) {
        score[k] = std::exp(score[k] - top);
        total += score[k];
      }
      total = total > T(0) ? total : T(1);  // a row without edges (never: self-loops) gets the bias only
      T* __restrict__ o = out + (bi_i * H + h) * G;
      const T* __restrict__ bv = bias + (bi * H + h) * G;
#pragma omp simd
      for (int64_t g = 0; g < G; ++g) o[g] = T(0);
      const T norm = T(1) / total;
      for (k = 0; k + 4 <= count; k += 4) {  // four sources at a time: one load and store of the output per four
        const T* __restrict__ y0 = y + source[k] * stride;
        const T* __restrict__ y1 = y + source[k + 1] * stride;
        const T* __restrict__ y2 = y + source[k + 2] * stride;
        const T* __restrict__ y3 = y + source[k + 3] * stride;
        const T a0 = score[k] * norm, a1 = score[k + 1] * norm, a2 = score[k + 2] * norm, a3 = score[k + 3] * norm;
#pragma omp simd
        for (int64_t g = 0; g < G; ++g) o[g] += a0 * y0[g] + a1 * y1[g] + a2 * y2[g] + a3 * y3[g];
      }
      for (; k < count; ++k) {
        const T alpha = score[k] * norm;
        const T* __restrict__ yk = y + source[k] * stride;
#pragma omp simd
        for (int64_t g = 0; g < G; ++g) o[g] += alpha * yk[g];
      }
#pragma omp simd
      for (int64_t g = 0; g < G; ++g) o[g] += bv[g];
    }
  }
}

torch::Tensor attend_forward(torch::Tensor xt, torch::Tensor xs, torch::Tensor att, torch::Tensor w, torch::Tensor e,
                             torch::Tensor edges, torch::Tensor bias, double slope) {
  const int64_t B = w.size(0), N = xt.size(1), H = xt.size(2), G = xt.size(3), M = xs.size(1);
  TORCH_CHECK(B % xt.size(0) == 0 && xs.size(0) == xt.size(0), "attend_forward: graphs must repeat the node grids");
  TORCH_CHECK(edges.scalar_type() == torch::kBool && edges.numel() == B * N * M, "attend_forward: bad edge mask");
  const int64_t R = B / xt.size(0);
  auto out = torch::empty({B, N, H, G}, xt.options());
  AT_DISPATCH_FLOATING_TYPES(xt.scalar_type(), "attend_forward", [&] {
    const scalar_t *pt = xt.data_ptr<scalar_t>(), *ps = xs.data_ptr<scalar_t>(), *pa = att.data_ptr<scalar_t>(),
                   *pw = w.data_ptr<scalar_t>(), *pe = e.data_ptr<scalar_t>(), *pb = bias.data_ptr<scalar_t>();
    const bool* pm = edges.data_ptr<bool>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(slope);
    at::parallel_for(0, B * N, 1, [=](int64_t begin, int64_t end) {
      attend_rows<scalar_t>(pt, ps, pa, pw, pe, pm, pb, po, begin, end, R, N, M, H, G, s);
    });
  });
  return out;
}

}  // namespace

// Each call releases the GIL while it computes (it touches no Python object): the app's other threads, serving
// other visitors, run Python meanwhile.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.def("forward", &pairwise_forward, "pairwise additive score, forward", release());
  m.def("backward", &pairwise_backward, "pairwise additive score, backward", release());
  m.def("attend", &attend_forward, "GATv2 attention over a dense graph, forward only", release());
}
