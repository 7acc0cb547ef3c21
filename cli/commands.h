// The shoal subcommands. Each registers its options on the CLI11 app and returns a callback that
// runs it and gives the process exit code (0 success, 1 failure; 2 is usage, set by main).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace shoal::cli {

using Run = std::function<int()>;
Run add_check_model(CLI::App& app);
Run add_pretrain(CLI::App& app);
Run add_convert(CLI::App& app);
Run add_generate(CLI::App& app);
Run add_tokenize(CLI::App& app);
Run add_train_tokenizer(CLI::App& app);
Run add_sandboxd(CLI::App& app);
Run add_tool(CLI::App& app);
Run add_tasks(CLI::App& app);
Run add_runs(CLI::App& app);
Run add_train(CLI::App& app);
Run add_serve(CLI::App& app);
Run add_eval(CLI::App& app);
Run add_chat(CLI::App& app);

}  // namespace shoal::cli
