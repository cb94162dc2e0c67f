"""The C++ checks .ci/run makes: scripts/check_function_length.py finds long functions, and cpp/ has none."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_function_length.py"


def run_check(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def function(name, body_lines, indent=""):
    body = "".join(f"{indent}  x += {i};  // {{ not a brace\n" for i in range(body_lines))
    return f'{indent}int {name}(int x) {{\n{indent}  const char* s = "}}";\n{body}{indent}  return x;\n{indent}}}\n'


def test_finds_a_long_function_and_only_it(tmp_path):
    source = (
        "#include <vector>\n"
        "namespace ns {\n"
        "constexpr int kTable[3] = {1, 2, 3};\n"
        + function("short_one", 10)
        + "struct S {\n public:\n"
        + function("long_member", 30, indent="  ")
        + "};\n"
        + function("long_free", 40)
        + "}  // namespace ns\n"
    )
    (tmp_path / "a.cpp").write_text(source)
    out = run_check("--max-lines", "25", str(tmp_path))
    assert out.returncode == 1
    found = out.stdout.splitlines()
    assert len(found) == 2, out.stdout
    assert "long_member" in found[0] and "34 lines" in found[0]
    assert "long_free" in found[1] and "44 lines" in found[1]
    assert run_check("--max-lines", "44", str(tmp_path)).returncode == 0


def test_no_cpp_function_over_150_lines():
    out = run_check("--max-lines", "150", str(ROOT / "cpp"))
    assert out.returncode == 0, out.stdout
