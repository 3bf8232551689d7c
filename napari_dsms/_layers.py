"""Volumes <-> napari layer data, with the geometry that makes layers overlay and export exactly.

Layers hold the canonical array (:mod:`src_models.io.orientation`: slices towards Superior, rows
towards Posterior, columns towards the patient's Left), ``scale`` = voxel size in mm and
``translate`` = world position of voxel 0, so volumes of one patient on different grids overlay.
The file's affine, native shape and path travel in ``layer.metadata``; :func:`layer_to_volume`
uses them to put edited labels back on the file's grid without resampling.

Pure numpy and napari model classes: no Qt, so readers, sample data and tests use it headless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import DirectLabelColormap

from src_models.io import LABEL_NAMES, Volume, VolumeError, on_grid_of
from src_models.io.orientation import (
    canonical_origin,
    canonical_spacing,
    from_canonical,
    to_canonical,
)
from src_models.io.windows import CT_WINDOWS, DEFAULT_WINDOW

from ._session import RegionOfInterest, ReviewSession

LayerDataTuple = tuple[Any, dict[str, Any], str]

Colours = dict[int | None, tuple[float, float, float, float]]

#: RGBA per label value of a segmentation (a model's result, being corrected): pancreas orange,
#: tumour magenta, background transparent. Drawn filled.
LABEL_COLOURS: Colours = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (1.0, 0.6, 0.0, 1.0),
    2: (1.0, 0.0, 1.0, 1.0),
    None: (0.5, 0.5, 0.5, 1.0),  # any other value a user paints
}

#: RGBA per label value of a reference (a label file, e.g. a manual segmentation): pancreas
#: green, tumour blue, so that it never looks like the model's result. Drawn as contours.
REFERENCE_COLOURS: Colours = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.1, 0.9, 0.3, 1.0),
    2: (0.2, 0.6, 1.0, 1.0),
    None: (0.5, 0.5, 0.5, 1.0),
}

#: Contour width in screen pixels of reference and comparison labels layers.
CONTOUR_WIDTH = 2

# --- layer metadata keys (``layer.metadata[KEY]``) -------------------------------------------

#: The file's 4 x 4 affine (its own index order -> RAS mm).
AFFINE = "affine"
#: The file's native array shape.
SHAPE = "shape"
#: Path of the file or DICOM folder the volume came from.
SOURCE = "source"
#: The volume's description (DICOM series description or file name).
DESCRIPTION = "description"
#: Extra facts about the file (:attr:`src_models.io.Volume.info`).
VOLUME_INFO = "volume_info"
#: The role of a layer napari-dsms derived from a CT (one of :data:`DERIVED_ROLES`).
ROLE = "dsms_role"
#: On a labels layer: an unedited copy of the model's labels (canonical uint8 array).
PREDICTION = "prediction"
#: On a labels layer: the model that made it, ``{"arch", "checkpoint", "name", "device",
#: "precision"}``.
MODEL = "model"
#: On a labels layer under review: the model output with the changes of tools (fill between,
#: clean-up, refine round) folded in, against which the user's corrections are measured
#: (:class:`napari_dsms._session.ReviewSession`); journaled, so a restored session still tells
#: the user's corrections from what tools wrote.
BASELINE = "baseline"
#: On a labels layer: sorted canonical slices the user marked as reviewed.
REVIEWED = "reviewed"
#: On a journaled labels layer: :func:`src_models.autosave.stamp` of its autosave journal (CT
#: digest, session, folder; :mod:`napari_dsms._autosave`); exports remove that journal.
AUTOSAVE_KEY = "autosave"
#: On a labels layer: the region of interest (``RegionOfInterest.as_dict()``, _session.py).
ROI = "region_of_interest"

#: On a labels layer: the checkpoint the last refine round ended with (the next one starts there).
LATEST_MODEL = "latest_model"

#: On a labels layer: ``[time stamp (s), canonical slice]`` of each of the user's edits (a brush
#: stroke, a fill), for the effort record (:func:`src_models.corrections.seconds_per_slice`).
EDIT_LOG = "edit_log"

#: Layer metadata a restored autosave gives back besides labels and reviewed slices.
RESTORED_KEYS = (ROI, LATEST_MODEL, EDIT_LOG)

#: ``layer.metadata`` keys describing the file grid, written here and read by the writer.
METADATA_KEYS = (AFFINE, SOURCE, SHAPE, DESCRIPTION, VOLUME_INFO)

# --- roles of labels layers (``layer.metadata[ROLE]``) ------------------------------------------

#: A model's result (``metadata[PREDICTION]`` keeps its output), corrected by the user.
SEGMENTATION = "segmentation"
#: Labels read from a file: a reference to compare with, not to paint into by accident.
REFERENCE = "reference"

# --- roles of the image layers a segmentation adds (``layer.metadata[ROLE]``) -----------------

RECONSTRUCTION = "reconstruction"
RECONSTRUCTION_ERROR = "reconstruction error"
PANCREAS_PROBABILITY = "pancreas probability"
TUMOUR_PROBABILITY = "tumour probability"
DERIVED_ROLES = (RECONSTRUCTION, RECONSTRUCTION_ERROR, PANCREAS_PROBABILITY, TUMOUR_PROBABILITY)


def is_ct_layer(layer: Any, slices: bool = False) -> bool:
    """Whether ``layer`` is a CT to segment or review: a 3D grey-value Image layer that is not
    one of the images napari-dsms derives from a CT (reconstruction, error, probabilities);
    with ``slices``, a 2D one (a single slice, which the Segment dock segments) counts too.

    Layers from other readers count too (the Segment dock takes them as radiological slices);
    file geometry is not required here, only where a file grid is needed
    (:func:`reference_volume` says so then).
    """
    return (
        isinstance(layer, Image)
        and (layer.ndim == 3 or (slices and layer.ndim == 2))
        and not layer.rgb
        and layer.metadata.get(ROLE) not in DERIVED_ROLES
    )


def has_file_geometry(layer: Any) -> bool:
    """Whether ``layer`` carries its file's grid (napari-dsms opened or derived it): then its
    array is in the canonical layout for certain; a layer from another reader is only assumed
    to be (:func:`napari_dsms._results.volume_of_layer`)."""
    metadata = getattr(layer, "metadata", None) or {}
    return AFFINE in metadata and SHAPE in metadata


#: What a layer from another reader is taken as, for the docks' notes.
ASSUMED_LAYOUT = (
    "axial slices shown radiologically (anterior at the top, the patient's right on the left)"
)


def label_colours(role: str | None = SEGMENTATION) -> Colours:
    """The fixed colours of a labels layer of ``role`` (:data:`REFERENCE` or a segmentation)."""
    return dict(REFERENCE_COLOURS if role == REFERENCE else LABEL_COLOURS)


def label_colormap(
    role: str | None = SEGMENTATION, hidden: tuple[int, ...] = ()
) -> DirectLabelColormap:
    """Fixed colours per role, so a structure looks the same in every layer of that role.

    ``hidden`` label values are made transparent (the data stay as they are).
    """
    colours = label_colours(role)
    for value in hidden:
        colours[value] = (0.0, 0.0, 0.0, 0.0)
    return DirectLabelColormap(color_dict=colours)


def style_labels(layer: Any) -> None:
    """Draw a reference labels layer as contours (set after creation: no layer kwarg does it)."""
    if layer.metadata.get(ROLE) == REFERENCE:
        layer.contour = CONTOUR_WIDTH


def label_features() -> dict[str, list]:
    """Per-label table; napari's status bar shows the name of the label under the cursor."""
    return {"index": list(LABEL_NAMES), "name": list(LABEL_NAMES.values())}


