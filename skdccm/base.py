"""The estimator base class shared by every method: parameters, validation, fit, predict.

This is the only module that speaks scikit-learn. A method subclass adds its parameters,
its presets and three hooks: ``_build`` (network and objective), ``_train_spec`` and
``_infer`` (probabilities and embedding of a batch).
"""

from __future__ import annotations

import copy
import numbers
import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import sparse
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
)
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import Tensor, nn

from .budget import StageShare, TimeBudget
from .data import (
    PHOTO_MAX_CLUSTER_SIZE,
    ArraySource,
    InputLayout,
    as_array,
    check_image_size,
    check_is_batch,
    foreground_midtones,
    grey_photographs,
    infer_layout,
    is_colour,
    tone_shares,
    value_range,
)
from .distributed import SINGLE_PROCESS, Collective, resolve_strategy
from .metrics import clustering_accuracy
from .neighbours import (
    check_neighbour_space,
    feature_neighbours,
    pixel_components,
    pixel_neighbours,
    resolve_neighbour_count,
    resolve_neighbour_space,
)
from .refinement import CHECK_NEIGHBOURS, GRAPH_NEIGHBOURS, linear_head, refined_labels
from .training import (
    TrainResult,
    TrainSpec,
    resolve_device,
    steps_per_epoch,
    train,
)
from .validation import check_int, is_int

#: dtypes kept as stored; anything else numeric (int64 arrays, mixed frames) is converted
#: to the first one, float32 (lists and tensors are NumPy arrays by then: data.as_array).
#: uint8 must not come first: check_array casts every other dtype to the list's first
#: entry, which would truncate floats and wrap ints.
STORED_DTYPES = (np.float32, np.uint8, np.float64)

#: Inference batches smaller than this are tiled up to it. On CPU, the matrix-multiply kernels
#: take another code path for few rows (on AVX2, 1 to 3 rows; on an AVX-512 Xeon, 1 to 15),
#: so a sample predicted alone would differ in the last bits from the same sample in a batch
#: (scikit-learn's check_methods_subset_invariance). Tiling whole copies of the batch leaves
#: batch statistics (``bn_batch_stats``) unchanged.
MIN_INFER_ROWS = 16


#: ``pretrain_epochs="auto"``: a warm start of this share of the clustering stage's epochs
#: (``max_iter`` after ``min_steps``), for the data the estimator warm-starts
#: (``_auto_warm_start``: colour images for DCCM, images for CRLC).
#: DCCM on a 5,000-image CIFAR-10 subset in 5 minutes (seed 0): ACC 0.227 without, 0.290
#: with a warm start. For DCCM on grey images it is a draw at best (5 seeds, 10 epochs
#: before 25): the digits gained (mean 0.873 -> 0.909, worst 0.797 -> 0.864), MNIST 5k lost
#: (0.889 -> 0.837, worst 0.826 -> 0.788), USPS held (4 seeds, 0.824 -> 0.829). CRLC gains
#: on every grey set of the suite (3 seeds; BENCHMARKS.md).
PRETRAIN_SHARE = 0.4


def check_pretrain_epochs(value: Any, owner: str) -> None:
    """``pretrain_epochs`` must be ``"auto"`` or an int >= 0."""
    check_int(value, "pretrain_epochs", owner, minimum=0, auto=True)


def check_photo_defaults(value: Any, owner: str) -> None:
    """``photo_defaults`` must be ``"auto"``, True or False."""
    if not (isinstance(value, bool | np.bool_) or (isinstance(value, str) and value == "auto")):
        raise ValueError(f"{owner}: photo_defaults={value!r}; choose 'auto', True or False")


def check_refine(value: Any, owner: str) -> None:
    """``refine`` must be ``"auto"``, ``"spectral"`` or None."""
    if not (value is None or (isinstance(value, str) and value in ("auto", "spectral"))):
        raise ValueError(f"{owner}: refine={value!r}; choose 'auto', 'spectral' or None")


def resolve_pretrain_epochs(value: Any, cluster_epochs: int, auto_warm_start: bool) -> int:
    """``pretrain_epochs`` as a count: ``"auto"`` is ``PRETRAIN_SHARE`` of the clustering
    stage's epochs (at least 1) where the estimator warm-starts such data
    (``auto_warm_start``), else 0.

    Examples
    --------
    >>> from skdccm.base import resolve_pretrain_epochs
    >>> [resolve_pretrain_epochs("auto", n, True) for n in (25, 100)]
    [10, 40]
    >>> resolve_pretrain_epochs("auto", 25, False), resolve_pretrain_epochs(3, 25, False)
    (0, 3)
    """
    if isinstance(value, str) and value == "auto":
        return max(1, round(PRETRAIN_SHARE * cluster_epochs)) if auto_warm_start else 0
    return int(value)


