"""Fail when a C++ function in the given folders is longer than the limit (the developers' guide: ~150 lines).

usage: python scripts/check_function_length.py [--max-lines N] DIR...

A function is a brace block opened at namespace or class level after a header with a parameter list
(definitions of free functions, member functions, constructors and operators); its length is the lines from
its opening brace to its closing one. Lambdas and local classes count towards the function that holds them.
Comments, string and character literals and preprocessor lines are blanked before the braces are counted.
"""

import argparse
import re
import sys
from pathlib import Path

SCOPES = re.compile(r"^(?:template\s*<.*>\s*)?(?:namespace|class|struct|union|enum|extern)\b", re.S)
CONTROL = re.compile(r"^(?:if|for|while|switch|catch|do|else|try)\b")


def blank_comments_and_literals(text: str) -> str:
    """The text with comments, strings and characters replaced by spaces (line breaks kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        two = text[i : i + 2]
        if two == "//":
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif two == "/*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif text[i] in "\"'":
            quote, j = text[i], i + 1
            if text[i] == '"' and i > 0 and text[i - 1] == "R":  # raw string R"delim( ... )delim"
                delim = text[j : text.index("(", j)]
                j = text.index(")" + delim + '"', j) + len(delim) + 2
            else:
                while j < n and text[j] != quote:
                    j += 2 if text[j] == "\\" else 1
                j += 1
        else:
            out.append(text[i])
            i += 1
            continue
        out.append("".join(c if c == "\n" else " " for c in text[i:j]))
        i = j
    return "".join(out)


def is_function_header(header: str) -> bool:
    """Whether the text before a namespace/class-level '{' is a function's head."""
    head = " ".join(header.split())
    head = re.sub(r"^(?:public|private|protected)\s*:\s*", "", head)
    if not head or "(" not in head or SCOPES.match(head) or CONTROL.match(head):
        return False
    depth = 0
    for k, c in enumerate(head):  # an '=' outside parentheses: a variable's initializer
        if c in "(<[":
            depth += 1
        elif c in ")>]":
            depth -= 1
        elif c == "=" and depth == 0 and "operator" not in head[max(0, k - 10) : k]:
            if head[k + 1 : k + 2] != "=" and head[k - 1 : k] not in "=!<>":
                return False
    return True


def functions(text: str):
    """(first line, last line, header) of every function definition in the blanked text."""
    stack = []  # per open brace: 'scope', 'function' or 'block'
    start = 0  # where the current statement's head begins
    opened = []  # line of each function's opening brace
    line = 1
    found = []
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        elif c == "{":
            inside_function = any(kind == "function" for kind in stack)
            header = text[start:i]
            if inside_function:
                kind = "block"
            elif SCOPES.match(" ".join(header.split())) or "(" not in header:
                kind = "scope" if SCOPES.match(" ".join(header.split())) else "block"
            else:
                kind = "function" if is_function_header(header) else "block"
            stack.append(kind)
            opened.append((line, " ".join(header.split())[:100]))
            start = i + 1
        elif c == "}":
            kind = stack.pop() if stack else "block"
            first, header = opened.pop() if opened else (line, "")
            if kind == "function":
                found.append((first, line, header))
            start = i + 1
        elif c == ";":
            start = i + 1
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lines", type=int, default=150)
    parser.add_argument("dirs", nargs="+")
    args = parser.parse_args()
    too_long = []
    for folder in args.dirs:
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix not in (".cpp", ".hpp", ".h", ".cc"):
                continue
            text = blank_comments_and_literals(path.read_text())
            text = re.sub(r"(?m)^[ \t]*#.*$", lambda m: " " * len(m.group(0)), text)  # preprocessor lines
            for first, last, header in functions(text):
                if last - first + 1 > args.max_lines:
                    too_long.append(f"{path}:{first}: {last - first + 1} lines: {header}")
    for entry in too_long:
        print(entry)
    if too_long:
        print(f"{len(too_long)} function(s) over {args.max_lines} lines: split them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
