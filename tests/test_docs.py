"""The documentation builds, its code runs, and the public API's docstrings hold.

- ``test_sphinx_build_*``: ``sphinx-build -W -b html`` of a copy of ``docs/`` with the
  gallery executed on tiny subsets (``SKDCCM_DOCS_QUICK=1``), then checks on the HTML:
  every example produced a figure, and the preset tables generated at build time match
  the presets in the code. Skipped when Sphinx, numpydoc or sphinx-gallery are missing
  (they come with the ``docs`` extra).
- ``test_quickstart_*``: the quick start's code blocks run in order, as written (slow) and
  on a small subset (fast).
- ``test_user_guide_*``: the user guide's self-contained examples run and do what the
  text says.
- ``test_doctests``: the ``Examples`` sections of the public modules.
- ``test_numpydoc_*``: the public API's docstrings document every parameter and return
  value.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
GALLERY = sorted(p.stem for p in EXAMPLES.glob("plot_*.py"))


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _has(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------
# code blocks of the .rst pages
# ----------------------------------------------------------------------------------------


def python_blocks(path: Path) -> list[str]:
    """The ``.. code-block:: python`` blocks of an .rst file, dedented, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^(\s*)\.\. code-block:: python\s*$", lines[i])
        if not match:
            i += 1
            continue
        indent = len(match.group(1))
        i += 1
        while i < len(lines) and re.match(r"^\s+:\w+:", lines[i]):  # directive options
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")))
def test_every_python_block_compiles(page):
    blocks = python_blocks(DOCS / page)
    for number, block in enumerate(blocks):
        compile(block, f"{page}[block {number}]", "exec")


def run_blocks(blocks: list[str], tmp_path: Path, timeout: int) -> str:
    """Run the blocks as one script in a fresh interpreter inside ``tmp_path``."""
    script = tmp_path / "page.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "2")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"the page's code failed:\n{script.read_text()}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr[-4000:]}")
    return result.stdout


# Fast variant of the quick start: the same blocks on 300 digits for one epoch. Each
# replacement must apply exactly once, so that a change of the page fails here loudly.
QUICK_SUBSTITUTIONS = {
    "X = digits.images / 16.0": "X = digits.images[:300] / 16.0",
    "y = digits.target ": "y = digits.target[:300] ",
    "max_iter=10,": "max_iter=1,",
}


def test_quickstart_runs_on_a_subset(tmp_path):
    script = "\n".join(python_blocks(DOCS / "quickstart.rst"))
    for old, new in QUICK_SUBSTITUTIONS.items():
        assert script.count(old) == 1, f"quickstart.rst no longer contains {old!r} once"
        script = script.replace(old, new)
    out = run_blocks([script], tmp_path, timeout=300)
    assert "DCCM" in out and "KMeans" in out and "'acc'" in out
    assert "(1, 8, 8)" in out                       # input_shape_ as the text says
    assert "(300, 64) float32" in out               # transform's shape and dtype
    assert out.rstrip().endswith("True")            # the pickled model predicts the same
    assert (tmp_path / "dccm_digits.joblib").is_file()


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path):
    out = run_blocks(python_blocks(DOCS / "quickstart.rst"), tmp_path, timeout=900)
    assert "(1797, 64) float32" in out
    assert out.rstrip().endswith("True")


# ----------------------------------------------------------------------------------------
# the user guide's examples
# ----------------------------------------------------------------------------------------


def _user_guide_block(marker: str) -> str:
    matches = [b for b in python_blocks(DOCS / "user_guide.rst") if marker in b]
    assert len(matches) == 1, f"user_guide.rst: expected one block containing {marker!r}"
    return matches[0]


@pytest.fixture(scope="module")
def small_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:60] / 16.0, digits.target[:60]


def test_user_guide_custom_backbone_trains(small_digits):
    X, _ = small_digits
    namespace: dict = {}
    exec("from skdccm import DCCMClustering\n" + _user_guide_block("class TinyNet"),
         namespace)
    est = namespace["est"].set_params(max_iter=1, random_state=0, n_clusters=3)
    est.fit(X)
    # The module's second output (2 * width = 32 features) feeds the head.
    assert est.module_.embed[0].in_features == 32
    assert est.predict_proba(X[:4]).shape == (4, 3)


