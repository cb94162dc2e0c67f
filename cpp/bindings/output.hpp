// QuantOutput -> a dict of NumPy arrays that the Python layer turns into a QuantResult.
#pragma once

#include "checks.hpp"
#include "quantease/result.hpp"

namespace quantease::bindings {

inline py::dict output_to_dict(QuantOutput&& out) {
  py::dict d;
  d["weight"] = to_numpy(std::move(out.weight));
  d["codes"] = to_numpy(std::move(out.codes));
  if (out.scales.size() > 0) {
    d["scales"] = to_numpy(std::move(out.scales));
    d["zeros"] = to_numpy(std::move(out.zeros));
  } else {
    d["scales"] = py::none();
    d["zeros"] = py::none();
  }
  d["g_idx"] = to_numpy(std::move(out.g_idx));
  if (out.perm.size() > 0) d["perm"] = to_numpy(std::move(out.perm));
  else d["perm"] = py::none();
  d["damp"] = out.damp;
  d["damp_attempts"] = out.damp_attempts;
  py::dict seconds;
  for (const auto& [phase, s] : out.seconds) seconds[py::str(phase)] = s;
  d["phase_seconds"] = seconds;
  return d;
}

}  // namespace quantease::bindings
