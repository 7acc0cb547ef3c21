// The family registry (registry.h): built once, in a fixed order.
#include "tasks/registry.h"

#include "base/error.h"

namespace shoal::tasks {

const std::vector<const Family*>& families() {
  static const std::vector<std::unique_ptr<Family>> owned = [] {
    std::vector<std::unique_ptr<Family>> v;
    v.push_back(make_arithmetic_family());
    v.push_back(make_function_calling_family());
    v.push_back(make_countdown_family());
    v.push_back(make_api_world_family());
    v.push_back(make_sql_family());
    v.push_back(make_search_family());
    v.push_back(make_files_family());
    v.push_back(make_puzzles_family());
    v.push_back(make_zebra_family());
    v.push_back(make_program_synthesis_family());
    v.push_back(make_bug_fixing_family());
    return v;
  }();
  static const std::vector<const Family*> view = [] {
    std::vector<const Family*> v;
    for (const auto& f : owned) v.push_back(f.get());
    return v;
  }();
  return view;
}

const Family& find_family(const std::string& name) {
  std::string known;
  for (const Family* f : families()) {
    if (f->name() == name) return *f;
    known += (known.empty() ? "" : ", ") + f->name();
  }
  SHOAL_FAIL("unknown task family '{}' (known: {})", name, known);
}

}  // namespace shoal::tasks