def test_user_guide_callbacks_record_and_stop(small_digits):
    X, _ = small_digits
    namespace: dict = {}
    exec("from skdccm import DCCMClustering\n" + _user_guide_block("def stop_when_confident"),
         namespace)
    log = namespace["log"]
    est = namespace["est"].set_params(max_iter=2, random_state=0, n_clusters=3)
    est.fit(X)
    assert len(log.losses) == est.n_iter_ == len(est.history_)
    assert log.losses == [r["loss"] for r in est.history_]
    # The first callback stops once 95 % are confident: it must not have stopped early
    # unless the record says so.
    stopped_early = est.n_iter_ < 2
    assert stopped_early == (est.history_[0]["confident"] >= 0.95)


def test_user_guide_augmentation_and_channels_examples(small_digits):
    X, _ = small_digits
    namespace: dict = {}
    exec("from skdccm import DCCMClustering\n" + _user_guide_block("AffineAugmentation("),
         namespace)
    est = namespace["est"].set_params(max_iter=1, random_state=0, n_clusters=3)
    assert est.fit(X).labels_.shape == (60,)

    # The channel rule as the guide states it: (n, 3, 4, 4) is read channels-last unless
    # channels="first" is given.
    from skdccm import DCCMClustering

    tiny = np.random.default_rng(0).random((12, 3, 4, 4))
    guessed = DCCMClustering(n_clusters=2, max_iter=1, random_state=0,
                             backbone="mlp").fit(tiny)
    told = DCCMClustering(n_clusters=2, max_iter=1, random_state=0, backbone="mlp",
                          channels="first").fit(tiny)
    assert guessed.input_shape_ == (4, 3, 4)
    assert told.input_shape_ == (3, 4, 4)


def test_user_guide_preset_override_example(small_digits):
    X, _ = small_digits
    block = _user_guide_block('preset="paper", learning_rate=3e-4')
    namespace: dict = {}
    exec("from skdccm import DCCMClustering\n" + block, namespace)
    # One pass and one draw per target batch keep the paper preset's loop short here.
    est = namespace["est"].set_params(max_iter=1, random_state=0, n_clusters=3,
                                      passes_per_target=1, draws_per_batch=1)
    est.fit(X)
    assert est.preset_params_["learning_rate"] == 3e-4
    assert est.preset_params_["optimizer"] == "rmsprop"


# ----------------------------------------------------------------------------------------
# doctests
# ----------------------------------------------------------------------------------------

DOCTEST_MODULES = ["skdccm.dccm", "skdccm.crlc", "skdccm.metrics", "skdccm.datasets",
                   "skdccm.losses", "skdccm.augment", "skdccm.networks", "skdccm.training",
                   "skdccm.base", "skdccm.data", "skdccm.distributed", "skdccm.consensus",
                   "skdccm.validation"]
# Modules whose docstrings must hold at least one example.
MUST_HAVE_EXAMPLES = {"skdccm.dccm", "skdccm.crlc", "skdccm.metrics", "skdccm.losses"}


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_doctests(name):
    if not _has(name):
        pytest.skip(f"{name} is not part of this version")
    module = importlib.import_module(name)
    runner_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=runner_flags, verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name} (see output)"
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0, f"{name} has no doctest examples"


# ----------------------------------------------------------------------------------------
# numpydoc validation of the public API
# ----------------------------------------------------------------------------------------

# GL08 no docstring; PR01 a parameter is not documented; PR02 a documented parameter does
# not exist; RT01 no Returns section (functions that return something); SS01 no summary.
NUMPYDOC_CHECKS = {"GL08", "PR01", "PR02", "RT01", "SS01"}
ESTIMATOR_METHODS = ("fit", "predict", "predict_proba", "transform")


def public_api() -> list[str]:
    """Dotted names of every public class, function and estimator method."""
    names = []
    for module_name in ("skdccm.dccm", "skdccm.crlc", "skdccm.metrics", "skdccm.datasets",
                        "skdccm.losses", "skdccm.augment", "skdccm.networks",
                        "skdccm.distributed", "skdccm.consensus", "skdccm.validation"):
        if not _has(module_name):
            continue
        module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None) or [n for n in vars(module)
                                                      if not n.startswith("_")]
        for attribute in public:
            obj = getattr(module, attribute)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if obj.__module__ != module_name:
                continue  # imported from elsewhere; checked where it is defined
            names.append(f"{module_name}.{attribute}")
            if inspect.isclass(obj) and attribute.endswith("Clustering"):
                names += [f"{module_name}.{attribute}.{m}" for m in ESTIMATOR_METHODS
                          if hasattr(obj, m)]
    return names