class DeepClusteringBase(
    ClusterMixin, TransformerMixin, ClassNamePrefixFeaturesOutMixin, BaseEstimator
):
    """Shared machinery of :class:`~skdccm.DCCMClustering` and :class:`~skdccm.CRLCClustering`.

    Not meant to be used directly. Subclasses define ``__init__`` (parameters only),
    ``_presets`` and the hooks ``_build``, ``_train_spec``, ``_infer`` and
    ``_reorder_clusters``.
    """

    #: preset name -> {parameter: value} for every parameter left as None by the user
    _presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: ``min_steps="auto"``: this many optimiser steps per cluster at least
    _min_steps_per_cluster: ClassVar[int] = 0
    #: ``n_neighbors="auto"``: no neighbours when the mean cluster size is above this
    _neighbour_max_cluster_size: ClassVar[int | None] = None
    #: the ``"default"`` preset's epochs for colour images when ``max_iter`` is not given
    #: (None: the preset's ``max_iter``)
    _colour_max_iter: ClassVar[int | None] = None
    #: passes over the training data after the last run that ``max_time`` leaves time for:
    #: the BatchNorm statistics and the labels
    _final_passes: ClassVar[int] = 2
    #: ``refine="auto"`` also refines grey images with more than ``PHOTO_MAX_CLUSTER_SIZE``
    #: a cluster, where the cut passes the check against the head's clusters
    #: (:func:`~skdccm.refinement.refined_labels` with ``head``)
    _refines_many_a_cluster: ClassVar[bool] = False

    # ------------------------------------------------------------------------------------
    # scikit-learn API
    # ------------------------------------------------------------------------------------

    def fit(self, X, y=None):
        """Train the network on ``X`` and assign ``labels_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, H, W), \
(n_samples, H, W, C) or (n_samples, C, H, W)
            Training samples; lists, torch tensors and lists of PIL images are read as the
            equivalent NumPy array. uint8 images are scaled to [0, 1]; floats are used as
            given.
            2-D input is flat features, or flattened images when ``image_shape`` is set.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        # max_time covers the whole fit, from here.
        budget = TimeBudget(_check_max_time(self.max_time, type(self).__name__),
                            final_passes=self._final_passes)
        params = self._resolved_params()
        check_photo_defaults(self.photo_defaults, type(self).__name__)
        check_refine(self.refine, type(self).__name__)
        check_neighbour_space(self.neighbor_space, params["pretrain_epochs"] != 0,
                              type(self).__name__)
        X, layout = self._validate_input(X, reset=True)
        n_samples = X.shape[0]
        if n_samples < self.n_clusters:
            raise ValueError(f"{type(self).__name__}: n_samples={n_samples} should be >= "
                             f"n_clusters={self.n_clusters}; pass more samples or lower "
                             "n_clusters")

        device = resolve_device(self.device)
        collective, device = resolve_strategy(self.strategy, device, type(self).__name__)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        # Data-parallel: this rank reads its shard only (rows of a memory map stay on disk).
        shard = collective.shard(n_samples, seed)
        local = X if shard is None else X[shard]
        source = ArraySource(local, layout, device)
        low, high = value_range(source)
        bounds = collective.max_(torch.tensor([-low, high], dtype=torch.float64,
                                             device=collective.device)).tolist()
        layout = _with_range(layout, (-bounds[0], bounds[1]))
        self.photo_defaults_ = self._photo_defaults(
            layout.sample_shape, n_samples,
            lambda: _foreground_midtones(source, layout.value_range, collective))
        layout = replace(layout, photo_defaults=self.photo_defaults_)
        source.layout = layout

        # Refinement streams the training data once more after training: under max_time,
        # the last run plans its epochs to leave time for that pass too.
        refine = self._resolve_refine(layout, n_samples, shard is None)
        budget.final_passes += refine is not None
        spec = self._with_min_steps(self._train_spec(params, n_samples, layout), params,
                                    n_samples)
        self.pretrain_epochs_ = resolve_pretrain_epochs(
            params["pretrain_epochs"], spec.max_epochs, self._auto_warm_start(layout))
        # The clustering stage's plan (colour caps and min_steps applied), for progress
        # reports that run while fit does (harness.planned_epochs).
        self._cluster_epochs = spec.max_epochs
        # preset_params_ keeps "auto" as given (like n_neighbors); training reads the count.
        preset_params = params
        params = {**params, "pretrain_epochs": self.pretrain_epochs_}
        warm_start = self.pretrain_epochs_ > 0
        check_neighbour_space(self.neighbor_space, warm_start, type(self).__name__)
        self.neighbor_space_ = resolve_neighbour_space(self.neighbor_space, warm_start,
                                                       layout.sample_shape, layout.photographic)
        self.n_neighbors_ = resolve_neighbour_count(
            params["n_neighbors"], n_samples, self.n_clusters, layout.sample_shape,
            type(self).__name__, self._neighbour_max_cluster_size,
            learned=self.neighbor_space_ == "features", photographic=layout.photographic)
        # Data-parallel: neighbours within this rank's shard. Learned ones are mined after
        # the warm start (_mine_feature_neighbours).
        if self.n_neighbors_ and self.neighbor_space_ == "pixels":
            source.neighbours = pixel_neighbours(source,
                                                 min(self.n_neighbors_, len(source) - 1))

        module, objective = self._seeded_build(layout, params, seed, device)
        generator = torch.Generator().manual_seed(seed)
        device_generator = torch.Generator(device=device).manual_seed(seed + 1)
        result = self._run_training(module, objective, source, spec, params, generator,
                                    device_generator, collective, budget)
        if result.n_epochs == 0:
            raise RuntimeError("training was interrupted before its first epoch ended; "
                               "there is no model to keep")

        self.module_ = result.module.cpu().eval()
        self.device_ = device
        self.input_shape_ = layout.sample_shape
        self.history_ = result.history
        self.n_iter_ = result.n_epochs
        self.stopped_by_time_ = budget.cut_short
        self.preset_params_ = preset_params
        self.refine_agreement_ = self.refine_pixels_ = self.refine_check_ = None
        # An interrupted fit stops at once.
        self.refine_ = (refine is not None and not result.interrupted
                        and self._refine_head(source, layout, seed, refine == "checked"))
        # Number clusters by decreasing size on the training data: labels are then
        # consecutive from 0 even when some clusters end up empty.
        proba, _ = self._infer_array(local, layout, want_embedding=False)
        labels = collective.gather_labels(
            torch.as_tensor(proba.argmax(axis=1), device=collective.device)).cpu().numpy()
        labels = collective.to_input_order(labels)
        sizes = np.bincount(labels, minlength=self.n_clusters)
        order = np.argsort(-sizes, kind="stable")
        self._reorder_clusters(self.module_, torch.as_tensor(order))
        _DEVICE_COPIES.pop(self.module_, None)  # the labelling pass's copy is now stale
        self.labels_ = np.argsort(order)[labels]
        return self

    def predict(self, X):
        """Cluster of each sample: the argmax of the clustering head.

        Parameters
        ----------
        X : array-like, same layout as in ``fit``
            Samples to assign.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster index of each sample, in ``[0, n_clusters)``.
        """
        return self.predict_proba(X).argmax(axis=1)

    def predict_proba(self, X):
        """Soft cluster assignments: the clustering head's softmax.

        Parameters
        ----------
        X : array-like, same layout as in ``fit``
            Samples to assign.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters)
            Rows sum to one (float32).
        """
        check_is_fitted(self, "module_")
        X, layout = self._validate_input(X, reset=False)
        return self._infer_array(X, layout, want_embedding=False)[0]

    def transform(self, X):
        """The learned embedding of each sample (the input of the clustering head).

        Parameters
        ----------
        X : array-like, same layout as in ``fit``
            Samples to embed.

        Returns
        -------
        embedding : ndarray of shape (n_samples, n_features_out)
            float32.
        """
        check_is_fitted(self, "module_")
        X, layout = self._validate_input(X, reset=False)
        return self._infer_array(X, layout, want_embedding=True)[1]

    @property
    def _n_features_out(self) -> int:
        """Width of ``transform``'s output (used by ``get_feature_names_out``)."""
        check_is_fitted(self, "module_")
        probe = torch.zeros(2, *self.input_shape_)
        with torch.no_grad():
            return int(self._infer(self.module_.eval(), probe)[1].shape[1])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.non_deterministic = resolve_device(self.device).type != "cpu"
        except ValueError:
            tags.non_deterministic = True
        tags.input_tags.three_d_array = True
        # transform always returns float32, whatever the input dtype.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        if "module_" in state:  # weights travel on CPU, whatever device they were used on
            state["module_"] = copy.deepcopy(state["module_"]).cpu()
        return state

    # ------------------------------------------------------------------------------------
    # hooks for the methods
    # ------------------------------------------------------------------------------------

    def _build(self, layout: InputLayout, params: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def _seeded_build(self, layout: InputLayout, params: dict[str, Any], seed: int,
                      device: torch.device) -> tuple[nn.Module, nn.Module]:
        """``_build`` with its initialisation seeded by ``seed``, moved to ``device``."""
        # Initialisation draws from torch's global RNG: fork it so the user's stream is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, objective = self._build(layout, params)
        return module.to(device), objective.to(device)

    def _train_spec(self, params: dict[str, Any], n_samples: int,
                    layout: InputLayout) -> TrainSpec:
        raise NotImplementedError

    def _photo_defaults(self, sample_shape: tuple[int, ...], n_samples: int,
                        midtones: Callable[[], float]) -> bool:
        """Whether ``n_samples`` samples of ``sample_shape`` take the defaults chosen for
        colour photographs (``InputLayout.photo_defaults``): colour images, and in the
        ``"default"`` preset grey ones shaded like photographs with few a cluster
        (:func:`skdccm.data.grey_photographs`).

        ``midtones()`` reads the data once for the share of mid-tones in the images'
        foreground (:func:`skdccm.data.foreground_midtones`). ``photo_defaults=True`` or
        ``False`` decides instead."""
        if self.photo_defaults != "auto":
            if self.photo_defaults and len(sample_shape) != 3:
                raise ValueError(f"{type(self).__name__}: photo_defaults=True needs images; X "
                                 "holds flat features (pass image_shape, or leave "
                                 "photo_defaults='auto')")
            return bool(self.photo_defaults)
        return is_colour(sample_shape) or (
            self.preset == "default"
            and grey_photographs(sample_shape, n_samples, self.n_clusters, midtones))

    def _auto_warm_start(self, layout: InputLayout) -> bool:
        """Whether ``pretrain_epochs="auto"`` warm-starts samples of ``layout``: those
        that take the defaults for photographs (DCCM on grey images: see
        ``PRETRAIN_SHARE``)."""
        return layout.photographic

    def _warm_start(self, module: nn.Module, objective: nn.Module, source: ArraySource,
                    spec: TrainSpec, pretrain_epochs: int, generator: torch.Generator,
                    device_generator: torch.Generator, collective: Collective,
                    budget: TimeBudget) -> TrainResult:
        """The warm-start stage both estimators run before clustering: ``pretrain_epochs``
        of ``objective`` (a contrastive loss), one pass per minibatch and no ``tol``, its
        checkpoints in a ``pretrain`` folder, and its share of ``max_time`` in proportion to
        its epochs (``pretrain_epochs / (pretrain_epochs + spec.max_epochs)``). The history
        records carry ``stage="pretrain"``."""
        warm_spec = replace(
            spec, max_epochs=pretrain_epochs, chunk_size=spec.batch_size, passes_per_chunk=1,
            steps_per_batch=1, tol=0.0,
            checkpoint_dir=(str(Path(spec.checkpoint_dir) / "pretrain")
                            if spec.checkpoint_dir else None),
            fingerprint={**spec.fingerprint, "stage": "pretrain"},
        )
        share = StageShare(pretrain_epochs / (pretrain_epochs + spec.max_epochs))
        result = train(module, objective, source, warm_spec, generator, device_generator,
                       callbacks=_as_list(self.callbacks), owner=self, collective=collective,
                       budget=budget, plan=share)
        return replace(result, history=[{**record, "stage": "pretrain"}
                                        for record in result.history])

    def _mine_feature_neighbours(self, module: nn.Module, source: ArraySource) -> None:
        """After the warm start: each sample's ``n_neighbors_`` nearest neighbours in the
        backbone's features, for the clustering stage (``neighbor_space="features"``)."""
        if self.neighbor_space_ != "features" or not self.n_neighbors_:
            return
        was_training = module.training
        module.eval()
        source.neighbours = feature_neighbours(lambda batch: module.backbone(batch)[1],
                                               source, min(self.n_neighbors_, len(source) - 1))
        module.train(was_training)

    def _preset_epochs(self, params: dict[str, Any], layout: InputLayout) -> int:
        """``max_iter`` as resolved, capped at ``_colour_max_iter`` for images that take
        the defaults for photographs in the ``"default"`` preset when the user left
        ``max_iter`` unset."""
        epochs = params["max_iter"]
        if (self._colour_max_iter is not None and self.max_iter is None
                and self.preset == "default" and layout.photographic):
            epochs = min(epochs, self._colour_max_iter)
        return epochs

    def _with_min_steps(self, spec: TrainSpec, params: dict[str, Any],
                        n_samples: int) -> TrainSpec:
        """The preset's epochs, stretched so that a small data set still gets ``min_steps``
        optimiser steps (ORL's 400 faces make 4 steps an epoch at batch size 128); an
        explicit ``max_iter`` is used as given."""
        min_steps = params.get("min_steps", 0)
        if min_steps == "auto":
            min_steps = self._min_steps_per_cluster * self.n_clusters
        if self.max_iter is not None or min_steps == 0:
            return spec
        epochs = -(-int(min_steps) // steps_per_epoch(n_samples, spec))
        return replace(spec, max_epochs=max(spec.max_epochs, epochs))

    def _run_training(self, module: nn.Module, objective: nn.Module, source: ArraySource,
                      spec: TrainSpec, params: dict[str, Any], generator: torch.Generator,
                      device_generator: torch.Generator,
                      collective: Collective = SINGLE_PROCESS,
                      budget: TimeBudget | None = None) -> TrainResult:
        """Run the training loop once. A method may override it to train in stages or to
        choose among heads after training (it may then set fitted attributes); ``budget``
        (``max_time``) then covers every stage."""
        return train(module, objective, source, spec, generator, device_generator,
                     callbacks=_as_list(self.callbacks), owner=self, collective=collective,
                     budget=budget)

    def _infer(self, module: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        """``(probabilities (B, K), embedding (B, E))`` of a batch, in eval mode."""
        raise NotImplementedError

    def _reorder_clusters(self, module: nn.Module, order: Tensor) -> None:
        """Permute the clustering head's outputs so that new cluster j is old ``order[j]``."""
        raise NotImplementedError

    def _infer_head_input(self, module: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
        """``(probabilities (B, K), input (B, D) of the clustering head's last linear
        layer)`` of a batch, in eval mode, from one forward pass."""
        raise NotImplementedError

    def _set_head(self, module: nn.Module, weight: Tensor, bias: Tensor) -> None:
        """Make the clustering head's logits ``head_input @ weight.T + bias`` (K rows)."""
        raise NotImplementedError

    def _resolve_refine(self, layout: InputLayout, n_samples: int,
                        single_process: bool) -> str | None:
        """How this fit ends (``refine``): ``"spectral"`` (refined), ``"checked"`` (refined
        where the cut passes the check against the head's clusters) or None (the head as
        trained). ``"auto"``, in the ``"default"`` preset (the papers' presets keep their
        heads): ``"spectral"`` for images that take the defaults for photographs with at most
        ``PHOTO_MAX_CLUSTER_SIZE`` samples a cluster on average; ``"checked"`` for grey
        images with more a cluster where the estimator's ``_refines_many_a_cluster`` says
        so. A data-parallel rank sees its shard only, so it does not refine."""
        if self.refine is None:
            return None
        if not single_process:
            if self.refine == "spectral":
                warnings.warn(f"{type(self).__name__}: refine='spectral' needs all samples "
                              "in one process; a data-parallel fit keeps its head unrefined",
                              UserWarning, stacklevel=3)
            return None
        if self.refine == "spectral":
            return "spectral"
        if self.preset != "default":
            return None
        few_a_cluster = n_samples <= PHOTO_MAX_CLUSTER_SIZE * self.n_clusters
        if layout.photographic and few_a_cluster:
            return "spectral"
        if (self._refines_many_a_cluster and not few_a_cluster
                and not is_colour(layout.sample_shape)):
            return "checked"
        return None

    def _refine_head(self, source: ArraySource, layout: InputLayout, seed: int,
                     checked: bool) -> bool:
        """Spectral labels on the head's input features of the training data, written back
        as the head's last layer (:mod:`skdccm.refinement`), with the pixels' graph added for
        grey images where the embedding's clusters leak. ``checked``: only where the cut
        leaks no more than the head's own clusters on the wider check graph. Returns
        whether the head was replaced. ``refine_agreement_`` is the share of samples that
        keep their cluster (clusters matched one to one), ``refine_pixels_`` whether the
        pixels' graph was added (both stay None when the head is kept), ``refine_check_``
        the check's two leaks (None unchecked)."""
        probas, features = self._infer_array(source.array, layout, want_embedding=True,
                                             infer=self._infer_head_input)
        head = probas.argmax(axis=1)
        # On colour photographs the pixels' neighbours follow colour and background more
        # than content (CIFAR-10: spectral clusters of the pixels 0.24-0.25 ACC, KMeans
        # 0.21-0.22), so only grey images get them.
        pixels = None if is_colour(layout.sample_shape) else (
            lambda: pixel_components(source).cpu().numpy())
        found = refined_labels(features, self.n_clusters, pixels=pixels,
                               head=head if checked else None, random_state=seed)
        self.refine_check_ = found.check
        checked_at = "" if found.check is None else (
            f"on a {CHECK_NEIGHBOURS}-neighbour graph the spectral labels leak "
            f"{found.check[1]:.2%} of their links, the head's clusters {found.check[0]:.2%}")
        if not found.kept:
            if self.verbose:
                print(f"refine: the head is kept ({checked_at})", flush=True)
            return False
        weight, bias = linear_head(features, found.labels, self.n_clusters)
        self._set_head(self.module_, torch.from_numpy(weight), torch.from_numpy(bias))
        _DEVICE_COPIES.pop(self.module_, None)
        self.refine_agreement_ = float(clustering_accuracy(head, found.labels))
        self.refine_pixels_ = found.pixels
        if self.verbose:
            graph = "+ the pixels' graph " if found.pixels else ""
            print(f"refine: spectral labels on a {GRAPH_NEIGHBOURS}-neighbour graph of the "
                  f"head's input {graph}(the embedding's clusters leak {found.leak:.1%} of "
                  f"their links){checked_at and '; ' + checked_at}; "
                  f"{self.refine_agreement_:.1%} of samples keep their cluster", flush=True)
        return True

    # ------------------------------------------------------------------------------------
    # shared helpers
    # ------------------------------------------------------------------------------------

    def _resolved_params(self) -> dict[str, Any]:
        """Preset values for every parameter left as None, then explicit values on top."""
        name = type(self).__name__
        if self.preset not in self._presets:
            raise ValueError(f"{name}: unknown preset {self.preset!r}; choose one of "
                             + ", ".join(repr(p) for p in self._presets))
        if not is_int(self.n_clusters):
            raise TypeError(f"{name}: n_clusters must be an int, got {self.n_clusters!r}")
        if self.n_clusters < 1:
            # 1 is allowed, as in KMeans: a single cluster (scikit-learn's checks use it).
            raise ValueError(f"{name}: n_clusters={self.n_clusters} must be at least 1")
        params = dict(self._presets[self.preset])
        for key in params:
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        for key in ("max_iter", "batch_size", "predict_batch_size", "checkpoint_every"):
            value = params.get(key, getattr(self, key, None))
            if value is not None:
                check_int(value, key, name)
        for key, value in (("learning_rate", params.get("learning_rate", 1.0)),
                           ("tol", self.tol)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{name}: {key}={value!r} must be a number")
        learning_rate = params.get("learning_rate", 1.0)
        if not np.isfinite(learning_rate) or learning_rate <= 0:  # inf would diverge later
            raise ValueError(f"{name}: learning_rate={learning_rate!r} must be > 0 and "
                             "finite")
        check_int(params.get("min_steps", 0), "min_steps", name, minimum=0, auto=True)
        if self.tol < 0:
            raise ValueError(f"{name}: tol={self.tol!r} must be >= 0")
        if self.precision not in ("auto", "float32", "bf16", "fp16"):
            raise ValueError(f"{name}: precision={self.precision!r}; choose 'auto', "
                             "'float32', 'bf16' or 'fp16'")
        if self.verbose not in (0, 1, 2, True, False):
            raise ValueError(f"{name}: verbose={self.verbose!r} must be 0, 1 or 2")
        return params

    def _validate_input(self, X, *, reset: bool) -> tuple[np.ndarray, InputLayout]:
        name = type(self).__name__
        X = as_array(X, name)  # before check_array casts lists and tensors to float32
        shape = None
        if not reset and not sparse.issparse(X):  # sparse: scikit-learn's advice comes first
            # Compare image sizes before scikit-learn's feature-count check, whose message
            # would speak of "features" where the user passed images of another size.
            # 2-D input given to a model fitted on 3-D/4-D images is compared the same way;
            # flat-on-flat keeps scikit-learn's own feature-count message.
            shape = _shape_of(X)
            if shape is not None:
                check_is_batch(shape, self.input_shape_, name)
            if shape is not None and (len(shape) > 2 or (
                    len(shape) == 2 and self.image_shape is None
                    and len(self.input_shape_) != 1)):
                layout = infer_layout(shape, np.dtype(np.float32), image_shape=None,
                                      channels=self.channels, owner=name)
                check_image_size(layout, self.input_shape_, name)
        _check_numeric_dtype(X, name)
        checks = {"allow_nd": True, "dtype": list(STORED_DTYPES), "accept_sparse": False,
                  "ensure_min_samples": 2 if reset else 1}
        if not reset and shape is not None and len(shape) > 2:
            # The image size was compared with input_shape_ above. scikit-learn's feature
            # count (shape[1]) would reject equivalent forms: (n, 1, H, W) after (n, H, W).
            X = check_array(X, estimator=self, input_name="X", **checks)
        else:
            X = validate_data(self, X, reset=reset, **checks)
        # After fit, images may come in any equivalent form: image_shape only unflattens 2-D X.
        image_shape = self.image_shape if reset or X.ndim == 2 else None
        layout = infer_layout(X.shape, X.dtype, image_shape=image_shape,
                              channels=self.channels, owner=name)
        if not reset:
            check_image_size(layout, self.input_shape_, name)
        return X, layout

    def _infer_array(self, X: np.ndarray, layout: InputLayout, *, want_embedding: bool,
                     infer: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Stream ``X`` through the network in fixed batches, without gradient (``infer``:
        see ``_stream``)."""
        device = self._inference_device()
        module = _on_device(self.module_, device)
        module.eval()
        batch_size = int(self.predict_batch_size)
        while True:
            try:
                return self._stream(module, ArraySource(X, layout, device), batch_size,
                                    want_embedding, infer)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                warnings.warn(f"CUDA out of memory while predicting; retrying with "
                              f"predict_batch_size={batch_size}", RuntimeWarning, stacklevel=3)

    def _stream(self, module: nn.Module, source: ArraySource, batch_size: int,
                want_embedding: bool,
                infer: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] | None = None,
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """``infer`` (default ``_infer``) of every batch of ``source``, as arrays."""
        infer = infer or self._infer
        # Outputs are written into preallocated arrays: a list of per-batch arrays fragments
        # the heap and makes peak memory grow with n (benchmarks/memory.py).
        probas: np.ndarray | None = None
        embeddings: np.ndarray | None = None
        start = 0
        with torch.no_grad():
            for batch in source.batches(batch_size):
                n_rows = batch.shape[0]
                if n_rows == 1 and _uses_batch_statistics(module):
                    # Copies of one sample have zero variance: every input would get the
                    # same output.
                    raise ValueError(
                        f"{type(self).__name__} normalises with the statistics of the batch "
                        "it predicts (bn_batch_stats=True), so it cannot predict a single "
                        "sample; pass it together with other samples, or fit with "
                        "bn_batch_stats=False")
                if n_rows < MIN_INFER_ROWS:
                    copies = -(-MIN_INFER_ROWS // n_rows)
                    batch = batch.repeat(copies, *([1] * (batch.dim() - 1)))  # (copies*B, ...)
                proba, embedding = infer(module, batch)
                proba, embedding = proba[:n_rows], embedding[:n_rows]
                if probas is None:
                    probas = np.empty((len(source), proba.shape[1]), dtype=np.float32)
                    if want_embedding:
                        embeddings = np.empty((len(source), embedding.shape[1]), np.float32)
                probas[start:start + n_rows] = proba.float().cpu().numpy()
                if embeddings is not None:
                    embeddings[start:start + n_rows] = embedding.float().cpu().numpy()
                start += n_rows
        return probas, embeddings

    def _inference_device(self) -> torch.device:
        """The training device when it is available here, else CPU (a GPU model on a laptop)."""
        device = getattr(self, "device_", torch.device("cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            return torch.device("cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            return torch.device("cpu")
        return device

    def _fingerprint(self, layout: InputLayout, params: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this fit."""
        return {"estimator": type(self).__name__, "n_clusters": int(self.n_clusters),
                "sample_shape": list(layout.sample_shape),
                "backbone": str(self.backbone), "preset": str(self.preset),
                "photo_defaults": bool(layout.photographic)}


#: Each fitted network's copies on other devices, for prediction, keyed by the network:
#: predicting batch after batch on a GPU copies the weights there once, not at every call.
#: Kept off the estimator, so that prediction writes nothing to it and pickles never carry
#: a device copy; a refit's new network starts without copies, and a network's copies are
#: freed with it.
_DEVICE_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[torch.device,
                                                          tuple[tuple, nn.Module]]] = (
    weakref.WeakKeyDictionary())


def _on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` itself where it already lives on ``device``, else its copy there.

    The copy is made once and reused while the weights are unchanged: a copy made before
    the network was modified in place (``load_state_dict``, fit's renumbering of clusters)
    is replaced, recognised by the tensors' storage and in-place version counters.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.device == device for t in tensors):
        return module
    weights = tuple((t.data_ptr(), t._version) for t in tensors)
    copies = _DEVICE_COPIES.setdefault(module, {})
    cached = copies.get(device)
    if cached is None or cached[0] != weights:
        copies.pop(device, None)  # free the stale copy before making the new one
        cached = (weights, copy.deepcopy(module).to(device))
        copies[device] = cached
    return cached[1]


def _with_range(layout: InputLayout, bounds: tuple[float, float]) -> InputLayout:
    return replace(layout, value_range=bounds)


def _foreground_midtones(source: ArraySource, value_range: tuple[float, float],
                         collective: Collective) -> float:
    """:func:`foreground_midtones` of the whole training data (data-parallel: the ranks'
    shards weigh equally, as their sizes differ by one at most)."""
    shares = collective.mean_(torch.tensor(tone_shares(source, value_range),
                                           dtype=torch.float64, device=collective.device))
    return foreground_midtones(*shares.tolist())


def _shape_of(X) -> tuple[int, ...] | None:
    shape = getattr(X, "shape", None)
    if shape is None:
        try:
            shape = np.shape(X)
        except (ValueError, TypeError):  # ragged lists; array-likes refusing __array_function__
            return None
    return tuple(shape)


def _uses_batch_statistics(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats
               for m in module.modules())


def _check_numeric_dtype(X, name: str) -> None:
    """Reject arrays of strings or complex numbers with a message that says what to pass."""
    dtype = getattr(X, "dtype", None)
    if not isinstance(dtype, np.dtype):  # lists, DataFrames: scikit-learn's checks apply
        return
    if dtype.kind in "USV":
        raise ValueError(f"{name}: X holds {dtype} values, not numbers; pass images or "
                         "features as a numeric array (uint8 or float)")
    if dtype.kind == "c":
        # "Complex data not supported" is the phrase scikit-learn's checks look for.
        raise ValueError(f"{name}: Complex data not supported (X has dtype {dtype}); pass "
                         "real values, e.g. X.real or np.abs(X)")


def _check_max_time(max_time, name: str) -> float | None:
    """``max_time`` as float seconds (None: no budget); infinity means no budget too."""
    if max_time is None:
        return None
    if not isinstance(max_time, numbers.Real) or isinstance(max_time, bool):
        raise TypeError(f"{name}: max_time={max_time!r} must be a number of seconds or None")
    if not max_time > 0:  # also rejects NaN
        raise ValueError(f"{name}: max_time={max_time!r} must be > 0 seconds, or None for no "
                         "time limit")
    return float(max_time)


def _as_list(callbacks) -> list:
    if callbacks is None:
        return []
    if callable(callbacks) or hasattr(callbacks, "on_epoch_end"):
        return [callbacks]
    try:
        callbacks = list(callbacks)
    except TypeError:
        callbacks = [callbacks]
    for callback in callbacks:
        if not (callable(callback) or hasattr(callback, "on_epoch_end")):
            raise TypeError(f"callbacks must be callables or objects with an on_epoch_end "
                            f"method (or a list of them); got {callback!r}")
    return callbacks
