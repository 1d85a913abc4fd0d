"""Tests of benchmarks/plot_suite.py: the suite's results figure, read from stored CSVs."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from skdccm import cli
from skdccm.suite import SUITE_COLUMNS

pytest.importorskip("matplotlib")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import plot_suite  # noqa: E402

TINY = ["--max-iter", "1", "--batch-size", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """A real suite folder: digits (60 images), the three methods, two seeds, one epoch."""
    out = tmp_path_factory.mktemp("suite")
    rc = cli.main(["benchmark", "--suite", "--sets", "digits", "--methods",
                   "dccm,crlc,kmeans", "--seeds", "2", "--n-samples", "60", "--out", str(out),
                   "--no-plots", "--no-warmup", *TINY])
    assert rc == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_figure_is_written_from_a_suite_folder(tiny_suite, tmp_path, capsys):
    png = tmp_path / "figures" / "suite.png"
    assert plot_suite.main([str(tiny_suite), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in capsys.readouterr().out


def test_scores_are_those_of_the_csvs(tiny_suite):
    (digits,) = plot_suite.read_suite(tiny_suite)
    assert (digits.name, digits.n_samples, digits.n_clusters) == ("digits", 60, 10)
    assert list(digits.methods) == ["dccm", "crlc", "kmeans"]  # suite.csv's order
    runs = _rows(tiny_suite / "digits" / "results.csv")
    for method, scores in digits.methods.items():
        expected = {int(r["seed"]): float(r["acc"]) for r in runs if r["method"] == method}
        assert scores.seeds == expected
        assert scores.worst == pytest.approx(min(expected.values()), abs=1e-6)
        assert scores.mean == pytest.approx(np.mean(list(expected.values())), abs=1e-6)


def _write_suite_csv(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "suite.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUITE_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _row(name: str, method: str, mean: float, worst: float, runs: int = 3) -> dict:
    return {"set": name, "method": method, "runs": runs, "n_samples": 5000, "n_clusters": 10,
            "acc_mean": mean, "acc_worst": worst, "worst_seed": 1}


def _artist(fig, gid: str):
    (found,) = [a for a in [*fig.axes[0].collections, *fig.axes[0].lines]
                if a.get_gid() == gid]
    return found


def test_each_seed_the_mean_and_the_worst_seed_are_drawn(tmp_path):
    folder = tmp_path / "suite"
    _write_suite_csv(folder, [_row("digits", "kmeans", 0.79, 0.785),
                              _row("digits", "crlc", 0.9, 0.8),
                              _row("cifar10-5k", "crlc", 0.3, 0.2),
                              _row("cifar10-5k", "agglomerative", 0.2, 0.2),
                              _row("orl", "dccm", 0.0, 0.0, runs=0)])
    (folder / "digits").mkdir()
    (folder / "digits" / "results.csv").write_text(
        "method,seed,status,acc\nkmeans,0,ok,0.79\nkmeans,1,ok,0.785\nkmeans,2,ok,0.795\n"
        "crlc,0,ok,0.95\ncrlc,1,ok,0.8\ncrlc,2,ok,0.95\ncrlc,3,failed,\n")
    sets = plot_suite.read_suite(folder)
    # Unchosen methods and sets without a finished run are left out; CIFAR-10 is kept
    # without per-seed values (no results.csv), with its mean and worst seed.
    assert [(s.name, list(s.methods)) for s in sets] == [("digits", ["kmeans", "crlc"]),
                                                         ("cifar10-5k", ["crlc"])]
    assert sets[1].methods["crlc"].seeds == {}
    fig = plot_suite.plot_suite(sets)

    offsets = _artist(fig, "seeds:digits:crlc").get_offsets()
    assert sorted(offsets[:, 1]) == [0.8, 0.95, 0.95]
    assert len(set(offsets[:, 0])) == 3            # seeds side by side, each one visible
    assert _artist(fig, "worst:digits:crlc").get_offsets()[0, 1] == 0.8
    assert _artist(fig, "worst:cifar10-5k:crlc").get_offsets()[0, 1] == 0.2
    (mean,) = _artist(fig, "mean:cifar10-5k:crlc").get_segments()
    assert mean[:, 1].tolist() == [0.3, 0.3]
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[1].startswith("cifar10-5k") and "K=10" in labels[1]


def test_a_folder_without_suite_csv_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmark --suite"):
        plot_suite.read_suite(tmp_path)
    _write_suite_csv(tmp_path, [_row("digits", "agglomerative", 0.8, 0.8)])
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_suite.plot_suite(plot_suite.read_suite(tmp_path))


def test_a_later_folder_replaces_a_methods_results(tmp_path):
    # One method re-run alone after its default changed: its rows come from the later
    # folder, every other method's from the earlier one; sets keep their first order.
    old, new = tmp_path / "old", tmp_path / "new"
    _write_suite_csv(old, [_row("digits", "dccm", 0.9, 0.85), _row("digits", "crlc", 0.6, 0.5),
                           _row("orl", "crlc", 0.61, 0.6)])
    _write_suite_csv(new, [_row("orl", "crlc", 0.7, 0.65), _row("digits", "crlc", 0.95, 0.9),
                           _row("usps", "crlc", 0.92, 0.91)])
    sets = plot_suite.merge_suites([plot_suite.read_suite(old), plot_suite.read_suite(new)])
    assert [s.name for s in sets] == ["digits", "orl", "usps"]
    assert {m: r.mean for m, r in sets[0].methods.items()} == {"dccm": 0.9, "crlc": 0.95}
    assert sets[1].methods["crlc"].worst == 0.65
    png = tmp_path / "merged.png"
    assert plot_suite.main([str(old), str(new), "--out", str(png)]) == 0
    assert png.is_file()


def test_folders_that_disagree_on_a_set_are_refused(tmp_path):
    _write_suite_csv(tmp_path / "a", [_row("digits", "crlc", 0.9, 0.8)])
    _write_suite_csv(tmp_path / "b", [{**_row("digits", "dccm", 0.9, 0.8), "n_samples": 60}])
    suites = [plot_suite.read_suite(tmp_path / f) for f in "ab"]
    with pytest.raises(ValueError, match="not the same set"):
        plot_suite.merge_suites(suites)