def geometry_metadata(volume: Volume) -> dict[str, Any]:
    """``layer.metadata`` describing ``volume``'s file grid (see :data:`METADATA_KEYS`)."""
    return {
        AFFINE: np.array(volume.affine, dtype=np.float64),
        SOURCE: volume.source,
        SHAPE: tuple(int(n) for n in volume.shape),
        DESCRIPTION: volume.description,
        VOLUME_INFO: dict(volume.info),
    }


def _placement(affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, tuple[float, ...]]:
    return {"scale": canonical_spacing(affine), "translate": canonical_origin(affine, shape)}


def ct_layer_name(volume: Volume) -> str:
    """A CT layer's default name: its file or DICOM folder, without the file ending.

    Not the DICOM series description: that often names the organ ("Pancreas"), and a layer
    "Pancreas pancreas/tumour [model]" would read like a label layer.
    """
    name = Path(volume.source).name if volume.source else ""
    for ending in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    return name or volume.description or "CT"


def image_layer_data(
    volume: Volume, window: str = DEFAULT_WINDOW, name: str | None = None
) -> LayerDataTuple:
    """Image layer data for a CT volume in the radiological view.

    Parameters
    ----------
    volume : Volume
        CT in HU on its file grid; the layer gets a view of its canonical array (no copy).
    window : str
        Key of :data:`src_models.io.windows.CT_WINDOWS` that sets the initial contrast limits.
    name : str, optional
        Layer name; defaults to :func:`ct_layer_name`.
    """
    if window not in CT_WINDOWS:
        raise KeyError(f"unknown CT window {window!r}; choose one of {sorted(CT_WINDOWS)}")
    canonical, _ = to_canonical(volume.array, volume.affine)
    kwargs = {
        "name": name or ct_layer_name(volume),
        "colormap": "gray",
        "contrast_limits": tuple(float(v) for v in CT_WINDOWS[window]),
        "metadata": geometry_metadata(volume),
        **_placement(volume.affine, volume.shape),
    }
    return canonical, kwargs, "image"


