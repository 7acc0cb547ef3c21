// Shared helpers for the finite-difference gradient checks (tests/engine/test_gradcheck_*.cpp).
//
// Method: for y = f(x, params) pick a fixed random cotangent r (shape of y) and let
// L = sum(r * y), accumulated in double (or L = the model's loss). The analytic directional
// derivative along a direction v is <grad, v>, with grad from the backward pass run with dy = r;
// the numeric one is the central difference (L(x + h v) - L(x - h v)) / (2 h) (or its
// fourth-order Richardson form, see central_diff). Both are compared by the relative error
// |num - ana| / max(|num|, |ana|, 1e-6) (the floor rises for whole-model checks, see Fd).
// Steps are relative to the perturbed tensor's norm (check_tensor).
//
// Perturbations are applied in place to the f32 tensor the forward reads (a parameter value, or
// a view of an input) and undone by copying a saved clone back, so no rounding drift accumulates.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/model/params.h"

namespace shoal::gradcheck {

inline Backend& be() {
  return cpu_backend();
}

// Runs the enclosing scope with one OpenMP thread and restores the previous count after. The
// layer and model checks run hundreds of tiny forwards, and the backend opens a parallel region
// in every rmsnorm and cross_entropy call however small; on a loaded machine each region costs a
// scheduler slice (measured: this suite took 29 s instead of 0.3 s at a load of 2.5 on 2 cores).
// The op-level checks keep the default thread count, so the threaded paths stay covered there.
class OneOmpThread {
 public:
  OneOmpThread() : prev_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneOmpThread() { omp_set_num_threads(prev_); }
  OneOmpThread(const OneOmpThread&) = delete;
  OneOmpThread& operator=(const OneOmpThread&) = delete;

