// shoal convert: reads any checkpoint shoal can load (f32/bf16/f16, FP8 block-quantized, sharded or
// not) and writes it back in Hugging Face layout, optionally as another dtype or shard size.
#include <cstdio>

#include "cli/commands.h"
#include "engine/model/model.h"

namespace shoal::cli {

Run add_convert(CLI::App& app) {
  struct Opts {
    std::string model, out, dtype = "bf16";
    double max_shard_gb = 2.0;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "input checkpoint directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--out", o->out, "output directory (written atomically)")->required();
  app.add_option("--dtype", o->dtype, "f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  app.add_option("--max-shard-gb", o->max_shard_gb, "shard size limit in GB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return [o]() {
    auto model = Model::from_pretrained(o->model, cpu_backend());
    DType dt = o->dtype == "f32" ? DType::f32 : o->dtype == "bf16" ? DType::bf16 : DType::f16;
    model->save(o->out, size_t(o->max_shard_gb * 1e9), dt);
    std::printf("wrote %s (%s, %lld parameters)\n", o->out.c_str(), o->dtype.c_str(),
                (long long)model->params().trainable_numel());
    return 0;
  };
}

}  // namespace shoal::cli
