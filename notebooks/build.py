"""Build the notebooks: ``notebooks/src/NN_name.py`` -> ``notebooks/NN_name.ipynb``, executed.

    python notebooks/build.py [NAMES ...] [--quick] [--no-execute] [--out DIR] [--timeout S]

A notebook's source is a plain Python file in the jupytext "percent" format: cells start at a
line ``# %%`` (code) or ``# %% [markdown]`` (markdown, each line commented with ``# ``), so it
reads and diffs as code. Every notebook gets the same two generated cells first: a markdown cell
with the source's title and an "Open in Colab" badge (then the rest of the source's first
markdown cell), and the install cell (:func:`install_cell`), which installs
:data:`SIGPROP_SPEC` on Colab and does nothing anywhere else. A fork changes :data:`REPO` (the
badge's target) and :data:`SIGPROP_SPEC`.

Executing runs the notebook top to bottom with nbclient in a ``python3`` kernel of *this*
interpreter (ipykernel's own kernelspec, whatever other ``python3`` kernels are installed), in
the output folder, a timeout per cell, any error failing the build. ``metadata["sigprop"]``
records the sha256 of the cells' sources (:func:`source_hash`: the generated cells included),
the sigprop and jax versions, the date, whether it ran with ``SIGPROP_QUICK=1`` (``--quick``:
the tests' small sizes) and the run time. The committed notebooks are built without
``--quick``; ``tests/test_notebooks.py`` fails when one is stale (its recorded hash differs from
its source's) and executes each with ``SIGPROP_QUICK=1``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "src")
REPO = "sigprop/sigprop"  # owner/name on GitHub: the Colab badges open notebooks/ there
BRANCH = "main"
SIGPROP_SPEC = f"sigprop[data] @ git+https://github.com/{REPO}"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
CELL_TIMEOUT = 1800  # seconds per cell (default sizes); the tests pass their own
_NAME = re.compile(r"^(\d\d_[A-Za-z0-9_]+)\.py$")
_MARKER = re.compile(r"^# %%(.*)$")


# ------------------------------------------------------------------------------- sources


def names() -> list[str]:
    """The notebooks: every ``src/NN_name.py``, in order."""
    return sorted(m.group(1) for f in os.listdir(SRC) if (m := _NAME.match(f)))


def parse(text: str) -> list[tuple[str, str]]:
    """Percent-format text -> ``[(cell_type, source)]``: a ``# %%`` line starts a code cell,
    ``# %% [markdown]`` a markdown cell (its lines' leading ``# `` or ``#`` removed). Text before
    the first marker must be blank; blank lines around a cell are dropped, empty cells too."""
    cells: list[tuple[str, list[str]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = _MARKER.match(line)
        if m:
            tag = m.group(1).strip()
            if tag not in ("", "[markdown]", "[md]"):
                raise ValueError(f"line {n}: unknown cell marker {line!r}; use '# %%' or "
                                 "'# %% [markdown]'")
            cells.append(("code" if tag == "" else "markdown", []))
        elif not cells:
            if line.strip():
                raise ValueError(f"line {n}: text before the first '# %%' cell marker")
        else:
            kind, lines = cells[-1]
            if kind == "markdown":
                if line.strip() and not line.startswith("#"):
                    raise ValueError(f"line {n}: a markdown cell's lines start with '#': "
                                     f"{line!r}")
                line = line[2:] if line.startswith("# ") else line[1:]
            lines.append(line)
    out = []
    for kind, lines in cells:
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def colab_url(name: str) -> str:
    return f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/notebooks/{name}.ipynb"


def install_cell() -> str:
    """The first code cell of every notebook: installs sigprop on Colab, nothing elsewhere."""
    return (
        "# On Colab this installs sigprop (a fork changes the SIGPROP_SPEC line); anywhere else\n"
        "# it does nothing: install sigprop first with the README's `pip install -e '.[dev]'`.\n"
        "import sys\n"
        "\n"
        f'SIGPROP_SPEC = "{SIGPROP_SPEC}"\n'
        'if "google.colab" in sys.modules:\n'
        '    get_ipython().run_line_magic("pip", f\'install -q "{SIGPROP_SPEC}"\')')


def cells(name: str) -> list[tuple[str, str]]:
    """The notebook's cells: the title and Colab badge, the install cell, then the source."""
    with open(os.path.join(SRC, f"{name}.py"), encoding="utf-8") as f:
        body = parse(f.read())
    if not body or body[0][0] != "markdown" or not body[0][1].startswith("# "):
        raise ValueError(f"src/{name}.py: the first cell must be markdown starting with a "
                         "'# Title' line")
    title, _, intro = body[0][1].partition("\n")
    badge = f"[![Open In Colab]({BADGE})]({colab_url(name)})"
    head = "\n\n".join(p for p in (title, badge, intro.strip("\n")) if p)
    return [("markdown", head), ("code", install_cell()), *body[1:]]


