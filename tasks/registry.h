// The task families shoal knows, by name. Not the families themselves (family_*.cpp, one per
// file) and not the store.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tasks/task.h"

namespace shoal::tasks {

// Every family, in a fixed order (the order of `shoal tasks families`).
const std::vector<const Family*>& families();
// Throws Error naming the known families when `name` is not one.
const Family& find_family(const std::string& name);

// One factory per family file.
std::unique_ptr<Family> make_arithmetic_family();
std::unique_ptr<Family> make_function_calling_family();
std::unique_ptr<Family> make_countdown_family();
std::unique_ptr<Family> make_api_world_family();
std::unique_ptr<Family> make_sql_family();
std::unique_ptr<Family> make_search_family();
std::unique_ptr<Family> make_files_family();
std::unique_ptr<Family> make_puzzles_family();
std::unique_ptr<Family> make_zebra_family();
std::unique_ptr<Family> make_program_synthesis_family();
std::unique_ptr<Family> make_bug_fixing_family();

}  // namespace shoal::tasks
