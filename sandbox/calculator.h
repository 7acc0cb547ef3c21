// The calculator tool: exact arithmetic on big integers and rationals (GMP), evaluated in the
// server process by a small recursive-descent parser; no interpreter, no floating point. Not a
// computer algebra system: no variables, no irrational functions.
#pragma once

#include <string>

#include "sandbox/protocol.h"

namespace shoal::sandbox {

// Evaluates `expression`: + - * / // % ^ (or **) ! and parentheses; numbers may be decimals
// ("0.1" is exactly 1/10) or have exponents ("1e-3"); functions abs, gcd, lcm, floor, ceil,
// round, min, max, factorial, comb, pow(a, b, m), sqrt (exact squares only). Returns {"value":
// "p/q" or "n", "decimal": 40 significant digits, "is_integer": bool}. Throws ToolError
// (files.h) on a syntax error, division by zero or a result too large (> 1,000,000 bits).
json calculate(const std::string& expression);

}  // namespace shoal::sandbox
