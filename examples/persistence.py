"""Save a fitted clusterer, load it elsewhere, and predict: joblib, pickle and clone.

The pickle holds the network's weights on CPU whatever device trained them, so a model fitted
on a GPU server loads and predicts on a laptop without one (prediction then runs on CPU).
Nothing else travels: no data loader, progress bar or device handle is kept on the estimator.

Run::

    python examples/persistence.py            # all digits, the default preset
    python examples/persistence.py --quick    # 200 digits, 1 epoch

``SKDCCM_EXAMPLE_QUICK=1`` in the environment has the same effect as ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import clone

from skdccm import DCCMClustering
from skdccm.datasets import load_digits_images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the "
                        "script works (also SKDCCM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get("SKDCCM_EXAMPLE_QUICK") == "1"
    n_samples, max_iter = (200, 1) if quick else (None, None)

    images, _ = load_digits_images()                     # (1797, 8, 8) uint8
    images = images[:n_samples]
    est = DCCMClustering(n_clusters=10, max_iter=max_iter, random_state=0).fit(images)
    print(f"trained on {est.device_} for {est.n_iter_} epochs")

    with tempfile.TemporaryDirectory() as folder:
        # joblib: the usual way to store scikit-learn models.
        path = Path(folder) / "dccm_digits.joblib"
        joblib.dump(est, path)
        loaded = joblib.load(path)
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")

    # Every output is identical after the round trip.
    for method in ("predict", "predict_proba", "transform"):
        same = np.array_equal(getattr(loaded, method)(images), getattr(est, method)(images))
        print(f"{method:>13} identical after joblib round trip: {same}")

    # pickle works the same way (it is what joblib and multiprocessing use underneath).
    unpickled = pickle.loads(pickle.dumps(est))
    assert np.array_equal(unpickled.predict(images), est.predict(images))

    # The weights travel on CPU; device_ still says where training ran, and prediction
    # falls back to CPU where that device is missing.
    devices = {str(t.device) for t in loaded.module_.state_dict().values()}
    print(f"weights in the loaded model live on: {', '.join(sorted(devices))}")

    # clone copies the parameters, not the fitted state: a fresh estimator to train again.
    twin = clone(est)
    print(f"clone is fitted: {hasattr(twin, 'module_')}; same parameters: "
          f"{twin.get_params() == est.get_params()}")
    return loaded


if __name__ == "__main__":
    main()
