// Each op's binding file registers itself here, so adding an op never edits a shared list.
#pragma once
#include <pybind11/pybind11.h>
#include <vector>

namespace fastgan {

using Registrar = void (*)(pybind11::module_&);

inline std::vector<Registrar>& registrars() {
  static std::vector<Registrar> list;
  return list;
}

struct RegisterBindings {
  explicit RegisterBindings(Registrar r) { registrars().push_back(r); }
};

}  // namespace fastgan

#define FASTGAN_REGISTER_BINDINGS(name, fn) static ::fastgan::RegisterBindings fastgan_bindings_##name(fn)