def reference_volume(reference: Any) -> Volume:
    """Geometry-only :class:`Volume` from a Volume, a layer or a layer's metadata dict.

    The array is a single zero broadcast to the native shape (no memory): writers and
    checks only need ``shape``, ``affine``, ``source`` and ``info``.
    """
    if isinstance(reference, Volume):
        return reference
    metadata = reference if isinstance(reference, dict) else getattr(reference, "metadata", None)
    name = getattr(reference, "name", None) or (metadata or {}).get("name", "layer")
    if not metadata or AFFINE not in metadata or SHAPE not in metadata:
        raise VolumeError(
            f"{name}: the layer has no file geometry (metadata 'affine' and 'shape'); "
            "open the CT with napari-dsms or create the labels with its widgets"
        )
    shape = tuple(int(n) for n in metadata[SHAPE])
    stand_in = np.broadcast_to(np.zeros((), dtype=np.uint8), shape)
    return Volume(
        stand_in,
        np.asarray(metadata[AFFINE], dtype=np.float64),
        str(metadata.get(SOURCE, "")),
        str(metadata.get(DESCRIPTION, "")),
        dict(metadata.get(VOLUME_INFO, {})),
    )


def _labels_kwargs(reference: Volume, name: str, role: str = SEGMENTATION) -> dict[str, Any]:
    return {
        "name": name,
        "colormap": label_colormap(role),
        "features": label_features(),
        "opacity": 0.9 if role == REFERENCE else 0.5,
        "metadata": {**geometry_metadata(reference), ROLE: role},
        **_placement(reference.affine, reference.shape),
    }


def labels_layer_data(
    labels: Volume | np.ndarray, reference: Any, name: str = "labels", role: str = SEGMENTATION
) -> LayerDataTuple:
    """Labels layer data aligned with a CT, with the fixed pancreas / tumour colours of ``role``.

    Parameters
    ----------
    labels : Volume or numpy.ndarray
        A :class:`Volume` is on its own file grid, which must equal the reference's, and is
        reoriented here. A plain array is taken as already canonical (what inference returns).
    reference : Volume or napari layer
        The CT (volume or image layer made by :func:`image_layer_data`) the labels belong to.
    name : str
        Layer name.
    role : str
        :data:`SEGMENTATION` (orange / magenta, filled) or :data:`REFERENCE` (green / blue;
        :func:`style_labels` draws it as contours once it is a layer).
    """
    ref = reference_volume(reference)
    canonical_shape = to_canonical(np.broadcast_to(np.uint8(0), ref.shape), ref.affine)[0].shape
    if isinstance(labels, Volume):
        labels = on_grid_of(labels, ref, what="labels")
        data, _ = to_canonical(labels.array, labels.affine)
    else:
        data = np.asarray(labels)
        if data.shape != canonical_shape:
            raise VolumeError(
                f"{name}: labels of shape {data.shape} do not fit the CT "
                f"(canonical shape {canonical_shape})"
            )
    if not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.uint8)
    return data, _labels_kwargs(ref, name, role), "labels"


