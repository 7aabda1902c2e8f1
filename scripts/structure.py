#!/usr/bin/env python3
"""The two structural rules of ARCHITECTURE.md, checked on src/:

  cycles     the module graph (one arrow per `crate::module` a file names) has no cycle
  functions  no function outside tests is longer than the limit (default 60 lines)

`scripts/structure.py` runs both and prints what breaks them; exit 1 if anything does
(CI runs it). `--report` prints the same and exits 0.

rustfmt's layout is relied on: a function's body ends at the first `}` at its `fn`'s
indentation, and `#[cfg(test)]` modules end the same way.
"""

import argparse
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")
CRATE_PATH = re.compile(r"\bcrate::(\w+)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)


def module_of(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return "::".join(parts) or "crate"


def without_tests(lines):
    """The lines outside `#[cfg(test)]` items, each with its line number."""
    kept, skip_until_indent, pending = [], None, False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_until_indent is not None:
            if stripped.startswith("}") and indent == skip_until_indent:
                skip_until_indent = None
            continue
        if stripped == "#[cfg(test)]":
            pending = True
            continue
        if pending:
            pending = False
            if stripped.endswith("{"):
                skip_until_indent = indent
                continue
            if stripped.endswith(";"):
                continue
        kept.append((number, line))
    return kept


def long_functions(limit):
    found = []
    for path in sorted(SRC.rglob("*.rs")):
        lines = without_tests(path.read_text().splitlines())
        for i, (number, line) in enumerate(lines):
            match = FN.match(line)
            if not match or line.rstrip().endswith(";"):
                continue
            indent = len(match.group(1))
            for end_number, end in lines[i + 1 :]:
                if end.startswith(" " * indent + "}") and len(end) - len(end.lstrip()) == indent:
                    length = end_number - number + 1
                    if length > limit:
                        found.append((length, f"{path.relative_to(SRC.parent)}:{number}", match.group(2)))
                    break
    return sorted(found, reverse=True)


def graph():
    modules = {module_of(p): p for p in SRC.rglob("*.rs")}
    tops = {m.split("::")[0] for m in modules}
    arrows = {}
    for module, path in modules.items():
        text = "\n".join(
            line.split("//")[0] for _, line in without_tests(path.read_text().splitlines())
        )
        named = set(CRATE_PATH.findall(text))
        for group in USE_GROUP.findall(text):
            named |= {item.strip().split("::")[0] for item in group.split(",") if item.strip()}
        own = module.split("::")[0]
        arrows[module] = {m for m in named if m in tops and m != own}
    # One node per top-level module: `store::s3 -> exit` is an arrow of `store`.
    top_arrows = {}
    for module, targets in arrows.items():
        top_arrows.setdefault(module.split("::")[0], set()).update(targets)
    return top_arrows


def cycles(arrows):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in arrows.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(arrows):
        if node not in index:
            visit(node)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60, help="longest function allowed, in lines")
    parser.add_argument("--report", action="store_true", help="print, but exit 0")
    args = parser.parse_args()

    arrows = graph()
    loops = cycles(arrows)
    for component in loops:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(arrows[a] & members)]
        print(f"import cycle among {', '.join(component)}: {'; '.join(edges)}")
    long = long_functions(args.limit)
    for length, where, name in long:
        print(f"{where}: fn {name} is {length} lines (limit {args.limit})")
    print(f"structure: {len(loops)} import cycles, {len(long)} functions over {args.limit} lines")
    return 0 if args.report or not (loops or long) else 1


if __name__ == "__main__":
    sys.exit(main())
