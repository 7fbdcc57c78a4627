"""Generate the synthetic engine benchmark workspace.

PACKAGES packages × TARGETS chained genrules: every tenth target reads a source file, the
others read the previous target's output. 10 × 100 = the 1,000-target graph of issue 2;
100 × 100 = the 10,000-target variant.

    python bench/gen_workspace.py DIR [--packages 10] [--targets 100]
"""

from __future__ import annotations

import argparse
import os


def generate(root: str, packages: int, targets: int) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "WORKSPACE.toml"), "w") as handle:
        handle.write('[workspace]\nname = "bench"\n')
    for p in range(packages):
        pkg = os.path.join(root, f"p{p}")
        os.makedirs(pkg, exist_ok=True)
        lines = []
        for t in range(targets):
            if t % 10 == 0:
                src = f"src{t}.txt"
                with open(os.path.join(pkg, src), "w") as handle:
                    handle.write(f"source {p}/{t}\n")
                srcs = f'["{src}"]'
            else:
                srcs = f'[":t{t - 1}"]'
            lines.append(
                f'[t{t}]\nrule = "genrule"\nsrcs = {srcs}\nouts = ["t{t}.txt"]\n'
                f'cmd = "cat $(SRCS) > $@; echo {t} >> $@"\n'
            )
        with open(os.path.join(pkg, "BUILD.toml"), "w") as handle:
            handle.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dir")
    parser.add_argument("--packages", type=int, default=10)
    parser.add_argument("--targets", type=int, default=100)
    args = parser.parse_args()
    generate(args.dir, args.packages, args.targets)


if __name__ == "__main__":
    main()