def new_labels_like(image_layer: Any, name: str = "labels") -> LayerDataTuple:
    """Empty (all background) labels layer data on ``image_layer``'s grid and geometry."""
    ref = reference_volume(image_layer)
    data = np.zeros(np.asarray(image_layer.data).shape, dtype=np.uint8)
    return data, _labels_kwargs(ref, name), "labels"


def canonical_to_volume(data: Any, metadata: dict[str, Any], name: str = "layer") -> Volume:
    """Canonical layer data back on the file grid described by ``metadata``.

    Parameters
    ----------
    data : array-like
        Layer data in the canonical layout.
    metadata : dict
        ``layer.metadata`` as written by :func:`geometry_metadata`.
    name : str
        Layer name for error messages.
    """
    ref = reference_volume(metadata if metadata else {"name": name})
    data = np.asarray(data)
    expected = to_canonical(np.broadcast_to(np.uint8(0), ref.shape), ref.affine)[0].shape
    if data.shape != expected:
        raise VolumeError(
            f"{name}: data shape {data.shape} no longer matches the file grid {ref.shape} "
            f"recorded in its metadata (canonical {expected})"
        )
    return Volume(
        from_canonical(data, ref.affine), ref.affine, ref.source, ref.description, dict(ref.info)
    )


def layer_to_volume(layer: Any) -> Volume:
    """The layer's data back on its file grid, as a :class:`Volume` with the file's affine.

    Used by the writer and by exports: the canonical array goes through
    :func:`src_models.io.orientation.from_canonical`, an exact permutation and flip.
    """
    return canonical_to_volume(layer.data, layer.metadata, getattr(layer, "name", "layer"))


def session_from_layer(
    labels: np.ndarray,
    metadata: Mapping[str, Any],
    spacing: Sequence[float],
    image: np.ndarray | None = None,
    geometry: Mapping[str, Any] | None = None,
    name: str = "ct",
) -> ReviewSession:
    """A session over a labels layer's canonical array and its ``layer.metadata``.

    Parameters
    ----------
    labels
        (S, P, L) canonical labels (the layer's array itself, not a copy).
    metadata
        The labels layer's metadata: stored model output, baseline, reviewed slices, model
        record, region of interest (:mod:`napari_dsms._layers` keys).
    spacing
        Canonical voxel spacing in mm (the layer's scale).
    image
        (S, P, L) canonical HU of the CT; without it (napari's Save, which sees one layer) a
        stand-in of zeros that records, exports and side-cars do not read.
    geometry
        The CT layer's metadata (affine, file shape, source); the labels' own by default.
    name
        The CT's name, for messages.
    """
    geometry = metadata if geometry is None else geometry
    model = metadata.get(MODEL)
    shape = geometry.get(SHAPE)
    affine = geometry.get(AFFINE)
    if image is None:
        image = np.broadcast_to(np.zeros((), dtype=np.float32), np.shape(labels))
    return ReviewSession(
        image=image,
        labels=labels,
        spacing=tuple(float(s) for s in spacing),
        prediction=metadata.get(PREDICTION),
        baseline=metadata.get(BASELINE),
        reviewed=set(metadata.get(REVIEWED, ())),
        model=dict(model) if isinstance(model, dict) else None,
        source=str(geometry.get(SOURCE, "")),
        name=name,
        affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        source_shape=None if shape is None else tuple(int(n) for n in shape),
        instance_numbers=(geometry.get(VOLUME_INFO) or {}).get("instance_numbers"),
        roi=RegionOfInterest.from_dict(metadata.get(ROI)),
        edits=[tuple(edit) for edit in metadata.get(EDIT_LOG) or ()],
    )