def _numpydoc_errors(name: str) -> list[str]:
    from numpydoc.validate import validate

    errors = []
    for code, message in validate(name)["errors"]:
        if code not in NUMPYDOC_CHECKS:
            continue
        if code == "PR01" and _is_namedtuple_or_dataclass(name):
            continue  # fields are documented as Attributes (numpydoc reads them as params)
        if code == "RT01" and _returns_none(name):
            continue
        errors.append(f"{name}: {code} {message}")
    return errors


def _resolve(name: str):
    """The object a dotted name refers to: the longest importable module, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(name)


def _is_namedtuple_or_dataclass(name: str) -> bool:
    obj = _resolve(name)
    return inspect.isclass(obj) and (dataclasses.is_dataclass(obj)
                                     or (issubclass(obj, tuple) and hasattr(obj, "_fields")))


def _returns_none(name: str) -> bool:
    obj = _resolve(name)
    if inspect.isclass(obj):
        return True
    annotation = inspect.signature(obj).return_annotation
    return annotation in (None, "None")


@pytest.mark.skipif(bool(_missing("numpydoc")), reason="numpydoc is not installed (docs extra)")
def test_numpydoc_public_api():
    names = public_api()
    assert "skdccm.dccm.DCCMClustering.fit" in names
    errors = [e for name in names for e in _numpydoc_errors(name)]
    assert not errors, "docstrings to complete:\n" + "\n".join(errors)


# ----------------------------------------------------------------------------------------
# the Sphinx build
# ----------------------------------------------------------------------------------------

SPHINX_MISSING = _missing("sphinx", "numpydoc", "sphinx_gallery", "matplotlib",
                          "pydata_sphinx_theme")


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """Build a copy of the docs (the gallery run in quick mode) and return the HTML folder.

    The copy keeps the build's generated files (gallery pages, thumbnails) out of the
    source tree and away from other builds running at the same time.
    """
    if SPHINX_MISSING:
        pytest.skip(f"{', '.join(SPHINX_MISSING)} not installed: pip install -e '.[docs]'")
    work = tmp_path_factory.mktemp("docs_build")
    ignore = shutil.ignore_patterns("_build", "auto_examples", "gen_modules", "generated",
                                    "sg_execution_times.rst", "__pycache__")
    shutil.copytree(DOCS, work / "docs", ignore=ignore)
    shutil.copytree(EXAMPLES, work / "examples", ignore=ignore)
    for extra in ("BENCHMARKS.md", "README.md"):
        if (ROOT / extra).is_file():
            shutil.copy(ROOT / extra, work / extra)
    for folder in ("benchmark_results",):  # images a benchmark report may show
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, work / folder)
    out = work / "html"
    env = {**os.environ, "SKDCCM_DOCS_QUICK": "1", "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "2")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         str(work / "docs"), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (f"sphinx-build -W failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-6000:]}")
    return out


def test_sphinx_build_pages(built_docs):
    for page in ("index", "install", "quickstart", "user_guide", "method", "benchmarks",
                 "api", "changelog", "auto_examples/index"):
        assert (built_docs / f"{page}.html").is_file(), page
    api = (built_docs / "api.html").read_text(encoding="utf-8")
    for name in ("skdccm.DCCMClustering.fit", "skdccm.DCCMClustering.predict_proba",
                 "skdccm.metrics.clustering_accuracy", "skdccm.losses.pseudo_graph_loss"):
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    if _has("skdccm.crlc"):
        assert 'id="skdccm.CRLCClustering"' in api


def test_sphinx_build_preset_values_come_from_the_code(built_docs):
    from skdccm.dccm import PRESETS

    html = " ".join((built_docs / "quickstart.html").read_text(encoding="utf-8").split())
    epochs = PRESETS["default"]["max_iter"]
    assert re.search(rf'the default preset trains <code[^>]*><span class="pre">{epochs}<', html)


def test_sphinx_build_figures_of_the_workflow_and_benchmarks_pages(built_docs):
    workflow = (built_docs / "image_folders.html").read_text(encoding="utf-8")
    assert re.search(r'<img[^>]+src="_images/overview_example.png"', workflow)
    index = (built_docs / "index.html").read_text(encoding="utf-8")
    assert 'href="image_folders.html"' in index
    # The suite figure is drawn from committed results; until it is, a note stands in.
    benchmarks = (built_docs / "benchmarks.html").read_text(encoding="utf-8")
    shown = re.search(r'<img[^>]+src="_images/suite_results.png"', benchmarks) is not None
    assert shown == (DOCS / "_static" / "suite_results.png").is_file()
    assert shown or "suite_results.png not generated yet" in benchmarks


@pytest.mark.parametrize("example", GALLERY)
def test_sphinx_build_gallery_example_ran(built_docs, example):
    page = built_docs / "auto_examples" / f"{example}.html"
    assert page.is_file()
    figures = list((built_docs / "_images").glob(f"sphx_glr_{example}_0*.png"))
    assert figures, f"{example} produced no figure"


class TableReader(HTMLParser):
    """Rows of cell texts of the HTML table with a given id."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.depth = 0          # >0 while inside the wanted table
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _expected_cell(value) -> str:
    # How the method notes show a preset value: floats in %g (also inside tuples), strings
    # quoted, anything else as repr.
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        inner = ", ".join(_expected_cell(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _settings(value) -> dict:
    if value is None:
        return {}
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return dict(value)


PRESET_TABLES = [
    ("dccm-presets", "skdccm.dccm", "PRESETS"),
    ("crlc-presets", "skdccm.crlc", "PRESETS"),
    ("dccm-perturbations", "skdccm.augment", "AFFINE_PRESETS"),
    ("crlc-views", "skdccm.augment", "CONTRASTIVE_PRESETS"),
]


@pytest.mark.parametrize(("table_id", "module", "attribute"), PRESET_TABLES)
def test_sphinx_build_preset_tables_match_code(built_docs, table_id, module, attribute):
    if not _has(module) or not hasattr(importlib.import_module(module), attribute):
        pytest.skip(f"{module}.{attribute} is not part of this version")
    presets = {k: _settings(v) for k, v in
               getattr(importlib.import_module(module), attribute).items()}
    reader = TableReader(table_id)
    reader.feed((built_docs / "method.html").read_text(encoding="utf-8"))
    assert reader.rows, f"table {table_id} not found in method.html"
    header, *rows = reader.rows
    assert header[1:1 + len(presets)] == list(presets)
    keys = {key for settings in presets.values() for key in settings}
    assert {row[0] for row in rows} == keys
    for row in rows:
        for name, cell in zip(presets, row[1:1 + len(presets)], strict=True):
            if row[0] in presets[name]:
                assert cell == _expected_cell(presets[name][row[0]]), (table_id, name, row[0])
            else:
                assert cell == "\N{EM DASH}"


def test_markdown_include_renders_tables_and_code(tmp_path):
    if SPHINX_MISSING:
        pytest.skip(f"{', '.join(SPHINX_MISSING)} not installed")
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from skdccm_docs import markdown_to_nodes
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    from docutils import nodes

    text = textwrap.dedent("""\
        # Results

        Digits, **3 seeds**, `KMeans` beside
        DCCM; see [the paper](https://example.org/p).

        | data | ACC |
        | --- | ---: |
        | digits | 0.95 +- 0.01 |
        | MNIST `5k` | 0.97 |

        - one
        - two *with* stars_ and |pipes| in text

        ```bash
        python -m skdccm bench
        ```

        ![missing plot](plots/none.png)
        """)
    out = markdown_to_nodes(text, tmp_path, tmp_path)
    kinds = [type(n).__name__ for n in out]
    assert kinds == ["rubric", "paragraph", "table", "bullet_list", "literal_block", "note"]
    table = out[2]
    cells = [entry.astext() for entry in table.findall(nodes.entry)]
    assert cells == ["data", "ACC", "digits", "0.95 +- 0.01", "MNIST 5k", "0.97"]
    assert out[1].astext() == "Digits, 3 seeds, KMeans beside DCCM; see the paper."
    assert out[3].astext().count("\n") >= 1 and "|pipes|" in out[3].astext()
    assert out[4].astext() == "python -m skdccm bench"
