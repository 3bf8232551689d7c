"""A segmentation job and the layers its result becomes, shared by every dock that segments.

:func:`segmentation_job` is the generator a dock runs in a worker thread (load the checkpoint,
segment, measure the reconstruction error). :func:`result_steps` turns what it returns into
layers of a viewer, as a list of small steps, so that a dock can add one layer per turn of the
event loop and keep each stall short. The Segment dock and the fine-tune panel's re-segment both
go through here, so a result looks the same whoever asked for it.

Layer contract (read by the Review dock)
----------------------------------------
Every layer is named by the model that made it, so the results of two models never mix:
``"<image> pancreas/tumour [<model>]"`` (Labels, canonical uint8, ``metadata[ROLE] =
SEGMENTATION``) with ``metadata[PREDICTION]``, an unedited copy of the model's labels, and
``metadata[MODEL]``, a dict with ``arch``, ``checkpoint`` (file path), ``name``, ``device`` and
``precision``. Models with a restoration decoder add ``"<image> reconstruction [<model>]"`` and
``"<image> error of reconstruction [<model>]"`` (Image layers on the CT's geometry with
``metadata[ROLE]`` and ``metadata[MODEL]``), and probability layers when asked for. A new run
replaces the same model's layers of that image (never edited labels) and removes those of its
layers it did not make this time (probabilities not asked for again); other models' layers stay.

No Qt here: napari's layer and viewer models only.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer

from src_models.inference.engine import reconstruction_error, segment
from src_models.inference.results import SegmentationResult
from src_models.io import Volume, VolumeError, check_ct
from src_models.io.orientation import to_canonical
from src_models.io.volume import format_ml
from src_models.models.checkpoints import tumour_warning, validated_structures
from src_models.models.store import load_checkpoint

from ._layers import (
    AFFINE,
    DERIVED_ROLES,
    METADATA_KEYS,
    MODEL,
    PANCREAS_PROBABILITY,
    PREDICTION,
    RECONSTRUCTION,
    RECONSTRUCTION_ERROR,
    ROLE,
    SEGMENTATION,
    SHAPE,
    SOURCE,
    TUMOUR_PROBABILITY,
    geometry_metadata,
    labels_layer_data,
    layer_to_volume,
)

#: Percentiles of the reconstruction error (over the voxels the decoder restored) that set the
#: error layer's contrast: the typical error shows dark, and only the places where the decoder
#: cannot restore the scan, the ones the model does not understand, stand out bright.
ERROR_PERCENTILES = (50.0, 99.5)

#: Every this many voxels along each axis go into the percentiles: enough for a stable figure,
#: cheap on a 512 x 512 x 240 CT.
ERROR_SAMPLE_STEP = 4

#: How probability layers are drawn: a perceptual colour map without the label colours' orange
#: and magenta, blended over the CT (not added to it, which saturates to white like bone), with
#: a colour bar as the scale.
PROBABILITY_DISPLAY = {
    "colormap": "viridis",
    "contrast_limits": (0.0, 1.0),
    "blending": "translucent",
    "opacity": 0.6,
    "colorbar": True,
}

#: What the error layer shows, for a radiologist (the Segment dock's readout says it).
ERROR_EXPLANATION = (
    "reconstruction error: bright where the model's restoration decoder cannot rebuild the "
    "scan from what the network sees, i.e. where the model does not understand it (metal, "
    "contrast, anatomy unlike its training scans); scaled from the typical error (median, "
    "black) to the rarest 0.5 % (white)"
)

#: Modules napari imports the first time a Labels layer is made (its features table and brush):
#: 0.3 s. Imported when a dock opens, so that the first result does not freeze the viewer
#: (imported in the worker they hold the GIL and freeze it at the start of the run instead).
_LAYER_DEPENDENCIES = ("pandas", "skimage.color", "skimage.exposure")


def import_layer_dependencies() -> None:
    """Import what napari needs for the first Labels layer, ahead of time."""
    for name in _LAYER_DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:  # a napari that no longer needs it
            continue


def model_name(model: dict[str, Any] | None) -> str:
    """Short name of the model of a ``metadata[MODEL]`` record (its checkpoint's stem)."""
    if not model:
        return "unknown model"
    return str(model.get("name") or Path(str(model.get("checkpoint", "model"))).stem)


#: What a role's layer is called where the role's own word would read like another's: at
#: 1366 x 768 napari's layer list cuts the middle of long names, and "ct reconstruction error
#: [dsmsc_unet]" showed as "ct reconstruc… [dsmsc_unet]", like the reconstruction (two testers).
LAYER_WORDS = {RECONSTRUCTION_ERROR: "error of reconstruction"}


def layer_name(image_name: str, what: str, model: dict[str, Any] | None) -> str:
    """Name of a result layer, ``"<image> <what> [<model>]"``: ``"ct reconstruction [unet]"``;
    ``what`` is a role (:data:`LAYER_WORDS` words some) or a word."""
    return f"{image_name} {LAYER_WORDS.get(what, what)} [{model_name(model)}]"


def labels_name(image_name: str, model: dict[str, Any] | None) -> str:
    """Name of the labels layer a segmentation of ``image_name`` by ``model`` gets."""
    return layer_name(image_name, "pancreas/tumour", model)


def _placement(layer: Image) -> dict[str, tuple[float, ...]]:
    """(slice, row, column) ``scale`` and ``translate``; a 2D layer is one slice, 1 mm at 0."""
    scale = tuple(float(v) for v in layer.scale[-3:])
    translate = tuple(float(v) for v in layer.translate[-3:])
    if layer.ndim == 2:
        scale, translate = (1.0, *scale), (0.0, *translate)
    return {"scale": scale, "translate": translate}


def volume_of_layer(layer: Image) -> Volume:
    """The image layer as a :class:`Volume` on its file grid.

    Layers opened by napari-dsms carry the file's affine (:func:`layer_to_volume`, exact). Any
    other 3D layer is taken as axial slices already in the radiological layout (slices towards
    Superior, rows towards Posterior, columns towards the patient's Left) with ``scale`` as voxel
    size in mm and ``translate`` as the position of voxel 0, which is how napari-dsms lays
    out its own layers; a 2D layer is one such slice, 1 mm thick.

    Raises
    ------
    VolumeError
        The layer is neither 2D nor 3D, or its data no longer fit its recorded file grid.
    """
    if AFFINE in layer.metadata and SHAPE in layer.metadata:
        return layer_to_volume(layer)
    data = np.asarray(layer.data)
    if data.ndim not in (2, 3):
        raise VolumeError(
            f"{layer.name}: segmentation needs a 2D slice or a 3D image, this one is {data.ndim}D"
        )
    placement = _placement(layer)
    s, p, lft = placement["scale"]
    t_s, t_p, t_l = placement["translate"]
    data = data[None] if data.ndim == 2 else data
    affine = np.array(
        [
            [0.0, 0.0, -lft, -t_l],  # R = -L
            [0.0, -p, 0.0, -t_p],  # A = -P
            [s, 0.0, 0.0, t_s],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return Volume(data, affine, source="", description=layer.name)


@dataclass(frozen=True)
class SegmentationOutput:
    """What :func:`segmentation_job` returns: the engine's result, the checkpoint's metadata,
    the reconstruction error (canonical float16 in window units, or ``None``) and the contrast
    limits that make it readable (:func:`error_limits`)."""

    result: SegmentationResult
    meta: dict[str, Any]
    error: np.ndarray | None
    error_contrast: tuple[float, float] = (0.0, 1.0)

    def model_record(self) -> dict[str, Any]:
        """``metadata[MODEL]`` of the labels layer: which model made it, where and how."""
        stats = self.result.stats
        return {
            "arch": self.meta["arch"],
            "checkpoint": str(self.meta["path"]),
            "name": Path(self.meta["path"]).stem,
            "device": stats.device,
            "precision": stats.precision,
            "validated_structures": list(validated_structures(self.meta)),
            "hu_window": [float(v) for v in self.meta["preprocessing"]["hu_window"]],
        }


def segmentation_job(
    volume: Volume,
    checkpoint: str,
    device: str,
    batch_size: int | None,
    probabilities: bool,
) -> Generator[tuple[int, int], None, SegmentationOutput]:
    """Load the checkpoint and segment ``volume``, in a worker thread.

    Yields ``(slices done, total)``; returns a :class:`SegmentationOutput`.
    """
    for text in check_ct(volume):  # the worker shows them as notifications
        warnings.warn(text, UserWarning, stacklevel=2)
    model, meta = load_checkpoint(checkpoint)
    result = yield from segment(
        volume, model, meta, device=device, batch_size=batch_size, probabilities=probabilities
    )
    error = None
    if result.canonical_reconstruction is not None:
        canonical_hu = to_canonical(volume.array, volume.affine)[0]
        error = reconstruction_error(
            canonical_hu, result.canonical_reconstruction, meta["preprocessing"]["hu_window"]
        )
    return SegmentationOutput(result, meta, error, error_limits(error))


def error_limits(error: np.ndarray | None) -> tuple[float, float]:
    """Contrast limits for a reconstruction error map: :data:`ERROR_PERCENTILES` of the errors
    where the decoder restored something (outside the body the reconstruction is the input
    itself, error 0), from a regular sample of the voxels."""
    if error is None:
        return (0.0, 1.0)
    step = ERROR_SAMPLE_STEP
    sample = np.asarray(error[::step, ::step, ::step], dtype=np.float32)
    sample = sample[sample > 0]
    if sample.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(sample, ERROR_PERCENTILES))
    return (low, high) if high > low else (low, low + 1e-3)


def _geometry(image: Image) -> dict[str, Any]:
    metadata = {key: image.metadata[key] for key in METADATA_KEYS if key in image.metadata}
    if AFFINE not in metadata:
        metadata = geometry_metadata(volume_of_layer(image))
    return {**_placement(image), "metadata": metadata}


def _put_image(
    viewer: Any,
    name: str,
    data: np.ndarray,
    geometry: dict[str, Any],
    role: str,
    model: dict[str, Any],
    **kwargs: Any,
) -> Image:
    """Add an image layer, or refresh the data of the one a previous run made."""
    existing = viewer.layers[name] if name in viewer.layers else None
    metadata = {**geometry["metadata"], ROLE: role, MODEL: model}
    colorbar = kwargs.pop("colorbar", False)
    if isinstance(existing, Image) and existing.data.shape == data.shape:
        existing.data = data
        existing.metadata.update(metadata)
        existing.contrast_limits = kwargs.get("contrast_limits", existing.contrast_limits)
        layer = existing
    else:
        layer = viewer.add_image(
            data,
            name=name,
            scale=geometry["scale"],
            translate=geometry["translate"],
            metadata=metadata,
            **kwargs,
        )
    layer.colorbar.visible = colorbar  # the scale that says what a colour means
    return layer


def is_unedited(layer: Labels) -> bool:
    """Whether a labels layer still equals the model output stored beside it."""
    prediction = layer.metadata.get(PREDICTION)
    return (
        prediction is not None
        and np.shape(prediction) == layer.data.shape
        and np.array_equal(np.asarray(layer.data), prediction)
    )


def _free_name(viewer: Any, base: str) -> str:
    number = 2
    while f"{base} ({number})" in viewer.layers:
        number += 1
    return f"{base} ({number})"


def _put_labels(viewer: Any, image: Image, labels: np.ndarray, model: dict[str, Any]) -> Labels:
    """Add the labels layer, or replace an earlier prediction the user has not edited.

    A layer whose data differ from its stored prediction holds manual work: it is left alone
    and the new result goes into a new layer with a numbered name.
    """
    base = labels_name(image.name, model)
    reference = image if AFFINE in image.metadata else volume_of_layer(image)
    data, kwargs, _ = labels_layer_data(labels, reference, name=base, role=SEGMENTATION)
    kwargs["metadata"].update({PREDICTION: data.copy(), MODEL: model})
    if "tumour" not in model.get("validated_structures", ["tumour"]):
        # napari's status bar names the label under the cursor: say it there too.
        kwargs["features"]["name"][2] = "tumour (unvalidated model)"
    existing = viewer.layers[base] if base in viewer.layers else None
    if isinstance(existing, Labels) and existing.data.shape == data.shape and is_unedited(existing):
        existing.data = data
        existing.metadata.update(kwargs["metadata"])
        return existing
    if existing is not None:
        kwargs["name"] = _free_name(viewer, base)
    return viewer.add_labels(data, **kwargs)


def _select_for_painting(viewer: Any, labels: Labels) -> Labels:
    """Make the new result the layer painted, unless another result of the same CT holds the
    user's edits: those stay selected (a tester segmented with the ensemble to compare, and
    the next stroke went into the ensemble's labels)."""
    for other in viewer.layers:
        if (
            isinstance(other, Labels)
            and other is not labels
            and other.data.shape == labels.data.shape
            and PREDICTION in other.metadata
            and other.metadata.get(SOURCE) == labels.metadata.get(SOURCE)
            and not is_unedited(other)
        ):
            viewer.layers.selection.active = other  # napari selects a new layer by itself
            return labels
    viewer.layers.selection.active = labels
    labels.selected_label = 1
    labels.mode = "paint"
    return labels


def result_steps(
    viewer: Any, image: Image, output: SegmentationOutput
) -> list[Callable[[], Layer]]:
    """The layers of a finished segmentation of ``image``, as steps to run one at a time.

    Creating a napari layer costs about 0.1 s (vispy visual, controls); a dock runs one step
    per turn of the event loop so that every stall stays that short. The labels come last, on
    top, selected, label 1 and paint mode: the last step returns the labels layer.
    """
    result = output.result
    model = output.model_record()
    geometry = _geometry(image)
    images: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    if output.error is not None:
        images[RECONSTRUCTION_ERROR] = (
            output.error,
            {"colormap": "inferno", "contrast_limits": output.error_contrast, "visible": False},
        )
        images[RECONSTRUCTION] = (
            result.canonical_reconstruction,
            {"colormap": "gray", "contrast_limits": (0.0, 1.0), "visible": False},
        )
    if result.canonical_probabilities is not None:
        for channel, role in enumerate((PANCREAS_PROBABILITY, TUMOUR_PROBABILITY)):
            images[role] = (
                result.canonical_probabilities[..., channel],
                PROBABILITY_DISPLAY,
            )
    stale = [
        layer_name(image.name, role, model)
        for role in DERIVED_ROLES
        if role not in images and layer_name(image.name, role, model) in viewer.layers
    ]
    steps: list[Callable[[], Layer]] = [partial(_remove, viewer, name) for name in stale]
    for role, (data, kwargs) in images.items():
        name = layer_name(image.name, role, model)
        steps.append(partial(_put_image, viewer, name, data, geometry, role, model, **kwargs))
    put = partial(_put_labels, viewer, image, result.canonical_labels, model)
    steps.append(lambda: _select_for_painting(viewer, put()))
    return steps


def _remove(viewer: Any, name: str) -> None:
    if name in viewer.layers:
        viewer.layers.remove(name)


def summary(image_name: str, output: SegmentationOutput) -> str:
    """The figures of a run, a few lines for a dock's readout (and the tumour warning)."""
    stats = output.result.stats
    model = output.model_record()
    text = (
        f"{image_name} with {model['name']} ({model['arch']}):\n"
        f"pancreas {format_ml(stats.pancreas_ml)}, tumour {format_ml(stats.tumour_ml)}\n"
        f"{stats.foreground_slices} of {stats.total_slices} slices with foreground\n"
        f"{stats.seconds:.1f} s on {stats.device} ({stats.precision}, "
        f"batch {stats.batch_size})"
    )
    warning = tumour_warning(output.meta)
    return f"{text}\n{warning[0].upper()}{warning[1:]}." if warning else text