 private:
  int prev_;
};

// Writes N(mean, std) values into t (any strides).
inline void fill_normal(Tensor& t, std::mt19937& rng, float std = 1.0f, float mean = 0.0f) {
  std::normal_distribution<float> nd(mean, std);
  Tensor h = Tensor::empty(t.shape(), DType::f32);
  for (int64_t i = 0; i < h.numel(); ++i) h.f32()[i] = nd(rng);
  t.copy_from(h);
}

inline Tensor randn(const Shape& s, std::mt19937& rng, float std = 1.0f, float mean = 0.0f) {
  Tensor t = Tensor::empty(s, DType::f32);
  fill_normal(t, rng, std, mean);
  return t;
}

// <a, b> in double; any strides, same shape.
inline double dot(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  Tensor ac = a.contiguous(), bc = b.contiguous();
  double s = 0;
  for (int64_t i = 0; i < ac.numel(); ++i) s += double(ac.f32()[i]) * double(bc.f32()[i]);
  return s;
}

inline double max_abs(const Tensor& a) {
  Tensor ac = a.contiguous();
  double m = 0;
  for (int64_t i = 0; i < ac.numel(); ++i) m = std::max(m, double(std::fabs(ac.f32()[i])));
  return m;
}

// Random parameter values giving O(1) activations: matrices N(0, 1/fan_in) (fan_in = last dim),
// norm weights 1 + N(0, 0.2), buffers (the router's e_score_correction_bias) N(0, 0.05).
inline void fill_params(ParamSet& ps, std::mt19937& rng) {
  for (auto& p : ps) {
    if (!p.trainable) {
      fill_normal(p.value, rng, 0.05f);
    } else if (p.name.ends_with("norm.weight")) {
      fill_normal(p.value, rng, 0.2f, 1.0f);
    } else {
      fill_normal(p.value, rng, 1.0f / std::sqrt(float(p.value.size(-1))));
    }
  }
}

// A one-hot tensor of `shape` with a 1 at flat (row-major) index i.
inline Tensor one_hot(const Shape& shape, int64_t i) {
  Tensor t = Tensor::zeros(shape, DType::f32);
  t.f32()[i] = 1.0f;
  return t;
}

// Central difference of loss() along v at the tensor t (which loss() reads; any view with unit
// last stride, up to 3-D, or contiguous): D(h) = (L(t + h v) - L(t - h v)) / (2h), error O(h^2).
// With `fourth_order`, the Richardson extrapolation D(h) + (D(h) - D(2h)) / 3 =
// (8 (L(h) - L(-h)) - (L(2h) - L(-2h))) / (12 h), error O(h^4): for a whole layer the window
// between f32 noise (small h) and curvature (large h) is narrow, and this widens it.
inline double central_diff(Tensor t, const Tensor& v, double h, const std::function<double()>& loss,
                           bool fourth_order = false) {
  Tensor saved = t.clone();
  auto at = [&](double step) {
    be().add(t, v, float(step));
    double l = loss();
    t.copy_from(saved);
    return l;
  };
  double d1 = (at(h) - at(-h)) / (2.0 * h);
  if (!fourth_order) return d1;
  double d2 = (at(2 * h) - at(-2 * h)) / (4.0 * h);
  return d1 + (d1 - d2) / 3.0;
}

// Collects the comparisons of one test, asserts each against its tolerance and prints the
// largest relative error at the end (the numbers quoted in reports).
class Checker {
 public:
  explicit Checker(std::string name) : name_(std::move(name)) {}
  ~Checker() {
    std::printf("[gradcheck] %-46s checks %3d  max rel err %.2e (%s)", name_.c_str(), count_, max_,
                worst_.c_str());
    if (skipped_) std::printf("  skipped (routing changed) %d", skipped_);
    if (floored_) std::printf("  floor-limited %d", floored_);
    if (max_step_ > 0) std::printf("  max step %.3g", max_step_);
    std::printf("\n");
  }
  // rel_err(num, ana) with the given floor on the denominator; `step` (relative) is recorded.
  void check(const std::string& what, double num, double ana, double tol, double floor = 1e-6,
             double step = 0) {
    double e = std::fabs(num - ana) / std::max({std::fabs(num), std::fabs(ana), floor});
    ++count_;
    floored_ += floor > 1e-6 && floor > std::max(std::fabs(num), std::fabs(ana));
    max_step_ = std::max(max_step_, step);
    if (e > max_) max_ = e, worst_ = what;
    EXPECT_LE(e, tol) << name_ << ": " << what << ": numeric " << num << " analytic " << ana
                      << " floor " << floor;
  }
  void skip() { ++skipped_; }
  double max() const { return max_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_, worst_ = "-";
  int count_ = 0, skipped_ = 0, floored_ = 0;
  double max_ = 0, max_step_ = 0;
};

// Flat indices of up to `count` random coordinates of g whose gradient is not negligible (>= 5%
// of the largest component): tinier ones would only measure the finite-difference noise floor.
inline std::vector<int64_t> pick_coords(const Tensor& g, int count, std::mt19937& rng) {
  Tensor gc = g.contiguous();
  double mx = max_abs(gc);
  std::vector<int64_t> cand;
  for (int64_t i = 0; i < gc.numel(); ++i)
    if (mx > 0 && std::fabs(gc.f32()[i]) >= 0.05 * mx) cand.push_back(i);
  std::shuffle(cand.begin(), cand.end(), rng);
  std::vector<int64_t> out;
  for (size_t i = 0; i < cand.size() && int64_t(i) < count; ++i) out.push_back(cand[i]);
  return out;
}

// How check_tensor differentiates and compares.
struct Fd {
  double rel_step = 3e-3;     // step as a fraction of |t| (see check_tensor)
  double tol = 1e-2;          // on the relative error
  bool fourth_order = false;  // central_diff's Richardson-extrapolated form
  bool* flipped = nullptr;    // set by loss() when the MoE expert selection changed
  // f32 resolution (whole-model checks): when > 0, |L| at the base point. L is then only known to
  // about one f32 ulp, u = FLT_EPSILON |L|, so a difference quotient at step h' carries ~u / h'
  // of noise. The step grows (up to max_rel_step) until the first-order change h' |<g, v>| spans
  // 1000 ulps, and the relative error's floor becomes 600 u / h' instead of 1e-6: directions too
  // weak to resolve even at max_rel_step are held to |num - ana| <= tol * 600 u / h' = 6 u / h'
  // (the noise measured is ~0.3 u / h') and counted as floor-limited.
  double loss_scale = 0;
  double max_rel_step = 0.05;
};

// Checks `dirs` random directions and `coords` single coordinates of t (a tensor that loss()
// reads) against its analytic gradient grad. The step is relative: h = rel_step * |t| / |v|, so
// every difference moves t by the same fraction of its norm whatever the direction (a random
// direction and a one-hot one alike; an absolute step would move a single coordinate sqrt(numel)
// times less and drown its difference in f32 noise).
// For MoE routing, loss() sets *fd.flipped when its forward selected other experts than the
// unperturbed one: the loss is not differentiable across such a change, so that direction (or
// coordinate) is skipped and counted, then retried at a quarter of the step (an enlarged step
// only; the floor follows the step actually used) or redrawn, at most 5 draws per check; every
// requested check must eventually run.
inline void check_tensor(Checker& ck, const std::string& name, Tensor t, const Tensor& grad,
                         const std::function<double()>& loss, std::mt19937& rng, int dirs,
                         int coords, const Fd& fd) {
  const double tnorm = std::sqrt(dot(t, t));
  for (int i = 0; i < dirs + coords; ++i) {
    bool coord = i >= dirs;
    bool done = false;
    for (int draw = 0; draw < 5 && !done; ++draw) {
      Tensor v;
      std::string what = name;
      if (coord) {
        std::vector<int64_t> c = pick_coords(grad, 1, rng);
        if (c.empty()) return;  // an all-zero gradient: the directions checked it already
        v = one_hot(t.shape(), c[0]);
        what.append("[").append(std::to_string(c[0])).append("]");
      } else {
        v = randn(t.shape(), rng);
        what.append(" dir ").append(std::to_string(i));
      }
      const double ana = dot(grad, v);
      const double tv = tnorm / std::sqrt(dot(v, v));  // h = rel * tv
      const double ulp = FLT_EPSILON * fd.loss_scale;
      double rel = fd.rel_step;
      if (fd.loss_scale > 0 && ana != 0)
        rel = std::clamp(1e3 * ulp / (std::fabs(ana) * tv), fd.rel_step, fd.max_rel_step);
      double num = 0;
      bool flip = false;
      for (;;) {  // on a selection change, first retry with a smaller step, then redraw
        if (fd.flipped) *fd.flipped = false;
        num = central_diff(t, v, rel * tv, loss, fd.fourth_order);
        flip = fd.flipped && *fd.flipped;
        if (!flip) break;
        ck.skip();
        if (rel <= fd.rel_step) break;
        rel = std::max(fd.rel_step, rel / 4);
      }
      if (flip) continue;
      double floor = fd.loss_scale > 0 ? std::max(1e-6, 600 * ulp / (rel * tv)) : 1e-6;
      ck.check(what, num, ana, fd.tol, floor, rel);
      done = true;
    }
    if (!done)
      ADD_FAILURE() << ck.name() << ": " << name << ": 5 draws in a row changed the expert "
                    << "selection; the test's shapes or step are not suitable";
  }
}

}  // namespace shoal::gradcheck
