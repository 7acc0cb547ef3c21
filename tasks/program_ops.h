// The primitive operations of the code families' programs (programs.h): for each, its types,
// the range of its constant, its C++ semantics (Python's, exactly), its Python lines, its words
// and its slips. Internal to tasks/: the families use programs.h. Adding an operation here puts it
// in TasksCodeFamilies.EveryOperationMatchesPython, which runs it through Python.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tasks/programs.h"

namespace shoal::tasks::programs {

// Thrown by an operation whose value leaves the safe range; run() turns it into nullopt.
struct OutOfRange {};

using Eval = Value (*)(const Value&, int64_t);
struct Slip {
  const char* op;
  int64_t dk = 0;  // the slip's constant is the step's plus dk
};
struct Op {
  const char* name;
  Kind in, out;
  int64_t kmin, kmax;  // 0, 0: takes no constant
  bool generated;      // false: only ever a slip (a bug), never part of a correct program
  const char* words;   // {k} is the constant
  const char* python;  // lines; {in}, {out}, {k}
  std::vector<Slip> slips;
  Eval eval;
};

const std::vector<Op>& ops();
const Op& find_op(const std::string& name);  // throws Error naming an unknown operation
bool takes_constant(const Op& op);

}  // namespace shoal::tasks::programs
