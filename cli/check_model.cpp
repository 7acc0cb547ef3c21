// shoal check-model: load an HF DeepSeek-V3 checkpoint, run a reference file's input_ids, print the
// relative errors of logits, loss and each gradient, exit 0 only within tolerance.
#include <cstdio>

#include "cli/commands.h"
#include "engine/model/reference_check.h"

namespace shoal::cli {

Run add_check_model(CLI::App& app) {
  struct Opts {
    std::string model, reference, grads;
    CheckTolerances tol;
    bool all = false;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "checkpoint directory (config.json + *.safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--reference", o->reference,
                 "safetensors with input_ids [B, T], logits [B, T, V], loss [1]")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--grads", o->grads, "safetensors with d(loss)/d(parameter) for each parameter")
      ->check(CLI::ExistingFile);
  app.add_option("--logits-tol", o->tol.logits, "relative L2 tolerance for logits")
      ->capture_default_str();
  app.add_option("--grad-tol", o->tol.grad, "relative L2 tolerance per gradient")
      ->capture_default_str();
  app.add_option("--loss-tol", o->tol.loss, "relative tolerance for the loss")
      ->capture_default_str();
  app.add_flag("--all", o->all, "print every gradient row (default: the worst 10 and failures)");
  return [o]() {
    Backend& be = cpu_backend();
    auto model = Model::from_pretrained(o->model, be);
    CheckReport rep = check_against_reference(*model, o->reference, o->grads, o->tol);
    std::printf("model      %s (%s, %lld layers, %lld parameters)\n", o->model.c_str(),
                model->config().model_type.c_str(), (long long)model->config().num_hidden_layers,
                (long long)model->params().trainable_numel());
    std::printf("loss       %.10g (reference %.10g)\n", rep.loss, rep.reference_loss);
    std::printf("%-60s %12s %10s  %s\n", "tensor", "rel. error", "tolerance", "");
    std::vector<const CheckRow*> grads;
    for (auto& r : rep.rows) {
      if (r.name == "logits" || r.name == "loss")
        std::printf("%-60s %12.3e %10.1e  %s\n", r.name.c_str(), r.error, r.tolerance,
                    r.ok() ? "ok" : "FAIL");
      else
        grads.push_back(&r);
    }
    std::stable_sort(grads.begin(), grads.end(), [](auto* a, auto* b) {
      return a->error / a->tolerance > b->error / b->tolerance;
    });
    size_t shown = 0, failed = 0;
    for (auto* r : grads) {
      failed += !r->ok();
      if (o->all || !r->ok() || shown < 10) {
        std::printf("%-60s %12.3e %10.1e  %s\n", r->name.c_str(), r->error, r->tolerance,
                    r->ok() ? "ok" : "FAIL");
        ++shown;
      }
    }
    if (shown < grads.size())
      std::printf("... %zu more gradients, all within tolerance (--all prints them)\n",
                  grads.size() - shown);
    for (auto& m : rep.missing)
      std::printf("%-60s %12s  (no reference gradient)\n", m.c_str(), "-");
    bool ok = rep.ok() && (o->grads.empty() || rep.missing.empty());
    std::printf("%s: logits, loss%s %s\n", ok ? "PASS" : "FAIL",
                o->grads.empty() ? "" : fmt::format(" and {} gradients", grads.size()).c_str(),
                ok ? "within tolerance" : fmt::format("({} out of tolerance)", failed).c_str());
    return ok ? 0 : 1;
  };
}

}  // namespace shoal::cli