def source_hash(cell_list) -> str:
    """sha256 of the cells' types and sources (what a run's outputs are outputs of)."""
    blob = json.dumps([[k, s] for k, s in cell_list], ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def notebook_cells(nb) -> list[tuple[str, str]]:
    """``[(cell_type, source)]`` of a notebook (nbformat node)."""
    return [(c.cell_type, c.source) for c in nb.cells]


def notebook(name: str):
    """The unexecuted notebook (nbformat v4), kernel python3."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    made = []
    for i, (kind, source) in enumerate(cells(name)):
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        made.append(new(source, id=f"cell-{i:02d}"))  # stable ids: rebuilds diff only outputs
    nb.cells = made
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "name": f"{name}.ipynb"},
        "sigprop": {"source_sha256": source_hash(notebook_cells(nb))},
    }
    return nb


# ------------------------------------------------------------------------------- executing


def _kernel_manager_class():
    """An nbclient kernel manager whose ``python3`` is ipykernel's own spec for this
    interpreter (``sys.executable``), not whatever ``python3`` kernelspec the Jupyter paths
    hold (a user-wide one may point at another Python)."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name, *args, **kwargs):
            if kernel_name != "python3":
                return super().get_kernel_spec(kernel_name, *args, **kwargs)
            return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())

    class Manager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _default_ksm(self):
            return ThisPython(data_dir=self.data_dir)

    return Manager


def execute(nb, cwd: str, *, quick: bool = False, timeout: int = CELL_TIMEOUT, env=None):
    """Run ``nb`` top to bottom in ``cwd`` (``SIGPROP_QUICK=1`` when ``quick``); raises
    nbclient's ``CellExecutionError`` (with the cell and its traceback) on any error or
    ``CellTimeoutError`` past ``timeout`` seconds in one cell. Returns the seconds it took;
    ``nb`` holds the outputs and ``metadata["sigprop"]`` the run's record."""
    from nbclient import NotebookClient

    env = dict(os.environ if env is None else env)
    env["SIGPROP_QUICK"] = "1" if quick else "0"
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger: no warning
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            kernel_manager_class=_kernel_manager_class(), record_timing=False,
                            resources={"metadata": {"path": cwd}})
    t0 = time.perf_counter()
    client.execute(env=env, cwd=cwd)
    seconds = time.perf_counter() - t0
    nb.metadata.setdefault("sigprop", {}).update(_record(nb, quick, seconds))
    return seconds


def _record(nb, quick: bool, seconds: float) -> dict:
    try:
        import jax
        import sigprop

        versions = {"sigprop_version": sigprop.__version__, "jax_version": jax.__version__}
    except ImportError:  # pragma: no cover - the build runs where sigprop is installed
        versions = {}
    return {"source_sha256": source_hash(notebook_cells(nb)), **versions,
            "executed": datetime.date.today().isoformat(), "quick": bool(quick),
            "seconds": round(seconds, 1), "python": sys.version.split()[0]}


def build(name: str, *, run: bool = True, quick: bool = False, out: str = HERE,
          timeout: int = CELL_TIMEOUT) -> tuple[str, float | None]:
    """Write ``<out>/<name>.ipynb`` (executed in ``out`` unless ``run=False``); returns the
    path and the seconds it ran (None if not executed). A failed run writes nothing."""
    import nbformat

    nb = notebook(name)
    seconds = execute(nb, out, quick=quick, timeout=timeout) if run else None
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.ipynb")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.replace(tmp, path)
    return path, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="notebooks/build.py", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"notebooks (default all): {', '.join(names())}")
    p.add_argument("--quick", action="store_true",
                   help="execute with SIGPROP_QUICK=1 (the tests' small sizes; never commit)")
    p.add_argument("--no-execute", dest="run", action="store_false",
                   help="convert only (no outputs)")
    p.add_argument("--out", default=HERE, help="output folder (default notebooks/)")
    p.add_argument("--timeout", type=int, default=CELL_TIMEOUT, help="seconds per cell")
    args = p.parse_args(argv)
    todo = args.names or names()
    todo = [n[:-6] if n.endswith(".ipynb") else n[:-3] if n.endswith(".py") else n
            for n in (os.path.basename(t) for t in todo)]
    unknown = [n for n in todo if n not in names()]
    if unknown:
        print(f"error: {', '.join(unknown)}: no such notebook source; sources: "
              f"{', '.join(names())}", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    for name in todo:
        path, seconds = build(name, run=args.run, quick=args.quick, out=out,
                              timeout=args.timeout)
        ran = "not executed" if seconds is None else \
            f"executed in {seconds:.0f} s{' (SIGPROP_QUICK=1)' if args.quick else ''}"
        print(f"{os.path.relpath(path)}: {ran}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
