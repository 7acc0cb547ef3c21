// Reference comparison: one forward (+ backward when gradients are given) over the reference batch.
#include "engine/model/reference_check.h"

#include <cmath>
#include <map>

#include "engine/safetensors.h"

namespace shoal {

double relative_l2(const Tensor& a, const Tensor& ref) {
  SHOAL_CHECK(a.numel() == ref.numel(), "relative_l2: {} vs {}", a.describe(), ref.describe());
  Tensor x = a.to(DType::f64), y = ref.to(DType::f64);
  double num = 0, den = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    double d = x.f64()[i] - y.f64()[i];
    num += d * d;
    den += y.f64()[i] * y.f64()[i];
  }
  if (den == 0) return num == 0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

bool CheckReport::ok() const {
  for (auto& r : rows)
    if (!r.ok()) return false;
  return !rows.empty();
}

CheckReport check_against_reference(Model& model, const std::string& reference,
                                    const std::string& grads, const CheckTolerances& tol) {
  SafetensorsFile ref = SafetensorsFile::open(reference);
  for (const char* key : {"input_ids", "logits", "loss"})
    SHOAL_CHECK(ref.has(key), "{}: reference has no '{}' tensor", reference, key);
  Tensor ids = ref.get("input_ids").to(DType::i64);
  SHOAL_CHECK(ids.ndim() == 2, "{}: input_ids must be [batch, seq], got {}", reference,
              ids.describe());
  int64_t b = ids.size(0), t = ids.size(1), v = model.config().vocab_size;
  Tensor ref_logits = ref.get("logits");
  SHOAL_CHECK(ref_logits.numel() == b * t * v,
              "{}: logits {} do not match input_ids {} and vocab "
              "{}",
              reference, ref_logits.describe(), ids.describe(), v);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < t; ++j) {
      int64_t id = ids.i64()[i * t + j];
      SHOAL_CHECK(id >= 0 && id < v, "{}: input_ids[{}, {}] = {} is outside the vocabulary ({})",
                  reference, i, j, id, v);
      seqs[size_t(i)].push_back(int32_t(id));
    }
  Batch batch = Batch::next_token(seqs);
  ForwardOptions opt;
  opt.keep_logits = true;
  opt.need_backward = !grads.empty();
  model.params().zero_grads();
  ForwardResult fr = model.forward(batch, opt);

  CheckReport rep;
  rep.loss = fr.loss;
  rep.reference_loss = ref.get("loss").to(DType::f64).f64()[0];
  rep.rows.push_back({"logits", relative_l2(fr.logits, ref_logits), tol.logits});
  rep.rows.push_back(
      {"loss",
       std::fabs(fr.loss - rep.reference_loss) / std::max(std::fabs(rep.reference_loss), 1e-30),
       tol.loss});
  if (grads.empty()) return rep;

  model.backward();
  SafetensorsFile g = SafetensorsFile::open(grads);
  std::map<std::string, Tensor> mine;  // checkpoint names and internal (packed) names
  for (auto& ct : model.checkpoint_tensors(true)) mine[ct.name] = ct.view;
  for (auto& p : model.params())
    if (p.trainable) mine[p.name] = p.grad;
  std::map<std::string, bool> covered;
  for (auto& name : g.names()) {
    auto it = mine.find(name);
    SHOAL_CHECK(it != mine.end(), "{}: gradient '{}' has no counterpart in the model", grads, name);
    Tensor want = g.get(name);
    Tensor have = model.backend().to_host(it->second);
    SHOAL_CHECK(want.shape() == have.shape(), "{}: gradient '{}' is {}, the model's is {}", grads,
                name, want.describe(), have.describe());
    rep.rows.push_back({name, relative_l2(have, want), tol.grad});
    covered[name] = true;
  }
  // Every trainable parameter must be covered, under its packed or its checkpoint names.
  for (auto& p : model.params()) {
    if (!p.trainable || !p.lm_grad || covered.count(p.name)) continue;
    bool all = true;
    for (auto& ct : model.checkpoint_tensors(true))
      if (ct.view.same_storage(p.grad) && !covered.count(ct.name)) all = false;
    if (!all) rep.missing.push_back(p.name);
  }
  return rep;
}

}  // namespace shoal
