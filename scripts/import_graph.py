"""Print the import graph between the gateway's packages, and the arrows that run upward.

    python scripts/import_graph.py            # edges between packages, back-arrows marked
    python scripts/import_graph.py --modules  # the same between modules

The layers run one way (docs/architecture.md): edge -> relay -> providers -> transports,
with limits, observability and config beside or below. An import from a lower layer into a
higher one is listed as a back-arrow, and any pair of packages importing each other as a
cycle. Imports inside functions count too: a lazy import is still a dependency. Reads
the source with `ast`; imports nothing of the gateway.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "gateway"
LAYERS = {
    "__main__": 0, "app": 0, "server": 0, "cli": 0, "runtime": 0,
    "edge": 1, "ingress": 1,
    "relay": 2,
    "providers": 3,
    "transports": 4,
}  # fmt: skip
"""Higher number = lower layer. Packages not named here (limits, observability, config,
errors, ...) sit beside or below every layer: importing them is always allowed, and they
must not import any layered package."""


def unit(module: str, modules: bool) -> str:
    parts = module.split(".")[1:]  # drop "gateway"
    if not parts:
        return "gateway"
    return ".".join(parts) if modules else parts[0]


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("gateway"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
    return found


def main(argv: list[str]) -> int:
    modules = "--modules" in argv
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        src = unit(name, modules)
        for target in imports(path):
            dst = unit(target, modules)
            if dst != src:
                edges[src, dst] += 1
    back = 0
    for (src, dst), count in sorted(edges.items()):
        top_src, top_dst = src.split(".")[0], dst.split(".")[0]
        s, d = LAYERS.get(top_src), LAYERS.get(top_dst)
        upward = (s is not None and d is not None and d < s) or (s is None and d is not None)
        cycle = (dst, src) in edges
        flag = "   BACK-ARROW" if upward else "   CYCLE" if cycle else ""
        back += bool(flag)
        print(f"{src:28} -> {dst:28} {count:3}{flag}")
    print(f"\n{len(edges)} edges, {back} back-arrows or cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
